"""The agent's exceptions. Each message names its culprit (a config key, a file, a URI)."""

# sysexits.h: EX_CONFIG. systemd's RestartPreventExitStatus=78 keeps a bad config from looping.
EXIT_CONFIG = 78
EXIT_FAILURE = 1


class AgentError(Exception):
    """Base class: a failure the CLI reports as one line, without a traceback."""

    exit_code = EXIT_FAILURE


class ConfigError(AgentError):
    """The configuration is invalid; the message starts with the dotted key."""

    exit_code = EXIT_CONFIG


class SourceError(AgentError):
    """A frame source cannot be opened or read; the message names the URI."""


class ModelError(AgentError):
    """A model file is missing, corrupt or has outputs we cannot interpret."""


class EngineError(AgentError):
    """An engine (or optimized model) is missing, stale, tampered or cannot be built."""


class BackendUnavailable(AgentError):
    """A backend's runtime (tensorrt, pycuda, onnxruntime) is not installed here."""
