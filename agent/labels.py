"""Class names of a model: from a labels file, or from its metadata as Ultralytics writes it."""

import ast
import json

from .errors import ModelError


def class_names(metadata, labels_path=None):
    """{class id: name}; ``labels_path`` (one name a line) wins over metadata ``names``."""
    if labels_path:
        try:
            with open(labels_path) as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise ModelError("{}: cannot read labels file: {}".format(labels_path, e.strerror))
        return dict(enumerate(names))
    raw = (metadata or {}).get("names")
    if not raw:
        return {}
    # Names are cosmetic: metadata we cannot read means numeric labels, never a crash.
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            return {}
    try:
        if isinstance(value, dict):
            return {int(k): str(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return dict(enumerate(str(v) for v in value))
    except (TypeError, ValueError, OverflowError):
        pass
    return {}
