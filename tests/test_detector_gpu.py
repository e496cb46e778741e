"""GpuDetector on a real GPU (``pytest -m gpu``): CuPy runtime, ONNX Runtime as the engine, vs the CPU path.

The engine is ONNX Runtime on the CPU reading the input from and writing the output
to device memory (copied through the host), so what runs on the GPU is exactly the
fused path's own work: upload, letterbox, decode, NMS and the copy back. Skips
cleanly without CuPy or a CUDA device.
"""

import os

import numpy as np
import pytest

pytest.importorskip("cv2")  # a GPU box may lack the CPU suite's packages: skip with the reason,
pytest.importorskip("onnxruntime")  # not a collection error that stops every gpu test

from agent.config import DetectionConfig  # noqa: E402
from agent.kernels import gpu  # noqa: E402
from agent.detect.fused import GpuDetector  # noqa: E402
from agent.postprocess.decode import make_decoder  # noqa: E402

import test_detector_host as H  # noqa: E402

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cupy_rt():
    try:
        import cupy
    except ImportError:
        pytest.skip("cupy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as e:  # CUDARuntimeError without a driver
        pytest.skip("no usable CUDA device ({})".format(e))
    rt = gpu.CupyRuntime()
    return rt, gpu.load_modules(rt)


class DeviceEngine(H.Engine):
    """ORT on the host; input and output live in CuPy device memory, like TensorRT bindings."""

    def __init__(self, rt, path):
        import cupy

        self.cupy = cupy
        H.Engine.__init__(self, rt, path)

    def execute(self):
        rt = gpu.CupyRuntime()
        blob = np.empty(self.in_shape, np.float32)
        rt.dtoh(blob, self.input_ptr)
        rt.sync()
        out = np.ascontiguousarray(self.run(blob), np.float32)
        rt.htod(self.output_ptr, out)
        rt.sync()
        self.runs += 1


@pytest.mark.parametrize("which", ["color", "real"])
def test_gpu_detector_matches_cpu_path(cupy_rt, tmp_path, which):
    rt, mods = cupy_rt
    if which == "color":
        path = H.color_model(str(tmp_path / "color.onnx"))
    else:
        path = next(p for p in H.REAL_MODELS if os.path.isfile(p))
    engine = DeviceEngine(rt, path)
    decoder = make_decoder(engine.outputs())
    _, _, ih, iw = engine.in_shape
    det = GpuDetector(rt, mods, iw, ih, engine.out_shape[1] - 4, engine.out_shape[2], engine.execute,
                      engine.input_ptr, engine.output_ptr)
    try:
        rng = np.random.default_rng(4)
        conf = 0.25 if which == "color" or "demo-fast" in path else 5e-5
        cfgs = [DetectionConfig(conf_threshold=conf), DetectionConfig(conf_threshold=conf, class_agnostic=True),
                DetectionConfig(conf_threshold=conf, classes=[1, 3], max_detections=4),
                DetectionConfig(conf_threshold=conf, top_k=5)]
        for w, h in ((1920, 1080), (1280, 720), (333, 517)):
            img = H.frame(rng, w, h)
            for cfg in cfgs:
                got = det.detect(img, cfg)
                H.assert_same(got, H.cpu_path(engine, decoder, img, cfg, blob=det.download_input()))
                H.assert_close(got, H.cpu_path(engine, decoder, img, cfg), cfg, strict=which == "real",
                               box_tol=1.0 if which == "real" else 30.0, score_tol=1e-3 if which == "real" else 5e-3)
    finally:
        det.close()
