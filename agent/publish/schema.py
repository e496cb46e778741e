"""Every payload the agent publishes, built here with one ``SCHEMA_VERSION``.

Each builder returns a plain, JSON-ready dict in its final published shape; its JSON
Schema ships in ``agent/schemas/`` (named below). Sinks publish these dicts as they
are: the transport adds only what it alone knows (the status's ``timestamp`` and
``spool`` counters, at the moment it sends). Topics: docs/mqtt.md.

``seq`` counts records per camera since ``BOOT_ID`` was drawn (one per agent
start), so a consumer sees any gap. Events have a ``seq`` of their own, per camera
(a second Sequencer): a gap in it is a lost event. Track ids are per camera and per
boot too.

Version 2 (issue 17) added ``track_id`` to each detection, and the events and counts
payloads; nothing was renamed or removed (docs/mqtt.md, "Schema versions").
"""

import itertools
import threading
import time
import uuid

from .. import __version__

SCHEMA_VERSION = 2
BOOT_ID = uuid.uuid4().hex


class Sequencer(object):
    """Per-camera, per-boot sequence numbers starting at 1; thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters = {}

    def next(self, camera_id):
        with self._lock:
            counter = self._counters.setdefault(camera_id, itertools.count(1))
            return next(counter)


def _box(box, w, h):
    x1, y1, x2, y2 = box
    return ([round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
            [round(x1 / w, 5), round(y1 / h, 5), round(x2 / w, 5), round(y2 / h, 5)])


def make_record(device_id, camera_id, seq, frame, size, labels, boxes, scores, class_ids, timing_ms,
                track_ids=None):
    """The detection record of one frame (detections.schema.json); ``boxes`` are x1,y1,x2,y2 in pixels.

    ``track_ids`` (with tracking on): per detection its track's id, 0 for none (published as
    null); without it, detections have no ``track_id`` key. The same record goes to JSON
    lines and to ``{prefix}/{device}/{camera}/detections``.
    """
    h, w = frame.image.shape[:2]
    detections = []
    ids = track_ids.tolist() if track_ids is not None else None
    for k, (box, score, cls) in enumerate(zip(boxes.tolist(), scores.tolist(), class_ids.tolist())):
        pixels, norm = _box(box, w, h)
        det = {"class_id": int(cls), "label": labels.get(int(cls), str(cls)), "confidence": round(score, 4),
               "box": pixels, "box_norm": norm}
        if ids is not None:
            det["track_id"] = ids[k] or None
        detections.append(det)
    return {
        "schema_version": SCHEMA_VERSION,
        "device_id": device_id,
        "camera_id": camera_id,
        "boot_id": BOOT_ID,
        "seq": seq,
        "frame_index": int(frame.index),
        "timestamp": round(frame.timestamp, 6),
        "model_size": size,
        "image": {"width": int(w), "height": int(h)},
        "detections": detections,
        "timing_ms": {k: round(v, 3) for k, v in timing_ms.items()},
    }


def event(device_id, camera_id, seq, change, labels, width, height, timestamp):
    """One track event (events.schema.json) from an ``agent.track.events.Change``.

    ``timestamp``: the capture time of the frame that caused it (for 'end' after a loss:
    the frame on which the tracker gave up; ``last_seen`` says when it was last detected).
    """
    t = change.track
    best, best_norm = _box(t.best_box, width, height)
    box, box_norm = _box(t.box, width, height)
    out = {"schema_version": SCHEMA_VERSION, "device_id": device_id, "camera_id": camera_id, "boot_id": BOOT_ID,
           "seq": seq, "type": change.kind, "timestamp": round(timestamp, 6), "track_id": t.id,
           "class_id": int(t.class_id), "label": labels.get(int(t.class_id), str(t.class_id)),
           "first_seen": round(t.first_seen, 6), "last_seen": round(t.last_seen, 6),
           "duration_s": round(max(0.0, t.last_seen - t.first_seen), 3),
           "best_confidence": round(t.best_score, 4), "best_box": best, "best_box_norm": best_norm,
           "box": box, "box_norm": box_norm, "image": {"width": int(width), "height": int(height)},
           "zones": list(change.zones), "entered": change.entered, "left": change.left}
    if change.kind == "update":
        out["changed"] = change.changed
        if "class" in change.changed:
            out["previous_class_id"] = int(change.previous_class_id)
            out["previous_label"] = labels.get(int(change.previous_class_id), str(change.previous_class_id))
    if change.kind == "end":
        out["reason"] = t.end_reason or "lost"
    return out


def counts(device_id, camera_id, current, labels, timestamp=None):
    """A camera's current objects (counts.schema.json) from ``CameraEvents.counts``: per label, per zone."""
    def named(classes):
        out = {}
        for cls, n in sorted(classes.items()):
            label = labels.get(int(cls), str(cls))
            out[label] = out.get(label, 0) + n
        return out

    return {"schema_version": SCHEMA_VERSION, "device_id": device_id, "camera_id": camera_id, "boot_id": BOOT_ID,
            "timestamp": round(time.time() if timestamp is None else timestamp, 3), "total": current["total"],
            "classes": named(current["classes"]),
            "zones": {name: {"total": z["total"], "classes": named(z["classes"])}
                      for name, z in sorted(current["zones"].items())}}


def status(config, pipeline_status, started_at):
    """The 'online' status (status.schema.json) from ``Pipeline.status()``'s dict.

    Empty values (no engine yet, no camera open yet, no size reason) leave their key
    out, or at its default, so that a sink merging successive statuses (``dict.update``)
    keeps the last known value. ``mqtt`` reads 'connected': a subscriber only ever
    receives it over a live connection.
    """
    s = pipeline_status
    cameras = s.get("cameras") or {}
    out = {"schema_version": SCHEMA_VERSION, "state": "online", "device_id": config.device_id,
           "boot_id": BOOT_ID, "agent_version": __version__, "started_at": round(started_at, 3),
           "backend": s.get("backend") or config.backend, "model_size": s.get("size") or config.size,
           "engine_id": s.get("engine_id") or None,
           # The service's first status comes before the cameras open: the configured ids.
           "cameras": sorted(cameras) if cameras else [cam.id for cam in config.cameras],
           "mqtt": "connected"}
    for src, dst in (("state", "pipeline_state"), ("fps", "fps"), ("size_reason", "size_reason")):
        if s.get(src) not in (None, ""):
            out[dst] = s[src]
    if cameras:
        out["camera_states"] = {k: v.get("state", "running") for k, v in cameras.items()}
    return out


def offline(device_id, reason):
    """The 'offline' status (status.schema.json): 'stopped', or 'connection lost' as the last will."""
    return {"schema_version": SCHEMA_VERSION, "state": "offline", "device_id": device_id,
            "boot_id": BOOT_ID, "agent_version": __version__, "reason": reason,
            "timestamp": round(time.time(), 3)}


def timing(device_id, camera_id, summary, interval_s):
    """One camera's periodic timing (timing.schema.json) from a ``Pipeline.timing_summaries()`` entry."""
    return {"schema_version": SCHEMA_VERSION, "device_id": device_id, "boot_id": BOOT_ID,
            "camera_id": camera_id, "timestamp": round(time.time(), 3), "interval_s": interval_s,
            "fps": summary.get("fps", 0.0), "frames": summary.get("frames", 0),
            "dropped": summary.get("dropped", 0), "queue_depth": summary.get("queue_depth", 0),
            "state": summary.get("state", "running"), "stages": summary.get("stages", {})}


def health(device_id, readings, cameras):
    """The periodic device health (health.schema.json) from ``health.read_health()``'s readings.

    ``cameras``: {camera id: running | waiting | stalled | ended}.
    """
    payload = {"schema_version": SCHEMA_VERSION, "timestamp": round(time.time(), 3)}
    payload.update(readings)
    payload["cameras"] = cameras
    payload["device_id"] = device_id
    return payload


SPOOL_FIELDS = ("queued", "max_records", "dropped_total", "dropped_boot", "dropped_qos0")


def spool(device_id, counters):
    """The retained spool counters (spool.schema.json); ``counters`` has SPOOL_FIELDS and ``rejected``."""
    out = {"schema_version": SCHEMA_VERSION, "device_id": device_id, "boot_id": BOOT_ID,
           "timestamp": round(time.time(), 3)}
    for key in SPOOL_FIELDS + ("rejected",):
        out[key] = counters[key]
    return out


REPLY_STATUSES = ("accepted", "progress", "ok", "error")
REPLY_ERRORS = ("malformed", "too_large", "unknown_command", "bad_argument", "busy", "failed")


def reply(device_id, request_id, command, status, message, result=None, error=None):
    """A reply to a remote command (reply.schema.json): ``status`` one of REPLY_STATUSES; ``ok``
    and ``error`` are final (``final: true``); ``error`` (one of REPLY_ERRORS) names the problem
    and ``message`` says it in words."""
    out = {"schema_version": SCHEMA_VERSION, "device_id": device_id, "boot_id": BOOT_ID, "id": request_id,
           "command": command, "status": status, "final": status in ("ok", "error"), "message": message,
           "timestamp": round(time.time(), 3)}
    if error is not None:
        out["error"] = error
    if result is not None:
        out["result"] = result
    return out
