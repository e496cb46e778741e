"""Configuration: frozen dataclasses, loaded and validated once.

Sources of values, later ones win: embedded defaults (which run the demo),
the YAML file, environment variables (``EDGE_AGENT_SIZE=accurate``,
``EDGE_AGENT_MQTT__URL=mqtt://host``: ``__`` nests), then CLI overrides.
Every error names the dotted key and the bad value and raises ConfigError,
which the CLI turns into exit code 78 before any camera or GPU is opened.

Why this module is longer than the others (~670 lines): every key's type, default and
bound sit beside the loader and the cross-field checks that enforce them, with the one
table of environment variables; split, one fact would live in two places.
"""

import dataclasses
import math
import os
import reprlib
import socket
import stat
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union
from urllib.parse import urlsplit

from .errors import ConfigError
from .sources.base import redact
from .track.zones import polygon_problem

ENV_PREFIX = "EDGE_AGENT_"
DEFAULT_CONFIG_PATH = "/etc/edge-agent/config.yaml"

# Every environment variable the agent or its unit reads, in one place (docs/service.md
# shows it; tests check the unit against it). A name ending in "*" is a prefix. Under
# EDGE_AGENT_, only names not listed here are configuration keys.
ENVIRONMENT = (
    # (name, who reads it, what it means)
    ("EDGE_AGENT_<KEY>", "agent (config)", "a configuration key: EDGE_AGENT_SIZE=accurate, "
                                           "EDGE_AGENT_MQTT__URL=mqtt://host (__ nests)"),
    ("EDGE_AGENT_MQTT_PASSWORD", "agent", "the broker password when mqtt.password_file is unset (never logged)"),
    ("EDGE_AGENT_KERNEL_CACHE", "agent", "where compiled CUDA kernels are cached (the unit: /var/cache/edge-agent/kernels)"),
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
# Durations end up in Event.wait()/sleep(), which raise OverflowError past ~292 years; a day is
# already far more than any interval or timeout here means.
SECONDS = (lambda v: 0 < v <= 86400, "in (0, 86400] seconds")
# A frame rate is turned into a period (1/fps) for sleep(): a tiny positive one is years long.
FPS = (lambda v: v == 0 or 0.01 <= v <= 1000, "0 (the source's own) or in [0.01, 1000]")
# ONNX Runtime creates every intra-op thread at session start: 100000 of them grew the RSS by
# 58 MB/s and never finished loading. More than a few threads per core only adds contention.
MAX_THREADS = (os.cpu_count() or 1) * 4
THREADS = (lambda v: 0 <= v <= MAX_THREADS, "in [0, {}] (4 per core)".format(MAX_THREADS))
IN_FLIGHT = (lambda v: 0 <= v <= 16, "in [0, 16] (0: 2 on two or more cores)")
# The MQTT keepalive is a 16-bit field of CONNECT: paho's thread dies (struct.error) beyond it.
KEEPALIVE = (lambda v: 1 <= v <= 65535, "in [1, 65535] (16 bits in MQTT's CONNECT)")


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
    fps: float = _opt(0.0, FPS)  # 0: the source's own rate
    flip: int = _opt(0, (lambda v: 0 <= v <= 7, "in [0, 7] (nvvidconv flip-method)"))
    loop: bool = False  # files and folders: start again at the end
    realtime: bool = True  # files and folders: pace at the file's fps
    stall_timeout_s: float = _opt(5.0, SECONDS)  # live sources: reopen after this long without a frame
    # Named polygons, each point [x, y] as fractions of the frame's width and height (agent.track.zones).
    zones: Dict[str, List[List[float]]] = _opt({})


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
class TrackingConfig:
    """The multi-object tracker per camera (agent.track.tracker: ByteTrack's steps and these names)."""

    enabled: bool = True
    high_threshold: float = _opt(0.5, UNIT)  # first association; below it, the low-confidence second pass
    low_threshold: float = _opt(0.1, UNIT)  # the detector runs down to min(this, detection.conf_threshold)
    new_track_threshold: float = _opt(0.4, UNIT)  # a detection this sure may start a track
    match_iou: float = _opt(0.2, UNIT)  # least IoU of a predicted track box and its detection
    min_hits: int = _opt(3, POSITIVE)  # consecutive matches that confirm a track (and give it an id)
    lost_buffer: float = _opt(0.03, NON_NEGATIVE)  # a lost track's box grows by this (x its size) per frame lost
    max_lost_frames: int = _opt(150, NON_NEGATIVE)  # a lost track ends after this many frames unmatched
    coast_frames: int = _opt(2, NON_NEGATIVE)  # a lost track still counts as in view this many frames
    max_tracks: int = _opt(256, (lambda v: 1 <= v <= 100000, "in [1, 100000]"))  # per camera
    appearance_weight: float = _opt(0.5, NON_NEGATIVE)  # colour distance's weight against IoU; 0: motion alone
    appearance_gate: float = _opt(0.3, UNIT)  # a track and a detection further apart in colour never match


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    threads: int = _opt(0, THREADS)  # intra-op threads of a frame alone; 0: one per physical core (ONNX Runtime's count)
    allow_spinning: bool = True  # ORT's default, the fastest alone; its workers spin on after a run too (benchmarks/README.md)
    frames_in_flight: int = _opt(0, IN_FLIGHT)  # 0: 2 on 2+ cores (one single-threaded run per core)
    # int8: run the QDQ model `build-engine --precision int8` made (it passed the accuracy gate)
    precision: str = _opt("fp32", choices=("fp32", "int8"))


@dataclass(frozen=True)
class TensorRTConfig:
    precision: str = _opt("fp16", choices=("fp32", "fp16", "int8"))
    dla_core: int = _opt(-1, (lambda v: v >= -1, ">= -1 (-1: GPU only)"))
    workspace_mb: int = _opt(1024, POSITIVE)
    calib_dir: Optional[str] = None  # INT8 calibration images
    auto_build: bool = False  # build a missing or stale engine at start instead of refusing
    # Integrated GPU (Jetson): engine input and camera frame in mapped host memory, read in place.
    # Off by default: nothing was measured on a Xavier yet (benchmarks/bench_detector_gpu.py --zero-copy).
    zero_copy: bool = False


@dataclass(frozen=True)
class QuantizationConfig:
    """Reduced-precision builds: how ONNX Runtime quantizes to INT8, and the accuracy gate every
    backend's INT8/FP16 build passes (agent.engines.quantize, agent.engines.gate)."""

    calib_dir: Optional[str] = None  # onnxruntime INT8 calibration images; empty: the demo calib split
    calib_method: str = _opt("minmax", choices=("minmax", "entropy", "percentile"))
    calib_images: int = _opt(32, POSITIVE)  # at most this many calibration images
    # Blocks kept in float: node-name prefixes ('heads', '/p3', 'tail'), or ['auto']: measured
    # per-block sensitivity on the calib split decides at build time.
    keep_float: List[str] = _opt(["auto"])
    max_map_drop: float = _opt(0.02, UNIT)  # most mAP50-95 (absolute) a build may lose against fp32
    val_dir: Optional[str] = None  # the gate's COCO split; empty: the demo val split
    val_images: int = _opt(200, POSITIVE)  # the gate measures at most this many images


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
    interval_s: float = _opt(10.0, SECONDS)
    classes: List[str] = _opt([])  # also send one when one of these labels appears
    max_bytes: int = _opt(200000, POSITIVE)
    quality: int = _opt(80, (lambda v: 1 <= v <= 100, "in [1, 100]"))


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    # mqtt:// or mqtts://; or a list of them (a cluster's nodes): the agent moves to the next one,
    # round-robin with backoff, when the connection is lost or fails. Read it through ``urls``.
    url: Union[str, List[str]] = "mqtt://localhost:1883"
    prefix: str = "edge-agent"
    client_id: str = ""  # empty: edge-agent-<device>-<random>
    protocol: str = _opt("3.1.1", choices=("3.1.1", "5"))
    keepalive_s: int = _opt(30, KEEPALIVE)
    username: Optional[str] = None
    password_file: Optional[str] = None  # else $EDGE_AGENT_MQTT_PASSWORD
    tls: TlsConfig = _opt(TlsConfig())
    qos_detections: int = _opt(1, (lambda v: v in (0, 1, 2), "0, 1 or 2"))
    qos_timing: int = _opt(0, (lambda v: v in (0, 1, 2), "0, 1 or 2"))
    # events: only the events and counts topics, no per-frame detections (low-bandwidth links)
    publish: str = _opt("all", choices=("all", "detections", "changes", "events"))
    timing_interval_s: float = _opt(5.0, SECONDS)
    queue_size: int = _opt(1000, POSITIVE)
    spool_max_records: int = _opt(100000, POSITIVE)
    snapshot: SnapshotConfig = _opt(SnapshotConfig())
    # Remote control (agent.control): act on {prefix}/{device}/cmd/{command}. Off by default: a
    # broker without an ACL would let anyone on it switch models or start a benchmark.
    commands: bool = False
    # Home Assistant MQTT discovery: retained configs under homeassistant_prefix; false clears them.
    homeassistant: bool = False
    homeassistant_prefix: str = "homeassistant"

    @property
    def urls(self):
        """The broker URLs in order (``url`` as a list, even when it is one string)."""
        return [self.url] if isinstance(self.url, str) else list(self.url)


@dataclass(frozen=True)
class AutoSizeConfig:
    """How ``size: auto`` picks: the most accurate size meeting these on this device."""

    latency_budget_ms: float = _opt(0.0, NON_NEGATIVE)  # 0: no latency budget
    target_fps: float = _opt(0.0, NON_NEGATIVE)  # 0: no FPS target
    report: Optional[str] = None  # benchmark report; default: <state_dir>/benchmark.json


@dataclass(frozen=True)
class HealthConfig:
    interval_s: float = _opt(10.0, SECONDS)


@dataclass(frozen=True)
class AgentConfig:
    """The whole configuration; the defaults run the bundled demo on the CPU."""

    device_id: str = ""  # empty: the host name
    backend: str = _opt("auto", choices=("auto", "onnxruntime", "tensorrt"))
    size: str = "fast"  # a key of ``sizes``, or "auto"
    sizes: Dict[str, SizeConfig] = _opt({})
    cameras: List[CameraConfig] = _opt([])
    detection: DetectionConfig = _opt(DetectionConfig())
    tracking: TrackingConfig = _opt(TrackingConfig())
    onnxruntime: OnnxRuntimeConfig = _opt(OnnxRuntimeConfig())
    tensorrt: TensorRTConfig = _opt(TensorRTConfig())
    quantization: QuantizationConfig = _opt(QuantizationConfig())
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


# Bad values are quoted in errors: bounded, so a 10 MB string or a YAML alias bomb
# (a few lines that expand to billions of items) still gives one short line.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 6, 6
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; this keeps /dev/zero or a log file from hanging us
MAX_NAME_BYTES = 256  # device, camera and topic names: they go into topics, file names and records


def _describe(value):
    try:
        return _REPR.repr(value)
    except ValueError:  # Python 3.11+ refuses to print integers of more than 4300 digits
        return "an integer of {} bits".format(value.bit_length())


def _key_name(name):
    """A mapping key as it appears in errors: one printable line."""
    text = str(name)
    return text if text.isprintable() and len(text) <= 80 else _describe(text)


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
        if isinstance(value, list):  # Union[str, List[str]]: the list form, if the field has one
            args = [a for a in args if _origin(a) is list] or args
        return _convert(args[0], value, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError("{}: expected a list, got {}".format(key, _describe(value)))
        return [_convert(tp.__args__[0], v, "{}[{}]".format(key, i)) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("{}: expected a mapping, got {}".format(key, _describe(value)))
        return {str(k): _convert(tp.__args__[1], v, "{}.{}".format(key, _key_name(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError("{}: expected true or false, got {}".format(key, _describe(value)))
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError("{}: expected {}, got {}".format(key, _type_name(tp), _describe(value)))
        # YAML's .nan and .inf are numbers; every comparison with NaN is false, so no range
        # check would catch it, and int() of either raises.
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError("{}: expected a finite number, got {}".format(key, _describe(value)))
        if tp is int and value != int(value):
            raise ConfigError("{}: expected {}, got {}".format(key, _type_name(tp), _describe(value)))
        # Values reach numpy, sqlite and C APIs, which overflow past 64 bits.
        if not -2 ** 63 < value < 2 ** 63:
            raise ConfigError("{}: expected a number of magnitude below 2**63, got {}".format(key, _describe(value)))
        return tp(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError("{}: expected a string, got {}".format(key, _describe(value)))
        text = str(value)
        # A NUL truncates paths and topics in C (or raises ValueError in open()); a lone
        # surrogate ("\udc80" in YAML) cannot be encoded for a file name, a topic or a log line.
        if "\x00" in text:
            raise ConfigError("{}: NUL characters are not allowed, got {}".format(key, _describe(text)))
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError("{}: not valid Unicode text, got {}".format(key, _describe(text)))
        return text
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
            where = "{}.{}".format(key, _key_name(name)) if key else _key_name(name)
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
    problems = env_problems(environ)
    if problems:
        raise ConfigError(problems[0])
    out = {}
    for name, raw in sorted(environ.items()):
        if not is_config_variable(name):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        try:
            value = _parse_yaml(raw, name) if raw != "" else ""
        except ConfigError:  # not YAML: the plain string (a URL, a path)
            value = raw
        node = out
        for i, part in enumerate(path[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # EDGE_AGENT_DETECTION=.nan beside EDGE_AGENT_DETECTION__CLASSES
                raise ConfigError("{} (environment): {} is also set to a value that is not a mapping".format(
                    name, ENV_PREFIX + "__".join(path[:i + 1]).upper()))
        node[path[-1]] = value
    return out


def read_yaml(path):
    """Read a YAML mapping from ``path``; errors name the file."""
    try:
        # Not a directory, FIFO or device: open() or read() of those fails late or blocks.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError("{}: is a directory, expected a YAML config file".format(path))
        if not stat.S_ISREG(mode):
            raise ConfigError("{}: not a regular file, expected a YAML config file".format(path))
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ConfigError("{}: cannot read config file: {}".format(path, getattr(e, "strerror", None) or e))
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("{}: larger than {} bytes: not a config file".format(path, MAX_CONFIG_BYTES))
    try:
        text = raw.decode("utf-8-sig")  # YAML files are UTF-8 (the locale's encoding is not)
    except UnicodeDecodeError as e:
        raise ConfigError("{}: not UTF-8 text (line {}: byte 0x{:02x})".format(
            path, raw[:e.start].count(b"\n") + 1, raw[e.start]))
    data = _parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("{}: expected a mapping at the top level, got {}".format(path, _describe(data)))
    return data


def _parse_yaml(text, where):
    """yaml.safe_load, with every failure a ConfigError naming ``where``."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = " (line {})".format(mark.line + 1) if mark is not None else ""
        raise ConfigError("{}: not valid YAML{}: {}".format(where, line, getattr(e, "problem", None) or e))
    except RecursionError:  # the parser recurses once per level: 20000 nested '[' exhaust the stack
        raise ConfigError("{}: not valid YAML: nested too deeply".format(where))
    except (ValueError, TypeError, OverflowError) as e:  # constructors: 2001-13-45, ints past 4300 digits
        raise ConfigError("{}: not valid YAML: {}".format(where, e))


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
    for name in config.sizes:
        # A size name becomes a file name (<engines_dir>/<size>.<backend>.engine); "auto" picks one.
        if not name or "/" in name or name == "auto" or len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ConfigError("sizes.{}: expected a size name without '/' (not 'auto'), got {}".format(
                _key_name(name), _describe(name)))
    _check_topic_level("device_id", config.device_id)
    _check_topic_prefix("mqtt.prefix", config.mqtt.prefix)
    _check_topic_prefix("mqtt.homeassistant_prefix", config.mqtt.homeassistant_prefix)
    seen = set()
    for i, cam in enumerate(config.cameras):
        if not cam.source:
            raise ConfigError("cameras[{}].source: a source URI is required".format(i))
        _check_topic_level("cameras[{}].id".format(i), cam.id)
        if cam.id in RESERVED_CAMERA_IDS:
            raise ConfigError("cameras[{}].id: {} is reserved ({{prefix}}/{{device}}/{} is the command or reply "
                              "topic), choose another id".format(i, _describe(cam.id), cam.id))
        if cam.id in seen:
            raise ConfigError("cameras[{}].id: duplicate camera id {}".format(i, _describe(cam.id)))
        seen.add(cam.id)
        for name, points in sorted(cam.zones.items()):
            key = "cameras[{}].zones.{}".format(i, _key_name(name))
            if not name or len(name.encode("utf-8")) > MAX_NAME_BYTES:
                raise ConfigError("{}: expected a zone name of 1 to {} bytes".format(key, MAX_NAME_BYTES))
            problem = polygon_problem(points)
            if problem:
                raise ConfigError("{}{}: {}".format(key, problem[0], problem[1]))
    t = config.tracking
    if t.low_threshold > t.high_threshold:
        raise ConfigError("tracking.low_threshold: expected a value <= tracking.high_threshold ({}), got {}".format(
            t.high_threshold, t.low_threshold))
    if config.mqtt.publish == "events" and not t.enabled:
        raise ConfigError("mqtt.publish: 'events' needs tracking.enabled: true (events come from the tracks)")
    if config.size == "auto" and not (config.auto_size.latency_budget_ms or config.auto_size.target_fps):
        raise ConfigError("auto_size: size is 'auto' but neither latency_budget_ms nor target_fps is set")
    _check_mqtt_urls(config.mqtt.url)
    if config.mqtt.tls.key and not config.mqtt.tls.cert:
        raise ConfigError("mqtt.tls.key: set without mqtt.tls.cert (the key would be ignored)")
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
        if config.output.jsonl and config.output.jsonl != "-":
            _check_writable("output.jsonl", config.output.jsonl, directory=False)
        # Only the MQTT spool writes there; a path under a file is wrong either way.
        _check_writable("state_dir", config.state_dir, directory=True, write=config.mqtt.enabled)


# {prefix}/{device}/cmd/... and .../reply/... are the remote control's (agent.control): a camera
# of that id would publish its detections among the commands.
RESERVED_CAMERA_IDS = ("cmd", "reply")


# MQTT topics are {prefix}/{device_id}/{camera id}/... . A '+' or '#' makes a topic a filter,
# which PUBLISH and the will may not use: the broker drops the connection (for the will, at
# every CONNECT) and the agent would retry forever. device_id and camera ids are one level each,
# so no '/' either. The prefix may have levels (site/edge-agent), but no empty ones (leading,
# trailing or doubled '/') and no leading '$', which brokers reserve for their own ($SYS).
def _check_topic_level(key, value):
    if not value or any(c in value for c in "/+#") or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise ConfigError("{}: expected a name of 1 to {} bytes without '/', '+', '#', got {}".format(
            key, MAX_NAME_BYTES, _describe(value)))


def _check_topic_prefix(key, value):
    if (not value or "+" in value or "#" in value or "" in value.split("/") or value.startswith("$")
            or len(value.encode("utf-8")) > MAX_NAME_BYTES):
        raise ConfigError("{}: expected topic levels joined by '/' (e.g. site/edge-agent) without '+', '#', "
                          "empty levels or a leading '$', got {}".format(key, _describe(value)))


def _check_mqtt_urls(url):
    """One URL, or a non-empty list of them sharing one scheme and user; raises ConfigError naming the index."""
    if isinstance(url, str):
        _check_mqtt_url("mqtt.url", url)
        return
    if not url:
        raise ConfigError("mqtt.url: expected a broker URL or a non-empty list of them, got an empty list")
    for i, u in enumerate(url):
        _check_mqtt_url("mqtt.url[{}]".format(i), u)
    first = urlsplit(url[0])
    for i, u in enumerate(url[1:], 1):
        parts = urlsplit(u)
        # One TLS context and one login serve every broker of the list (paho sets them once per client).
        if parts.scheme != first.scheme:
            raise ConfigError("mqtt.url[{}]: every broker in the list must use the scheme of mqtt.url[0] ({}://), "
                              "got {}".format(i, first.scheme, _describe(redact(u))))
        if parts.username != first.username:
            raise ConfigError("mqtt.url[{}]: every broker in the list must use the user of mqtt.url[0] ({}), "
                              "got {}".format(i, first.username or "none", _describe(redact(u))))


def _check_mqtt_url(key, url):
    """mqtt[s]://[user@]host[:port], port 1..65535, nothing after it; raises ConfigError."""
    shown = _describe(redact(url))
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: not a number, or outside 0..65535
    except ValueError as e:
        raise ConfigError("{}: cannot parse {}: {}".format(key, shown, e))
    if (parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or parts.path.strip("/") or parts.query
            or parts.fragment or "[" in parts.netloc or not parts.netloc.isprintable() or " " in parts.netloc):
        # IPv6 literals: the publisher splits host and port at the only ':' (not yet supported).
        raise ConfigError("{}: expected mqtt://host[:port] or mqtts://host[:port], got {}".format(key, shown))
    if port is not None and not 1 <= port <= 65535:  # 0: paho raises; 99999: retried forever
        raise ConfigError("{}: port must be in [1, 65535], got {}".format(key, shown))
    if parts.password is not None:
        # The publisher ignores it (it would be logged with the URL): refuse rather than connect without it.
        raise ConfigError("{}: a password in the URL is not used; put it in mqtt.password_file "
                          "or $EDGE_AGENT_MQTT_PASSWORD, got {}".format(key, shown))


def _check_writable(key, path, directory, write=True):
    """``path`` (a directory, else a file) exists or can be created, and (``write``) written."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        if os.path.isdir(path) != directory:
            raise ConfigError("{}: {} is {}".format(key, path, "not a directory" if directory else "a directory"))
        where = path
    else:
        where = os.path.dirname(path)
        if not directory and not os.path.isdir(where):  # files are opened, not created with their parents
            raise ConfigError("{}: directory {} does not exist".format(key, where))
        while not os.path.exists(where):  # makedirs creates the missing parents
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            raise ConfigError("{}: cannot create {}: {} is not a directory".format(key, path, where))
    if write and not os.access(where, os.W_OK):
        raise ConfigError("{}: {} is not writable".format(key, where))


def check_sources(config):
    """Parse every camera's source URI and check its files, opening nothing; raises ConfigError."""
    from .errors import SourceError
    from .sources import check_uri

    for i, cam in enumerate(config.cameras):
        try:
            check_uri(cam.source, "cameras[{}].source".format(i))
        except SourceError as e:
            raise ConfigError(str(e))


def to_dict(config):
    """The configuration as plain data (for ``check-config`` and reports)."""
    return dataclasses.asdict(config)
