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

STD_POSITION = 1.0 / 20
STD_VELOCITY = 1.0 / 160
# Standard deviations = height x these + those (the aspect ratio's are constants), per quantity:
_P, _V = STD_POSITION, STD_VELOCITY
_INIT_POS = (np.array([2 * _P, 2 * _P, 0, 2 * _P]), np.array([0, 0, 1e-2, 0]))
_INIT_VEL = (np.array([10 * _V, 10 * _V, 0, 10 * _V]), np.array([0, 0, 1e-5, 0]))
_PROCESS_POS = (np.array([_P, _P, 0, _P]), np.array([0, 0, 1e-2, 0]))
_PROCESS_VEL = (np.array([_V, _V, 0, _V]), np.array([0, 0, 1e-5, 0]))
_MEASURE = (np.array([_P, _P, 0, _P]), np.array([0, 0, 1e-1, 0]))


def _variances(h, weights):
    std = np.multiply.outer(h, weights[0]) + weights[1]
    return std * std


def xyxy_to_xyah(boxes):
    """N x 4 x1, y1, x2, y2 -> N x 4 centre x, centre y, aspect (w/h), height."""
    boxes = np.asarray(boxes, dtype=np.float64)
    out = np.empty_like(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = np.maximum(boxes[:, 3] - boxes[:, 1], 1e-3)
    out[:, 0] = boxes[:, 0] + w / 2
    out[:, 1] = boxes[:, 1] + h / 2
    out[:, 2] = w / h
    out[:, 3] = h
    return out


def xyah_to_xyxy(xyah):
    """The inverse of ``xyxy_to_xyah`` (N x 4)."""
    out = np.empty_like(xyah)
    h = xyah[:, 3]
    w = xyah[:, 2] * h
    out[:, 0] = xyah[:, 0] - w / 2
    out[:, 1] = xyah[:, 1] - h / 2
    out[:, 2] = out[:, 0] + w
    out[:, 3] = out[:, 1] + h
    return out


def initiate(xyah):
    """Means (N x 8) and covariances (N x 3 x 4) of new tracks from their first measurements (N x 4 xyah)."""
    n = len(xyah)
    means = np.zeros((n, 8))
    means[:, :4] = xyah
    covs = np.zeros((n, 3, 4))
    covs[:, 0] = _variances(xyah[:, 3], _INIT_POS)
    covs[:, 2] = _variances(xyah[:, 3], _INIT_VEL)
    return means, covs


def predict(means, covs):
    """One frame ahead: (means, covariances) of every track."""
    h = means[:, 3]
    means = means.copy()
    means[:, :4] += means[:, 4:]
    p, c, v = covs[:, 0], covs[:, 1], covs[:, 2]
    out = np.empty_like(covs)
    # F P F^T + Q per 2 x 2 block [[p, c], [c, v]] with F = [[1, 1], [0, 1]].
    out[:, 1] = c + v
    out[:, 0] = p + c + out[:, 1] + _variances(h, _PROCESS_POS)
    out[:, 2] = v + _variances(h, _PROCESS_VEL)
    return means, out


def update(means, covs, xyah):
    """Correct tracks with their matched measurements (row i measures track i)."""
    p, c, v = covs[:, 0], covs[:, 1], covs[:, 2]
    s = p + _variances(means[:, 3], _MEASURE)  # innovation variance
    k_pos, k_vel = p / s, c / s  # the gain, per block
    innovation = xyah - means[:, :4]
    means = means.copy()
    means[:, :4] += k_pos * innovation
    means[:, 4:] += k_vel * innovation
    out = np.empty_like(covs)
    out[:, 0] = p - k_pos * p  # P - K S K^T
    out[:, 1] = c - k_pos * c
    out[:, 2] = v - k_vel * c
    return means, out


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
