"""Run the kernels on a GPU: pycuda for the agent, CuPy for tests and benchmarks.

The caller owns the CUDA context (no ``pycuda.autoinit``) and must use these
objects from the thread that owns it. Every class preallocates its device
buffers for a maximum size and frees them in ``close()``, never in
``__del__`` (a destructor may run on another thread or after the context is
gone). Launch geometry comes from ``agent.kernels`` and matches the host entry
points at the bottom of each ``.cu`` file, which the CPU tests drive.

Typical use in the engine thread::

    rt = PycudaRuntime(stream)
    mods = load_modules(rt, build.load_kernels(device_arch))
    pre = GpuPreprocess(rt, mods["preprocess"], 640, 640, out_ptr=engine_input_ptr)
    dec = GpuDecode(rt, mods["decode"], num_classes=80, num_anchors=8400)
    nms = GpuNms(rt, mods["nms"], max_boxes=8400)
    ...
    for o in (nms, dec, pre): o.close()
"""

import numpy as np

from agent.kernels import (DECODE_MAX_GRID, DECODE_TPB, NMS_KEEP_TPB, NMS_MAX_BOXES, NMS_SORT_TPB, NMS_TPB,
                           PRE_MAX_GRID, PRE_TPB, SOURCES, cdiv, letterbox_params, source_path)
from agent.kernels.runtime import CupyRuntime, GpuRuntime, PycudaRuntime  # noqa: F401  (re-exported)

_i32 = np.int32
_f32 = np.float32
_f64 = np.float64
_ptr = np.uintp  # kernel pointer arguments travel as 8-byte integers in both runtimes


def load_modules(runtime, paths=None):
    """{'nms': module, ...} from compiled files (build.load_kernels) or, paths=None, the .cu sources (CuPy only)."""
    if paths is None:
        paths = {s[:-3]: source_path(s) for s in SOURCES}
    return {name: runtime.module(path) for name, path in paths.items()}


class _Buffers(object):
    """Named device buffers freed together, in reverse order of allocation."""

    def __init__(self, runtime):
        self.rt = runtime
        self._bufs = []

    def alloc(self, nbytes):
        buf = self.rt.alloc(nbytes)
        self._bufs.append(buf)
        return buf

    def close(self):
        while self._bufs:
            self.rt.free(self._bufs.pop())


class GpuNms(object):
    """Greedy NMS on the device; same contract as agent.postprocess.nms.nms (see nms.cu)."""

    def __init__(self, runtime, module, max_boxes):
        if not 0 < max_boxes <= NMS_MAX_BOXES:
            raise ValueError("max_boxes: expected 1..{}, got {}".format(NMS_MAX_BOXES, max_boxes))
        self.rt = runtime
        self.max_boxes = int(max_boxes)
        self._sort = module.get_function("ea_nms_sort")
        self._mask = module.get_function("ea_nms_mask")
        self._keep = module.get_function("ea_nms_keep")
        m, cb = self.max_boxes, cdiv(self.max_boxes, NMS_TPB)
        self._mem = b = _Buffers(runtime)
        self.boxes, self.scores, self.classes = b.alloc(16 * m), b.alloc(4 * m), b.alloc(4 * m)
        self.sorted_boxes, self.sorted_cls, self.sorted_idx = b.alloc(16 * m), b.alloc(4 * m), b.alloc(4 * m)
        self.mask = b.alloc(8 * m * cb)
        self.keep, self.det, self.out = b.alloc(4 * m), b.alloc(24 * m), b.alloc(4)
        self._keep_host = runtime.host((m,), np.int32)
        self._det_host = runtime.host((m, 6), np.float32)
        self._out_host = runtime.host((1,), np.int32)

    def _run(self, boxes_ptr, scores_ptr, n, iou_threshold, classes_ptr, tiekey_ptr, top_k, max_out, gather_ptr,
             result, host):
        """Enqueue sort, mask and keep; copy back the count and ``result`` rows; returns the kept rows of ``host``."""
        n = int(n)
        if n > self.max_boxes:
            raise ValueError("nms: {} boxes, capacity {}".format(n, self.max_boxes))
        m = min(n, int(top_k)) if top_k else n  # NMS over the top_k best boxes is exact (see nms.cu)
        limit = min(m, int(max_out)) if max_out is not None else m
        if m <= 0 or limit <= 0:
            return host[:0]
        p = self.rt.ptr
        cb = cdiv(m, NMS_TPB)
        self.rt.launch(self._sort, (cdiv(n, NMS_SORT_TPB), 1, 1), (NMS_SORT_TPB, 1, 1), (
            _ptr(boxes_ptr), _ptr(scores_ptr), _ptr(classes_ptr or 0), _i32(classes_ptr is not None),
            _ptr(tiekey_ptr or 0), _i32(tiekey_ptr is not None), _i32(n),
            _ptr(p(self.sorted_boxes)), _ptr(p(self.sorted_cls)), _ptr(p(self.sorted_idx))))
        self.rt.launch(self._mask, (cb, cb, 1), (NMS_TPB, 1, 1), (
            _i32(m), _f32(iou_threshold), _ptr(p(self.sorted_boxes)), _ptr(p(self.sorted_cls)), _ptr(p(self.mask))))
        self.rt.launch(self._keep, (1, 1, 1), (NMS_KEEP_TPB, 1, 1), (
            _i32(m), _ptr(p(self.mask)), _ptr(p(self.sorted_idx)), _i32(limit), _ptr(boxes_ptr), _ptr(scores_ptr),
            _ptr(gather_ptr or 0), _i32(gather_ptr is not None), _ptr(p(self.keep)), _ptr(p(self.det)),
            _ptr(p(self.out))))
        # One round trip: the count and `limit` rows (the count is at most `limit`).
        self.rt.dtoh(self._out_host, p(self.out))
        self.rt.dtoh(host[:limit], p(result))
        self.rt.sync()
        count = int(self._out_host[0])
        if count < 0:
            raise ValueError("nms: {} boxes exceed the kernel's capacity".format(m))
        return host[:count]

    def run_device(self, boxes_ptr, scores_ptr, n, iou_threshold, classes_ptr=None, tiekey_ptr=None, top_k=0,
                   max_out=None):
        """NMS over n boxes already on the device; returns kept indices (int64), best first.

        ``tiekey_ptr`` (int32 per box) breaks score ties instead of the box position,
        e.g. the anchor index from GpuDecode. Only the ``top_k`` best boxes take part
        (0: all), and at most ``max_out`` are kept. Raises ValueError if n > max_boxes.
        """
        keep = self._run(boxes_ptr, scores_ptr, n, iou_threshold, classes_ptr, tiekey_ptr, top_k, max_out, None,
                         self.keep, self._keep_host)
        return keep.astype(np.int64)

    def detections(self, boxes_ptr, scores_ptr, class_ids_ptr, n, iou_threshold, class_agnostic=False,
                   tiekey_ptr=None, top_k=0, max_out=None):
        """Like run_device, but returns (boxes, scores, class ids) of the kept boxes, gathered on the device."""
        det = self._run(boxes_ptr, scores_ptr, n, iou_threshold, None if class_agnostic else class_ids_ptr,
                        tiekey_ptr, top_k, max_out, class_ids_ptr, self.det, self._det_host)
        return det[:, :4].copy(), det[:, 4].copy(), det[:, 5].astype(np.int32)

    def __call__(self, boxes, scores, iou_threshold, class_ids=None, class_agnostic=False, max_detections=None):
        """Host arrays in, kept indices out (int64, best first), like agent.postprocess.nms.nms."""
        boxes = np.ascontiguousarray(boxes, np.float32).reshape(-1, 4)
        scores = np.ascontiguousarray(scores, np.float32).reshape(-1)
        n = len(scores)
        if len(boxes) != n:
            raise ValueError("nms: {} boxes but {} scores".format(len(boxes), n))
        if n > self.max_boxes:
            raise ValueError("nms: {} boxes, capacity {}".format(n, self.max_boxes))
        if n == 0:
            return np.empty(0, np.int64)
        p = self.rt.ptr
        self.rt.htod(p(self.boxes), boxes)
        self.rt.htod(p(self.scores), scores)
        cls_ptr = None
        if class_ids is not None and not class_agnostic:
            cls = np.ascontiguousarray(class_ids, np.int32).reshape(-1)
            self.rt.htod(p(self.classes), cls)
            cls_ptr = p(self.classes)
        return self.run_device(p(self.boxes), p(self.scores), n, iou_threshold, classes_ptr=cls_ptr,
                               max_out=max_detections)

    def close(self):
        self._mem.close()


class GpuDecode(object):
    """YOLOv8 [1, 4+nc, N] output -> candidates on the device (see decode.cu for capacity)."""

    def __init__(self, runtime, module, num_classes, num_anchors, capacity=None):
        self.rt = runtime
        self.num_classes = int(num_classes)
        self.num_anchors = int(num_anchors)
        self.capacity = int(capacity or num_anchors)  # N slots: cannot overflow
        self._fn = module.get_function("ea_decode_yolov8")
        c = self.capacity
        self._mem = b = _Buffers(runtime)
        self.pred = b.alloc(4 * (4 + self.num_classes) * self.num_anchors)  # for host input only
        self.boxes, self.scores, self.classes, self.anchors = b.alloc(16 * c), b.alloc(4 * c), b.alloc(4 * c), b.alloc(4 * c)
        self.count = b.alloc(4)
        self._count_host = runtime.host((1,), np.int32)
        self.overflow = False

    def run_device(self, pred_ptr, conf_threshold):
        """Decode the output at pred_ptr; returns the candidate count (<= capacity).

        Sets ``overflow`` when more anchors passed than fit; which ones were
        kept is then arbitrary. Results stay in ``boxes/scores/classes/anchors``.
        """
        p = self.rt.ptr
        self.rt.zero(p(self.count), 4)
        grid = min(cdiv(self.num_anchors, DECODE_TPB), DECODE_MAX_GRID)
        self.rt.launch(self._fn, (grid, 1, 1), (DECODE_TPB, 1, 1), (
            _ptr(pred_ptr), _i32(self.num_classes), _i32(self.num_anchors), _f32(conf_threshold),
            _i32(self.capacity), _ptr(p(self.boxes)), _ptr(p(self.scores)), _ptr(p(self.classes)),
            _ptr(p(self.anchors)), _ptr(p(self.count))))
        self.rt.dtoh(self._count_host, p(self.count))
        self.rt.sync()
        total = int(self._count_host[0])
        self.overflow = total > self.capacity
        return min(total, self.capacity)

    def download(self, n):
        """(boxes, scores, class_ids, anchors) of the first n candidates, by (-score, anchor)."""
        p = self.rt.ptr
        out = (np.empty((n, 4), np.float32), np.empty(n, np.float32), np.empty(n, np.int32), np.empty(n, np.int32))
        if n:
            for arr, buf in zip(out, (self.boxes, self.scores, self.classes, self.anchors)):
                self.rt.dtoh(arr, p(buf))
            self.rt.sync()
        order = np.lexsort((out[3], -out[1]))
        return tuple(a[order] for a in out)

    def __call__(self, pred, conf_threshold):
        """Host [1, 4+nc, N] array in; (boxes, scores, class_ids, anchors) out, sorted like the numpy decoder."""
        pred = np.ascontiguousarray(pred, np.float32)
        if pred.size != (4 + self.num_classes) * self.num_anchors:
            raise ValueError("decode: expected [1, {}, {}], got {}".format(4 + self.num_classes, self.num_anchors,
                                                                           pred.shape))
        self.rt.htod(self.rt.ptr(self.pred), pred)
        return self.download(self.run_device(self.rt.ptr(self.pred), conf_threshold))

    def detect(self, nms, pred_ptr, conf_threshold, iou_threshold, class_agnostic=False, top_k=0, max_out=None):
        """Decode + NMS on the device; only the kept detections cross to the host. (boxes, scores, class_ids)."""
        n = self.run_device(pred_ptr, conf_threshold)
        p = self.rt.ptr
        return nms.detections(p(self.boxes), p(self.scores), p(self.classes), n, iou_threshold,
                              class_agnostic=class_agnostic, tiekey_ptr=p(self.anchors), top_k=top_k, max_out=max_out)

    def close(self):
        self._mem.close()


class GpuPreprocess(object):
    """BGR uint8 frame -> letterboxed RGB float32 CHW in the engine input buffer (see preprocess.cu)."""

    def __init__(self, runtime, module, input_w, input_h, max_frame_w=1920, max_frame_h=1080, out_ptr=None,
                 frame_buffer=True):
        """``frame_buffer=False``: no device frame buffer; frames come to run_device from mapped memory."""
        self.rt = runtime
        self.input_w, self.input_h = int(input_w), int(input_h)
        self.max_frame_bytes = int(max_frame_w) * int(max_frame_h) * 3
        self._fn = module.get_function("ea_letterbox")
        self._mem = b = _Buffers(runtime)
        self.frame = b.alloc(self.max_frame_bytes) if frame_buffer else None
        self.out_ptr = out_ptr if out_ptr is not None else runtime.ptr(b.alloc(4 * 3 * self.input_w * self.input_h))
        self._geometry = {}

    def run_device(self, frame_ptr, frame_w, frame_h, stride):
        """Letterbox the frame at frame_ptr into out_ptr; returns the Mapping (agent.preprocess)."""
        key = (frame_w, frame_h)
        if key not in self._geometry:
            self._geometry[key] = letterbox_params(frame_w, frame_h, self.input_w, self.input_h)
        (new_w, new_h, left, top, sx, sy), mapping = self._geometry[key]
        grid = min(cdiv(self.input_w * self.input_h, PRE_TPB), PRE_MAX_GRID)
        self.rt.launch(self._fn, (grid, 1, 1), (PRE_TPB, 1, 1), (
            _ptr(frame_ptr), _i32(frame_w), _i32(frame_h), _i32(stride), _ptr(self.out_ptr),
            _i32(self.input_w), _i32(self.input_h), _i32(new_w), _i32(new_h), _i32(left), _i32(top),
            _f64(sx), _f64(sy)))
        return mapping

    def __call__(self, frame):
        """Upload a HxWx3 uint8 frame and letterbox it; returns the Mapping. Raises ValueError."""
        frame = np.ascontiguousarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("preprocess: expected HxWx3 uint8, got {} {}".format(frame.dtype, frame.shape))
        if self.frame is None:
            raise ValueError("preprocess: no device frame buffer (frame_buffer=False): pass frames to run_device")
        if frame.nbytes > self.max_frame_bytes:
            raise ValueError("preprocess: frame {}x{} exceeds the buffer".format(frame.shape[1], frame.shape[0]))
        self.rt.htod(self.rt.ptr(self.frame), frame)
        return self.run_device(self.rt.ptr(self.frame), frame.shape[1], frame.shape[0], frame.strides[0])

    def download(self):
        """The input buffer as a (1, 3, H, W) float32 host array."""
        out = np.empty((1, 3, self.input_h, self.input_w), np.float32)
        self.rt.dtoh(out, self.out_ptr)
        self.rt.sync()
        return out

    def close(self):
        self._mem.close()
