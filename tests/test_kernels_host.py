"""The CUDA kernels in agent/kernels/*.cu, compiled for the CPU through cuda_host_shim.h.

Each kernel runs with one std::thread per CUDA thread (blocks in sequence) and is
checked against the numpy reference it replaces and against OpenCV. The same
sources are compiled to PTX with nvcc to prove they are valid CUDA.
"""

import ctypes
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

import agent.kernels as K
from agent.kernels import build
from agent.postprocess.decode import AnchorDecoder
from agent.postprocess.nms import nms as nms_ref
from agent.postprocess.nms_reference import nms_reference
from agent.preprocess import Letterbox

_P = ctypes.c_void_p


def _ptr(a):
    return None if a is None else a.ctypes.data_as(_P)


@pytest.fixture(scope="session", params=["newest", "c++17"])
def libs(request, tmp_path_factory):
    """The kernels built with the compiler's newest standard, and with C++17 (the shim's path for
    JetPack's GCC 7.5 / 9.4, see test_platform_facts.py): every test runs against both."""
    std = None if request.param == "newest" else request.param
    if std is None and build.host_cxx_std() == "c++17":
        pytest.skip("this compiler's newest standard is C++17: covered by the c++17 run")
    lib = ctypes.CDLL(build.host_library(str(tmp_path_factory.mktemp("kernels_host")), std=std))
    out = {"nms": lib, "decode": lib, "preprocess": lib}
    out["nms"].ea_nms_host.argtypes = [_P, _P, _P, ctypes.c_int, ctypes.c_float, _P]
    out["nms"].ea_nms_host.restype = ctypes.c_int
    out["decode"].ea_decode_host.argtypes = [_P, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int,
                                             _P, _P, _P, _P]
    out["decode"].ea_decode_host.restype = ctypes.c_int
    out["preprocess"].ea_letterbox_host.argtypes = [_P] + [ctypes.c_int] * 3 + [_P] + [ctypes.c_int] * 6 + [
        ctypes.c_double] * 2
    out["preprocess"].ea_letterbox_host.restype = None
    return out


# --------------------------------------------------------------------------- NMS


def kernel_nms(libs, boxes, scores, iou, classes=None):
    boxes = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
    scores = np.ascontiguousarray(scores, np.float32)
    cls = None if classes is None else np.ascontiguousarray(classes, np.int32)
    keep = np.empty(max(len(scores), 1), np.int32)
    n = libs["nms"].ea_nms_host(_ptr(boxes), _ptr(scores), _ptr(cls), len(scores), iou, _ptr(keep))
    assert n >= 0, "kernel refused {} boxes".format(len(scores))
    return keep[:n].astype(np.int64)


def cv2_nms(boxes, scores, iou, classes=None):
    """cv2.dnn.NMSBoxes(Batched) on x1y1x2y2 boxes; scores must be > 0."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
    scores = np.asarray(scores, np.float32)
    if classes is None:
        k = cv2.dnn.NMSBoxes(xywh, scores.tolist(), 0.0, iou)
    elif hasattr(cv2.dnn, "NMSBoxesBatched"):
        k = cv2.dnn.NMSBoxesBatched(xywh, scores.tolist(), np.asarray(classes).tolist(), 0.0, iou)
    else:  # OpenCV < 4.7 (the last for Python 3.6): NMSBoxes per class, merged best first
        classes = np.asarray(classes)
        k = []
        for c in np.unique(classes):
            idx = np.flatnonzero(classes == c)
            got = cv2.dnn.NMSBoxes([xywh[i] for i in idx], scores[idx].tolist(), 0.0, iou)
            k.extend(idx[np.asarray(got, np.int64).reshape(-1)].tolist())
        k = np.asarray(k, np.int64)
        k = k[np.lexsort((k, -scores[k]))]
    return np.asarray(k, np.int64).reshape(-1)


def random_case(rng, n, n_classes=1, grid=16.0, span=200.0):
    """Clustered boxes on a 1/16 px grid (float32-exact), scores from a small set (ties)."""
    centers = rng.uniform(20, span, (max(1, n // 8 + 1), 2))
    c = centers[rng.integers(0, len(centers), n)] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(2, 60, (n, 2))
    x1y1 = np.maximum(c - wh / 2, 0)
    boxes = np.round(np.concatenate([x1y1, x1y1 + wh], 1) * grid) / grid
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0 / grid)  # no zero-area boxes
    scores = (rng.integers(1, 21, n) / 20.0).astype(np.float32)
    classes = rng.integers(0, n_classes, n).astype(np.int32) if n_classes > 1 else None
    return boxes.astype(np.float32), scores, classes


def check_nms(libs, boxes, scores, iou, classes=None, with_cv2=True):
    got = kernel_nms(libs, boxes, scores, iou, classes)
    # The plain oracle where it is quick (it is O(n * kept) in Python); above, the fast numpy
    # NMS, which tests/test_nms.py holds to that oracle.
    ref = (nms_reference if len(scores) <= 300 else nms_ref)(boxes, scores, iou, class_ids=classes)
    assert got.tolist() == ref.tolist(), "kernel vs the reference, n={} iou={}".format(len(scores), iou)
    if with_cv2:
        cv = cv2_nms(boxes, scores, iou, classes)
        assert got.tolist() == cv.tolist(), "kernel vs cv2, n={} iou={}".format(len(scores), iou)
    return got


def test_nms_empty_and_one_box(libs):
    assert kernel_nms(libs, np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []
    assert kernel_nms(libs, [[1, 2, 3, 4]], [0.3], 0.5).tolist() == [0]
    assert kernel_nms(libs, [[1, 2, 3, 4]], [0.3], 0.5, classes=[7]).tolist() == [0]


@pytest.mark.parametrize("n", [2, 63, 64, 65, 127, 128, 129, 130])
@pytest.mark.parametrize("n_classes", [1, 4])
def test_nms_tile_boundaries(libs, n, n_classes):
    """Counts around the 64-box tile: the mask spans 1, 2 or 3 tiles per row."""
    rng = np.random.default_rng(1000 + n * 10 + n_classes)
    for iou in (0.3, 0.5, 0.7):
        boxes, scores, classes = random_case(rng, n, n_classes)
        check_nms(libs, boxes, scores, iou, classes)


def test_nms_box_in_last_tile_suppressed_by_first(libs):
    """Box 0 (best) must suppress a duplicate placed at position 129 (third tile)."""
    rng = np.random.default_rng(5)
    boxes, scores, _ = random_case(rng, 130)
    boxes[:, :2] += 1000  # move everything away from the pair under test
    boxes[:, 2:] += 1000
    boxes[0] = boxes[129] = [0, 0, 10, 10]
    scores[0], scores[129] = 2.0, 0.01
    got = check_nms(libs, boxes, scores, 0.5)
    assert 0 in got and 129 not in got


def test_nms_iou_exactly_at_threshold_is_kept(libs):
    # IoU = 8/16 = 0.5 and 1/3 exactly, representable the same way in float32 and float64.
    boxes = np.array([[0, 0, 4, 4], [0, 0, 4, 2], [10, 0, 12, 1], [11, 0, 13, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert check_nms(libs, boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
    # 0 suppresses 1 (IoU 0.5 > 1/3); 2 and 3 meet at exactly 1/3 and both stay.
    assert check_nms(libs, boxes, scores, np.float32(1.0 / 3.0)).tolist() == [0, 2, 3]
    assert check_nms(libs, boxes, scores, 0.49).tolist() == [0, 2, 3]
    assert check_nms(libs, boxes, scores, 0.3).tolist() == [0, 2]


def test_nms_score_ties_keep_lower_index(libs):
    boxes = np.array([[0, 0, 10, 10]] * 5 + [[50, 50, 60, 60]] * 3, np.float32)
    scores = np.array([0.5, 0.7, 0.7, 0.2, 0.7, 0.4, 0.4, 0.4], np.float32)
    assert check_nms(libs, boxes, scores, 0.5).tolist() == [1, 5]
    # 70 identical boxes with identical scores: only index 0 survives, across tiles.
    boxes = np.tile(np.array([[5, 5, 25, 25]], np.float32), (70, 1))
    assert check_nms(libs, boxes, np.full(70, 0.5, np.float32), 0.5).tolist() == [0]


def test_nms_class_aware_and_agnostic(libs):
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert check_nms(libs, boxes, scores, 0.5, classes=np.array([0, 1, 0])).tolist() == [0, 1]
    assert check_nms(libs, boxes, scores, 0.5).tolist() == [0]


def test_nms_negative_coordinates_class_aware(libs):
    """YOLO boxes cross the image border; classes must still never interact."""
    boxes = np.array([[-5, -5, 10, 10], [-4, -5, 10, 10], [-5, -6, 11, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    got = kernel_nms(libs, boxes, scores, 0.5, classes=np.array([0, 1, 2], np.int32))
    assert got.tolist() == [0, 1, 2]
    assert got.tolist() == nms_ref(boxes, scores, 0.5, class_ids=[0, 1, 2]).tolist()


def test_nms_degenerate_boxes_never_suppress(libs):
    """Zero-area boxes: IoU 0 (the numpy reference's rule; cv2 suppresses two of them)."""
    boxes = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 4, 4], [5, 5, 4, 9]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    got = kernel_nms(libs, boxes, scores, 0.1)
    assert got.tolist() == nms_ref(boxes, scores, 0.1).tolist() == [0, 1, 2, 3]


def test_nms_randomized_thousands(libs):
    """2000 randomized cases (1..130 boxes, 1..80 classes, thresholds incl. 0 and 1)."""
    rng = np.random.default_rng(20261129)
    sizes = [1, 2, 3, 5, 8, 16, 31, 40, 63, 64, 65, 100, 130]
    cases = 0
    for _ in range(2000):
        n = int(rng.choice(sizes))
        n_classes = int(rng.choice([1, 1, 2, 5, 80]))
        iou = float(rng.choice([0.0, 0.25, 0.45, 0.5, 0.65, 0.7, 0.9, 1.0]))
        boxes, scores, classes = random_case(rng, n, n_classes, span=float(rng.choice([60, 200, 600])))
        check_nms(libs, boxes, scores, iou, classes, with_cv2=bool(cases % 4 == 0))
        cases += 1
    assert cases == 2000


@pytest.mark.parametrize("n,n_classes", [(300, 1), (1000, 1), (1000, 80), (2000, 3)])
def test_nms_large(libs, n, n_classes):
    rng = np.random.default_rng(n + n_classes)
    boxes, scores, classes = random_case(rng, n, n_classes, span=640)
    scores = (rng.permutation(n) + 1).astype(np.float32) / n  # mostly distinct scores
    check_nms(libs, boxes, scores, 0.45, classes)


def test_nms_unrounded_float_boxes(libs):
    """Arbitrary float32 coordinates (not on the 1/16 grid), as decode produces."""
    rng = np.random.default_rng(77)
    for _ in range(40):
        n = int(rng.integers(1, 200))
        xy = rng.uniform(-20, 640, (n, 2))
        b = np.concatenate([xy, xy + rng.uniform(1, 120, (n, 2))], 1).astype(np.float32)
        s = rng.random(n).astype(np.float32)
        c = rng.integers(0, 3, n)
        assert kernel_nms(libs, b, s, 0.5, c).tolist() == nms_ref(b, s, 0.5, class_ids=c).tolist()


def test_nms_over_capacity_is_refused(libs):
    n = K.NMS_MAX_BOXES + 1
    b = np.zeros((n, 4), np.float32)
    keep = np.empty(n, np.int32)
    assert libs["nms"].ea_nms_host(_ptr(b), _ptr(np.zeros(n, np.float32)), None, n, 0.5, _ptr(keep)) == -1


# ------------------------------------------------------------------------ decode


def kernel_decode(libs, pred, conf, capacity=None):
    pred = np.ascontiguousarray(pred, np.float32)
    nc, n = pred.shape[1] - 4, pred.shape[2]
    cap = n if capacity is None else capacity
    boxes, scores = np.empty((cap, 4), np.float32), np.empty(cap, np.float32)
    classes, anchors = np.empty(cap, np.int32), np.empty(cap, np.int32)
    count = libs["decode"].ea_decode_host(_ptr(pred), nc, n, conf, cap, _ptr(boxes), _ptr(scores),
                                          _ptr(classes), _ptr(anchors))
    m = min(count, cap)
    return count, boxes[:m], scores[:m], classes[:m], anchors[:m]


def random_pred(rng, nc, n):
    pred = np.empty((1, 4 + nc, n), np.float32)
    pred[0, :2] = rng.uniform(0, 640, (2, n))
    pred[0, 2:4] = rng.uniform(1, 200, (2, n))
    pred[0, 4:] = rng.random((nc, n)) ** 4  # mostly low, like sigmoid class scores
    pred[0, 4:, ::7] = np.round(pred[0, 4:, ::7] * 4) / 4  # exact ties between classes and at conf
    return pred


@pytest.mark.parametrize("nc,n", [(1, 1), (1, 100), (3, 257), (80, 8400)])
@pytest.mark.parametrize("conf", [0.25, 0.5])
def test_decode_matches_numpy(libs, nc, n, conf):
    rng = np.random.default_rng(nc * 1000 + n)
    pred = random_pred(rng, nc, n)
    count, boxes, scores, classes, anchors = kernel_decode(libs, pred, conf)
    rb, rs, rc = AnchorDecoder("out", "yolov8", nc).decode({"out": pred}, conf)
    assert count == len(rs)
    # Atomics reorder candidates: compare in the reference's order (score desc, anchor asc).
    order = np.lexsort((anchors, -scores))
    np.testing.assert_array_equal(scores[order], rs)
    np.testing.assert_array_equal(classes[order], rc)
    np.testing.assert_array_equal(boxes[order], rb)
    assert len(set(anchors.tolist())) == count


def test_decode_over_capacity_counts_all_writes_some(libs):
    rng = np.random.default_rng(3)
    pred = random_pred(rng, 4, 2000)
    full = kernel_decode(libs, pred, 0.1)
    count, boxes, scores, classes, anchors = kernel_decode(libs, pred, 0.1, capacity=50)
    assert count == full[0] > 50 and len(scores) == 50
    by_anchor = {a: (s, c) for a, s, c in zip(full[4], full[2], full[3])}
    assert all(by_anchor[a] == (s, c) for a, s, c in zip(anchors, scores, classes))


# -------------------------------------------------------------------- preprocess


def kernel_letterbox(libs, frame, input_w, input_h):
    (new_w, new_h, left, top, sx, sy), m = K.letterbox_params(frame.shape[1], frame.shape[0], input_w, input_h)
    out = np.full((1, 3, input_h, input_w), np.nan, np.float32)
    base = frame if frame.base is None else frame.base
    assert frame.strides[1:] == (3, 1)
    libs["preprocess"].ea_letterbox_host(
        ctypes.c_void_p(frame.ctypes.data), frame.shape[1], frame.shape[0], frame.strides[0], _ptr(out),
        input_w, input_h, new_w, new_h, left, top, sx, sy)
    del base
    return out


@pytest.mark.parametrize("w,h,iw,ih", [
    (640, 480, 640, 640),    # 4:3 camera, downscale + pad
    (1920, 1080, 640, 640),  # 1080p
    (333, 217, 640, 640),    # odd size, upscale
    (640, 640, 640, 640),    # identity
    (97, 1001, 320, 256),    # tall, odd, non-square input
])
def test_preprocess_matches_opencv_letterbox(libs, w, h, iw, ih):
    rng = np.random.default_rng(w * h)
    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frame = cv2.GaussianBlur(frame, (5, 5), 0)  # natural-ish gradients plus some noise
    frame[::13] = rng.integers(0, 256, frame[::13].shape, dtype=np.uint8)
    got = kernel_letterbox(libs, frame, iw, ih)
    ref, m = Letterbox(iw, ih).run(frame)
    diff = np.abs(got - ref)
    # The kernel reproduces OpenCV's 8-bit fixed-point bilinear (resize.cpp): on a downscale
    # (cameras into a detector) the very same pixels, so the fused and CPU paths see one image;
    # an upscale may differ by one level where OpenCV's own upscaling rounds otherwise.
    if m.new_w <= w and m.new_h <= h:
        assert diff.max() == 0, "{} values differ, max {:.1f} levels".format((diff > 0).sum(), diff.max() * 255)
    assert diff.max() <= 1.0 / 255 + 1e-6, "max abs diff {:.6f}".format(diff.max())
    pad = np.ones((ih, iw), bool)
    pad[m.pad_y:m.pad_y + m.new_h, m.pad_x:m.pad_x + m.new_w] = False
    assert (diff[0][:, pad] == 0).all()
    if (w, h) == (iw, ih):
        assert diff.max() == 0


def test_preprocess_strided_frame(libs):
    """A crop view: rows longer than width*3 bytes."""
    rng = np.random.default_rng(9)
    big = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    crop = big[10:250, 20:341]
    got = kernel_letterbox(libs, crop, 320, 320)
    ref, _ = Letterbox(320, 320).run(np.ascontiguousarray(crop))
    assert np.abs(got - ref).max() == 0


# --------------------------------------------------------------------- CUDA side


def test_launch_constants_match_sources():
    text = {s: open(K.source_path(s)).read() for s in K.SOURCES}

    def define(src, name):
        return int(re.search(r"#define {} (\d+)".format(name), text[src]).group(1))

    assert define("nms.cu", "EA_NMS_TPB") == K.NMS_TPB == 64
    assert define("nms.cu", "EA_NMS_SORT_TPB") == K.NMS_SORT_TPB
    assert define("nms.cu", "EA_NMS_KEEP_TPB") == K.NMS_KEEP_TPB
    assert define("nms.cu", "EA_NMS_MAX_COL_BLOCKS") * K.NMS_TPB == K.NMS_MAX_BOXES
    assert define("decode.cu", "EA_DECODE_TPB") == K.DECODE_TPB
    assert define("preprocess.cu", "EA_PRE_TPB") == K.PRE_TPB


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH: cannot check that the kernels compile as CUDA")
@pytest.mark.parametrize("source", K.SOURCES)
def test_nvcc_ptx_compiles(source, tmp_path):
    out = str(tmp_path / (source + ".ptx"))
    p = subprocess.run([NVCC, "-ptx", "-arch=compute_75", "-Werror", "all-warnings", K.source_path(source),
                        "-o", out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert p.returncode == 0, p.stdout
    ptx = open(out).read()
    for name in re.findall(r'extern "C" __global__ void (\w+)', open(K.source_path(source)).read()):
        assert ".entry {}(".format(name) in ptx


# ------------------------------------------------- gpu.py wrappers on the CPU (agent.kernels.host.HostRuntime)


@pytest.fixture
def host_rt(libs):
    from agent.kernels import gpu
    from agent.kernels.host import HostRuntime

    rt = HostRuntime(libs["nms"])
    return rt, gpu.load_modules(rt, {"nms": "-", "decode": "-", "preprocess": "-"}), gpu


def test_gpu_wrappers_nms_on_host(host_rt):
    rt, mods, gpu = host_rt
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=300)
    try:
        rng = np.random.default_rng(21)
        for n in (0, 1, 64, 65, 300):
            boxes, scores, classes = random_case(rng, n, 4)
            assert nms(boxes, scores, 0.5).tolist() == nms_ref(boxes, scores, 0.5).tolist()
            got = nms(boxes, scores, 0.5, class_ids=classes)
            assert got.tolist() == nms_ref(boxes, scores, 0.5, class_ids=classes).tolist()
            got = nms(boxes, scores, 0.5, class_ids=classes, class_agnostic=True)
            assert got.tolist() == nms_ref(boxes, scores, 0.5).tolist()
        with pytest.raises(ValueError):
            nms(np.zeros((301, 4)), np.zeros(301), 0.5)
    finally:
        nms.close()


@pytest.mark.parametrize("n, n_classes", [(700, 1), (700, 5), (1500, 3)])
def test_gpu_wrappers_nms_top_k_max_out_and_gather_on_host(host_rt, n, n_classes):
    """top_k (NMS over the best boxes after the device sort), max_out (the sweep stops) and the
    kept detections gathered by the keep kernel, against the numpy reference."""
    rt, mods, gpu = host_rt
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=n)
    try:
        rng = np.random.default_rng(n + n_classes)
        boxes, scores, classes = random_case(rng, n, n_classes)
        classes = np.zeros(n, np.int32) if classes is None else classes
        scores[rng.integers(0, n, n // 4)] = 0.5  # ties, broken by the tie key below
        tiekey = rng.permutation(n).astype(np.int32)
        order = np.lexsort((tiekey, -scores))  # rank order: score desc, then tie key
        p = rt.ptr
        rt.htod(p(nms.boxes), boxes)
        rt.htod(p(nms.scores), scores)
        rt.htod(p(nms.classes), classes.astype(np.int32))
        tk = rt.alloc(4 * n)
        rt.htod(p(tk), tiekey)
        for top_k, max_out, agnostic in ((0, None, False), (n // 3, None, False), (0, 17, False), (100, 5, True),
                                         (n, n, True), (1, None, False), (0, 0, False)):
            ranked = order[:top_k or None]
            ref = ranked[nms_ref(boxes[ranked], np.arange(len(ranked), 0, -1).astype(np.float32), 0.5,
                                 class_ids=None if agnostic else classes[ranked], max_detections=max_out)]
            keep = nms.run_device(p(nms.boxes), p(nms.scores), n, 0.5, classes_ptr=None if agnostic else p(nms.classes),
                                  tiekey_ptr=p(tk), top_k=top_k, max_out=max_out)
            assert keep.tolist() == ref.tolist(), (top_k, max_out, agnostic)
            b, s, c = nms.detections(p(nms.boxes), p(nms.scores), p(nms.classes), n, 0.5, class_agnostic=agnostic,
                                     tiekey_ptr=p(tk), top_k=top_k, max_out=max_out)
            np.testing.assert_array_equal(b, boxes[ref])
            np.testing.assert_array_equal(s, scores[ref])
            assert c.dtype == np.int32 and c.tolist() == classes[ref].tolist()
    finally:
        nms.close()


def test_gpu_wrappers_decode_and_detect_on_host(host_rt):
    rt, mods, gpu = host_rt
    nc, n = 3, 700
    dec = gpu.GpuDecode(rt, mods["decode"], nc, n)
    nms = gpu.GpuNms(rt, mods["nms"], max_boxes=n)
    try:
        pred = random_pred(np.random.default_rng(8), nc, n)
        boxes, scores, classes, _ = dec(pred, 0.2)
        rb, rs, rc = AnchorDecoder("out", "yolov8", nc).decode({"out": pred}, 0.2)
        np.testing.assert_array_equal(scores, rs)
        np.testing.assert_array_equal(classes, rc)
        np.testing.assert_array_equal(boxes, rb)
        # decode + NMS on the "device", ties broken by anchor index like the numpy path
        db, ds, dc = dec.detect(nms, rt.ptr(dec.pred), 0.2, 0.45)
        keep = nms_ref(rb, rs, 0.45, class_ids=rc)
        np.testing.assert_array_equal(ds, rs[keep])
        np.testing.assert_array_equal(dc, rc[keep])
        np.testing.assert_array_equal(db, rb[keep])
        db, ds, dc = dec.detect(nms, rt.ptr(dec.pred), 0.2, 0.45, class_agnostic=True, top_k=50, max_out=7)
        keep = nms_ref(rb[:50], rs[:50], 0.45, max_detections=7)
        assert len(keep) == 7
        np.testing.assert_array_equal(ds, rs[keep])
        np.testing.assert_array_equal(db, rb[keep])
    finally:
        nms.close()
        dec.close()


def test_gpu_wrappers_preprocess_on_host(host_rt):
    rt, mods, gpu = host_rt
    pre = gpu.GpuPreprocess(rt, mods["preprocess"], 64, 48, max_frame_w=200, max_frame_h=100)
    try:
        frame = np.random.default_rng(4).integers(0, 256, (77, 131, 3), dtype=np.uint8)
        m = pre(frame)
        ref, rm = Letterbox(64, 48).run(frame)
        assert m == rm
        assert np.abs(pre.download() - ref).max() <= 1.0 / 255 + 1e-6
        with pytest.raises(ValueError):
            pre(np.zeros((101, 200, 3), np.uint8))
    finally:
        pre.close()
