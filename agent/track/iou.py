"""IoU of boxes for the tracker, every pair at once: plain (``iou_matrix``) and grown by a
buffer per row (``buffered_iou``, C-BIoU); ``pairs`` gives the tracker both of its matrices
in one call. On the tracker's small matrices every numpy operation costs more in its call
than in its arithmetic, so x and y are computed together (corners as (x, y) pairs on the
first axis) and the temporaries are updated in place; where agent/native is built, ``pairs``
is one C loop instead (the same bits: tests/test_native.py).
"""

import numpy as np

from .. import native


def _iou(alo, ahi, blo, bhi):
    """IoU of boxes given by broadcastable corners (2 x ...): top left ``lo`` and bottom right ``hi``."""
    wh = np.minimum(ahi, bhi)
    wh -= np.maximum(alo, blo)
    np.maximum(wh, 0.0, out=wh)
    inter = wh[0] * wh[1]
    da, db = ahi - alo, bhi - blo
    union = da[0] * da[1] + db[0] * db[1]  # the two areas
    union -= inter
    np.maximum(union, 1e-9, out=union)
    inter /= union
    return inter


def iou_matrix(a, b):
    """IoU of every box of ``a`` (N x 4 xyxy) with every box of ``b`` (M x 4): N x M."""
    a, b = np.ascontiguousarray(a.T)[:, :, None], np.ascontiguousarray(b.T)[:, None, :]  # coordinates first
    return _iou(a[:2], a[2:], b[:2], b[2:])


def buffered_iou(a, b, buffer, out=None):
    """IoU of ``a`` (N x 4) and ``b`` (M x 4) with both boxes of pair (i, j) grown by ``buffer[i]``
    times their width and height on each side (C-BIoU, Yang et al. 2023: a lost track's
    prediction is less sure, so it may meet a detection it no longer overlaps). Only the
    rows with a buffer cost more than ``iou_matrix``; ``out``: their plain IoU, updated in place."""
    if out is None:
        out = iou_matrix(a, b)
    rows = buffer.nonzero()[0]
    if len(rows):
        g = buffer[rows][:, None]  # L x 1
        r = np.ascontiguousarray(a[rows].T)[:, :, None]  # 4 x L x 1
        grow = r[2:] - r[:2]
        grow *= g
        b = np.ascontiguousarray(b.T)[:, None, :]  # 4 x 1 x M
        bgrow = b[2:] - b[:2]
        bgrow = bgrow * g  # 2 x L x M
        out[rows] = _iou(r[:2] - grow, r[2:] + grow, b[:2] - bgrow, b[2:] + bgrow)
    return out


def pairs(tracks, boxes, buffer=None):
    """(IoU of ``tracks`` x ``boxes``, track i's pairs grown by ``buffer[i]`` when given (C-BIoU);
    IoU of ``boxes`` x ``boxes``): the tracker's two matrices, N x M and M x M."""
    n = len(tracks)
    both = np.concatenate([tracks, boxes])
    if native.LIB is not None:
        grow = None if buffer is None else np.concatenate([buffer, np.zeros(len(boxes))])
        both = native.iou(both, boxes, grow)
    else:
        both = iou_matrix(both, boxes)
        if buffer is not None:
            buffered_iou(tracks, boxes, buffer, out=both[:n])
    return both[:n], both[n:]
