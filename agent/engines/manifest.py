"""The manifest beside each artifact: its schema, its shape check and how two manifests differ.

Pure data functions: no file is hashed and no runtime imported here (see artifact.py).
"""

import json
from typing import Any, Dict

from ..errors import EngineError

MANIFEST_SCHEMA = 1


# Fields whose change invalidates an artifact: (label, getter, short-hash?).
_COMPARED = [
    ("schema_version", lambda m: m.get("schema_version"), False),
    ("onnx_sha256", lambda m: m.get("onnx_sha256"), True),
    ("TensorRT", lambda m: m.get("runtime", {}).get("tensorrt"), False),
    ("CUDA", lambda m: m.get("runtime", {}).get("cuda"), False),
    ("onnxruntime", lambda m: m.get("runtime", {}).get("onnxruntime"), False),
    ("providers", lambda m: m.get("runtime", {}).get("providers"), False),
    ("graph_optimization_level", lambda m: m.get("runtime", {}).get("graph_optimization_level"), False),
    ("GPU", lambda m: m.get("device", {}).get("gpu"), False),
    ("compute capability", lambda m: m.get("device", {}).get("compute_capability"), False),
    ("L4T", lambda m: m.get("device", {}).get("l4t"), False),
    ("precision", lambda m: m.get("precision", {}).get("requested"), False),
    ("batch profile", lambda m: m.get("batch_requested"), False),
    ("dla_core", lambda m: m.get("dla_core"), False),
    ("workspace_mb", lambda m: m.get("workspace_mb"), False),
    ("calib_cache_sha256", lambda m: m.get("calib_cache_sha256"), True),
    ("quantization", lambda m: _recipe(m.get("quantization_requested")), False),
    ("calibration set", lambda m: _calibration(m.get("quantization_requested")), True),
]


def _recipe(requested):
    """The INT8 recipe requested, without the calibration hash (compared on its own)."""
    if not isinstance(requested, dict):
        return requested
    keep = requested.get("keep_float")
    keep = ",".join(shown(k) for k in keep) if isinstance(keep, list) else shown(keep)
    return "{} on {} images, float: {}".format(shown(requested.get("method")), shown(requested.get("calib_images")),
                                                keep or "none")


def _calibration(requested):
    return requested.get("calibration_sha256") if isinstance(requested, dict) else None
ENVIRONMENT_LABELS = ("TensorRT", "CUDA", "onnxruntime", "providers", "GPU", "compute capability", "L4T")


def shown(value, limit=80, quote=False):
    """``value`` for a one-line message: a printable string as is (or quoted), else its repr; clipped.

    Manifests can be hand-edited or corrupt: a newline or a megabyte in a field must not
    turn the one-line reason into many.
    """
    text = value if isinstance(value, str) and value.isprintable() and not quote else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def short(value):
    """A sha256 for a message: its first 8 digits."""
    return shown(value, 9)


def portable(manifest):
    """Whether the artifact is plain ONNX that any ONNX Runtime loads: the INT8 QDQ model (not a graph
    optimized by, and for, one ONNX Runtime version), so that version is not compared."""
    precision = manifest.get("precision")
    return manifest.get("backend") == "onnxruntime" and isinstance(precision, dict) and \
        precision.get("built") == "int8"


def differences(old, new, labels=None):
    """Human-readable reasons why manifest ``old`` does not match ``new``: ['TensorRT 8.2.1 → 8.5.2']."""
    out = []
    for label, get, hashed in _COMPARED:
        if labels is not None and label not in labels:
            continue
        if label == "onnxruntime" and portable(old):
            continue  # quantized on a newer machine (onnxruntime >= 1.11), run on JetPack 4's 1.10
        a, b = get(old), get(new)
        if a == b:
            continue
        if hashed:
            out.append("{} changed ({}→{})".format(label, short(a), short(b)))
        else:
            out.append("{} {} → {}".format(label, shown(a), shown(b)))
    return out


def read_manifest(manifest_path):
    """The manifest as a dict; raises EngineError when missing or unreadable."""
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, IOError):
        raise EngineError("{}: manifest missing".format(manifest_path))
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise EngineError("{}: manifest is not valid JSON ({})".format(manifest_path, e))
    if not isinstance(manifest, dict):
        raise EngineError("{}: manifest is not a JSON object".format(manifest_path))
    return manifest


# The manifest's shape: (field, expected kind, required). Code indexes into these fields
# (precision.built, runtime.*, device.*, onnx_metadata): a hand-edited or corrupt manifest
# must be a named reason to rebuild, not an AttributeError. Parents come before children.
_SHAPE = (
    ("backend", "a string", True), ("artifact_bytes", "an integer", True), ("artifact_sha256", "a string", True),
    ("onnx_sha256", "a string", True), ("runtime", "a mapping", True), ("device", "a mapping", True),
    ("precision", "a mapping", True), ("precision.requested", "a string", True),
    ("precision.built", "a string", True), ("onnx_metadata", "a mapping", False), ("inputs", "a list", False),
    ("outputs", "a list", False), ("builder_flags", "a list", False), ("size", "a string", False),
    ("batch_requested", "a list or null", False), ("dla_core", "an integer or null", False),
    ("workspace_mb", "an integer or null", False), ("calib_cache_sha256", "a string or null", False),
    ("build_time_s", "a number or null", False), ("built_at", "a string or null", False),
    ("quantization_requested", "a mapping or null", False), ("quantization", "a mapping or null", False),
    ("accuracy", "a mapping or null", False),
)
_KINDS = {"a string": str, "an integer": int, "a number": (int, float), "a mapping": dict, "a list": list}  # type: Dict[str, Any]


def manifest_problem(manifest):
    """None if ``manifest`` has the shape build() writes, else one line: 'precision: expected a mapping, got 'fp32''."""
    for field, kind, required in _SHAPE:
        parent, _, key = field.rpartition(".")
        container = manifest[parent] if parent else manifest
        if key not in container:
            if required:
                return "{}: missing".format(field)
            continue
        value = container[key]
        if value is None and kind.endswith(" or null"):
            continue
        if isinstance(value, bool) or not isinstance(value, _KINDS[kind.split(" or ")[0]]):
            return "{}: expected {}, got {}".format(field, kind, shown(value, quote=True))
    return None
