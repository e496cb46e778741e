"""The tracking stage: a frame's Detections in; track ids, events and counts out, to the sinks.

``TrackingStage.frame`` runs on the pipeline's output thread, once per frame of a
camera, in frame order (its time counts in the ``publish`` stage); it keeps each
camera's ``CameraTracking`` on the pipeline's Camera object. ``publish_counts`` runs on
the service loop every timing interval; ``close`` at a stop or when a reload removes a
camera. A lock per camera makes them take turns, so that the retained counts a broker
keeps are never older than the last change.
"""

import dataclasses
import logging
import threading
import time

import numpy as np

from ..publish import schema
from ..publish.schema import Sequencer
from .events import CameraEvents
from .tracker import Tracker, check_available

log = logging.getLogger("edge_agent.track")


def detection_settings(config):
    """The DetectionConfig the detector runs with: with tracking on, down to ``tracking.low_threshold``
    (ByteTrack's second pass needs the low-confidence detections; records still publish only
    those at or above ``detection.conf_threshold``)."""
    d = config.detection
    if not config.tracking.enabled or config.tracking.low_threshold >= d.conf_threshold:
        return d
    return dataclasses.replace(d, conf_threshold=config.tracking.low_threshold)


class Step(object):
    """What one frame gave: ``keep`` (mask of the detections to publish), ``track_ids`` (of
    those kept; 0: none), ``changes`` (events.Change), ``counts_changed``."""

    __slots__ = ("keep", "track_ids", "changes", "counts_changed")

    def __init__(self, keep, track_ids, changes, counts_changed):
        self.keep, self.track_ids, self.changes, self.counts_changed = keep, track_ids, changes, counts_changed


class CameraTracking(object):
    """Tracker + events of one camera (``settings``: TrackingConfig; ``zones``: the camera's polygons).

    Raises AgentError when scipy is missing.
    """

    def __init__(self, settings, zones):
        self.tracker = Tracker(settings)
        self.events = CameraEvents(zones)
        self.lock = threading.Lock()
        self.closed = False

    def step(self, found, timestamp, width, height, conf_threshold, image=None):
        """Track one frame's Detections; detections below ``conf_threshold`` feed the tracker only.
        ``image``: the frame, for the tracker's appearance cue."""
        with self.lock:
            if self.closed:
                keep = found.scores >= conf_threshold
                return Step(keep, np.zeros(int(keep.sum()), np.int64), [], False)
            up = self.tracker.update(found.boxes, found.scores, found.class_ids, timestamp, image)
            changes, counts_changed = self.events.update(up.tracks, up.ended, width, height)
            keep = found.scores >= conf_threshold
            return Step(keep, up.track_ids[keep], changes, counts_changed)

    def close(self):
        """End every track (events 'end', reason 'stopped'); counts drop to zero. Idempotent."""
        with self.lock:
            if self.closed:
                return []
            self.closed = True
            return self.events.close(self.tracker.close())

    @property
    def counts(self):
        return self.events.counts


class CameraTrackState(object):
    """What TrackingStage keeps on a pipeline Camera (``camera.track``)."""

    def __init__(self):
        self.tracking = None  # its CameraTracking, made by the output thread at the first frame
        self.retired = False  # closed (a reload removed the camera) or its tracker failed: no tracking any more
        self.size = (1, 1)  # the last frame's width and height (for the events of a closing tracker)
        self.labels = {}


class TrackingStage(object):
    """Every camera's tracking for the pipeline, sending events and counts to ``sinks``.

    The methods take the configuration in force (a reload replaces it) and pipeline
    Cameras (``id``, ``cam`` (its CameraConfig), ``track`` (a CameraTrackState)).
    """

    def __init__(self, sinks):
        self.sinks = sinks
        self._seq = Sequencer()  # events count on their own (docs/mqtt.md)

    @staticmethod
    def prepare(detector, config):
        """``detector`` set to run down to ``tracking.low_threshold`` when tracking is on; returns it."""
        detector.detection = detection_settings(config)
        return detector

    @staticmethod
    def check(config):
        """Raise AgentError if tracking is on but cannot run (no scipy)."""
        if config.tracking.enabled:
            check_available()

    def frame(self, config, camera, found, frame, labels):
        """Track one frame: (boxes, scores, class ids, track ids or None) of the detections to publish."""
        conf = config.detection.conf_threshold
        state = camera.track
        if config.tracking.enabled and not state.retired:
            h, w = frame.image.shape[:2]
            state.size, state.labels = (w, h), labels
            try:
                if state.tracking is None:
                    state.tracking = CameraTracking(config.tracking, camera.cam.zones)
                step = state.tracking.step(found, frame.timestamp, w, h, conf, frame.image)
            except Exception:  # a tracker bug must not stop the detections: this camera goes on untracked
                log.exception("%s: tracking failed; the camera continues without it", camera.id)
                state.retired = True
            else:
                self._events(config, camera, step.changes, frame.timestamp)
                if step.counts_changed:
                    self._counts(config, camera)
                k = step.keep
                return found.boxes[k], found.scores[k], found.class_ids[k], step.track_ids
        keep = found.scores >= conf
        return found.boxes[keep], found.scores[keep], found.class_ids[keep], None

    def publish_counts(self, config, cameras):
        """Send every camera's current counts again."""
        for camera in cameras:
            self._counts(config, camera)

    def close(self, config, cameras):
        """End the cameras' tracks ('end' events, reason 'stopped') and send their counts, now zero."""
        for camera in cameras:
            state = camera.track
            state.retired = True
            if state.tracking is None:
                continue
            try:
                changes = state.tracking.close()
                self._events(config, camera, changes, time.time())
                self._counts(config, camera)
            except Exception:
                log.exception("%s: closing the tracker failed", camera.id)

    def _events(self, config, camera, changes, timestamp):
        if not changes:
            return
        (w, h), labels = camera.track.size, camera.track.labels
        payloads = [schema.event(config.device_id, camera.id, self._seq.next(camera.id), c, labels, w, h,
                                 timestamp) for c in changes]
        for c in changes:
            t = c.track
            log.debug("%s: track %d %s %s%s", camera.id, t.id, labels.get(t.class_id, t.class_id), c.kind,
                      " ({})".format(t.end_reason) if c.kind == "end" else "")
        self._each_sink("events", camera.id, payloads)

    def _counts(self, config, camera):
        tracking = camera.track.tracking
        if tracking is None:
            return
        with tracking.lock:  # counts go out in the order they changed, whoever sends them
            payload = schema.counts(config.device_id, camera.id, tracking.counts, camera.track.labels)
            self._each_sink("counts", camera.id, payload)

    def _each_sink(self, method, *args):
        for sink in self.sinks:
            try:
                getattr(sink, method)(*args)
            except Exception:
                log.exception("sink %s failed", type(sink).__name__)
