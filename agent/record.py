"""The detection record: one JSON object per processed frame.

The same record goes to JSON lines and to MQTT
(``{prefix}/{device}/{camera}/detections``); its schema ships as
``agent/schemas/detections.schema.json``. ``seq`` counts records per camera
since ``boot_id`` was drawn (one per agent start), so a consumer sees any gap.
"""

import itertools
import threading
import uuid

SCHEMA_VERSION = 1
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


def make_record(device_id, camera_id, seq, frame, size, labels, boxes, scores, class_ids, timing_ms):
    """Build the record for one frame; ``boxes`` are x1,y1,x2,y2 in frame pixels."""
    h, w = frame.image.shape[:2]
    detections = []
    for box, score, cls in zip(boxes.tolist(), scores.tolist(), class_ids.tolist()):
        x1, y1, x2, y2 = box
        detections.append(
            {
                "class_id": int(cls),
                "label": labels.get(int(cls), str(cls)),
                "confidence": round(score, 4),
                "box": [round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1)],
                "box_norm": [round(x1 / w, 5), round(y1 / h, 5), round(x2 / w, 5), round(y2 / h, 5)],
            }
        )
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
