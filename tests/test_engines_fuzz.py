"""Hypothesis fuzzing of the engine manifest (issue 14: hostile input, nothing crashes).

One real optimized model is built once (ONNX Runtime); each example then rewrites its
manifest with 1-3 mutations (a field removed, a field replaced by any JSON value, a
field given another value of the same type) and asks what ``build-engine --check``
(engines.artifact.status) and ``run`` (engines.artifact.artifact_for) ask. The manifest is either still
valid, or refused with one line per reason that names a mutated field; never another
exception. ``--force`` (engines.build.build(force=True)) always rebuilds a valid pair.

Example counts: 300 mutated manifests checked, 100 whole-file garbage manifests,
8 forced rebuilds (each spawns the build child). About 20 s on 2 shared cores.
"""

import json
import logging
import os
import shutil

import pytest

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from agent.engines import artifact as artifacts  # noqa: E402
from agent.engines import build as builder  # noqa: E402
from agent.engines import manifest as manifest_module  # noqa: E402
from agent.config import load_config  # noqa: E402
from conftest import MODELS  # noqa: E402

# No example database: it would be written into the shared checkout (.hypothesis/).
FUZZ = dict(deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Reasons name some fields by a label (differences() and verify_artifact's own words).
ALIASES = {"artifact_bytes": "bytes", "artifact_sha256": "sha256", "schema_version": "schema",
           "batch_requested": "batch profile", "device.gpu": "GPU", "device.compute_capability": "compute capability",
           "device.l4t": "L4T", "runtime.tensorrt": "TensorRT", "runtime.cuda": "CUDA",
           "precision.requested": "precision", "quantization_requested": "quantization",
           "quantization_requested.calibration_sha256": "calibration set"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(config, spec, artifact path, pristine manifest) of one real optimized model."""
    tmp = tmp_path_factory.mktemp("fuzz")
    demo = os.path.join(MODELS, "demo-fast.onnx")
    if os.path.isfile(demo):
        model = shutil.copy(demo, str(tmp / "model.onnx"))
    else:
        from test_engines import make_tiny_onnx

        model = make_tiny_onnx(tmp / "model.onnx")
    config = load_config(None, overrides={"sizes": {"fast": {"onnx": model}}, "engines_dir": str(tmp / "engines"),
                                          "backend": "onnxruntime"}, environ={}, check_files=False)
    spec = artifacts.spec_from_config(config, "fast", "onnxruntime")
    path, manifest, _ = builder.build(spec, progress=lambda line: None)
    return config, spec, path, manifest


def _paths(manifest):
    """Dotted paths of the top-level fields and of the fields of nested mappings."""
    out = []
    for key, value in sorted(manifest.items()):
        out.append(key)
        if isinstance(value, dict):
            out.extend("{}.{}".format(key, k) for k in sorted(value))
    return out


def _same_type(value):
    """Another value of the original's type: a wrong value that passes the shape check."""
    if isinstance(value, bool) or value is None:
        return st.just(not value)
    if isinstance(value, int):
        return st.integers()
    if isinstance(value, float):
        return st.floats()
    if isinstance(value, str):
        return st.text(max_size=70)
    if isinstance(value, list):
        return st.lists(json_values, max_size=3)
    return st.dictionaries(st.text(max_size=8), json_values, max_size=3)


@st.composite
def mutations(draw, manifest):
    """[(path, op, new value)]: 'remove', 'replace' (any JSON) or 'retype' (same type, other value)."""
    out = []
    for path in draw(st.permutations(_paths(manifest)))[:draw(st.integers(1, 3))]:
        parent, _, key = path.rpartition(".")
        original = manifest[parent][key] if parent else manifest[key]
        op = draw(st.sampled_from(["remove", "replace", "retype"]))
        value = None if op == "remove" else draw(json_values if op == "replace" else _same_type(original))
        out.append((path, op, value))
    return out


def _apply(manifest, muts):
    m = json.loads(json.dumps(manifest))
    for path, op, value in muts:
        parent, _, key = path.rpartition(".")
        container = m.get(parent) if parent else m
        if not isinstance(container, dict):  # the parent was replaced by an earlier mutation
            continue
        if op == "remove":
            container.pop(key, None)
        else:
            container[key] = value
    return m


def _names(path, manifest, value):
    """The words a reason may use for ``path``: its name, its label, its sub-fields'."""
    names = {path.rpartition(".")[2], ALIASES.get(path)}
    names.update(alias for p, alias in ALIASES.items() if p.startswith(path + "."))
    for d in (manifest.get(path), value):
        if isinstance(d, dict):
            names.update(d)
            names.update(ALIASES.get("{}.{}".format(path, k)) for k in d)
    return {n for n in names if n}


def _write(path, text):
    with open(artifacts.artifact_paths(os.path.dirname(path), "fast", "onnxruntime")[1], "w") as f:
        f.write(text)


def _check(config, spec, path):
    """What --check and run see; returns the reasons (empty when valid)."""
    _, manifest, reasons = artifacts.status(spec)
    assert (manifest is None) == bool(reasons)
    for r in reasons:
        assert "\n" not in r and r.strip(), reasons
    logging.disable(logging.WARNING)  # artifact_for warns once per invalid artifact: expected here
    try:
        got, got_manifest = artifacts.artifact_for(config, "fast", "onnxruntime")
    finally:
        logging.disable(logging.NOTSET)
    assert (got, got_manifest is None) == ((spec.onnx, True) if reasons else (path, False))
    return reasons


@settings(max_examples=300, **FUZZ)
@given(data=st.data())
def test_mutated_manifest_is_valid_or_one_line_naming_the_field(built, data):
    config, spec, path, pristine = built
    muts = data.draw(mutations(pristine))
    _write(path, json.dumps(_apply(pristine, muts)))
    reasons = _check(config, spec, path)
    if reasons:
        text = "; ".join(reasons)
        names = set().union(*(_names(p, pristine, v) for p, _, v in muts))
        assert any(n in text for n in names), (muts, reasons)
    for p, op, value in muts:  # a removed or retyped field the agent reads is never accepted
        parent, _, key = p.rpartition(".")
        shape = {f: (kind, required) for f, kind, required in manifest_module._SHAPE}
        if p in shape and not any(q == parent for q, _, _ in muts):
            kind, required = shape[p]
            wrong_type = op == "replace" and (value is not None or not kind.endswith("or null")) and (
                isinstance(value, bool) or not isinstance(value, manifest_module._KINDS[kind.split(" or ")[0]]))
            if (op == "remove" and required) or wrong_type:
                assert reasons, muts


@settings(max_examples=100, **FUZZ)
@given(garbage=json_values.map(json.dumps) | st.text(max_size=40) | st.binary(max_size=40).map(
    lambda b: b.decode("latin-1")))
def test_garbage_manifest_file_is_one_line(built, garbage):
    config, spec, path, _ = built
    _write(path, garbage)
    assert _check(config, spec, path)


@settings(max_examples=8, **FUZZ)
@given(data=st.data())
def test_force_always_rebuilds_over_a_mutated_manifest(built, data):
    config, spec, path, pristine = built
    _write(path, json.dumps(_apply(pristine, data.draw(mutations(pristine)))))
    _, manifest, rebuilt = builder.build(spec, progress=lambda line: None, force=True)
    assert rebuilt and artifacts.verify_artifact(path) == manifest
    assert manifest_module.manifest_problem(manifest) is None
