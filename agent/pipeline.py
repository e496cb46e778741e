"""Wires the stages: sources -> preprocess -> infer -> postprocess -> sinks.

Threads and queues (capture, inference and output overlap):
- one feeder thread per camera reads its source and letterboxes the frame into a
  buffer from the camera's small pool, then queues it (live sources: a full queue
  drops its oldest frame, so inference always gets the freshest; files: wait);
- one inference thread owns the backend (and so the CUDA context): it creates,
  uses, swaps and closes it (a fused GPU backend also decodes and runs NMS there);
- one output thread decodes and runs NMS on the CPU path (overlapping the next
  inference), builds records and hands them to the sinks.
"""

import logging
import queue
import threading
import time

from .backends.base import backend_class, resolve_backend_name
from .engines import artifact
from .errors import AgentError
from .labels import class_names
from .postprocess.decode import make_decoder
from .postprocess.nms import postprocess
from .preprocess import Letterbox, to_frame
from .publish.schema import Sequencer, make_record
from .sources import open_source
from .sources.base import EndOfStream
from .timing import RollingStats, now

log = logging.getLogger("edge_agent.pipeline")

QUEUE_DEPTH = 2  # frames waiting per camera: enough to overlap, few enough to stay fresh
_END = object()


def _release(item):
    """Give a queued frame's letterbox buffer back to its pool (fused models have none)."""
    if item[2] is not None:
        item[2].put(item[1])


class Model(object):
    """A loaded size: backend, decoder, labels, input size. Lives on the inference thread."""

    def __init__(self, config, size):
        self.size = size
        self.backend_name = resolve_backend_name(config.backend)
        path, manifest = artifact.artifact_for(config, size, self.backend_name)
        self.engine_id = (manifest or {}).get("artifact_sha256", "")[:12] or "onnx"
        cls = backend_class(self.backend_name)
        settings = config.tensorrt if self.backend_name == "tensorrt" else config.onnxruntime
        self.backend = cls(path, settings)
        try:
            self.labels = class_names(self.backend.metadata, config.sizes[size].labels)
            self.decoder = make_decoder(self.backend.outputs, num_classes_hint=len(self.labels) or None)
        except AgentError:
            self.backend.close()
            raise
        self.input_size = self.backend.input_size
        # A backend that keeps the frame on the GPU (preprocess, infer, decode, NMS there)
        # offers detect(image, detection) -> (boxes in frame pixels, scores, class ids, stage ms).
        self.fused = callable(getattr(self.backend, "detect", None))

    def close(self):
        self.backend.close()


class Camera(object):
    """One source with its feeder thread, buffer pool, queue and statistics."""

    def __init__(self, config, cam, source):
        self.cam = cam
        self.source = source
        self.queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self.stats = RollingStats()
        self.dropped = 0
        self.frames = 0
        self.ended = threading.Event()
        self.max_frames = config.max_frames
        self.thread = None

    @property
    def id(self):
        return self.cam.id


class Pipeline(object):
    """The agent's frame path; see the module docstring for the threading model."""

    def __init__(self, config, sinks):
        self.config = config
        self.sinks = list(sinks)
        self.cameras = []
        self._model = None
        self._pools = {}  # camera id -> queue of free Letterbox buffers for the current input size
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self._out = queue.Queue(maxsize=8)
        self._seq = Sequencer()
        self._size_reason = ""  # why size: auto picked the size it did
        self._swap = None  # a config whose size/model the inference thread must switch to
        self._processed = 0
        self._state = "created"
        self._threads = []
        self._done = threading.Event()
        self._go = threading.Event()
        self._rr = 0  # the camera the inference thread looks at first next time
        self._beats = {}  # thread name -> monotonic time it last went round its loop (liveness)

    # --- life cycle ------------------------------------------------------------------------

    def start(self):
        """Load the model and open the sources (raises AgentError); start the threads."""
        loaded = threading.Event()
        error = []

        def infer_main():
            try:
                self._model = Model(self.config, self._pick_size(self.config))
            except BaseException as e:  # report to start(), which re-raises on the caller's thread
                error.append(e)
                loaded.set()
                return
            loaded.set()
            self._go.wait()  # the cameras are open (or start failed and stop() was called)
            self._infer_loop()

        self._state = "starting"
        infer = threading.Thread(target=infer_main, name="infer", daemon=True)
        infer.start()
        loaded.wait()
        if error:
            self._state = "failed"
            raise error[0]
        try:
            for cam in self.config.cameras:
                self.cameras.append(Camera(self.config, cam, open_source(cam)))
        except BaseException:
            self.stop()
            raise
        output = threading.Thread(target=self._output_loop, name="output", daemon=True)
        self._threads = [infer, output]
        for camera in self.cameras:
            self._start_feeder(camera)
        output.start()
        self._state = "running"
        self._go.set()
        log.info("running: size %s, backend %s, %d camera(s)", self._model.size, self._model.backend_name,
                 len(self.cameras))

    def wait(self, timeout=None):
        """True once all finite sources ended and every record reached the sinks, or after stop()."""
        return self._done.wait(timeout)

    def stop(self, timeout=5.0):
        """Stop capture, drain what is queued to the sinks, close backend and sources; idempotent."""
        self._stop.set()
        self._go.set()
        with self._ready:
            self._ready.notify_all()
        deadline = time.monotonic() + timeout
        for camera in self.cameras:
            if camera.thread is not None:
                camera.thread.join(max(0.1, deadline - time.monotonic()))
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        for camera in self.cameras:
            camera.source.close()
        self._state = "stopped"
        self._done.set()

    # --- observers -------------------------------------------------------------------------

    @property
    def processed(self):
        return self._processed

    def _beat(self, name):
        self._beats[name] = time.monotonic()

    def stalest_thread(self):
        """(name, seconds since it last went round its loop) of the pipeline thread that is
        most behind: each loop waits at most ~0.5 s, so a large age is a hang (a blocked
        write, a stuck inference), while a camera that is down only makes its feeder wait."""
        beats = dict(self._beats)
        if not beats:
            return None, 0.0
        name = min(beats, key=beats.get)
        return name, time.monotonic() - beats[name]

    def camera_states(self):
        """{camera id: running | waiting | stalled | ended}."""
        return {c.id: "ended" if c.ended.is_set() else c.source.state for c in self.cameras}

    @property
    def first_frame_done(self):
        return self._processed > 0

    def status(self):
        model = self._model
        cams = {}
        states = self.camera_states()
        for c in self.cameras:
            cams[c.id] = {"source": c.cam.source, "state": states[c.id], "fps": round(c.stats.fps(), 2),
                          "frames": c.frames, "dropped": c.dropped + c.source.stats.dropped,
                          "reconnects": c.source.stats.reconnects}
        fps = sum(c["fps"] for c in cams.values())
        return {
            "state": self._state,
            "size": model.size if model else self.config.size,
            "backend": model.backend_name if model else self.config.backend,
            "engine_id": model.engine_id if model else "",
            "fps": round(fps, 2),
            "cameras": cams,
            "size_reason": self._size_reason,
        }

    def timing_summaries(self):
        out = {}
        states = self.camera_states()
        for c in self.cameras:
            summary = c.stats.summary()
            summary["state"] = states[c.id]
            summary["dropped"] = c.dropped + c.source.stats.dropped
            summary["queue_depth"] = c.queue.qsize()
            out[c.id] = summary
        return out

    # --- reload ----------------------------------------------------------------------------

    def reload(self, config):
        """Apply a new config: thresholds at once, a size or model change on the inference
        thread (cameras keep capturing), changed cameras reopened."""
        old = self.config
        model_changed = (self._pick_size(config) != (self._model.size if self._model else None)
                         or config.sizes != old.sizes or config.backend != old.backend)
        self.config = config
        if model_changed:
            self._swap = config
        old_cams = {c.id: c for c in self.cameras}
        wanted = {cam.id: cam for cam in config.cameras}
        for cid, camera in list(old_cams.items()):
            if cid not in wanted or wanted[cid] != camera.cam:
                camera.ended.set()
                camera.thread.join(2.0)
                camera.source.close()
                self.cameras.remove(camera)
        for cid, cam in wanted.items():
            if cid not in old_cams or old_cams[cid].cam != cam:
                camera = Camera(config, cam, open_source(cam))
                self.cameras.append(camera)
                self._start_feeder(camera)
        log.info("reloaded configuration%s", " (switching to size {})".format(self._pick_size(config))
                 if model_changed else "")

    def _pick_size(self, config):
        if config.size != "auto":
            self._size_reason = ""
            return config.size
        from .autosize import choose_size_with_reason

        size, self._size_reason = choose_size_with_reason(config)
        return size

    # --- threads ---------------------------------------------------------------------------

    def _pool(self, camera, size):
        key = (camera.id, size)
        pool = self._pools.get(key)
        if pool is None:
            pool = queue.Queue()
            for _ in range(QUEUE_DEPTH + 2):
                pool.put(Letterbox(*size))
            self._pools[key] = pool
        return pool

    def _start_feeder(self, camera):
        camera.thread = threading.Thread(target=self._feed, args=(camera,), name="feed-" + camera.id, daemon=True)
        camera.thread.start()

    def _feed(self, camera):
        """Read, letterbox and queue frames of one camera until it ends or the pipeline stops."""
        source = camera.source
        beat = "feed-" + camera.id
        try:
            while not self._stop.is_set() and not camera.ended.is_set():
                self._beat(beat)
                if camera.max_frames and camera.frames >= camera.max_frames:
                    break
                try:
                    frame = source.read(timeout_ms=500)
                except EndOfStream:
                    log.info("%s: end of stream after %d frames", camera.id, camera.frames)
                    break
                if frame is None:
                    continue
                model = self._model
                t0 = now()
                if model.fused:
                    item = (frame, None, None, None, None, t0, t0)
                else:
                    pool = self._pool(camera, model.input_size)
                    lb = pool.get()
                    t0 = now()
                    blob, mapping = lb.run(frame.image)
                    item = (frame, lb, pool, blob, mapping, t0, now())
                camera.frames += 1
                self._enqueue(camera, item)
        except AgentError as e:
            log.error("%s: %s", camera.id, e)
        except Exception:
            log.exception("%s: feeder failed", camera.id)
        finally:
            self._enqueue(camera, _END)
            self._beats.pop(beat, None)  # an ended camera is not a hung thread

    def _enqueue(self, camera, item):
        while True:
            self._beat("feed-" + camera.id)
            try:
                camera.queue.put(item, timeout=0.1 if not camera.source.live else 0)
                break
            except queue.Full:
                if self._stop.is_set() and item is not _END:
                    _release(item)
                    return
                if camera.source.live:
                    try:  # freshest frame wins: drop the oldest waiting one
                        old = camera.queue.get_nowait()
                        if old is not _END:
                            _release(old)
                            camera.dropped += 1
                    except queue.Empty:
                        pass
        with self._ready:
            self._ready.notify()

    def _next_item(self):
        """Round-robin over cameras; returns (camera, item) or None when all have ended."""
        start = self._rr
        while True:
            cams = list(self.cameras)
            live = [c for c in cams if not c.ended.is_set()]
            if not live and not self._swap:
                return None
            for k in range(len(cams)):
                camera = cams[(start + k) % len(cams)]
                try:
                    item = camera.queue.get_nowait()
                except queue.Empty:
                    continue
                self._rr = (start + k + 1) % max(1, len(cams))
                if item is _END:
                    camera.ended.set()
                    break
                return camera, item
            else:
                if self._stop.is_set() and all(c.queue.empty() for c in cams):
                    return None
                self._beat("infer")
                with self._ready:
                    self._ready.wait(0.05)

    def _infer_loop(self):
        try:
            while True:
                self._beat("infer")
                if self._swap is not None:
                    self._do_swap()
                got = self._next_item()
                if got is None:
                    break
                camera, (frame, lb, pool, blob, mapping, t_pre0, t_pre1) = got
                model = self._model
                if model.fused != (lb is None) or (lb is not None and (lb.input_w, lb.input_h) != model.input_size):
                    if lb is not None:
                        pool.put(lb)  # prepared for the model we just swapped out
                    camera.dropped += 1
                    continue
                times = {"capture": max(0.0, (t_pre0 - frame.monotonic) * 1000.0)}
                if model.fused:
                    boxes, scores, class_ids, gpu_times = model.backend.detect(frame.image, self.config.detection)
                    times.update(gpu_times)
                    result = (boxes, scores, class_ids)
                else:
                    t1 = now()
                    outputs = model.backend.infer(blob)
                    t2 = now()
                    pool.put(lb)
                    times.update(preprocess=(t_pre1 - t_pre0) * 1000.0, infer=(t2 - t1) * 1000.0)
                    result = (outputs, mapping)  # decoded on the output thread, overlapping the next infer
                self._out.put((camera, frame, model, result, times, now()))
        except Exception:
            log.exception("inference thread failed")
            self._state = "failed"
        finally:
            # The thread that created the backend frees it (CUDA contexts are per thread).
            if self._model is not None:
                self._model.close()
            self._out.put(_END)

    def _do_swap(self):
        config, self._swap = self._swap, None
        size = self._pick_size(config)
        log.info("loading size %s", size)
        try:
            new = Model(config, size)
        except AgentError as e:
            log.error("cannot switch to size %s, keeping %s: %s", size, self._model.size, e)
            return
        old, self._model = self._model, new
        old.close()
        log.info("switched to size %s (%s)", size, new.engine_id)

    def _output_loop(self):
        try:
            while True:
                self._beat("output")
                try:
                    got = self._out.get(timeout=0.5)
                except queue.Empty:
                    continue
                if got is _END:
                    break
                camera, frame, model, result, times, t_infer = got
                if len(result) == 2:
                    outputs, mapping = result
                    t_infer = now()  # the wait in the queue is not postprocessing
                    boxes, scores, class_ids = postprocess(model.decoder, outputs, self.config.detection)
                    boxes = to_frame(boxes, mapping)
                    t_post = now()
                    times["postprocess"] = (t_post - t_infer) * 1000.0
                else:
                    boxes, scores, class_ids = result
                    t_post = t_infer
                t = now()
                times["publish"] = (t - t_post) * 1000.0
                times["total"] = (t - frame.monotonic) * 1000.0
                record = make_record(self.config.device_id, camera.id, self._seq.next(camera.id), frame,
                                     model.size, model.labels, boxes, scores, class_ids, times)
                camera.stats.add(times, t)
                for sink in self.sinks:
                    try:
                        sink.emit(record, frame.image)
                    except Exception:
                        log.exception("sink %s failed", type(sink).__name__)
                self._processed += 1  # only this thread writes it
        finally:
            if self._state == "running":
                self._state = "finished"
            self._done.set()
