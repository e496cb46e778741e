"""Zones: named polygons per camera, in fractions of the frame (``cameras[i].zones``).

A point is ``[x, y]`` with x and y in [0, 1] (x / width, y / height), so a zone holds
whatever resolution the camera delivers and can be checked at config load, before any
camera opens. A track is in a zone when the bottom centre of its box (where an object
stands on the ground) is inside the polygon (even-odd rule).

``polygon_problem`` is what the configuration loader calls: pure Python, no numpy.
"""

import numpy as np

MAX_POINTS = 100  # a zone is drawn by hand; this bounds the O(n^2) self-intersection check


def _orient(p, q, r):
    v = (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])
    return (v > 0) - (v < 0)


def _on_segment(p, q, r):
    """r, collinear with p-q, lies on the segment p-q."""
    return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and min(p[1], q[1]) <= r[1] <= max(p[1], q[1])


def segments_cross(p1, p2, p3, p4):
    """Whether segments p1-p2 and p3-p4 share a point (crossing, touching or overlapping)."""
    o1, o2, o3, o4 = _orient(p1, p2, p3), _orient(p1, p2, p4), _orient(p3, p4, p1), _orient(p3, p4, p2)
    if o1 != o2 and o3 != o4:
        return True
    return ((o1 == 0 and _on_segment(p1, p2, p3)) or (o2 == 0 and _on_segment(p1, p2, p4))
            or (o3 == 0 and _on_segment(p3, p4, p1)) or (o4 == 0 and _on_segment(p3, p4, p2)))


def polygon_problem(points):
    """What is wrong with a zone polygon, as (where, why) — where is '' or '[k]' — or None if it is fine."""
    if len(points) < 3:
        return "", "expected a polygon of at least 3 points [x, y], got {}".format(len(points))
    if len(points) > MAX_POINTS:
        return "", "expected at most {} points, got {}".format(MAX_POINTS, len(points))
    for k, p in enumerate(points):
        if len(p) != 2:
            return "[{}]".format(k), "expected a point [x, y], got {} numbers".format(len(p))
        if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0):
            return "[{}]".format(k), ("point [{}, {}] is outside the frame (x and y are fractions of the width "
                                      "and height, in [0, 1])".format(p[0], p[1]))
    n = len(points)
    for i in range(n):
        for j in range(i + 1, n):
            if j == i + 1 or (i == 0 and j == n - 1):
                continue  # neighbours share a corner
            if segments_cross(points[i], points[(i + 1) % n], points[j], points[(j + 1) % n]):
                return "", "self-intersecting polygon: edge {} ({} to {}) crosses edge {} ({} to {})".format(
                    i, list(points[i]), list(points[(i + 1) % n]), j, list(points[j]), list(points[(j + 1) % n]))
    area = sum(points[k][0] * points[(k + 1) % n][1] - points[(k + 1) % n][0] * points[k][1] for k in range(n))
    if abs(area) < 1e-12:
        return "", "the polygon has no area (its points are on one line)"
    return None


class Zones(object):
    """A camera's zones, for ``inside``: {zone name: list of [x, y] fractions} (validated)."""

    def __init__(self, polygons):
        self.names = sorted(polygons)
        self._edges = []
        for name in self.names:
            p = np.asarray(polygons[name], dtype=np.float64)
            q = np.roll(p, -1, axis=0)
            self._edges.append((p[:, 0], p[:, 1], q[:, 0], q[:, 1]))

    def __len__(self):
        return len(self.names)

    def inside(self, points):
        """For N points (N x 2 fractions), the zone names each is in: a list of N lists."""
        out = [[] for _ in range(len(points))]
        if not self.names or not len(points):
            return out
        x, y = points[:, 0:1], points[:, 1:2]
        for name, (x1, y1, x2, y2) in zip(self.names, self._edges):
            spans = (y1 > y) != (y2 > y)  # N x edges: the edge crosses the point's horizontal line
            with np.errstate(divide="ignore", invalid="ignore"):
                cross_x = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
            hits = (spans & (x < cross_x)).sum(1) % 2 == 1
            for k in np.flatnonzero(hits).tolist():
                out[k].append(name)
        return out
