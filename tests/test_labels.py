"""Class names from a labels file or the ONNX metadata; unreadable metadata means numeric labels."""

import pytest

from agent.labels import class_names


@pytest.mark.parametrize("raw, expected", [
    ("{0: 'person', 1: 'car'}", {0: "person", 1: "car"}),  # as Ultralytics writes it
    ('["person", "car"]', {0: "person", 1: "car"}),
    ("{'a': 'person'}", {}),  # non-integer ids
    ("{1.5: 'x'}", {1: "x"}),
    ("{float('inf'): 'x'}", {}),
    ("[" * 100000, {}),  # nesting no parser survives
    ("not a list", {}),
    ("", {}),
])
def test_metadata_names_never_crash(raw, expected):
    assert class_names({"names": raw}) == expected
