"""A cheap appearance cue for the tracker: the colour of each detection's inner region.

DeepSORT and BoT-SORT tell crossing objects apart with a re-identification network's
embedding per detection; on the CPU budget of a tracking step (about 0.3 ms per frame at
50 objects) that is out of reach, but a colour is not. ``describe`` reads a grid of
``GRID`` x ``GRID`` pixels spread over the central ``INNER`` of each box (a nearest-
neighbour downscale of just that region: one gather for all boxes, no resize of the
frame, about 50 us for 50 boxes on a frame not in cache) and keeps their per-channel median, so that the background in a
box's corners, an occluder's edge or a few noisy pixels do not move it. ``distance`` is
the Euclidean distance of two such colours scaled to [0, 1] (black to white is 1).
"""

import numpy as np

from .. import native

GRID = 3  # 9 pixels per box (seed 0: 3, 4 and 5 alike; each pixel of a fresh frame is a cache miss)
INNER = 0.5  # the central half of the box's width and height
_OFFSETS = ((np.arange(GRID) + 0.5) / GRID - 0.5) * INNER
SCALE = 1.0 / (255.0 * np.sqrt(3.0))


def describe(image, boxes):
    """The median colour (M x 3, 0..255; BGR as the image is) of the inner region of each box
    (M x 4 xyxy pixels) of ``image`` (H x W x 3 or H x W; a grey image gives three equal
    channels). Boxes partly outside the image read its nearest pixels. Where agent/native is
    built, its C loop for a uint8 image (the same values); the numpy below is its reference."""
    if native.LIB is not None and image.dtype == np.uint8:
        return native.colours(image, boxes, _OFFSETS)
    h, w = image.shape[:2]
    m = len(boxes)
    if not m:
        return np.zeros((0, 3))
    corners = boxes.reshape(m, 2, 2)  # (x1, y1), (x2, y2)
    centre = corners[:, 0] + corners[:, 1]
    centre *= 0.5
    at = (centre[:, :, None] + (corners[:, 1] - corners[:, 0])[:, :, None] * _OFFSETS).astype(np.intp)  # m x (x, y) x GRID
    np.maximum(at, 0, out=at)
    np.minimum(at, ((w - 1,), (h - 1,)), out=at)
    at[:, 1] *= w
    flat = image.reshape(h * w, -1)  # a view of a contiguous frame (take() on it: 10x a 2-D gather)
    pixels = flat.take((at[:, 1, :, None] + at[:, 0, None, :]).reshape(-1), axis=0).reshape(m, GRID * GRID, -1)
    colour = np.partition(pixels, GRID * GRID // 2, axis=1)[:, GRID * GRID // 2].astype(np.float64)  # the median
    if colour.shape[1] != 3:
        colour = np.repeat(colour[:, :1], 3, axis=1)
    return colour


def distance(a, b):
    """Colour distance of every row of ``a`` (N x 3) to every row of ``b`` (M x 3), in [0, 1]: N x M.
    The reference of the C paths' distance (the tracker's fused score and re-find costs), its
    additions in a fixed order (scipy's ``cdist`` is faster, but its order is its own)."""
    d = a[:, None, :] - b[None, :, :]
    d *= d
    out = d[:, :, 0] + d[:, :, 1]
    out += d[:, :, 2]
    np.sqrt(out, out=out)
    out *= SCALE
    return out
