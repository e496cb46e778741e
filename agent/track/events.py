"""Events and counts of one camera, from its confirmed tracks (``tracker.TrackUpdate``).

- ``start``: a track is confirmed (it has an id from then on);
- ``update``: its class changed (the summed-confidence vote moved), or it entered or
  left a zone;
- ``end``: the tracker ended it (lost for more than ``max_lost_frames``, evicted from a
  full table, or the agent stopping / the camera going away).

Counts are the confirmed tracks in view (including coasting ones) per class, in
total and per zone. Payloads are built by ``agent.publish.schema`` (``event``,
``counts``) from what this module returns.
"""

import numpy as np

from .zones import Zones


class Change(object):
    """One event to publish: ``kind`` (start, update, end), the track, the zones it is in,
    entered and left, and ``changed`` (for updates: 'class' and/or 'zones'), ``previous_class_id``."""

    __slots__ = ("kind", "track", "zones", "entered", "left", "changed", "previous_class_id")

    def __init__(self, kind, track, zones, entered=(), left=(), changed=(), previous_class_id=None):
        self.kind, self.track, self.zones = kind, track, zones
        self.entered, self.left, self.changed = list(entered), list(left), list(changed)
        self.previous_class_id = previous_class_id


class CameraEvents(object):
    """Turns each frame's tracks into Changes and counts; ``polygons``: the camera's zones config."""

    def __init__(self, polygons):
        self.zones = Zones(polygons)
        self._known = {}  # track id -> (class id, zones tuple) as last published
        self._classes_seen = set()
        self.counts = self._count([], [])  # {"total", "classes": {class id: n}, "zones": {...}}

    def update(self, tracks, ended, width, height):
        """(changes, counts changed?) for one frame: ``tracks`` in view, ``ended`` tracks."""
        where = self._where(tracks, width, height)
        changes = []
        known = self._known
        for t, zones in zip(tracks, where):
            zones = tuple(zones)
            before = known.get(t.id)
            if before is None:
                changes.append(Change("start", t, zones, entered=zones))
            elif before != (t.class_id, zones):
                changed = []
                if before[0] != t.class_id:
                    changed.append("class")
                if before[1] != zones:
                    changed.append("zones")
                changes.append(Change("update", t, zones, [z for z in zones if z not in before[1]],
                                      [z for z in before[1] if z not in zones], changed, before[0]))
            known[t.id] = (t.class_id, zones)
        for t in ended:
            before = known.pop(t.id, None)
            zones = before[1] if before else ()
            changes.append(Change("end", t, zones, left=zones))
        counts = self._count(tracks, where)
        changed = counts != self.counts
        self.counts = counts
        return changes, changed

    def close(self, ended):
        """Changes for the tracks ended by ``Tracker.close()``; the counts drop to zero."""
        changes, _ = self.update([], ended, 1, 1)
        return changes

    def _where(self, tracks, width, height):
        """The zones each track is in: the bottom centre of its box, as fractions of the frame."""
        if not len(self.zones) or not tracks:
            return [[] for _ in tracks]
        boxes = np.array([t.box for t in tracks], dtype=np.float64)
        points = np.stack([(boxes[:, 0] + boxes[:, 2]) / (2.0 * width), boxes[:, 3] / float(height)], 1)
        return self.zones.inside(np.clip(points, 0.0, 1.0))

    def _count(self, tracks, where):
        for t in tracks:
            self._classes_seen.add(t.class_id)
        classes = dict.fromkeys(self._classes_seen, 0)  # a class seen once reads 0 when it is gone
        zones = {name: {"total": 0, "classes": dict(classes)} for name in self.zones.names}
        for t, inside in zip(tracks, where):
            classes[t.class_id] += 1
            for name in inside:
                zones[name]["total"] += 1
                zones[name]["classes"][t.class_id] += 1
        return {"total": len(tracks), "classes": classes, "zones": zones}
