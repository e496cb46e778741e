"""The CPU detector: Letterbox (agent.preprocess), backend.infer, decode + NMS (agent.postprocess).

Works with any backend's ``infer`` (ONNX Runtime; TensorRT when the fused path is off).
Its stages split where the work does: ``prepare`` letterboxes into a buffer from a
small pool (the pipeline calls it on the camera's feeder thread), ``infer`` runs the
model (inference thread), ``finish`` decodes, runs NMS and maps boxes back to the frame
(output thread, overlapping the next inference).
"""

import queue

from ..postprocess.nms import postprocess
from ..preprocess import Letterbox, to_frame
from ..timing import now
from .base import Detections, Detector, stage_ms


class Prepared(object):
    """A letterboxed frame: the buffer that holds it, the blob (a view of it) and the Mapping."""

    __slots__ = ("letterbox", "blob", "mapping", "ms")

    def __init__(self, letterbox, blob, mapping, ms):
        self.letterbox, self.blob, self.mapping, self.ms = letterbox, blob, mapping, ms


class CpuDetector(Detector):
    """Letterbox + backend.infer + decode + NMS; ``decoder`` from agent.postprocess.decode.make_decoder."""

    kind = "cpu"

    def __init__(self, backend, decoder, size, labels, detection, **kw):
        super(CpuDetector, self).__init__(backend, size, labels, detection, **kw)
        self.decoder = decoder
        self.concurrency = getattr(backend, "concurrency", 1)
        # Free Letterbox buffers. A buffer is out from prepare() to release(); the pipeline
        # bounds how many are out (queue depth per camera + one per thread), so the pool
        # only grows to that and never allocates per frame once warm.
        self._pool = queue.LifoQueue()

    def prepare(self, image):
        try:
            lb = self._pool.get_nowait()
        except queue.Empty:
            lb = Letterbox(*self.input_size)
        t0 = now()
        blob, mapping = lb.run(image)
        return Prepared(lb, blob, mapping, stage_ms(t0))

    def release(self, prepared):
        if prepared is not None:
            self._pool.put(prepared.letterbox)

    def infer(self, image, prepared, parallel=False):
        t0 = now()
        outputs = self.backend.infer(prepared.blob, parallel)  # copies: the buffer may be released after this
        return outputs, prepared.mapping, {"preprocess": prepared.ms, "infer": stage_ms(t0)}

    def finish(self, pending):
        outputs, mapping, times = pending
        t0 = now()
        boxes, scores, class_ids = postprocess(self.decoder, outputs, self.detection)
        boxes = to_frame(boxes, mapping)
        times = dict(times, postprocess=stage_ms(t0))
        return Detections(boxes, scores, class_ids, times)
