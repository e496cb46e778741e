"""A real TensorRT engine for the demo model, against ONNX Runtime (needs tensorrt, pycuda, a GPU)."""

import os
import shutil

import numpy as np
import pytest

from conftest import MODELS

pytestmark = pytest.mark.gpu


def _gpu_or_skip():
    try:
        import tensorrt
    except ImportError:
        pytest.skip("tensorrt is not installed")
    if not hasattr(tensorrt, "Builder"):
        pytest.skip("only tensorrt type stubs are installed, not TensorRT")
    try:
        import pycuda.driver as cuda
    except ImportError:
        pytest.skip("pycuda is not installed")
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            pytest.skip("no CUDA device")
    except cuda.Error as e:
        pytest.skip("no usable CUDA device ({})".format(e))
    return cuda


@pytest.fixture
def trt_config(tmp_path):
    cuda = _gpu_or_skip()
    from agent.config import load_config

    demo = os.path.join(MODELS, "demo-fast.onnx")
    model = str(tmp_path / "model.onnx")
    if os.path.isfile(demo):
        shutil.copy(demo, model)
    else:
        from test_engines import make_tiny_onnx

        make_tiny_onnx(model)
    config = load_config(None, environ={}, check_files=False, overrides={
        "sizes": {"fast": {"onnx": model}}, "engines_dir": str(tmp_path / "engines"), "backend": "tensorrt",
        "tensorrt": {"precision": "fp16", "workspace_mb": 256}})
    return cuda, config, model


def test_engine_matches_onnxruntime_within_fp16_tolerance(trt_config):
    cuda, config, model = trt_config
    ort = pytest.importorskip("onnxruntime")
    from agent.engines import artifact as artifacts, build as builder
    from agent.backends.tensorrt import TensorRTBackend

    spec = artifacts.spec_from_config(config, "fast", "tensorrt")
    lines = []
    path, manifest, built = builder.build(spec, progress=lines.append)
    assert built and os.path.isfile(path)
    assert any("parsing" in line for line in lines) and any("building the fp16 engine" in line for line in lines)
    assert manifest["precision"]["built"] in ("fp16", "fp32")  # fp32 only if fp16 is not fast: then it raised
    assert manifest["runtime"]["tensorrt"] and manifest["device"]["gpu"] and manifest["device"]["compute_capability"]
    assert any(n.startswith("timing-cache.trt-") for n in os.listdir(spec.engines_dir))
    assert builder.build(spec, progress=lines.append)[2] is False  # up to date
    assert artifacts.artifact_for(config, "fast", "tensorrt")[0] == path

    backend = TensorRTBackend(path, config)
    try:
        assert backend.metadata == manifest["onnx_metadata"]  # class names survive into the engine
        shape = backend.inputs[0].shape
        blob = np.random.RandomState(0).rand(*shape).astype(np.float32)
        got = backend.infer(blob)
        again = backend.infer(blob)
    finally:
        backend.close()
    assert cuda.Context.get_current() is None  # the context stack is empty after close()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: blob})))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name].reshape(want[name].shape), want[name], rtol=2e-2, atol=2e-2)
        np.testing.assert_array_equal(got[name], again[name])


def test_tampered_engine_is_refused_before_deserializing(trt_config):
    _, config, _ = trt_config
    from agent.engines import artifact as artifacts, build as builder
    from agent.backends.tensorrt import TensorRTBackend
    from agent.errors import EngineError

    path, _, _ = builder.build(artifacts.spec_from_config(config, "fast", "tensorrt"), progress=lambda line: None)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(EngineError, match="sha256 mismatch"):
        TensorRTBackend(path, config)
