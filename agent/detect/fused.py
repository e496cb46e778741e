"""The fused detector: frame in, final detections out, everything between on the GPU around the engine.

``FusedDetector`` (the Detector the pipeline runs) wraps ``GpuDetector`` around a
backend's ``DeviceEngine`` (agent.backends.base): TensorRT's bindings on its stream
in production; in CI, ONNX Runtime with the host-compiled kernels (agent.kernels.host).

``GpuDetector.detect(image, detection)`` uploads the BGR frame from a pinned host
buffer (on Jetson, ``mapped_frame``: the kernel reads it in place), letterboxes it
straight into the engine's input buffer (GpuPreprocess), runs the engine (``execute()``, a callable the backend supplies), decodes the
YOLOv8 ``[1, 4+nc, N]`` output and runs NMS on the device (GpuDecode, GpuNms).
What crosses back to the host: the candidate count, then the kept count and the
kept detections (box, score, class: 24 bytes each), gathered by the NMS kernel;
two round trips per frame. The raw output (2.8 MB for an 80-class 640x640 model)
and the input never do.

Semantics equal the CPU path (``agent.preprocess.Letterbox`` + ``agent.postprocess.
nms.postprocess`` + ``to_frame``): the letterbox is OpenCV's to the pixel on a downscale
(one level at most on an upscale; see preprocess.cu), and the IoU is float32 (nms.cu):

* ``classes``: the CPU decoder takes the best class *among the listed ones*, so an
  anchor whose overall best class is filtered out can still pass with a listed one.
  Filtering after decode would differ; instead the listed class rows are copied
  (device to device) into a smaller ``[1, 4+k, N]`` buffer that a second decoder reads;
* ``top_k``: the NMS kernels sort all candidates (by score, ties by anchor, like the
  numpy decoder) and run NMS over the top_k best only, which is exact because greedy
  NMS decides a box from higher-ranked boxes only;
* ``max_detections`` stops the keep sweep (the keep list is best first).

Timing: each stage is host wall time; with ``sync_timing=True`` (default) the
stream is synchronized after preprocess and after the engine so each figure is the
stage's own time. That costs two extra stream syncs per frame (tens of microseconds
on a desktop GPU, ~0.1 ms on a Jetson) and the overlap of host enqueue with GPU work
between stages. With False, preprocess and infer measure enqueue time only and
postprocess absorbs the wait (the total is still right).

Like gpu.py, this works with any GpuRuntime (agent.kernels.runtime: pycuda, CuPy, the
host build) and must be used on the thread that owns the CUDA context.
"""

import logging
import time

import numpy as np

from agent.kernels import NMS_MAX_BOXES
from agent.kernels.gpu import GpuDecode, GpuNms, GpuPreprocess
from agent.postprocess.nms import nms as host_nms
from agent.preprocess import to_frame

from .base import Detections, Detector

log = logging.getLogger("edge_agent.kernels")


def _empty():
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)


def _free_host(arr):
    """Free a runtime.host() buffer now (pycuda page-locked memory has .free on its base)."""
    base = arr
    while base is not None and not hasattr(base, "free"):
        base = getattr(base, "base", None)
    if base is not None:
        base.free()


class GpuDetector(object):
    """Preprocess, engine, decode and NMS on the device for one YOLOv8-layout engine; see the module doc."""

    def __init__(self, runtime, modules, input_w, input_h, num_classes, num_anchors, execute, input_ptr,
                 output_ptr, max_frame=(1920, 1080), sync_timing=True, mapped_frame=False):
        self.rt = runtime
        self.modules = modules
        self.input_w, self.input_h = int(input_w), int(input_h)
        self.num_classes, self.num_anchors = int(num_classes), int(num_anchors)
        self.execute = execute
        self.input_ptr, self.output_ptr = int(input_ptr), int(output_ptr)
        self.sync_timing = bool(sync_timing)
        # Integrated GPU (Jetson): the frame goes into mapped host memory the kernel reads in
        # place, saving the upload (6 MB at 1080p). Needs runtime.host_mapped (PycudaRuntime).
        self.mapped_frame = bool(mapped_frame)
        self._frame_ptr = 0
        self._pre = self._frame_host = self._dec = self._nms = self._sub = None
        self._sub_key = None
        self._host = []
        self._warned_capacity = False
        try:
            self._alloc_frame(int(max_frame[0]), int(max_frame[1]))
            self._dec = GpuDecode(runtime, modules["decode"], self.num_classes, self.num_anchors)
            self._nms = GpuNms(runtime, modules["nms"], min(self.num_anchors, NMS_MAX_BOXES))
            n = self.num_anchors
            if n > self._nms.max_boxes:  # pinned buffers for the CPU NMS fallback (_host_nms)
                self._host = [runtime.host((n, 4), np.float32), runtime.host((n,), np.float32),
                              runtime.host((n,), np.int32), runtime.host((n,), np.int32)]
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ stages

    def _alloc_frame(self, w, h):
        self._pre = GpuPreprocess(self.rt, self.modules["preprocess"], self.input_w, self.input_h,
                                  max_frame_w=w, max_frame_h=h, out_ptr=self.input_ptr,
                                  frame_buffer=not self.mapped_frame)
        if self.mapped_frame:
            self._frame_host, self._frame_ptr = self.rt.host_mapped((w * h * 3,), np.uint8)
        else:
            self._frame_host = self.rt.host((w * h * 3,), np.uint8)  # pinned: the upload is a true async copy
            self._frame_ptr = self.rt.ptr(self._pre.frame)

    def _preprocess(self, image):
        """Upload the frame and letterbox it into the engine input; returns the Mapping."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("detect: expected an HxWx3 uint8 BGR frame, got {} {}".format(image.dtype, image.shape))
        h, w = image.shape[:2]
        if h * w * 3 > self._pre.max_frame_bytes:
            log.info("frame %dx%d exceeds the GPU frame buffer; reallocating it", w, h)
            pre, host, self._pre, self._frame_host = self._pre, self._frame_host, None, None
            _free_host(host)
            pre.close()
            self._alloc_frame(w, h)
        # The previous detect() synchronized the stream, so no copy or kernel still reads this buffer.
        host = self._frame_host[:h * w * 3].reshape(h, w, 3)
        np.copyto(host, image)
        if not self.mapped_frame:
            self.rt.htod(self._frame_ptr, host)
        return self._pre.run_device(self._frame_ptr, w, h, w * 3)

    def _decoder_for(self, classes):
        """(decoder, pred pointer, class id map or None) for a ``classes`` filter (see the module doc)."""
        if not classes:
            return self._dec, self.output_ptr, None
        sel = np.array([c for c in classes if 0 <= int(c) < self.num_classes], np.int32)
        if not len(sel):
            return None, 0, sel
        key = tuple(sel.tolist())
        if self._sub_key != key:
            if self._sub is not None:
                self._sub.close()
                self._sub, self._sub_key = None, None
            self._sub = GpuDecode(self.rt, self.modules["decode"], len(sel), self.num_anchors)
            self._sub_key = key
        row = 4 * self.num_anchors  # bytes per channel row of the [4+nc, N] output
        dst = self.rt.ptr(self._sub.pred)
        self.rt.dtod(dst, self.output_ptr, 4 * row)  # cx, cy, w, h
        for i, c in enumerate(key):
            self.rt.dtod(dst + (4 + i) * row, self.output_ptr + (4 + c) * row, row)
        return self._sub, dst, sel

    def _download(self, dec, n, arrays):
        """Bulk-copy the first n candidates of the listed decoder buffers (0 boxes, 1 scores, 2 classes, 3 anchors)."""
        bufs = (dec.boxes, dec.scores, dec.classes, dec.anchors)
        for i in arrays:
            self.rt.dtoh(self._host[i][:n], self.rt.ptr(bufs[i]))
        self.rt.sync()
        return [self._host[i][:n] for i in arrays]

    def _postprocess(self, detection):
        """Decode + NMS on the device; (boxes in input pixels, scores, class ids) of the kept detections."""
        dec, pred_ptr, class_map = self._decoder_for(list(detection.classes or []))
        if dec is None:
            self.rt.sync()  # every path ends synchronized: the next frame reuses the frame buffer
            return _empty()
        n = dec.run_device(pred_ptr, detection.conf_threshold)
        top_k, max_det = detection.top_k, detection.max_detections
        if n == 0 or max_det <= 0:
            return _empty()
        if n > self._nms.max_boxes:
            boxes, scores, classes = self._host_nms(dec, n, detection)
        else:
            p = self.rt.ptr
            boxes, scores, classes = self._nms.detections(
                p(dec.boxes), p(dec.scores), p(dec.classes), n, detection.iou_threshold,
                class_agnostic=detection.class_agnostic, tiekey_ptr=p(dec.anchors), top_k=top_k, max_out=max_det)
        if class_map is not None:
            classes = class_map[classes]
        return boxes, scores, classes.astype(np.int32)

    def _host_nms(self, dec, n, detection):
        """More candidates than the NMS kernel holds: top_k and NMS on the host (numpy reference)."""
        if not self._warned_capacity:
            log.warning("%d candidates above conf_threshold exceed the GPU NMS capacity (%d); "
                        "running NMS on the CPU for such frames", n, self._nms.max_boxes)
            self._warned_capacity = True
        boxes, scores, classes, anchors = self._download(dec, n, (0, 1, 2, 3))
        order = np.lexsort((anchors, -scores))[:detection.top_k or None]
        boxes, scores, classes = boxes[order], scores[order], classes[order]
        keep = host_nms(boxes, scores, detection.iou_threshold, class_ids=classes,
                        class_agnostic=detection.class_agnostic, max_detections=detection.max_detections)
        return boxes[keep].copy(), scores[keep].copy(), classes[keep].copy()

    # ------------------------------------------------------------------ API

    def detect(self, image, detection):
        """BGR uint8 frame + DetectionConfig -> (boxes xyxy in frame pixels, scores, class ids, stage ms)."""
        t0 = time.perf_counter()
        mapping = self._preprocess(image)
        if self.sync_timing:
            self.rt.sync()
        t1 = time.perf_counter()
        self.execute()
        if self.sync_timing:
            self.rt.sync()
        t2 = time.perf_counter()
        boxes, scores, classes = self._postprocess(detection)  # ends synchronized: results are on the host
        boxes = to_frame(boxes, mapping)
        t3 = time.perf_counter()
        return boxes, scores, classes, {"preprocess": (t1 - t0) * 1000.0, "infer": (t2 - t1) * 1000.0,
                                        "postprocess": (t3 - t2) * 1000.0}

    def download_input(self):
        """The engine input as a (1, 3, H, W) float32 host array (tests, debugging)."""
        return self._pre.download()

    def close(self):
        """Free device and pinned buffers in reverse order of allocation; idempotent."""
        if self._sub is not None:
            self._sub.close()
            self._sub, self._sub_key = None, None
        for arr in reversed(self._host):
            _free_host(arr)
        self._host = []
        if self._nms is not None:
            self._nms.close()
            self._nms = None
        if self._dec is not None:
            self._dec.close()
            self._dec = None
        if self._frame_host is not None:
            _free_host(self._frame_host)
            self._frame_host = None
        if self._pre is not None:
            self._pre.close()
            self._pre = None


class FusedDetector(Detector):
    """The Detector over a DeviceEngine: ``infer`` runs GpuDetector.detect (every stage on the
    device, inside the engine's CUDA context); ``prepare`` and ``finish`` have nothing to do.

    Raises what GpuDetector raises when its buffers or kernels cannot be set up.
    """

    kind = "fused"

    def __init__(self, backend, engine, size, labels, detection, **kw):
        super(FusedDetector, self).__init__(backend, size, labels, detection, **kw)
        self.engine = engine
        _, _, h, w = engine.input_shape
        _, rows, anchors = engine.output_shape
        with engine.current():
            self.gpu = GpuDetector(engine.runtime, engine.modules, w, h, rows - 4, anchors, engine.execute,
                                   engine.input_ptr, engine.output_ptr, mapped_frame=engine.mapped_input)

    def infer(self, image, prepared, parallel=False):
        with self.engine.current():
            boxes, scores, class_ids, times = self.gpu.detect(image, self.detection)
        return Detections(boxes, scores, class_ids, times)

    def finish(self, pending):
        return pending

    def close(self):
        """Free the kernels' buffers, then the engine (reverse order of creation); idempotent."""
        gpu, self.gpu = self.gpu, None
        if gpu is not None:
            with self.engine.current():
                gpu.close()
        self.backend.close()
