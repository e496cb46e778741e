"""Greedy non-maximum suppression, fast: the numpy path (agent/postprocess/nms_reference.py is the oracle).

Semantics equal OpenCV's ``cv2.dnn.NMSBoxes`` with float rects (``Rect2d``), eta=1,
top_k=0 (checked by tests/test_nms.py on randomized and boundary cases):

* boxes are sorted by descending score with a *stable* sort, so on a score tie the
  box with the lower input index comes first (and wins);
* a box is dropped when its IoU with an already kept box is ``> iou_threshold``;
  IoU exactly equal to the threshold keeps it;
* areas are ``w * h`` (no ``+1`` as for integer ``Rect``); the IoU is computed in
  float64 and compared the way OpenCV does, ``1.f - float(1 - iou) > float(thr)``,
  so float32 rounding decides near-ties identically;
* there is no score threshold here (decode applied it, as ``score > conf``, which is
  OpenCV's ``score_threshold`` rule too).

Known differences, all on degenerate input: a box with zero, negative, NaN or infinite
width or height never suppresses and is never suppressed (OpenCV treats two zero-area
boxes anywhere in the image as IoU 1); NaN scores sort last here.

Algorithm: where agent/native is built (setup.py compiles it when a C compiler is there),
one C loop for every layout: boxes by rank, each compared only with the kept boxes of its
class in the grid cells it covers (agent/native/fastpath.c says why that is exact). It is
1.4-6x OpenCV's ``NMSBoxes``/``NMSBoxesBatched`` on detector output and 13-51x on sparse
sets (benchmarks/bench_postprocess.py). Without it, three exact strategies, picked by how
the boxes look.

* OpenCV (``cv2.dnn.NMSBoxes``, OpenCV >= 4.7, whose ``NMSBoxesBatched`` marks the
  float-exact bindings) for detector output, clusters of boxes around each object,
  and for small sets: its C++ loop compares a box with the kept ones only until one
  suppresses it, and its stable sort by score keeps our tie rule. One call per class,
  so a box is compared with the kept boxes of its own class only (NMSBoxesBatched
  compares it with every kept box, offset away). Boxes without area skip it (rule
  above); scores <= 0 or NaN are replaced by their rank (OpenCV takes only positive).

Sparse boxes (most of them kept, where OpenCV's loop grows as boxes x kept) and
OpenCV before 4.7 (JetPack's 4.1.1 and 4.5.4) get the numpy strategies:

* Batched greedy (detector output: clusters of boxes around each object): the
  next 64 undecided boxes in rank order are resolved among themselves from a 64x64
  suppression matrix, then the ones kept suppress every later box in one vectorized
  step. A cluster collapses as soon as its best box is kept, so a few batches
  decide thousands of boxes, and ``max_detections`` stops the loop early.
* Sweep (sparse boxes, most of them kept, where batches would compare every pair):
  candidate pairs come from a sweep over boxes sorted by x1 (classes kept apart by
  torchvision's coordinate offset trick, used only for the sweep key so that IoUs
  are computed on the original coordinates), their IoUs are computed vectorized,
  and the greedy decision is resolved in rounds over the sparse "i suppresses j"
  graph: a box is kept once every higher-scored box that would suppress it is
  removed, and removed once one of them is kept.

The choice: up to 256 boxes, OpenCV. Otherwise the sweep's first step counts the
pairs of boxes that meet in x; up to 32 per box the sweep runs (so sparse sets cost
what they did before OpenCV was used). Above that, OpenCV when a tenth of the best
64 boxes overlap each other above the threshold (clusters), else the batched loop,
which hands over to the sweep when a batch suppresses under 10 % of the boxes it is
compared with (the boxes left are all ranked below the ones kept, so the hand-over is
exact). From 4096 boxes the look at the best 64 comes first (an argpartition, no sort):
clusters then skip the sort and the count, and sparse sets, slow there anyway, pay under
2 % for it. The numpy strategies decide a pair with the same ``_overlap_above``; every
strategy is exact, so the choice changes the time only (tests/test_nms.py forces each
and checks it against OpenCV).
"""

import logging

import numpy as np

from .. import native

log = logging.getLogger("edge_agent.postprocess")

# Cap on candidate pairs evaluated at once, to bound memory when boxes are huge.
_PAIR_CHUNK = 1 << 20


def _pairs(ends, start, stop):
    """Index pairs (p, q), p < q < ends[p] in sweep order, for p in [start, stop)."""
    ends = ends[start:stop]
    first = np.arange(start, stop) + 1
    counts = np.maximum(ends - first, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    p = np.repeat(first - 1, counts)
    # q runs first..ends-1 for each p: a global ramp minus each run's start offset.
    offsets = np.cumsum(counts) - counts
    q = np.arange(total) - np.repeat(offsets - first, counts)
    return p, q


def _overlap_above(inter, area_a, area_b, thr32):
    """OpenCV's test: overlap = 1.f - (float)jaccardDistance > thr, the distance 1 - inter/union in double."""
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = (1.0 - inter / (area_a + area_b - inter)).astype(np.float32)
    return (np.float32(1.0) - dist) > thr32


def _sweep_order(b, cls):
    """(sweep order, ends, cumulative pair counts): box p in sweep order meets boxes p+1..ends[p]-1 in x."""
    n = len(b)
    x1, x2 = b[:, 0], b[:, 2]
    valid = (x2 - x1 > 0) & (b[:, 3] - b[:, 1] > 0)
    # Sweep key: x1 shifted by class so that different classes never meet in x.
    lo = float(np.min(x1)) if n else 0.0
    span = float(np.max(x2)) - lo + 1.0
    shift = -lo if cls is None else cls.astype(np.float64) * span - lo
    k1 = x1 + shift
    k2 = np.where(valid, x2 + shift, -np.inf)  # an invalid box starts no pair
    xo = np.argsort(k1, kind="stable")
    # ends[p]: one past the last box whose x1 <= x2 of box p in sweep order.
    ends = np.searchsorted(k1[xo], k2[xo], side="right")
    return xo, ends, np.cumsum(np.maximum(ends - np.arange(1, n + 1), 0))


def _suppression_edges(b, cls, iou_threshold, sweep=None):
    """Edges (a, b) with a ranked before b and IoU(a, b) above the threshold (OpenCV rule)."""
    n = len(b)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    w = x2 - x1
    h = y2 - y1
    area = np.where((w > 0) & (h > 0), w * h, 0.0)
    xo, ends, cum = sweep if sweep is not None else _sweep_order(b, cls)
    # Work in sweep order: contiguous copies make the per-pair gathers cheaper.
    sx1, sy1, sx2, sy2, sarea = x1[xo], y1[xo], x2[xo], y2[xo], area[xo]
    thr32 = np.float32(iou_threshold)
    out_a, out_b = [], []
    # Chunk rows so that about _PAIR_CHUNK pairs at most are materialized at once.
    stops = np.searchsorted(cum, np.arange(_PAIR_CHUNK, int(cum[-1]), _PAIR_CHUNK)) + 1
    start = 0
    for stop in sorted(set(np.minimum(stops, n).tolist()) | {n}):
        p, q = _pairs(ends, start, stop)
        start = stop
        if not len(p):
            continue
        # y first: most pairs that meet in x miss in y.
        ih = np.minimum(sy2[p], sy2[q]) - np.maximum(sy1[p], sy1[q])
        hit = np.flatnonzero(ih > 0)
        p, q, ih = p[hit], q[hit], ih[hit]
        iw = np.minimum(sx2[p], sx2[q]) - np.maximum(sx1[p], sx1[q])
        sup = np.flatnonzero(_overlap_above(iw * ih, sarea[p], sarea[q], thr32) & (iw > 0))
        i, j = xo[p[sup]], xo[q[sup]]
        if cls is not None:
            same = cls[i] == cls[j]
            i, j = i[same], j[same]
        out_a.append(np.minimum(i, j))
        out_b.append(np.maximum(i, j))
    if not out_a:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    return np.concatenate(out_a), np.concatenate(out_b)


_BATCH = 64  # boxes resolved together by the batched greedy loop
_SPARSE = 0.1  # below this share of suppressed boxes per batch, the sweep takes over
_DENSE = 32  # x-overlapping pairs per box above which the batched loop is tried first
_CHUNK = 1 << 15  # box pairs compared at once by the batched loop


def _suppresses(b, area, cls, thr32, i, j):
    """bool [len(i), len(j)]: box i suppresses box j (the OpenCV rule), for index arrays i, j."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    iw = np.minimum(x2[i][:, None], x2[j]) - np.maximum(x1[i][:, None], x1[j])
    ih = np.minimum(y2[i][:, None], y2[j]) - np.maximum(y1[i][:, None], y1[j])
    sup = _overlap_above(iw * ih, area[i][:, None], area[j], thr32) & (iw > 0) & (ih > 0)
    if cls is not None:
        sup &= cls[i][:, None] == cls[j]
    return sup


def _resolve(sup):
    """Removed mask of greedy NMS within one batch, from its square suppression matrix (rank order)."""
    k = len(sup)
    rows = np.packbits(np.triu(sup, 1), axis=1, bitorder="little")
    masks = [int.from_bytes(rows[r].tobytes(), "little") for r in range(k)]
    removed = 0
    for r in range(k):  # 64 steps of Python int arithmetic: cheaper than 64 numpy calls
        if not (removed >> r) & 1:
            removed |= masks[r]
    bits = np.frombuffer(removed.to_bytes(rows.shape[1], "little"), np.uint8)
    return np.unpackbits(bits, bitorder="little")[:k].astype(bool)


def _sweep(b, cls, iou_threshold, sweep=None):
    """Greedy NMS over ranks 0..n-1 by the sweep (see the module docstring)."""
    a, c = _suppression_edges(b, cls, iou_threshold, sweep)
    return _greedy(len(b), a, c)


def _greedy_batched(b, cls, iou_threshold, limit, sweep):
    """Greedy NMS over ranks 0..n-1, _BATCH boxes at a time; hands sparse remainders to the sweep.

    ``sweep`` is ``_sweep_order(b, cls)``, already computed by the caller.
    """
    n = len(b)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    area = np.where((w > 0) & (h > 0), w * h, 0.0)
    thr32 = np.float32(iou_threshold)
    alive = np.arange(n)
    keep = []
    while alive.size and len(keep) < limit:
        head, rest = alive[:_BATCH], alive[_BATCH:]
        removed = _resolve(_suppresses(b, area, cls, thr32, head, head))
        if not keep and rest.size and removed.sum() < _SPARSE * len(head):
            return _sweep(b, cls, iou_threshold, sweep)  # sparse from the start: skip the batches
        kept = head[~removed]
        keep.append(kept)
        if rest.size and kept.size:
            before = rest.size
            # Column chunks of ~32k pairs: the temporaries stay in cache (3x faster at 5k boxes).
            step = max(64, _CHUNK // len(kept))
            hit = np.concatenate([_suppresses(b, area, cls, thr32, kept, rest[c:c + step]).any(0)
                                  for c in range(0, rest.size, step)])
            rest = rest[~hit]
            if rest.size > (1.0 - _SPARSE) * before:
                keep.append(rest[_sweep(b[rest], None if cls is None else cls[rest], iou_threshold)])
                break
        alive = rest
    return np.concatenate(keep)[:limit] if keep else np.empty(0, np.intp)


def _nms_boxes():
    try:
        import cv2
    except ImportError:
        return None
    return cv2.dnn.NMSBoxes if hasattr(cv2, "dnn") and hasattr(cv2.dnn, "NMSBoxesBatched") else None


_NMS_BOXES = _nms_boxes()
_SMALL = 256  # boxes below which OpenCV's loop wins whatever their layout


_PROBE = 64  # best boxes looked at to tell clusters from spread-out boxes
_LOOK_FIRST = 4096  # boxes from which that look comes before the sort (it costs sparse sets under 2 %)


def _clustered(b, cls, iou_threshold):
    """True when a tenth of the best boxes ``b`` (a few, in rank order; ``cls``: their classes
    or None) overlap another of them above the threshold: detector output, clusters, where
    OpenCV's loop stops early; not boxes spread out with most of them kept, where its
    kept-list loop grows as n x kept. It only picks a strategy (both are exact)."""
    iw = np.minimum(b[:, None, 2], b[:, 2]) - np.maximum(b[:, None, 0], b[:, 0])
    ih = np.minimum(b[:, None, 3], b[:, 3]) - np.maximum(b[:, None, 1], b[:, 1])
    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    with np.errstate(invalid="ignore"):
        over = inter > iou_threshold * (area[:, None] + area - inter)
    np.fill_diagonal(over, False)
    if cls is not None:
        over &= cls[:len(b), None] == cls[:len(b)]
    return over.any(1).sum() >= _SPARSE * len(b)


def _opencv(boxes, scores, cls, iou_threshold):
    """Kept indices, best first, by cv2.dnn.NMSBoxes (one call per class).

    OpenCV sorts by score with a stable sort, so ties keep the lower index first, as here.
    It only takes scores above a threshold >= 0: other scores (<= 0, NaN) are replaced by
    their descending rank in our order, which its sort then keeps.
    """
    if not scores.min() > 0:  # also false with a NaN
        ranks = np.empty(len(scores), np.float32)
        ranks[np.argsort(-scores, kind="stable")] = np.arange(len(scores), 0, -1)
        scores = ranks
    rects = boxes.copy()
    rects[:, 2:] -= rects[:, :2]  # x, y, w, h: w is exact for float32 corners, so x + w == x2
    with np.errstate(invalid="ignore", over="ignore"):
        # An infinite area (a corner at +-inf) meets every box at IoU 0 or NaN: it neither
        # suppresses nor is suppressed, as a box without area (OpenCV would decide otherwise).
        valid = (rects[:, 2] > 0) & (rects[:, 3] > 0) & np.isfinite(rects[:, 2] * rects[:, 3])
    everyone = bool(valid.all())
    thr, low = float(iou_threshold), 0.0  # OpenCV keeps score > low: every one here
    if cls is None and everyone:  # the common case, in one call
        return np.asarray(_NMS_BOXES(rects.tolist(), scores, low, thr), np.int64).reshape(-1)
    # Boxes sorted by class (stable: index order within a class), converted once; a class is a slice.
    idx = np.flatnonzero(valid)
    if cls is not None:
        idx = idx[np.argsort(cls[idx], kind="stable")]
        cuts = (np.flatnonzero(cls[idx][1:] != cls[idx][:-1]) + 1).tolist()
    else:
        cuts = []
    rl, sc = rects[idx].tolist(), scores[idx]
    kept = [idx[a + np.asarray(_NMS_BOXES(rl[a:b], sc[a:b], low, thr), np.intp).reshape(-1)]
            for a, b in zip([0] + cuts, cuts + [len(idx)])]
    if not everyone:
        kept.append(np.flatnonzero(~valid))  # never suppressed
    kept = np.concatenate(kept)
    return kept[np.lexsort((kept, -scores[kept]))].astype(np.int64)


def _greedy(n, a, b):
    """Resolve greedy NMS over ranks 0..n-1 given suppression edges a -> b (a < b)."""
    UNDECIDED, KEPT, REMOVED = 0, 1, 2
    state = np.zeros(n, np.int8)
    while True:
        blocked = np.zeros(n, bool)
        blocked[b] = True  # every remaining edge comes from a box not yet removed
        state[(state == UNDECIDED) & ~blocked] = KEPT
        killed = b[state[a] == KEPT]
        state[killed] = REMOVED
        live = (state[a] != REMOVED) & (state[b] == UNDECIDED)
        a, b = a[live], b[live]
        if not len(a):
            state[state == UNDECIDED] = KEPT
            return np.flatnonzero(state == KEPT)


def nms(boxes, scores, iou_threshold, class_ids=None, class_agnostic=False, max_detections=None):
    """Greedy NMS; return kept indices (int64) by descending score. See the module docstring.

    ``boxes`` is Nx4 x1,y1,x2,y2; with ``class_ids`` and not ``class_agnostic`` boxes of
    different classes never suppress each other. Raises ValueError on mismatched shapes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    n = len(boxes)
    if len(scores) != n:
        raise ValueError("nms: {} boxes but {} scores".format(n, len(scores)))
    if n == 0 or (max_detections is not None and max_detections <= 0):
        return np.empty(0, np.int64)
    cls = None
    if class_ids is not None and not class_agnostic:
        class_ids = np.asarray(class_ids).reshape(-1)
        if len(class_ids) != n:
            raise ValueError("nms: {} boxes but {} class ids".format(n, len(class_ids)))
        cls = class_ids.astype(np.int64)
    limit = n if max_detections is None else int(max_detections)
    if native.LIB is not None:  # the C loop (agent/native/fastpath.c): every layout in one pass
        return native.nms(boxes, np.argsort(-scores, kind="stable"), cls, iou_threshold, limit)
    if _NMS_BOXES is not None:
        if n <= _SMALL:
            return _opencv(boxes, scores, cls, iou_threshold)[:limit]
        if n >= _LOOK_FIRST:
            best = np.argpartition(-scores, _PROBE)[:_PROBE]  # the best boxes, in no order
            if _clustered(boxes[best], None if cls is None else cls[best], iou_threshold):
                return _opencv(boxes, scores, cls, iou_threshold)[:limit]
    order = np.argsort(-scores, kind="stable")
    b = boxes[order]
    ranked_cls = None if cls is None else cls[order]
    sweep = _sweep_order(b, ranked_cls)
    if sweep[2][-1] <= _DENSE * n:  # few boxes meet in x: the sweep has little to compare
        keep = _sweep(b, ranked_cls, iou_threshold, sweep)
    elif _NMS_BOXES is not None and n < _LOOK_FIRST and _clustered(b[:_PROBE], ranked_cls, iou_threshold):
        return _opencv(boxes, scores, cls, iou_threshold)[:limit]
    else:
        keep = _greedy_batched(b, ranked_cls, iou_threshold, limit, sweep)
    keep = order[keep[:limit]]
    return keep.astype(np.int64)


def batched_nms(boxes, scores, class_ids, iou_threshold, max_detections=None):
    """Class-aware NMS (torchvision's ``batched_nms`` contract); kept indices, int64."""
    return nms(boxes, scores, iou_threshold, class_ids=class_ids, max_detections=max_detections)


def postprocess(decoder, outputs, detection):
    """Decode raw model outputs and apply NMS per a DetectionConfig; (boxes, scores, class_ids).

    Models with NMS inside (``decoder.has_nms``) are only thresholded and truncated.
    Raises ModelError (from the decoder) when the outputs do not match its layout.
    """
    boxes, scores, class_ids = decoder.decode(
        outputs, detection.conf_threshold, detection.top_k, classes=detection.classes or None
    )
    if decoder.has_nms:
        keep = np.arange(min(len(scores), detection.max_detections))
    else:
        keep = nms(
            boxes,
            scores,
            detection.iou_threshold,
            class_ids=class_ids,
            class_agnostic=detection.class_agnostic,
            max_detections=detection.max_detections,
        )
    return boxes[keep], scores[keep], class_ids[keep]
