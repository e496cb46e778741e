"""The NMS (C, OpenCV and numpy strategies) against cv2.dnn.NMSBoxes and the reference: randomized,
at the threshold, on score ties, and on layouts that test the C path's grid."""

import cv2
import numpy as np
import pytest

from agent import native
from agent.config import DetectionConfig
from agent.postprocess import make_decoder, nms, postprocess
from agent.backends.base import TensorSpec
from agent.postprocess.nms_reference import nms_reference

SIZES = (0, 1, 2, 63, 64, 65, 200)
NMS_MODULE = __import__("agent.postprocess.nms", fromlist=["nms"])


@pytest.fixture(autouse=True, params=["auto", "native", "opencv", "batched", "sweep"])
def strategy(request, monkeypatch):
    """Every test runs with the automatic choice and with each exact strategy forced."""
    if request.param == "native":
        assert native.LIB is not None, "agent/native is not built: pip install -e . (a C compiler)"
        return request.param
    if request.param != "auto":
        monkeypatch.setattr(native, "LIB", None)
    if request.param == "opencv":
        if NMS_MODULE._NMS_BOXES is None:
            pytest.skip("OpenCV {} < 4.7: the numpy strategies only".format(cv2.__version__))
        monkeypatch.setattr(NMS_MODULE, "_SMALL", float("inf"))
    else:
        monkeypatch.setattr(NMS_MODULE, "_NMS_BOXES", None if request.param != "auto" else NMS_MODULE._NMS_BOXES)
    if request.param == "batched":  # never the sweep: no density switch, no hand-over
        monkeypatch.setattr(NMS_MODULE, "_DENSE", -1)
        monkeypatch.setattr(NMS_MODULE, "_SPARSE", 0.0)
    elif request.param == "sweep":
        monkeypatch.setattr(NMS_MODULE, "_DENSE", float("inf"))
    return request.param


def reference(boxes, scores, thr, class_ids=None):
    """cv2.dnn.NMSBoxes with float rects; per class when class_ids is given; by score, ties by index."""
    boxes = np.asarray(boxes, np.float64)
    if len(boxes) == 0:
        return np.empty(0, np.int64)
    groups = [np.arange(len(boxes))] if class_ids is None else [np.flatnonzero(class_ids == c) for c in np.unique(class_ids)]
    keep = []
    for idx in groups:
        rects = np.concatenate([boxes[idx, :2], boxes[idx, 2:] - boxes[idx, :2]], 1).tolist()
        k = cv2.dnn.NMSBoxes(rects, scores[idx].tolist(), 0.0, float(thr))
        keep.extend(idx[np.asarray(k, np.int64).reshape(-1)].tolist())
    keep = np.asarray(keep, np.int64)
    return keep[np.lexsort((keep, -scores[keep]))]


def random_boxes(rng, n, grid=True):
    """Clustered boxes; on a 1/4-pixel grid so x1y1x2y2 <-> xywh is exact and IoUs hit thresholds."""
    ncl = max(1, n // int(rng.integers(1, 30)))
    centers = rng.uniform(0, 640, (ncl, 2))
    sizes = rng.uniform(4, 200, (ncl, 2))
    k = rng.integers(0, ncl, n)
    wh = sizes[k] * rng.uniform(0.7, 1.3, (n, 2))
    xy = centers[k] + rng.normal(0, 0.2, (n, 2)) * sizes[k] - wh / 2
    if grid:
        xy = np.round(xy * 4) / 4
        wh = np.maximum(np.round(wh * 4) / 4, 0.25)
    boxes = np.concatenate([xy, xy + wh], 1)
    if rng.random() < 0.5:
        scores = rng.random(n).astype(np.float32)
    else:  # many exact ties
        scores = (rng.integers(0, 8, n) / 8.0 + 0.0625).astype(np.float32)
    return boxes, scores


def test_empty_input_returns_empty_int64():
    keep = nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert keep.dtype == np.int64 and keep.shape == (0,)
    assert nms([], [], 0.5, class_ids=[]).dtype == np.int64


def test_the_plain_reference_equals_opencv_and_the_fast_nms():
    """agent/postprocess/nms_reference.py, readable by eye, is the oracle: OpenCV agrees, the fast path too."""
    rng = np.random.default_rng(2026)
    for case in range(400):
        n = SIZES[case % len(SIZES)] % 200
        boxes, scores = random_boxes(rng, n, grid=case % 3 != 0)
        cls = rng.integers(0, 3, n) if case % 2 else None
        thr = float(rng.choice([0.3, 0.45, 0.5, 0.75]))
        want = nms_reference(boxes, scores, thr, class_ids=cls)
        assert np.array_equal(want, reference(boxes, scores, thr, cls)), "case {}".format(case)
        assert np.array_equal(nms(boxes, scores, thr, class_ids=cls), want), "case {}".format(case)


def test_randomized_class_agnostic_equals_opencv():
    rng = np.random.default_rng(1234)
    for case in range(1200):
        n = SIZES[case % len(SIZES)]
        boxes, scores = random_boxes(rng, n, grid=case % 3 != 0)
        thr = float(rng.choice([0.3, 0.45, 0.5, 0.6, 0.75]))
        got = nms(boxes, scores, thr)
        want = reference(boxes, scores, thr)
        assert got.dtype == np.int64
        assert np.array_equal(got, want), "case {} n={} thr={}".format(case, n, thr)


def test_randomized_class_aware_equals_opencv_per_class():
    rng = np.random.default_rng(99)
    for case in range(600):
        n = SIZES[case % len(SIZES)]
        boxes, scores = random_boxes(rng, n)
        cls = rng.integers(0, int(rng.choice([1, 3, 80])), n).astype(np.int32)
        thr = float(rng.choice([0.45, 0.5, 0.7]))
        got = nms(boxes, scores, thr, class_ids=cls)
        assert np.array_equal(got, reference(boxes, scores, thr, cls)), "case {}".format(case)
        agnostic = nms(boxes, scores, thr, class_ids=cls, class_agnostic=True)
        assert np.array_equal(agnostic, reference(boxes, scores, thr)), "case {}".format(case)


def test_large_inputs_equal_opencv():
    rng = np.random.default_rng(7)
    for n in (1000, 1000, 5000):
        boxes, scores = random_boxes(rng, n)
        assert np.array_equal(nms(boxes, scores, 0.45), reference(boxes, scores, 0.45))
        uniform = np.concatenate([rng.uniform(0, 600, (n, 2)), np.zeros((n, 2))], 1)
        uniform[:, 2:] = uniform[:, :2] + rng.uniform(5, 80, (n, 2))
        assert np.array_equal(nms(uniform, scores, 0.5), reference(uniform, scores, 0.5))
        # Detector-like clusters around 40 objects (from 4096 boxes the automatic choice looks
        # at the best boxes before any sort), agnostic and per class.
        centres, sizes, k = rng.uniform(0, 640, (40, 2)), rng.uniform(20, 150, (40, 2)), rng.integers(0, 40, n)
        xy = centres[k] + rng.normal(0, 0.15, (n, 2)) * sizes[k]
        clusters = np.concatenate([xy, xy + sizes[k] * rng.uniform(0.8, 1.2, (n, 2))], 1)
        cls = k % 5
        assert np.array_equal(nms(clusters, scores, 0.45), reference(clusters, scores, 0.45))
        assert np.array_equal(nms(clusters, scores, 0.45, class_ids=cls), reference(clusters, scores, 0.45, cls))


def test_matches_opencv_batched_when_available():
    if not hasattr(cv2.dnn, "NMSBoxesBatched"):
        pytest.skip("this OpenCV has no NMSBoxesBatched")
    rng = np.random.default_rng(5)
    for _ in range(50):
        boxes, scores = random_boxes(rng, 300)
        boxes = np.round(boxes)  # integer coordinates: the batched offsets stay exact
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        cls = rng.integers(0, 5, 300).astype(np.int32)
        rects = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        k = np.asarray(cv2.dnn.NMSBoxesBatched(rects, scores.tolist(), cls.tolist(), 0.0, 0.5), np.int64).reshape(-1)
        assert set(nms(boxes, scores, 0.5, class_ids=cls).tolist()) == set(k.tolist())


@pytest.mark.parametrize("thr,suppressed", [(0.5, False), (0.4999, True), (0.5001, False)])
def test_iou_exactly_at_threshold_is_kept(thr, suppressed):
    # IoU = 50 / 100 = 0.5 exactly: OpenCV suppresses only when IoU > threshold.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float64)
    scores = np.array([0.9, 0.8], np.float32)
    got = nms(boxes, scores, thr)
    assert np.array_equal(got, reference(boxes, scores, thr))
    assert got.tolist() == ([0] if suppressed else [0, 1])


def test_float32_rounding_of_iou_matches_opencv():
    # IoU 1/3 (not representable): OpenCV compares 1.f - float(1 - iou) with float(thr).
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1]], np.float64)
    scores = np.array([0.9, 0.8], np.float32)
    for thr in (1 / 3.0, np.nextafter(np.float32(1 / 3.0), 0), np.nextafter(np.float32(1 / 3.0), 1)):
        assert np.array_equal(nms(boxes, scores, float(thr)), reference(boxes, scores, float(thr)))


def test_score_ties_keep_the_lower_index():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10]], np.float64)
    scores = np.array([0.5, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [0]
    assert nms(boxes[::-1], scores, 0.3).tolist() == [0]
    assert reference(boxes, scores, 0.3).tolist() == [0]
    # Disjoint tied boxes come out by index.
    far = np.array([[100, 0, 110, 10], [0, 0, 10, 10], [50, 0, 60, 10]], np.float64)
    assert nms(far, scores, 0.5).tolist() == [0, 1, 2]


def test_class_aware_and_max_detections():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    cls = np.array([0, 1, 0, 1])
    assert nms(boxes, scores, 0.5, class_ids=cls).tolist() == [0, 1, 3]
    assert nms(boxes, scores, 0.5, class_ids=cls, class_agnostic=True).tolist() == [0, 3]
    assert nms(boxes, scores, 0.5, class_ids=cls, max_detections=2).tolist() == [0, 1]


def test_degenerate_boxes_never_suppress():
    boxes = np.array([[0, 0, 0, 10], [0, 0, 0, 10], [5, 5, 5, 5], [0, 0, 10, 10]], np.float64)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]


def test_long_suppression_chain():
    # Each box overlaps only its neighbours: the greedy result alternates.
    x = np.arange(300, dtype=np.float64) * 4
    boxes = np.stack([x, np.zeros(300), x + 10, np.full(300, 10.0)], 1)
    scores = np.linspace(1, 0.1, 300).astype(np.float32)
    assert np.array_equal(nms(boxes, scores, 0.3), reference(boxes, scores, 0.3))


def test_postprocess_applies_nms_and_limits():
    n = 100
    out = np.zeros((1, 6, n), np.float32)
    out[0, :4] = np.array([50, 50, 20, 20], np.float32)[:, None]  # all the same box
    out[0, 4] = np.linspace(0.3, 0.9, n)
    out[0, 4, :50] = 0.0
    out[0, 5, :50] = np.linspace(0.3, 0.85, 50)
    dec = make_decoder([TensorSpec("output0", [1, 6, n], "float32")])
    boxes, scores, cls = postprocess(dec, {"output0": out}, DetectionConfig())
    assert len(boxes) == 2 and sorted(cls.tolist()) == [0, 1]
    boxes, scores, cls = postprocess(dec, {"output0": out}, DetectionConfig(class_agnostic=True))
    assert cls.tolist() == [0] and scores[0] == pytest.approx(0.9)
    boxes, _, cls = postprocess(dec, {"output0": out}, DetectionConfig(classes=[1]))
    assert cls.tolist() == [1]


def test_postprocess_skips_nms_for_end_to_end():
    det = np.zeros((1, 300, 6), np.float32)
    det[0, :3] = [[0, 0, 10, 10, 0.9, 2], [0, 0, 10, 10, 0.8, 2], [5, 5, 9, 9, 0.7, 1]]
    dec = make_decoder([TensorSpec("output0", [1, 300, 6], "float32")])
    assert dec.has_nms
    boxes, scores, cls = postprocess(dec, {"output0": det}, DetectionConfig(max_detections=2))
    assert cls.tolist() == [2, 2] and boxes.dtype == np.float32


def test_layouts_that_stress_the_grid_equal_the_reference():
    """The C path files kept boxes by grid cell and class (agent/native/fastpath.c): boxes over
    many cells, far apart, huge coordinates, infinite or NaN ones, and class ids of any size
    decide as the reference does (every strategy runs these too)."""
    rng = np.random.default_rng(11)
    for case in range(300):
        n = int(rng.integers(1, 300))
        boxes, scores = random_boxes(rng, n, grid=case % 2 == 0)
        kind = case % 6
        if kind == 1:  # a few boxes much larger than the rest: over many cells
            big = rng.random(n) < 0.05
            boxes[big, 2:] = boxes[big, :2] + rng.uniform(300, 2000, (big.sum(), 2))
        elif kind == 2:  # two far-apart groups: a grid of mostly empty cells
            boxes[n // 2:] += 1e7
        elif kind == 3:  # huge coordinates
            boxes = boxes * 1e9 - 5e11
        elif kind == 4:  # infinite and NaN corners on some boxes
            bad = rng.integers(0, n, max(1, n // 10))
            boxes[bad, rng.integers(0, 4, len(bad))] = rng.choice([np.inf, -np.inf, np.nan], len(bad))
        elif kind == 5:  # tiny boxes beside normal ones: the mean side misleads
            tiny = rng.random(n) < 0.5
            boxes[tiny, 2:] = boxes[tiny, :2] + 1e-3
        cls = rng.choice([-(2 ** 40), 7, 2 ** 40 + 3], n) if case % 3 == 0 else None
        thr = float(rng.choice([0.1, 0.45, 0.7]))
        with np.errstate(invalid="ignore", over="ignore"):
            want = nms_reference(boxes, scores, thr, class_ids=cls)
            got = nms(boxes, scores, thr, class_ids=cls)
        assert np.array_equal(got, want), "case {} kind {}".format(case, kind)
        limit = int(rng.integers(1, 5))
        with np.errstate(invalid="ignore", over="ignore"):
            assert np.array_equal(nms(boxes, scores, thr, class_ids=cls, max_detections=limit), want[:limit])
