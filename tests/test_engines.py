"""agent.engines end to end on the real ONNX Runtime backend: build, cache, rebuild, check, bad inputs."""

import ctypes
import errno
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from conftest import MODELS, run_cli

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from agent.engines import artifact as artifacts  # noqa: E402
from agent.engines import build as builder  # noqa: E402
from agent.engines import files  # noqa: E402
from agent.config import load_config  # noqa: E402
from agent.errors import BackendUnavailable, EngineError, ModelError  # noqa: E402


def make_tiny_onnx(path, nc=2, seed=0):
    """A Conv + Sigmoid detector-shaped model: images [1,3,64,64] -> output0 [1, 4+nc, 64]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(seed)
    c = 4 + nc
    inits = [numpy_helper.from_array(rng.randn(c, 3, 8, 8).astype(np.float32) * 0.05, "w"),
             numpy_helper.from_array(rng.randn(c).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0, c, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["conv"], kernel_shape=[8, 8], strides=[8, 8]),
             helper.make_node("Reshape", ["conv", "shape"], ["flat"]),
             helper.make_node("Sigmoid", ["flat"], ["output0"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, c, 64])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "names", repr({i: "class{}".format(i) for i in range(nc)})
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture
def model(tmp_path):
    """A real ONNX detector in tmp: the demo model if committed, else a tiny generated one."""
    demo = os.path.join(MODELS, "demo-fast.onnx")
    dst = tmp_path / "model.onnx"
    if os.path.isfile(demo):
        shutil.copy(demo, str(dst))
        return str(dst)
    return make_tiny_onnx(dst)


def change_onnx(path):
    """Same graph, different bytes (a metadata entry), so the sha256 changes."""
    m = onnx.load(path)
    entry = m.metadata_props.add()
    entry.key, entry.value = "edited", "yes"
    onnx.save(m, path)


def write_config(tmp_path, model_path):
    path = tmp_path / "config.yaml"
    path.write_text("sizes:\n  fast: {{onnx: {}}}\nengines_dir: {}\nbackend: onnxruntime\n".format(
        model_path, tmp_path / "engines"))
    return str(path)


def config_for(tmp_path, model_path, **extra):
    data = {"sizes": {"fast": {"onnx": model_path}}, "engines_dir": str(tmp_path / "engines"), "backend": "onnxruntime"}
    data.update(extra)
    return load_config(None, overrides=data, environ={}, check_files=False)


def spec_for(tmp_path, model_path):
    return artifacts.spec_from_config(config_for(tmp_path, model_path), "fast", "onnxruntime")


def manifest_of(artifact):
    return artifact[: -len(".onnx")] + ".manifest.json"


def snapshot(directory):
    """{name: bytes} of every file in ``directory`` (temp files included)."""
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def test_cli_build_up_to_date_rebuild_and_check(tmp_path, model):
    cfg = write_config(tmp_path, model)
    first = run_cli(["build-engine", "--config", cfg, "--size", "fast"])
    assert first.returncode == 0, first.stderr
    artifact = str(tmp_path / "engines" / "fast.onnxruntime.onnx")
    assert "fast: built" in first.stdout
    assert "validating" in first.stderr and "optimizing" in first.stderr  # progress relayed from the child
    assert os.path.isfile(artifact) and os.path.isfile(manifest_of(artifact))

    again = run_cli(["build-engine", "--config", cfg, "--size", "fast"])
    assert again.returncode == 0
    assert again.stdout.strip() == "fast: up to date ({})".format(artifact)
    assert "building" not in again.stderr

    ok = run_cli(["build-engine", "--config", cfg, "--size", "fast", "--check"])
    assert ok.returncode == 0 and ok.stdout.startswith("fast: valid")

    old_sha = files.sha256_file(model)
    change_onnx(model)
    stale = run_cli(["build-engine", "--config", cfg, "--size", "fast", "--check"])
    assert stale.returncode == 1
    assert "onnx_sha256 changed ({}…→{}…)".format(old_sha[:8], files.sha256_file(model)[:8]) in stale.stdout
    assert "fix: edge-agent build-engine --size fast" in stale.stdout

    rebuilt = run_cli(["build-engine", "--config", cfg, "--size", "fast"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "onnx_sha256 changed" in rebuilt.stderr
    manifest = json.load(open(manifest_of(artifact)))
    assert manifest["onnx_sha256"] == files.sha256_file(model)


def test_manifest_records_what_makes_it_valid(tmp_path, model):
    path, manifest, built = builder.build(spec_for(tmp_path, model), progress=lambda line: None)
    assert built
    assert manifest["schema_version"] == artifacts.MANIFEST_SCHEMA
    assert manifest["onnx_path"] == os.path.abspath(model)
    assert manifest["runtime"]["onnxruntime"] == ort.__version__
    assert manifest["runtime"]["graph_optimization_level"] == "ORT_ENABLE_EXTENDED"
    assert manifest["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert manifest["precision"] == {"requested": "fp32", "built": "fp32"}
    assert manifest["artifact_sha256"] == files.sha256_file(path)
    assert manifest["inputs"][0]["shape"][1] == 3
    assert manifest["onnx_metadata"] == {p.key: p.value for p in onnx.load(model).metadata_props}
    for key in ("agent_version", "build_time_s", "builder_flags", "dla_core", "calib_cache_sha256", "profile", "device"):
        assert key in manifest
    assert artifacts.verify_artifact(path) == manifest


def test_artifact_for_loads_the_optimized_model(tmp_path, model):
    config = config_for(tmp_path, model)
    path, manifest = artifacts.artifact_for(config, "fast", "onnxruntime")
    assert (path, manifest) == (model, None)  # nothing built yet: the ONNX itself

    builder.build(artifacts.spec_from_config(config, "fast", "onnxruntime"), progress=lambda line: None)
    path, manifest = artifacts.artifact_for(config, "fast", "onnxruntime")
    assert path.endswith("fast.onnxruntime.onnx") and manifest["artifact_sha256"] == files.sha256_file(path)

    optimized = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    original = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    inp = optimized.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    blob = np.random.RandomState(0).rand(*shape).astype(np.float32)
    got = optimized.run(None, {inp.name: blob})[0]
    want = original.run(None, {inp.name: blob})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_artifact_for_tensorrt_needs_its_runtime(tmp_path, model):
    with pytest.raises((BackendUnavailable, EngineError)) as info:
        artifacts.artifact_for(config_for(tmp_path, model), "fast", "tensorrt")
    assert "tensorrt" in str(info.value).lower()


def test_bad_onnx_inputs_fail_in_one_line_and_keep_the_artifact(tmp_path, model):
    cfg = write_config(tmp_path, model)
    assert run_cli(["build-engine", "--config", cfg, "--size", "fast"]).returncode == 0
    before = snapshot(str(tmp_path / "engines"))
    data = open(model, "rb").read()
    bad = {
        "missing.onnx": None,
        "text.onnx": b"this is not a model\n",
        "truncated.onnx": data[: len(data) // 2],
        "random.onnx": np.random.RandomState(1).bytes(4096),
    }
    for name, content in bad.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        res = run_cli(["build-engine", "--config", cfg, "--size", "fast", "--onnx", str(path), "--force"])
        assert res.returncode == 1, (name, res.stdout, res.stderr)
        error_lines = [l for l in res.stderr.splitlines() if l.startswith("edge-agent: error:")]
        assert len(error_lines) == 1 and str(path) in error_lines[0], res.stderr
        assert "Traceback" not in res.stderr
        assert snapshot(str(tmp_path / "engines")) == before, name  # untouched, no temp file left


@pytest.mark.parametrize("damage, reason", [("truncate", "truncated or modified"), ("flip", "sha256 mismatch")])
def test_damaged_artifact_is_refused_and_rebuilt(tmp_path, model, damage, reason):
    spec = spec_for(tmp_path, model)
    path, _, _ = builder.build(spec, progress=lambda line: None)
    data = bytearray(open(path, "rb").read())
    if damage == "truncate":
        data = data[: len(data) - 100]
    else:
        data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(EngineError) as info:
        artifacts.verify_artifact(path)
    message = str(info.value)
    assert reason in message and path in message and "edge-agent build-engine --size fast" in message
    assert "\n" not in message
    res = run_cli(["build-engine", "--config", write_config(tmp_path, model), "--size", "fast", "--check"])
    assert res.returncode == 1 and reason in res.stdout
    _, manifest, built = builder.build(spec, progress=lambda line: None)
    assert built and artifacts.verify_artifact(path) == manifest


def test_manifest_from_another_runtime_version(tmp_path, model):
    path, _, _ = builder.build(spec_for(tmp_path, model), progress=lambda line: None)
    manifest_path = manifest_of(path)
    manifest = json.load(open(manifest_path))
    manifest["runtime"]["onnxruntime"] = "1.0.0"
    open(manifest_path, "w").write(json.dumps(manifest))
    with pytest.raises(EngineError) as info:
        artifacts.verify_artifact(path)
    assert "onnxruntime 1.0.0 → {}".format(ort.__version__) in str(info.value)
    assert "run: edge-agent build-engine --size fast" in str(info.value)
    _, _, reasons = artifacts.status(spec_for(tmp_path, model))
    assert any("onnxruntime 1.0.0" in r for r in reasons)


def test_differences_name_the_field_and_change():
    old = {"runtime": {"tensorrt": "8.2.1", "cuda": "10.2"}, "device": {"gpu": "Xavier", "compute_capability": "7.2"},
           "onnx_sha256": "3f2a" * 16, "precision": {"requested": "fp16"}}
    new = {"runtime": {"tensorrt": "8.5.2", "cuda": "11.4"}, "device": {"gpu": "Xavier", "compute_capability": "7.2"},
           "onnx_sha256": "9b1c" * 16, "precision": {"requested": "int8"}}
    diff = artifacts.differences(old, new)
    assert "TensorRT 8.2.1 → 8.5.2" in diff and "CUDA 10.2 → 11.4" in diff
    assert "onnx_sha256 changed (3f2a3f2a…→9b1c9b1c…)" in diff and "precision fp16 → int8" in diff
    assert not any("GPU" in d for d in diff)


def test_atomic_write_enospc_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def full_disk(f, data):
        f.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(EngineError, match="no space left on device"):
        files.atomic_write(str(target), b"x" * 1000, writer=full_disk)
    assert target.read_bytes() == b"old" and os.listdir(str(tmp_path)) == ["file.bin"]
    files.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new" and os.listdir(str(tmp_path)) == ["file.bin"]


def test_build_enospc_on_manifest_keeps_previous_pair(tmp_path, model):
    spec = spec_for(tmp_path, model)
    builder.build(spec, progress=lambda line: None)
    before = snapshot(spec.engines_dir)

    def full_disk(f, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(EngineError, match="no space left on device"):
        builder.build(spec, progress=lambda line: None, force=True, writer=full_disk)
    assert snapshot(spec.engines_dir) == before


def test_build_on_a_full_tmpfs_keeps_previous_pair(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.call(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                            stderr=subprocess.DEVNULL) != 0:
        pytest.skip("cannot mount a tmpfs here (ENOSPC is covered by the injected writer tests)")
    try:
        model = make_tiny_onnx(tmp_path / "tiny.onnx")
        config = config_for(tmp_path, model, engines_dir=str(mnt))
        spec = artifacts.spec_from_config(config, "fast", "onnxruntime")
        builder.build(spec, progress=lambda line: None)
        before = snapshot(str(mnt))
        fd = os.open(str(mnt / "filler"), os.O_WRONLY | os.O_CREAT)
        try:  # fill the disk, then leave less room than one artifact
            while True:
                os.write(fd, b"\0" * 1024)
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(str(mnt / "filler"), os.path.getsize(str(mnt / "filler")) - 2048)
        change_onnx(model)
        with pytest.raises(EngineError) as info:
            builder.build(spec, progress=lambda line: None)
        assert "cannot write" in str(info.value) or "does not load back" in str(info.value), str(info.value)
        assert str(mnt) in str(info.value)
        os.remove(str(mnt / "filler"))
        assert snapshot(str(mnt)) == before
    finally:
        subprocess.call(["umount", str(mnt)])


def crash_while_parsing(job, emit):
    """A stand-in for a parser that segfaults (onnx/onnx-tensorrt#1032): a real SIGSEGV."""
    emit("parsing", "parsing {}".format(job["onnx"]))
    ctypes.string_at(0)


def test_segfault_in_child_is_a_clean_error():
    lines = []
    with pytest.raises(EngineError) as info:
        builder.run_builder(crash_while_parsing, {"onnx": "bad.onnx"}, lines.append, what="bad.onnx")
    assert str(info.value) == "builder process died with signal 11 (SIGSEGV) while parsing bad.onnx"
    assert any("parsing bad.onnx" in line for line in lines)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: cannot compile the kernels")
def test_kernels_compiled_beside_the_engine_once(tmp_path):
    """build-engine's kernel step: cubins for the manifest's GPU where the TensorRT backend looks first."""
    from agent.kernels import SOURCES, build as kernel_build

    lines = []
    manifest = {"device": {"gpu": "a test GPU", "compute_capability": "7.5"}}
    paths = builder.compile_kernels_for(str(tmp_path), manifest, progress=lines.append)
    assert sorted(paths) == sorted(s[:-3] for s in SOURCES)
    assert all(p.endswith(".cubin") and os.path.dirname(p) == str(tmp_path / "kernels") for p in paths.values())
    assert len(lines) == 1 and "compute capability 7.5" in lines[0]
    # What TensorRTBackend.device_engine asks for, without compiling:
    assert kernel_build.load_kernels((7, 5), cache_dir=str(tmp_path / "kernels"), compile_if_missing=False) == paths
    mtimes = {p: os.path.getmtime(p) for p in paths.values()}
    assert builder.compile_kernels_for(str(tmp_path), manifest, progress=lines.append) == paths
    assert len(lines) == 1 and {p: os.path.getmtime(p) for p in paths.values()} == mtimes  # not rebuilt


def test_kernels_step_without_nvcc_or_gpu_reports_and_goes_on(tmp_path):
    lines = []
    manifest = {"device": {"compute_capability": "7.2"}}
    assert builder.compile_kernels_for(str(tmp_path), manifest, progress=lines.append,
                                       nvcc=str(tmp_path / "no-nvcc")) is None
    assert lines[-1].startswith("warning: CUDA kernels not compiled") and "no-nvcc" in lines[-1]
    assert builder.compile_kernels_for(str(tmp_path), {"device": {}}, progress=lines.append) is None


# --- hostile models and manifests (issue 14) ------------------------------------------------


def make_non_detector(path, kind):
    """An ONNX that is valid but no detector the agent can run; ``kind`` names what is wrong."""
    from onnx import TensorProto, helper, numpy_helper

    image = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    inits, inputs = [], [image]
    if kind == "identity":  # the image straight back: [1,3,64,64]
        nodes, out = [helper.make_node("Identity", ["images"], ["output0"])], [1, 3, 64, 64]
    elif kind == "classifier":  # ImageNet-style logits [1,1000]
        inits = [numpy_helper.from_array(np.ones((3, 1000), np.float32), "w")]
        nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pool"]),
                 helper.make_node("Flatten", ["pool"], ["flat"]),
                 helper.make_node("MatMul", ["flat", "w"], ["output0"])]
        out = [1, 1000]
    else:  # "dynamic": [1,6,N] with N unknown until run; "two_inputs": a detector with a second input
        inits = [numpy_helper.from_array(np.ones((6, 3, 8, 8), np.float32), "w"),
                 numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")]
        nodes = [helper.make_node("Conv", ["images", "w"], ["conv"], kernel_shape=[8, 8], strides=[8, 8]),
                 helper.make_node("Reshape", ["conv", "shape"], ["flat"])]
        if kind == "dynamic":
            inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "height", "width"])]
            nodes.append(helper.make_node("Sigmoid", ["flat"], ["output0"]))
            out = [1, 6, "anchors"]
        else:
            inputs.append(helper.make_tensor_value_info("scale", TensorProto.FLOAT, [1, 1, 1]))
            nodes.append(helper.make_node("Mul", ["flat", "scale"], ["output0"]))
            out = [1, 6, 64]
    graph = helper.make_graph(nodes, kind, inputs, [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.mark.parametrize("kind, why", [
    ("identity", "cannot interpret model outputs: output0 [1, 3, 64, 64]"),
    ("classifier", "cannot interpret model outputs: output0 [1, 1000]"),
    ("dynamic", "dynamic dimensions"),
    ("two_inputs", "expected one NCHW image input with 3 channels, found images [1, 3, 64, 64], scale [1, 1, 1]"),
])
def test_build_engine_refuses_a_non_detector_and_keeps_the_artifact(tmp_path, model, kind, why):
    """The old artifact and manifest stay byte-identical; one line names the config key and the file."""
    assert run_cli(["build-engine", "--config", write_config(tmp_path, model), "--size", "fast"]).returncode == 0
    before = snapshot(str(tmp_path / "engines"))
    bad = make_non_detector(tmp_path / "bad.onnx", kind)
    cfg = tmp_path / "bad.yaml"  # the same engines dir, sizes.fast.onnx naming the bad model
    cfg.write_text("sizes:\n  fast: {{onnx: {}}}\nengines_dir: {}\nbackend: onnxruntime\n".format(
        bad, tmp_path / "engines"))
    cfg = str(cfg)
    for args, key in ((["--config", cfg], "sizes.fast.onnx"),
                      (["--config", write_config(tmp_path, model), "--onnx", bad, "--force"], "--onnx")):
        res = run_cli(["build-engine", "--size", "fast"] + args)
        assert res.returncode == 1, (res.stdout, res.stderr)
        assert "Traceback" not in res.stderr
        errors = [line for line in res.stderr.splitlines() if line.startswith("edge-agent: error:")]
        assert errors == [line for line in res.stderr.splitlines() if "error" in line.lower()], res.stderr
        assert len(errors) == 1 and errors[0].startswith(
            "edge-agent: error: {}: {}: not a detector the agent can run: ".format(key, bad)), res.stderr
        assert why in errors[0]
        assert snapshot(str(tmp_path / "engines")) == before  # untouched, no temp file left


def _edit_manifest(artifact, edit):
    path = manifest_of(artifact)
    manifest = json.load(open(path))
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


@pytest.mark.parametrize("field, value, reason", [
    ("precision", "fp32", "precision: expected a mapping, got 'fp32'"),
    ("runtime", None, "runtime: expected a mapping, got None"),
    ("artifact_bytes", "123", "artifact_bytes: expected an integer, got '123'"),
    ("backend", "tensorrt", "backend: expected 'onnxruntime', got 'tensorrt'"),
    ("onnx_sha256", None, "onnx_sha256: missing"),
])
def test_wrong_typed_manifest_field_is_one_line_and_rebuilt(tmp_path, model, field, value, reason):
    """--check, the suggested fix command and the runtime lookup name the field; no AttributeError."""
    cfg = write_config(tmp_path, model)
    artifact = str(tmp_path / "engines" / "fast.onnxruntime.onnx")
    assert run_cli(["build-engine", "--config", cfg, "--size", "fast"]).returncode == 0

    def edit(m):
        if value is None and field == "onnx_sha256":
            del m[field]
        else:
            m[field] = value
    _edit_manifest(artifact, edit)
    check = run_cli(["build-engine", "--config", cfg, "--size", "fast", "--check"])
    assert check.returncode == 1 and "Traceback" not in check.stderr, check.stderr
    assert check.stdout.strip() == "fast: not valid ({}): fast.onnxruntime.manifest.json: {}; fix: {}".format(
        artifact, reason, artifacts.fix_command("fast"))
    # What `run` asks for: the source ONNX, with a warning naming the field.
    with pytest.raises(EngineError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        artifacts.verify_artifact(artifact)
    assert artifacts.artifact_for(config_for(tmp_path, model), "fast", "onnxruntime") == (model, None)
    fix = run_cli(artifacts.fix_command("fast").split()[1:] + ["--config", cfg])
    assert fix.returncode == 0 and "Traceback" not in fix.stderr, fix.stderr
    assert "fast: built" in fix.stdout and reason in fix.stderr
    assert artifacts.verify_artifact(artifact)["precision"] == {"requested": "fp32", "built": "fp32"}


def test_tampered_optimized_model_is_never_loaded(tmp_path, model, caplog):
    """onnxruntime: a tampered artifact is skipped with a WARNING naming it and the sha256 mismatch."""
    spec = spec_for(tmp_path, model)
    path, _, _ = builder.build(spec, progress=lambda line: None)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with caplog.at_level("INFO", logger="edge_agent.engines"):
        assert artifacts.artifact_for(config_for(tmp_path, model), "fast", "onnxruntime") == (model, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and path in warnings[0] and "sha256 mismatch" in warnings[0], caplog.text
    assert "run: edge-agent build-engine --size fast" in warnings[0]
    caplog.clear()
    os.remove(path)  # never built: the plain ONNX, quietly
    with caplog.at_level("INFO", logger="edge_agent.engines"):
        assert artifacts.artifact_for(config_for(tmp_path, model), "fast", "onnxruntime") == (model, None)
    assert [r.levelname for r in caplog.records] == ["INFO"]


def test_a_load_hashes_the_artifact_once_and_asks_the_environment_once(tmp_path, monkeypatch):
    """artifact_for (status) then the backend's verify_artifact: one sha256 of the artifact, one environment."""
    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    config = config_for(tmp_path, model)
    builder.build(artifacts.spec_from_config(config, "fast", "onnxruntime"), progress=lambda line: None)
    hashed, asked = [], []
    real_hash, real_ask = artifacts.sha256_file, artifacts._ask_environment
    monkeypatch.setattr(artifacts, "sha256_file", lambda path: hashed.append(path) or real_hash(path))
    monkeypatch.setattr(artifacts, "_ask_environment", lambda backend: asked.append(backend) or real_ask(backend))
    monkeypatch.setattr(artifacts, "_digests", {})
    monkeypatch.setattr(artifacts, "_environments", {})
    path, manifest = artifacts.artifact_for(config, "fast", "onnxruntime")
    assert artifacts.verify_artifact(path) == manifest
    assert hashed.count(path) == 1 and asked == ["onnxruntime"]
    stat = os.stat(path)
    with open(path, "r+b") as f:  # same size, same mtime: the remembered digest is keyed by ctime too
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(EngineError, match="sha256 mismatch"):
        artifacts.verify_artifact(path)


def test_the_runtime_builds_in_a_child(tmp_path):
    """What artifact_for runs for tensorrt.auto_build, here for onnxruntime: the build side in a child."""
    from agent.engines.child import run_in_child

    model = make_tiny_onnx(tmp_path / "tiny.onnx")
    spec = artifacts.spec_from_config(config_for(tmp_path, model), "fast", "onnxruntime")
    lines = []
    path, manifest = run_in_child("agent.engines.build:build_for_runtime", spec._asdict(), lines.append)
    assert artifacts.verify_artifact(path) == manifest
    assert any("building onnxruntime artifact" in line for line in lines), lines
