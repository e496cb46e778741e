"""IoU of boxes for the tracker, every pair at once: plain (``iou_matrix``) and grown by a
buffer per row (``buffered_iou``, C-BIoU). Each numpy operation on a tracks x detections
matrix costs as much as the arithmetic of a box, so the temporaries are updated in place.
"""

import numpy as np


def _area(x1, y1, x2, y2):
    return (x2 - x1) * (y2 - y1)


def _iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """IoU of boxes given by broadcastable coordinates."""
    w = np.minimum(ax2, bx2)
    w -= np.maximum(ax1, bx1)
    np.maximum(w, 0.0, out=w)
    h = np.minimum(ay2, by2)
    h -= np.maximum(ay1, by1)
    np.maximum(h, 0.0, out=h)
    w *= h  # the intersection
    union = _area(ax1, ay1, ax2, ay2) + _area(bx1, by1, bx2, by2)
    union -= w
    np.maximum(union, 1e-9, out=union)
    w /= union
    return w


def iou_matrix(a, b):
    """IoU of every box of ``a`` (N x 4 xyxy) with every box of ``b`` (M x 4): N x M."""
    a, b = a.T, b.T
    return _iou(a[0][:, None], a[1][:, None], a[2][:, None], a[3][:, None], b[0], b[1], b[2], b[3])


def buffered_iou(a, b, buffer, out=None):
    """IoU of ``a`` (N x 4) and ``b`` (M x 4) with both boxes of pair (i, j) grown by ``buffer[i]``
    times their width and height on each side (C-BIoU, Yang et al. 2023: a lost track's
    prediction is less sure, so it may meet a detection it no longer overlaps). Only the
    rows with a buffer cost more than ``iou_matrix``; ``out``: their plain IoU, updated in place."""
    if out is None:
        out = iou_matrix(a, b)
    rows = buffer.nonzero()[0]
    if len(rows):
        g = buffer[rows][:, None]
        r = a[rows]
        gw, gh = (r[:, 2:3] - r[:, 0:1]) * g, (r[:, 3:4] - r[:, 1:2]) * g
        bx1, by1, bx2, by2 = b.T
        bw, bh = (bx2 - bx1) * g, (by2 - by1) * g  # L x M
        out[rows] = _iou(r[:, 0:1] - gw, r[:, 1:2] - gh, r[:, 2:3] + gw, r[:, 3:4] + gh,
                         bx1 - bw, by1 - bh, bx2 + bw, by2 + bh)
    return out
