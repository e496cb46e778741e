"""Configuration: frozen dataclasses, loaded and validated once.

Sources of values, later ones win: embedded defaults (which run the demo),
the YAML file, environment variables (``EDGE_AGENT_SIZE=accurate``,
``EDGE_AGENT_MQTT__URL=mqtt://host``: ``__`` nests), then CLI overrides.
Every error names the dotted key and the bad value and raises ConfigError,
which the CLI turns into exit code 78 before any camera or GPU is opened.
"""

import dataclasses
import os
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from .errors import ConfigError

ENV_PREFIX = "EDGE_AGENT_"
DEFAULT_CONFIG_PATH = "/etc/edge-agent/config.yaml"
SCHEMA_VERSION = 1

# Every environment variable the agent or its unit reads, in one place (docs/service.md
# shows it; tests check the unit against it). A name ending in "*" is a prefix. Under
# EDGE_AGENT_, only names not listed here are configuration keys.
ENVIRONMENT = (
    # (name, who reads it, what it means)
    ("EDGE_AGENT_<KEY>", "agent (config)", "a configuration key: EDGE_AGENT_SIZE=accurate, "
                                           "EDGE_AGENT_MQTT__URL=mqtt://host (__ nests)"),
    ("EDGE_AGENT_MQTT_PASSWORD", "agent", "the broker password when mqtt.password_file is unset (never logged)"),
    ("EDGE_AGENT_KERNEL_CACHE", "agent", "where compiled CUDA kernels are cached (the unit: /var/cache/edge-agent)"),
    ("EDGE_AGENT_CLI_*", "click", "defaults for command-line options: EDGE_AGENT_CLI_RUN_SIZE=accurate"),
    ("STATE_DIRECTORY", "agent, from systemd", "state_dir and engines_dir when they are not configured"),
    ("NOTIFY_SOCKET", "agent, from systemd", "where READY=1, STATUS=, WATCHDOG=1 go (Type=notify)"),
    ("WATCHDOG_USEC", "agent, from systemd", "the watchdog interval (WatchdogSec=)"),
    ("WATCHDOG_PID", "agent, from systemd", "the process the watchdog is meant for"),
    ("XDG_CACHE_HOME", "agent", "the kernel cache outside the service (default ~/.cache)"),
    ("OPENCV_FFMPEG_CAPTURE_OPTIONS", "OpenCV", "FFmpeg options for RTSP (the agent defaults it to TCP)"),
    ("CUDA_CACHE_PATH", "CUDA", "the PTX JIT cache (the unit: /var/cache/edge-agent/cuda; no home)"),
    ("OPENBLAS_CORETYPE", "OpenBLAS", "ARMV8 on JetPack 4: numpy 1.19.5 dies with SIGILL on Xavier without it"),
    ("PYTHONUNBUFFERED", "Python", "1 in the unit: log lines reach the journal at once"),
    ("PATH", "agent", "nvcc (the Jetson drop-in adds /usr/local/cuda/bin)"),
    ("TMPDIR", "nvcc", "nvcc's temporary files"),
)
_NOT_CONFIG = tuple(name for name, _, _ in ENVIRONMENT if name.startswith(ENV_PREFIX) and "<" not in name)


def is_config_variable(name):
    """True if environment variable ``name`` is a configuration override (EDGE_AGENT_<KEY>)."""
    if not name.startswith(ENV_PREFIX):
        return False
    return not any(name.startswith(n[:-1]) if n.endswith("*") else name == n for n in _NOT_CONFIG)


def _opt(default, check=None, choices=None):
    """A dataclass field with an optional validity check ``(predicate, 'description')``."""
    meta = {}
    if check is not None:
        meta["check"] = check
    if choices is not None:
        meta["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


POSITIVE = (lambda v: v > 0, "> 0")
NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
UNIT = (lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def _checkout_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data_path(*parts):
    """Find a bundled file: in the checkout first, then under ``sys.prefix/share/edge-agent``."""
    for root in (_checkout_root(), os.path.join(sys.prefix, "share", "edge-agent")):
        candidate = os.path.join(root, *parts)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(_checkout_root(), *parts)


@dataclass(frozen=True)
class SizeConfig:
    """One named model size: the ONNX it is built from."""

    onnx: str = ""
    labels: Optional[str] = None  # a text file, one class name a line; else the ONNX metadata


@dataclass(frozen=True)
class CameraConfig:
    """One frame source and how to capture it."""

    id: str = "cam0"
    source: str = ""  # URI: csi://0, /dev/video0, v4l2://0, rtsp://..., file, folder, gst://...
    width: int = _opt(0, NON_NEGATIVE)  # 0: the source's own size
    height: int = _opt(0, NON_NEGATIVE)
    fps: float = _opt(0.0, NON_NEGATIVE)  # 0: the source's own rate
    flip: int = _opt(0, (lambda v: 0 <= v <= 7, "in [0, 7] (nvvidconv flip-method)"))
    loop: bool = False  # files and folders: start again at the end
    realtime: bool = True  # files and folders: pace at the file's fps
    stall_timeout_s: float = _opt(5.0, POSITIVE)  # live sources: reopen after this long without a frame


@dataclass(frozen=True)
class DetectionConfig:
    """Post-processing thresholds (never hard-coded in a backend)."""

    conf_threshold: float = _opt(0.25, UNIT)
    iou_threshold: float = _opt(0.45, UNIT)
    class_agnostic: bool = False
    top_k: int = _opt(1000, POSITIVE)  # candidates kept before NMS
    max_detections: int = _opt(100, POSITIVE)
    classes: List[int] = _opt([])  # keep only these class ids; empty: all


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    threads: int = _opt(0, NON_NEGATIVE)  # 0: one per core but one (capture needs it), at most 4
    allow_spinning: bool = False  # spinning makes 2 threads slower than 1 on a loaded 2-core box


@dataclass(frozen=True)
class TensorRTConfig:
    precision: str = _opt("fp16", choices=("fp32", "fp16", "int8"))
    dla_core: int = _opt(-1, (lambda v: v >= -1, ">= -1 (-1: GPU only)"))
    workspace_mb: int = _opt(1024, POSITIVE)
    calib_dir: Optional[str] = None  # INT8 calibration images
    auto_build: bool = False  # build a missing or stale engine at start instead of refusing


@dataclass(frozen=True)
class OutputConfig:
    jsonl: Optional[str] = "-"  # "-": stdout; a path; null: no JSON lines


@dataclass(frozen=True)
class TlsConfig:
    ca: Optional[str] = None
    cert: Optional[str] = None
    key: Optional[str] = None
    insecure: bool = False  # skip hostname verification (never the CA check)


@dataclass(frozen=True)
class SnapshotConfig:
    enabled: bool = False
    interval_s: float = _opt(10.0, POSITIVE)
    classes: List[str] = _opt([])  # also send one when one of these labels appears
    max_bytes: int = _opt(200000, POSITIVE)
    quality: int = _opt(80, (lambda v: 1 <= v <= 100, "in [1, 100]"))


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    url: str = "mqtt://localhost:1883"  # mqtt:// or mqtts://
    prefix: str = "edge-agent"
    client_id: str = ""  # empty: edge-agent-<device>-<random>
    protocol: str = _opt("3.1.1", choices=("3.1.1", "5"))
    keepalive_s: int = _opt(30, POSITIVE)
    username: Optional[str] = None
    password_file: Optional[str] = None  # else $EDGE_AGENT_MQTT_PASSWORD
    tls: TlsConfig = _opt(TlsConfig())
    qos_detections: int = _opt(1, (lambda v: v in (0, 1, 2), "0, 1 or 2"))
    qos_timing: int = _opt(0, (lambda v: v in (0, 1, 2), "0, 1 or 2"))
    publish: str = _opt("all", choices=("all", "detections", "changes"))
    timing_interval_s: float = _opt(5.0, POSITIVE)
    queue_size: int = _opt(1000, POSITIVE)
    spool_max_records: int = _opt(100000, POSITIVE)
    snapshot: SnapshotConfig = _opt(SnapshotConfig())


@dataclass(frozen=True)
class AutoSizeConfig:
    """How ``size: auto`` picks: the most accurate size meeting these on this device."""

    latency_budget_ms: float = _opt(0.0, NON_NEGATIVE)  # 0: no latency budget
    target_fps: float = _opt(0.0, NON_NEGATIVE)  # 0: no FPS target
    report: Optional[str] = None  # benchmark report; default: <state_dir>/benchmark.json


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = _opt(10.0, POSITIVE)


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration; the defaults run the bundled demo on the CPU."""

    device_id: str = ""  # empty: the host name
    backend: str = _opt("auto", choices=("auto", "onnxruntime", "tensorrt"))
    size: str = "fast"  # a key of ``sizes``, or "auto"
    sizes: Dict[str, SizeConfig] = _opt({})
    cameras: List[CameraConfig] = _opt([])
    detection: DetectionConfig = _opt(DetectionConfig())
    onnxruntime: OnnxRuntimeConfig = _opt(OnnxRuntimeConfig())
    tensorrt: TensorRTConfig = _opt(TensorRTConfig())
    output: OutputConfig = _opt(OutputConfig())
    mqtt: MqttConfig = _opt(MqttConfig())
    auto_size: AutoSizeConfig = _opt(AutoSizeConfig())
    health: HealthConfig = _opt(HealthConfig())
    engines_dir: str = ""  # empty: $STATE_DIRECTORY/engines under systemd, else ./engines
    state_dir: str = ""  # empty: $STATE_DIRECTORY under systemd, else ~/.local/state/edge-agent
    max_frames: int = _opt(0, NON_NEGATIVE)  # stop after this many frames per camera; 0: never
    log_level: str = _opt("info", choices=("debug", "info", "warning", "error"))


def default_sizes():
    """The two bundled demo sizes."""
    return {
        "fast": {"onnx": data_path("models", "demo-fast.onnx")},
        "accurate": {"onnx": data_path("models", "demo-accurate.onnx")},
    }


def default_cameras():
    """One camera: the generated demo video, paced in real time and looped (a service runs on)."""
    return [{"id": "cam0", "source": data_path("data", "demo", "demo.mp4"), "loop": True}]


# --- generic loading -------------------------------------------------------------------------


def _describe(value):
    return repr(value) if isinstance(value, str) else str(value)


def _type_name(tp):
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _origin(tp):
    origin = getattr(tp, "__origin__", None)
    # Python 3.6 reports typing.List etc.; 3.7+ reports list/dict/Union.
    if origin in (list, List):
        return list
    if origin in (dict, Dict):
        return dict
    if origin is Union:
        return Union
    return origin


def _convert(tp, value, key):
    """Convert a YAML value to ``tp``, or raise ConfigError naming ``key``."""
    origin = _origin(tp)
    if origin is Union:
        args = [a for a in tp.__args__ if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError("{}: expected a list, got {}".format(key, _describe(value)))
        return [_convert(tp.__args__[0], v, "{}[{}]".format(key, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("{}: expected a mapping, got {}".format(key, _describe(value)))
        return {str(k): _convert(tp.__args__[1], v, "{}.{}".format(key, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError("{}: expected true or false, got {}".format(key, _describe(value)))
        return value
    if tp in (int, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if tp is int and ok and float(value) != int(value):
            ok = False
        if not ok:
            raise ConfigError("{}: expected {}, got {}".format(key, _type_name(tp), _describe(value)))
        return tp(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError("{}: expected a string, got {}".format(key, _describe(value)))
        return str(value)
    return value


def _build(cls, data, key):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("{}: expected a mapping, got {}".format(key or "config", _describe(data)))
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            where = "{}.{}".format(key, name) if key else str(name)
            raise ConfigError("{}: unknown key (known: {})".format(where, ", ".join(sorted(fields))))
    values = {}
    for name, f in fields.items():
        if name not in data:
            continue
        dotted = "{}.{}".format(key, name) if key else name
        value = _convert(f.type, data[name], dotted)
        check = f.metadata.get("check")
        if check is not None and value is not None and not check[0](value):
            raise ConfigError("{}: expected a value {}, got {}".format(dotted, check[1], _describe(data[name])))
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                "{}: expected one of {}, got {}".format(dotted, ", ".join(choices), _describe(data[name]))
            )
        values[name] = value
    return cls(**values)


def _merge(base, override):
    """Deep-merge mappings; lists and scalars in ``override`` replace."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _key_error(cls, path):
    """Why the key ``path`` (its parts, lower case) is not a configuration key, or None."""
    for i, part in enumerate(path):
        if _origin(cls) is dict:  # a name the user chose: sizes.<name>
            cls = cls.__args__[1]
            continue
        if not dataclasses.is_dataclass(cls):
            return "{} has no sub-keys".format(".".join(path[:i]))
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        if part not in fields:
            return "{} is not a configuration key (known: {})".format(".".join(path[:i + 1]), ", ".join(sorted(fields)))
        cls = fields[part]
        if _origin(cls) is Union:
            cls = next(a for a in cls.__args__ if a is not type(None))
    return None


def env_problems(environ):
    """One message per EDGE_AGENT_ variable in ``environ`` that is neither documented nor a config key."""
    out = []
    for name in sorted(environ):
        if is_config_variable(name):
            problem = _key_error(AgentConfig, name[len(ENV_PREFIX):].lower().split("__"))
            if problem:
                out.append("{} (environment): {}".format(name, problem))
    return out


def _env_overrides(environ):
    import yaml

    problems = env_problems(environ)
    if problems:
        raise ConfigError(problems[0])
    out = {}
    for name, raw in sorted(environ.items()):
        if not is_config_variable(name):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def read_yaml(path):
    """Read a YAML mapping from ``path``; errors name the file."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError("{}: cannot read config file: {}".format(path, e.strerror or e))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = " (line {})".format(mark.line + 1) if mark is not None else ""
        raise ConfigError("{}: not valid YAML{}: {}".format(path, where, getattr(e, "problem", e)))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("{}: expected a mapping at the top level".format(path))
    return data


def load_config(path=None, overrides=None, environ=None, check_files=True):
    """Load, merge and validate the configuration; raises ConfigError."""
    data = {"sizes": default_sizes(), "cameras": default_cameras()}
    if path is not None:
        user = read_yaml(path)
        if "sizes" in user and isinstance(user["sizes"], dict):
            data["sizes"] = {}  # the user's sizes replace the demo ones
        data = _merge(data, user)
    environ = os.environ if environ is None else environ
    data = _merge(data, _env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    config = _build(AgentConfig, data, "")
    config = _fill_derived(config, environ)
    validate(config, check_files=check_files)
    return config


def _fill_derived(config, environ):
    changes = {}
    if not config.device_id:
        changes["device_id"] = socket.gethostname() or "edge-agent"
    state = config.state_dir or environ.get("STATE_DIRECTORY", "").split(":")[0]
    if not state:
        state = os.path.join(os.path.expanduser("~"), ".local", "state", "edge-agent")
    changes["state_dir"] = state
    if not config.engines_dir:
        if environ.get("STATE_DIRECTORY"):
            changes["engines_dir"] = os.path.join(state, "engines")
        else:
            changes["engines_dir"] = data_path("engines")
    return dataclasses.replace(config, **changes)


def validate(config, check_files=True):
    """Cross-field checks that a single field cannot express."""
    if not config.sizes:
        raise ConfigError("sizes: at least one model size is required")
    if config.size != "auto" and config.size not in config.sizes:
        raise ConfigError(
            "size: {} is not a configured size (known: {}, auto)".format(
                _describe(config.size), ", ".join(sorted(config.sizes))
            )
        )
    if not config.cameras:
        raise ConfigError("cameras: at least one camera is required")
    seen = set()
    for i, cam in enumerate(config.cameras):
        if not cam.source:
            raise ConfigError("cameras[{}].source: a source URI is required".format(i))
        if not cam.id or "/" in cam.id or "+" in cam.id or "#" in cam.id:
            raise ConfigError("cameras[{}].id: expected a name without '/', '+', '#', got {}".format(i, _describe(cam.id)))
        if cam.id in seen:
            raise ConfigError("cameras[{}].id: duplicate camera id {}".format(i, _describe(cam.id)))
        seen.add(cam.id)
    if config.size == "auto" and not (config.auto_size.latency_budget_ms or config.auto_size.target_fps):
        raise ConfigError("auto_size: size is 'auto' but neither latency_budget_ms nor target_fps is set")
    if config.mqtt.url.split("://")[0] not in ("mqtt", "mqtts"):
        raise ConfigError("mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {}".format(_describe(config.mqtt.url)))
    if check_files:
        used = config.sizes if config.size == "auto" else {config.size: config.sizes[config.size]}
        for name, size in sorted(used.items()):
            if not size.onnx:
                raise ConfigError("sizes.{}.onnx: a model path is required".format(name))
            if not os.path.isfile(size.onnx):
                raise ConfigError("sizes.{}.onnx: file not found: {}".format(name, size.onnx))
            if size.labels and not os.path.isfile(size.labels):
                raise ConfigError("sizes.{}.labels: file not found: {}".format(name, size.labels))
        for key in ("ca", "cert", "key"):
            p = getattr(config.mqtt.tls, key)
            if config.mqtt.enabled and p and not os.path.isfile(p):
                raise ConfigError("mqtt.tls.{}: file not found: {}".format(key, p))
        pw = config.mqtt.password_file
        if config.mqtt.enabled and pw and not os.path.isfile(pw):
            raise ConfigError("mqtt.password_file: file not found: {}".format(pw))


def to_dict(config):
    """The configuration as plain data (for ``check-config`` and reports)."""
    return dataclasses.asdict(config)
