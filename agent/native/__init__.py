"""The CPU's hand-written fast paths in C (``fastpath.c``), called through ctypes.

setup.py builds ``fastpath.c`` as an optional extension (a C compiler is all it needs: no
Python or numpy headers). Where it was not built (no compiler at install time, or a
checkout run from its source tree without ``python setup.py build_ext --inplace``),
``LIB`` is None and the callers run their numpy paths. Every function here has a
reference that the tests hold it to exactly, named in its docstring.
"""

import ctypes
import importlib.machinery
import logging
import os

import numpy as np

log = logging.getLogger("edge_agent.native")

_HERE = os.path.dirname(os.path.abspath(__file__))
_P = ctypes.c_void_p


def _find():
    """The built library's path for this interpreter, or None."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(_HERE, "_fastpath" + suffix)
        if os.path.isfile(path):
            return path
    return None


def _load():
    path = _find()
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:  # a build for another machine, or a broken file: the numpy paths run
        log.warning("native fast paths not loaded (%s): the numpy paths run", e)
        return None
    lib.ea_nms.argtypes = [_P, _P, _P, ctypes.c_int64, ctypes.c_float, ctypes.c_int64, _P]
    lib.ea_nms.restype = ctypes.c_int64
    lib.ea_pass_cost.argtypes = [_P, _P, ctypes.c_int64, _P, ctypes.c_int64, _P, ctypes.c_int64, ctypes.c_double, _P]
    lib.ea_pass_cost.restype = ctypes.c_int64
    lib.ea_refind_cost.argtypes = [_P, _P, ctypes.c_int64, _P, _P, ctypes.c_int64, _P, ctypes.c_int64, _P,
                                   ctypes.c_double, ctypes.c_double, ctypes.c_double, _P]
    lib.ea_refind_cost.restype = ctypes.c_int64
    i64 = ctypes.c_int64
    for name, args in (("ea_iou", [_P, i64, _P, i64, _P, _P]),
                       ("ea_colours", [_P, i64, i64, i64, i64, i64, i64, _P, i64, _P, i64, _P]),
                       ("ea_kalman_predict", [_P, i64, _P, i64, i64, _P]),
                       ("ea_kalman_update", [_P, i64, _P, i64, i64, _P, _P]),
                       ("ea_best_class", [_P, i64, i64, i64, _P, _P]),
                       ("ea_xyxy_to_xyah", [_P, i64, _P]),
                       ("ea_detection_flags", [_P, i64, _P, ctypes.c_double, ctypes.c_double, _P, _P]),
                       ("ea_learn_colours", [_P, i64, i64, i64, _P, _P, _P, _P, ctypes.c_double, ctypes.c_double]),
                       ("ea_xyah_to_xyxy", [_P, i64, i64, _P]),
                       ("ea_similarity", [_P, i64, i64, _P, _P, _P, _P, ctypes.c_double, ctypes.c_double,
                                          ctypes.c_double, _P])):
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = None
    return lib


LIB = _load()


_AT = ctypes.c_void_p.from_address


def _data_field():
    """Where an ndarray keeps its data pointer: right after the object's header (ob_refcnt,
    ob_type), as numpy's ABI lays out PyArrayObject. Checked on a probe array; None if not there."""
    probe = np.arange(3.0)
    offset = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    return offset if _AT(id(probe) + offset).value == probe.ctypes.data else None


_DATA = _data_field()


def _ptr(a):
    """The address of ``a``'s first element (None for None). Read from the array object itself
    (0.08 us; the tracker passes about 50 arrays a frame), or through ``a.ctypes`` (0.5 us) if
    numpy lays it out otherwise. The caller keeps ``a`` alive for the call."""
    if a is None:
        return None
    return _AT(id(a) + _DATA).value if _DATA is not None else a.ctypes.data


def _c(dtype, *arrays):
    """Each array C-ordered with ``dtype`` (itself where it already is; None stays None). The check
    first: numpy 1.19's ascontiguousarray is Python, 1.2 us a call (JetPack 4)."""
    return [a if a is None or (type(a) is np.ndarray and a.dtype == dtype and a.flags.c_contiguous)
            else np.ascontiguousarray(a, dtype) for a in arrays]


def nms(boxes, order, cls, iou_threshold, limit):
    """Greedy NMS (reference: ``agent.postprocess.nms_reference``): kept indices (int64), best first.

    ``boxes``: N x 4 x1 y1 x2 y2; ``order``: the visiting order (best first); ``cls``: the class
    of each box, or None (class-agnostic); at most ``limit`` kept. Raises MemoryError when the C
    side could not allocate.
    """
    (boxes,), (order, cls) = _c(np.float64, boxes), _c(np.int64, order, cls)
    n = len(order)
    keep = np.empty(max(min(n, int(limit)), 1), np.int64)
    k = LIB.ea_nms(_ptr(boxes), _ptr(order), _ptr(cls), n, float(iou_threshold), int(limit), _ptr(keep))
    if k < 0:
        raise MemoryError("nms: the native path could not allocate its grid for {} boxes".format(n))
    return keep[:k]


def best_class(scores):
    """(best score float32, first class with it int32) per column of ``scores`` (nc x n float32, rows
    contiguous), as ``scores.max(0)`` and ``scores.argmax(0)`` (a NaN column's best is NaN), or
    None for other arrays. Reference: agent.postprocess.decode.decode_v8_reference."""
    if scores.dtype != np.float32 or scores.ndim != 2 or scores.strides[1] != 4 or not scores.shape[0]:
        return None
    n = scores.shape[1]
    best, cls = np.empty(n, np.float32), np.empty(n, np.int32)
    LIB.ea_best_class(_ptr(scores), scores.shape[0], n, scores.strides[0] // 4, _ptr(best), _ptr(cls))
    return best, cls


def iou(a, b, buffer=None):
    """IoU of every box of ``a`` (N x 4 xyxy) with every box of ``b`` (M x 4): N x M; with
    ``buffer`` (N), row i's pairs grown by buffer[i] first (C-BIoU). Reference: agent.track.iou,
    ``iou_matrix`` and ``buffered_iou`` (the same bits)."""
    a, bt, buffer = _c(np.float64, a, np.asarray(b, np.float64).T, buffer)  # b coordinates first: the loop vectorizes
    out = np.empty((len(a), bt.shape[1]))
    LIB.ea_iou(_ptr(a), len(a), _ptr(bt), out.shape[1], _ptr(buffer), _ptr(out))
    return out


def colours(image, boxes, offsets):
    """Median colour of the pixel grid ``offsets`` mid-box, per box (M x 3 float64) of a uint8 image
    (any strides). Reference: agent.track.appearance.describe (the same values)."""
    boxes, offsets = _c(np.float64, boxes, offsets)
    out = np.empty((len(boxes), 3))
    h, w = image.shape[:2]
    channels, step = (image.shape[2], image.strides[2]) if image.ndim == 3 else (1, 0)
    LIB.ea_colours(_ptr(image), h, w, channels, image.strides[0], image.strides[1], step, _ptr(boxes), len(boxes),
                   _ptr(offsets), len(offsets), _ptr(out))
    return out


def _rows(means, covs):
    """(means, its row step, covariances, its row step): pointers and steps in doubles of the float64
    means (N x 8) and covariances (N x 3 x 4), each row contiguous (views of the tracker's table are)."""
    if (means.dtype != np.float64 or covs.dtype != np.float64 or means.strides[1] != 8
            or covs.strides[1:] != (32, 8)):
        raise ValueError("kalman: means and covariances must be float64 arrays with contiguous rows")
    return _ptr(means), means.strides[0] // 8, _ptr(covs), covs.strides[0] // 8


def kalman_predict(means, covs, noise):
    """agent.track.kalman.predict in place (the same bits); ``noise``: its process weights (2 x 8)."""
    if len(means):
        (noise,) = _c(np.float64, noise)
        LIB.ea_kalman_predict(*_rows(means, covs), len(means), _ptr(noise))
    return means, covs


def kalman_update(means, covs, xyah, noise):
    """agent.track.kalman.update in place (the same bits); ``noise``: its measurement weights (2 x 4)."""
    if len(means):
        xyah, noise = _c(np.float64, xyah, noise)
        LIB.ea_kalman_update(*_rows(means, covs), len(means), _ptr(xyah), _ptr(noise))
    return means, covs


def xyxy_to_xyah(boxes):
    """agent.track.kalman.xyxy_to_xyah (the same bits): N x 4."""
    (boxes,) = _c(np.float64, boxes)
    out = np.empty((len(boxes), 4))
    LIB.ea_xyxy_to_xyah(_ptr(boxes), len(boxes), _ptr(out))
    return out


def xyah_to_xyxy(xyah):
    """agent.track.kalman.xyah_to_xyxy (the same bits): N x 4; ``xyah`` may be a view of strided rows."""
    if xyah.dtype != np.float64 or xyah.strides[1] != 8:
        (xyah,) = _c(np.float64, xyah)
    out = np.empty((len(xyah), 4))
    LIB.ea_xyah_to_xyxy(_ptr(xyah), len(xyah), xyah.strides[0] // 8, _ptr(out))
    return out


def similarity(iou, track_colours, coloured, colours, clean, scale, weight, gate):
    """The tracker's fused score of every track and detection pair (N x M). Reference:
    agent.track.tracker.Tracker._similarity (the same bits)."""
    iou, track_colours, coloured, colours = _c(np.float64, iou, track_colours, coloured, colours)
    (clean,) = _c(np.uint8, clean)
    out = np.empty(iou.shape)
    LIB.ea_similarity(_ptr(iou), iou.shape[0], iou.shape[1], _ptr(track_colours), _ptr(coloured), _ptr(colours),
                      _ptr(clean), float(scale), float(weight), float(gate), _ptr(out))
    return out


def refind_cost(pred, rows, boxes, cols, track_colours, colours, scale, gate, reach):
    """(cost, single): the cost matrix (len(rows) x len(cols)) of re-finding lost tracks ``rows`` by
    colour among the detections ``cols`` (the colour distance where within ``gate`` and ``reach``,
    else 2), and whether no row or column has two pairs within both. ``track_colours``: N x 3,
    rows may be strided (the tracker's table). Reference: agent.track.tracker.Tracker._refind
    (the same bits). Raises MemoryError when the C side could not allocate."""
    pred, boxes, colours = _c(np.float64, pred, boxes, colours)
    rows, cols = _c(np.int64, rows, cols)
    if track_colours.dtype != np.float64 or track_colours.strides[1] != 8:
        (track_colours,) = _c(np.float64, track_colours)
    cost = np.empty((len(rows), len(cols)))
    single = LIB.ea_refind_cost(_ptr(pred), _ptr(rows), len(rows), _ptr(boxes), _ptr(cols), len(cols),
                                _ptr(track_colours), track_colours.strides[0] // 8, _ptr(colours), float(scale),
                                float(gate), float(reach), _ptr(cost))
    if single < 0:
        raise MemoryError("refind_cost: the native path could not allocate")
    return cost, bool(single)


def detection_flags(dd, scores, duplicate_iou, isolated_iou):
    """(duplicate, clean) bool per detection from their pairwise IoU ``dd`` (M x M). Reference:
    agent.track.tracker._flags."""
    dd, scores = _c(np.float64, dd, scores)
    m = len(scores)
    duplicate, clean = np.empty(m, np.bool_), np.empty(m, np.bool_)
    LIB.ea_detection_flags(_ptr(dd), m, _ptr(scores), float(duplicate_iou), float(isolated_iou), _ptr(duplicate),
                           _ptr(clean))
    return duplicate, clean


def learn_colours(rows, colour, di, colours, scores, clean, high, momentum):
    """agent.track.tracker.Tracker._learn in place on ``rows`` (its state rows, float64 C order; the
    colour at column ``colour``, its flag next): the same bits."""
    if rows.dtype != np.float64 or not rows.flags.c_contiguous:
        raise ValueError("learn_colours: rows must be a C-ordered float64 table")
    (di,), (colours, scores), (clean,) = _c(np.int64, di), _c(np.float64, colours, scores), _c(np.bool_, clean)
    LIB.ea_learn_colours(_ptr(rows), len(di), rows.shape[1], int(colour), _ptr(di), _ptr(colours), _ptr(scores),
                         _ptr(clean), float(high), float(momentum))


def pass_cost(iou, sim, rows, cols, min_iou):
    """(cost, single): -(``sim``, or ``iou`` when None) for tracks ``rows`` x detections ``cols``, -0
    where the IoU is below ``min_iou`` (one association pass's cost), and whether every row and
    column has at most one candidate (cost < 0). Reference: agent.track.tracker.Tracker._match.
    Raises MemoryError when the C side could not allocate."""
    (iou, sim), (rows, cols) = _c(np.float64, iou, sim), _c(np.int64, rows, cols)
    out = np.empty((len(rows), len(cols)))
    single = LIB.ea_pass_cost(_ptr(iou), _ptr(sim), iou.shape[1], _ptr(rows), len(rows), _ptr(cols), len(cols),
                              float(min_iou), _ptr(out))
    if single < 0:
        raise MemoryError("pass_cost: the native path could not allocate")
    return out, bool(single)
