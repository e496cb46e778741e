"""The CUDA kernels on a real GPU against their numpy references (``pytest -m gpu``).

Runs through pycuda when it is installed (the agent's runtime, with a context
this test creates and pops), else through CuPy, loading the same .cu sources
with NVRTC; the cubin path of build.load_kernels is checked when nvcc exists.
Skips with the reason when there is no CUDA device or neither runtime.
"""

import shutil

import numpy as np
import pytest

pytest.importorskip("cv2")  # agent.preprocess needs OpenCV: a skip with the reason, not a collection error

from agent.kernels import NMS_MAX_BOXES, build, gpu  # noqa: E402
from agent.postprocess.decode import AnchorDecoder  # noqa: E402
from agent.postprocess.nms import nms as nms_ref  # noqa: E402
from agent.preprocess import Letterbox  # noqa: E402

pytestmark = pytest.mark.gpu


def _pycuda_runtime():
    try:
        import pycuda.driver as cuda
    except ImportError:
        return None, None, "pycuda is not installed"
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return None, None, "no CUDA device"
        dev = cuda.Device(0)
        ctx = dev.make_context()
    except cuda.Error as e:
        return None, None, "no usable CUDA device ({})".format(e)
    return gpu.PycudaRuntime(), (ctx, dev.compute_capability()), None


def _cupy_runtime():
    try:
        import cupy
    except ImportError:
        return None, None, "cupy is not installed"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, None, "no CUDA device"
        cc = cupy.cuda.Device(0).compute_capability  # '90'
    except Exception as e:  # cupy raises CUDARuntimeError without a driver
        return None, None, "no usable CUDA device ({})".format(e)
    return gpu.CupyRuntime(), (None, (int(cc[:-1]), int(cc[-1]))), None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(runtime, modules, compute capability); pycuda runs nvcc's cubins, CuPy the sources via NVRTC."""
    rt, extra, why = _pycuda_runtime()
    if rt is None:
        rt, extra, why2 = _cupy_runtime()
        if rt is None:
            pytest.skip("{}; {}".format(why, why2))
    ctx, cc = extra
    try:
        if rt.name == "pycuda":
            if shutil.which("nvcc") is None:
                pytest.skip("pycuda needs nvcc to compile the kernels (no NVRTC path)")
            paths = build.compile_kernels(str(tmp_path_factory.mktemp("cubin")), cc)
        else:
            paths = None
        yield rt, gpu.load_modules(rt, paths), cc
    finally:
        if ctx is not None:
            ctx.pop()


def _boxes(rng, n, n_classes, span=640.0):
    """On a 1/16 px grid: areas and intersections are exact in float32, so the kernel's float32
    IoU and the reference's float64 IoU can only differ on exact ties, which both keep."""
    xy = np.round(rng.uniform(-10, span, (n, 2)) * 16) / 16
    b = np.concatenate([xy, xy + np.round(rng.uniform(2, 120, (n, 2)) * 16) / 16], 1).astype(np.float32)
    s = (rng.integers(1, 50, n) / 50.0).astype(np.float32)  # ties
    c = rng.integers(0, n_classes, n).astype(np.int32)
    return b, s, c


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 130, 1000, 5000, 10000])
def test_nms_matches_reference(env, n):
    rt, mods, _ = env
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=max(n, 1))
    try:
        rng = np.random.default_rng(n)
        b, s, c = _boxes(rng, n, 5)
        for iou in (0.45, 0.7):
            assert nms(b, s, iou).tolist() == nms_ref(b, s, iou).tolist()
            assert nms(b, s, iou, class_ids=c).tolist() == nms_ref(b, s, iou, class_ids=c).tolist()
    finally:
        nms.close()


def test_nms_exact_threshold_and_capacity(env):
    rt, mods, _ = env
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=NMS_MAX_BOXES)
    try:
        boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 2], [10, 0, 12, 1], [11, 0, 13, 1]], np.float32)
        scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
        assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
        with pytest.raises(ValueError):
            nms(np.zeros((NMS_MAX_BOXES + 1, 4)), np.zeros(NMS_MAX_BOXES + 1), 0.5)
    finally:
        nms.close()


def _pred(rng, nc, n):
    pred = np.empty((1, 4 + nc, n), np.float32)
    pred[0, :2] = rng.uniform(0, 640, (2, n))
    pred[0, 2:4] = rng.uniform(1, 200, (2, n))
    pred[0, 4:] = rng.random((nc, n)) ** 6
    return pred


@pytest.mark.parametrize("nc,n", [(1, 100), (80, 8400)])
def test_decode_matches_reference(env, nc, n):
    rt, mods, _ = env
    dec = gpu.GpuDecode(rt, mods["decode"], nc, n)
    try:
        pred = _pred(np.random.default_rng(nc), nc, n)
        boxes, scores, classes, _ = dec(pred, 0.25)
        rb, rs, rc = AnchorDecoder("out", "yolov8", nc).decode({"out": pred}, 0.25)
        assert not dec.overflow
        np.testing.assert_array_equal(scores, rs)
        np.testing.assert_array_equal(classes, rc)
        np.testing.assert_array_equal(boxes, rb)
    finally:
        dec.close()


def test_decode_and_nms_on_device(env):
    rt, mods, _ = env
    nc, n = 80, 8400
    dec = gpu.GpuDecode(rt, mods["decode"], nc, n)
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=n)
    try:
        pred = _pred(np.random.default_rng(11), nc, n)
        rt.htod(rt.ptr(dec.pred), pred)
        boxes, scores, classes = dec.detect(nms, rt.ptr(dec.pred), 0.25, 0.45)
        rb, rs, rc = AnchorDecoder("out", "yolov8", nc).decode({"out": pred}, 0.25)
        keep = nms_ref(rb, rs, 0.45, class_ids=rc)
        np.testing.assert_array_equal(scores, rs[keep])
        np.testing.assert_array_equal(classes, rc[keep])
        np.testing.assert_array_equal(boxes, rb[keep])
        # top_k after the device sort, max_out stopping the sweep, class-agnostic
        boxes, scores, classes = dec.detect(nms, rt.ptr(dec.pred), 0.25, 0.45, class_agnostic=True, top_k=300,
                                            max_out=20)
        keep = nms_ref(rb[:300], rs[:300], 0.45, max_detections=20)
        assert len(keep) == 20
        np.testing.assert_array_equal(scores, rs[keep])
        np.testing.assert_array_equal(classes, rc[keep])
        np.testing.assert_array_equal(boxes, rb[keep])
    finally:
        nms.close()
        dec.close()


@pytest.mark.parametrize("w,h", [(1920, 1080), (1280, 720), (333, 217), (640, 640)])
def test_preprocess_matches_letterbox(env, w, h):
    rt, mods, _ = env
    pre = gpu.GpuPreprocess(rt, mods["preprocess"], 640, 640)
    try:
        frame = np.random.default_rng(w).integers(0, 256, (h, w, 3), dtype=np.uint8)
        pre(frame)
        got = pre.download()
        ref, _ = Letterbox(640, 640).run(frame)
        assert np.abs(got - ref).max() <= 1.0 / 255 + 1e-6
    finally:
        pre.close()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: cubin cache not testable")
def test_cubin_cache_loads(env, tmp_path):
    rt, _, cc = env
    paths = build.load_kernels(cc, cache_dir=str(tmp_path))
    again = build.load_kernels(cc, cache_dir=str(tmp_path), compile_if_missing=False)
    assert paths == again
    mods = gpu.load_modules(rt, paths)
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=64)
    try:
        assert nms([[0, 0, 10, 10], [0, 0, 10, 9]], [0.9, 0.8], 0.5).tolist() == [0]
    finally:
        nms.close()
