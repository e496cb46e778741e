"""A constant-velocity Kalman filter over boxes, for all of a camera's tracks at once.

The state of a track is ``cx, cy, a, h`` (centre, aspect ratio w/h, height) and their
velocities per frame; a detection measures the first four. The noise model is
SORT/DeepSORT's and ByteTrack's: standard deviations proportional to the box height,
so that a small and a large object are equally sure of their position relative to
their size.

With that model (F moves each quantity by its own velocity; the process and measurement
noises are diagonal; the initial covariance is diagonal), the 8 x 8 covariance never
couples two different quantities: it is four independent 2 x 2 blocks, one per
quantity k = (position variance p_k, position-velocity covariance c_k, velocity
variance v_k). So the covariance is kept as those three N x 4 arrays (``covs``:
N x 3 x 4) and every step is a few elementwise operations for all tracks at once,
exactly the full filter's numbers (tests/test_track.py checks it against the 8 x 8 one).
"""

import numpy as np

from .. import native

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160
# Standard deviations = height x the first row + the second (the aspect ratio's are constants),
# per quantity (cx, cy, a, h); each pair of rows below is (positions, velocities) side by side:
# one numpy operation gives both.
_P, _V = STD_POSITION, STD_VELOCITY
_INIT = np.array([[2 * _P, 2 * _P, 0, 2 * _P, 10 * _V, 10 * _V, 0, 10 * _V], [0, 0, 1e-2, 0, 0, 0, 1e-5, 0]])
_PROCESS = np.array([[_P, _P, 0, _P, _V, _V, 0, _V], [0, 0, 1e-2, 0, 0, 0, 1e-5, 0]])
_MEASURE = np.array([[_P, _P, 0, _P], [0, 0, 1e-1, 0]])


def _variances(h, weights):
    """(h x weights[0] + weights[1]) squared, per row of ``h`` (N): N x len(weights[0])."""
    std = h[:, None] * weights[0]
    std += weights[1]
    std *= std
    return std


def xyxy_to_xyah(boxes):
    """N x 4 x1, y1, x2, y2 -> N x 4 centre x, centre y, aspect (w/h), height (the C path where built)."""
    if native.LIB is not None:
        return native.xyxy_to_xyah(boxes)
    boxes = np.asarray(boxes, dtype=np.float64)
    out = np.empty_like(boxes)
    wh = boxes[:, 2:] - boxes[:, :2]
    np.maximum(wh[:, 1], 1e-3, out=wh[:, 1])
    np.add(boxes[:, :2], wh / 2, out=out[:, :2])
    np.divide(wh[:, 0], wh[:, 1], out=out[:, 2])
    out[:, 3] = wh[:, 1]
    return out


def xyah_to_xyxy(xyah):
    """The inverse of ``xyxy_to_xyah`` (N x 4; the C path where built)."""
    if native.LIB is not None:
        return native.xyah_to_xyxy(xyah)
    out = np.empty_like(xyah)
    wh = xyah[:, 2:].copy()
    wh[:, 0] *= wh[:, 1]  # w = a x h
    np.subtract(xyah[:, :2], wh / 2, out=out[:, :2])
    np.add(out[:, :2], wh, out=out[:, 2:])
    return out


def initiate(xyah, means=None, covs=None):
    """Means (N x 8) and covariances (N x 3 x 4) of new tracks from their first measurements (N x 4
    xyah); written into ``means`` and ``covs`` when given (zeros: velocities and cross terms are 0)."""
    n = len(xyah)
    if means is None:
        means, covs = np.zeros((n, 8)), np.zeros((n, 3, 4))
    means[:, :4] = xyah
    var = _variances(xyah[:, 3], _INIT)
    covs[:, 0], covs[:, 2] = var[:, :4], var[:, 4:]
    return means, covs


def predict(means, covs):
    """One frame ahead, in place: the means and covariances of every track (returned, for chaining).
    Where agent/native is built, its C loop (the same bits); the numpy below is its reference."""
    if native.LIB is not None:
        return native.kalman_predict(means, covs, _PROCESS)
    q = _variances(means[:, 3], _PROCESS)  # process noise: positions, velocities
    means[:, :4] += means[:, 4:]
    p, c, v = covs[:, 0], covs[:, 1], covs[:, 2]
    # F P F^T + Q per 2 x 2 block [[p, c], [c, v]] with F = [[1, 1], [0, 1]]: p + c + (c + v) + q_p,
    # c + v, v + q_v (in this order: p reads the old c, then the new).
    p += c
    c += v
    p += c
    p += q[:, :4]
    v += q[:, 4:]
    return means, covs


def update(means, covs, xyah):
    """Correct tracks with their matched measurements (row i measures track i), in place (returned).
    Where agent/native is built, its C loop (the same bits); the numpy below is its reference."""
    if native.LIB is not None:
        return native.kalman_update(means, covs, xyah, _MEASURE)
    s = _variances(means[:, 3], _MEASURE)
    s += covs[:, 0]  # innovation variance
    gain = covs[:, :2] / s[:, None]  # per block: position (p / s) and velocity (c / s)
    innovation = xyah - means[:, :4]
    means += (gain * innovation[:, None]).reshape(-1, 8)
    # P - K S K^T per block: v - (c / s) c first, while c is the old one; then p and c.
    covs[:, 2] -= gain[:, 1] * covs[:, 1]
    covs[:, :2] -= gain[:, :1] * covs[:, :2]
    return means, covs


def full_covariance(covs):
    """The 8 x 8 covariances (N x 8 x 8) that ``covs`` (N x 3 x 4) stands for (tests, debugging)."""
    n = len(covs)
    out = np.zeros((n, 8, 8))
    k = np.arange(4)
    out[:, k, k] = covs[:, 0]
    out[:, k, k + 4] = covs[:, 1]
    out[:, k + 4, k] = covs[:, 1]
    out[:, k + 4, k + 4] = covs[:, 2]
    return out
