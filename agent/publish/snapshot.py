"""Snapshots: when to send one (``SnapshotPolicy``) and the JPEG itself (``render``).

A snapshot is the frame with its boxes drawn, capped to a byte size. The JPEG carries its metadata (schema_version, camera, seq, boot_id) as JSON in
a COM segment, so the MQTT payload stays a plain image for any viewer.
"""

import json
import logging
import struct
import time

log = logging.getLogger("edge_agent.mqtt")


def _draw(cv2, image, record):
    out = image.copy()
    for det in record.get("detections", ()):
        x1, y1, x2, y2 = [int(round(v)) for v in det["box"]]
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), 2)
        text = "{} {:.2f}".format(det["label"], det["confidence"])
        cv2.putText(out, text, (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 0), 1)
    return out


def _with_comment(jpeg, meta):
    """Insert a COM (0xFFFE) segment with ``meta`` as JSON right after SOI."""
    body = json.dumps(meta, separators=(",", ":")).encode("utf-8")[:65000]
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def render(image, record, max_bytes, quality=80):
    """JPEG bytes of ``image`` (BGR) with boxes, at most ``max_bytes``; None if impossible.

    Lowers the quality (down to 30) first, then the scale, until it fits.
    """
    import cv2  # lazy: OpenCV is optional for the publisher

    img = _draw(cv2, image, record)
    meta = {k: record.get(k) for k in ("schema_version", "device_id", "camera_id", "boot_id", "seq", "timestamp")}
    q = int(quality)
    for _ in range(20):
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:
            return None
        data = _with_comment(buf.tobytes(), meta)
        if len(data) <= max_bytes:
            return data
        if q > 30:
            q = max(30, q - 15)
        else:
            h, w = img.shape[:2]
            if w < 32 or h < 32:
                return None
            img = cv2.resize(img, (int(w * 0.75), int(h * 0.75)), interpolation=cv2.INTER_AREA)
    return None


def read_comment(jpeg):
    """The metadata dict of a JPEG made by ``render`` (None if absent)."""
    if jpeg[2:4] != b"\xff\xfe":
        return None
    (n,) = struct.unpack(">H", jpeg[4:6])
    return json.loads(jpeg[6:4 + n].decode("utf-8"))


class SnapshotPolicy(object):
    """Which frames of a camera get a snapshot, per ``mqtt.snapshot`` (interval_s, classes).

    One every ``interval_s`` per camera, and, when ``classes`` is set, one as soon as
    one of those labels appears in a camera's detections (at most one a second).
    ``wanted`` runs on the sink caller's thread, ``render`` on the publisher's.
    """

    def __init__(self, snap_config):
        self.config = snap_config
        self.off = not snap_config.enabled
        self._last = {}
        self._labels = {}

    def wanted(self, camera_id, record, now=None):
        """Whether this record's frame gets a snapshot; records that it did."""
        if self.off:
            return False
        snap = self.config
        now = time.monotonic() if now is None else now
        last = self._last.get(camera_id)
        due = last is None or now - last >= snap.interval_s
        if snap.classes:
            labels = {d["label"] for d in record["detections"]} & set(snap.classes)
            appeared = labels - self._labels.get(camera_id, set())
            if appeared and not due and now - last < 1.0:
                labels -= appeared  # at most one a second: still "new" on the next frame
            else:
                due = due or bool(appeared)
            self._labels[camera_id] = labels
        if due:
            self._last[camera_id] = now
        return due

    def render(self, record, image):
        """The JPEG for ``record`` (None if it cannot fit); without OpenCV, turns snapshots off."""
        snap = self.config
        try:
            data = render(image, record, snap.max_bytes, snap.quality)
        except ImportError:
            log.warning("mqtt.snapshot: OpenCV is not installed; snapshots are disabled")
            self.off = True
            return None
        if data is None:
            log.warning("mqtt.snapshot: cannot fit a snapshot of %s in %d bytes", record["camera_id"], snap.max_bytes)
        return data
