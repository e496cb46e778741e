"""The detector stage's contract: ``Detector.detect(image) -> Detections``, and the frame record.

A Detector is one loaded model's whole frame path, from a BGR frame to detections in
frame pixels: the CPU one (agent.detect.cpu) letterboxes, runs the backend, decodes
and runs NMS; the fused one (agent.detect.fused) does all of it on the GPU around
the engine. Callers never ask which one they have.

``detect`` is three stages, so that the pipeline can run them on different threads
and overlap them (letterbox the next frame and decode the previous one while the
engine runs):

* ``prepare(image)`` -> a prepared input (any thread; never touches the backend);
* ``infer(image, prepared, parallel=False)`` -> a pending result (the thread that
  created the detector: it owns the backend and its CUDA context; with
  ``concurrency`` > 1, that many threads may call it at once, ``parallel`` telling
  each call whether others run beside it);
* ``finish(pending)`` -> Detections (any thread; never touches the backend).

``release(prepared)`` gives a prepared input's buffer back (once infer no longer
needs it, or when the frame is dropped); it is the only place buffers return.
"""

import dataclasses
from typing import Any, Dict, Optional

import numpy as np

from ..timing import now


@dataclasses.dataclass
class Detections(object):
    """One frame's result: ``boxes`` (N x 4 float32 x1,y1,x2,y2 in frame pixels), ``scores``
    (float32), ``class_ids`` (int32), best first; ``times``: ms per stage (preprocess, infer,
    postprocess)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    times: Dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FrameJob(object):
    """One frame on its way from a source to the sinks (the pipeline's queue item).

    ``frame``: the source's Frame; ``detector``: the one that prepared it (a model swap
    makes older jobs stale); ``prepared``/``pending``: the detector's own state between
    stages; ``t_start``: when the pipeline took the frame (capture time ends there).
    """

    camera: Any
    frame: Any
    detector: "Detector"
    prepared: Any = None
    pending: Any = None
    t_start: float = 0.0
    detections: Optional[Detections] = None
    ticket: int = 0  # the order the pipeline took it in (records leave in this order)

    def release(self):
        """Give the prepared input back to its detector; idempotent."""
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            self.detector.release(prepared)


class Detector(object):
    """One model's frame path; see the module docstring for the stages and threads.

    Attributes the pipeline and reports read: ``size``, ``backend_name``, ``engine_id``,
    ``labels`` ({class id: name}), ``input_size`` (w, h), ``backend``; ``detection``
    (the DetectionConfig in force; the pipeline replaces it on reload).
    """

    kind = ""  # "cpu" or "fused": for logs and reports only
    concurrency = 1  # how many threads may call ``infer`` at once

    def __init__(self, backend, size, labels, detection, backend_name="", engine_id=""):
        self.backend = backend
        self.size = size
        self.labels = labels
        self.detection = detection
        self.backend_name = backend_name or backend.name
        self.engine_id = engine_id
        self.input_size = backend.input_size

    def prepare(self, image):
        """The input prepared on the calling thread (None: nothing to prepare)."""
        return None

    def infer(self, image, prepared, parallel=False):
        """Run the model; returns what finish() needs. On the detector's own thread (or, with
        ``concurrency`` > 1, one of that many; ``parallel``: other calls run at the same time)."""
        raise NotImplementedError

    def finish(self, pending):
        """Detections of a pending result."""
        raise NotImplementedError

    def release(self, prepared):
        """Take back a prepared input (its buffer may be reused at once)."""

    def detect(self, image):
        """BGR uint8 frame -> Detections, every stage on the calling thread (the detector's own)."""
        prepared = self.prepare(image)
        try:
            pending = self.infer(image, prepared)
        finally:
            self.release(prepared)
        return self.finish(pending)

    def close(self):
        """Free the model and its buffers; idempotent."""
        self.backend.close()


def stage_ms(t0):
    """Milliseconds since ``t0`` (agent.timing.now)."""
    return (now() - t0) * 1000.0
