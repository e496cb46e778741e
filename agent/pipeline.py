"""Wires the stages: sources -> Detector (agent.detect) -> sinks, one FrameJob per frame.

Threads and queues (capture, inference and output overlap); each thread calls one of
the Detector's stages, whichever detector it is (agent.detect.base):
- one feeder thread per camera reads its source and calls ``prepare`` (the CPU
  detector letterboxes there), then queues the FrameJob (live sources: a full queue
  drops its oldest frame, so inference always gets the freshest; files: wait);
- one inference thread owns the detector (and so the backend and CUDA context): it
  opens, runs ``infer`` on, swaps and closes it; a detector with ``concurrency`` > 1
  (the CPU one: two frames in flight on two cores) gets that many inference threads,
  each taking the next frame, told whether others are inferring beside it (alone, a
  frame gets every core; side by side, one core each); a frame alone always goes to
  the first thread, the others take frames only while one is being inferred;
- one output thread calls ``finish`` (the CPU detector decodes and runs NMS there,
  overlapping the next inference), tracks (agent.track), builds records and hands them to the sinks in the
  order the frames were taken (a ticket per frame; a faster inference waits for its
  predecessor).
A job's prepared input goes back to its detector through ``FrameJob.release`` once
``infer`` is done with it or the frame is dropped.

The module is longer than most because every thread of the frame path and their life
cycle (start, reload, model swap, stop, liveness) live here together: how they hand
frames to each other is the part that must be read in one place.
"""

import contextlib
import logging
import queue
import threading
import time

from .detect import FrameJob, open_detector
from .errors import AgentError
from .publish.schema import Sequencer, make_record
from .sources import open_source
from .sources.base import EndOfStream
from .timing import RollingStats, now
from .track.stage import CameraTrackState, TrackingStage, detection_settings

log = logging.getLogger("edge_agent.pipeline")

def _concrete(config):
    if config.size == "auto":
        raise AgentError("size: 'auto' must be resolved before the pipeline starts (agent.autosize.resolve)")


QUEUE_DEPTH = 2  # frames waiting per camera: enough to overlap, few enough to stay fresh
_END = object()


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
        self.track = CameraTrackState()  # TrackingStage's, for this camera

    @property
    def id(self):
        return self.cam.id


class Pipeline(object):
    """The agent's frame path; see the module docstring for the threading model."""

    def __init__(self, config, sinks, detector_factory=open_detector, size_reason=""):
        """``config.size`` is a concrete size (``size: auto`` is resolved by whoever starts the
        pipeline: agent.autosize.resolve); ``detector_factory(config, size) -> Detector``
        (agent.detect.open_detector; tests pass others). Raises AgentError for ``auto``."""
        _concrete(config)
        self.config = config
        self.sinks = list(sinks)
        self.cameras = []
        self._tracking = TrackingStage(self.sinks)
        self._open_detector = lambda config, size: self._tracking.prepare(detector_factory(config, size), config)
        self._detector = None
        self._stop = threading.Event()
        self._ready = threading.Condition()
        self._out = queue.Queue(maxsize=8)
        self._seq = Sequencer()
        self.size_reason = size_reason  # with size: auto, why the caller picked this size (status)
        self._swap = None  # a config whose size/model the inference thread must switch to
        self._processed = 0
        self._state = "created"
        self._threads = []
        self._helpers = []  # inference threads besides the first
        self._done = threading.Event()
        self._go = threading.Event()
        self._rr = 0  # the camera the inference thread looks at first next time
        self._take = threading.Lock()  # one inference thread at a time picks the next frame
        self._tickets = 0  # frames taken so far: the output thread emits in this order
        self._gate = _Gate()  # inference threads share the detector; a swap takes it alone
        self._inflight = 0  # inferences running now
        self._busy = threading.Condition()  # guards _inflight; helpers wait on it for the first thread to be busy
        self._beats = {}  # thread name -> monotonic time it last went round its loop (liveness)
        self.swaps = 0  # model switches done or failed (the inference thread): a caller waits for one
        self.swap_error = None  # why the latest switch failed (None: it succeeded)

    # --- life cycle ------------------------------------------------------------------------

    def start(self):
        """Load the model and open the sources (raises AgentError); start the threads."""
        self._tracking.check(self.config)  # no scipy: refuse now, before a model or camera opens
        loaded = threading.Event()
        error = []

        def infer_main():
            try:
                self._detector = self._open_detector(self.config, self.config.size)
            except BaseException as e:  # report to start(), which re-raises on the caller's thread
                error.append(e)
                loaded.set()
                return
            loaded.set()
            self._go.wait()  # the cameras are open (or start failed and stop() was called)
            self._infer_loop("infer")

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
        self._helpers = [threading.Thread(target=self._infer_loop, args=("infer-{}".format(k + 2), k + 1),
                                          name="infer-{}".format(k + 2), daemon=True)
                         for k in range(self._detector.concurrency - 1)]
        self._threads = [infer, output] + self._helpers
        for t in self._helpers:
            t.start()
        for camera in self.cameras:
            self._start_feeder(camera)
        output.start()
        self._state = "running"
        self._go.set()
        det = self._detector
        log.info("running: size %s, backend %s (%s detector), %d camera(s)", det.size, det.backend_name, det.kind,
                 len(self.cameras))

    def wait(self, timeout=None):
        """True once all finite sources ended and every record reached the sinks, or after stop()."""
        return self._done.wait(timeout)

    def stop(self, timeout=5.0):
        """Stop capture, drain what is queued to the sinks, close backend and sources; idempotent."""
        self._stop.set()
        self._go.set()
        for cond in (self._ready, self._busy):
            with cond:
                cond.notify_all()
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
        model = self._detector
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
            "size_reason": self.size_reason,
        }

    @property
    def labels(self):
        """{class id: name} of the running model ({} before it is loaded)."""
        model = self._detector
        return dict(model.labels) if model is not None else {}

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

    def reload(self, config, size_reason=""):
        """Apply a new config (a concrete size): thresholds at once, a size or model change on
        the inference thread (cameras keep capturing), changed cameras reopened. Returns whether
        the model changes (``swaps`` counts up once the inference thread has switched, or failed to)."""
        _concrete(config)
        old = self.config
        self.size_reason = size_reason
        model_changed = (config.size != (self._detector.size if self._detector else None)
                         or config.sizes != old.sizes or config.backend != old.backend)
        self.config = config
        if self._detector is not None:
            self._detector.detection = detection_settings(config)  # thresholds apply from the next frame
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
                self._tracking.close(config, [camera])  # its tracks end ('stopped'); reopened, it starts anew
        for cid, cam in wanted.items():
            if cid not in old_cams or old_cams[cid].cam != cam:
                camera = Camera(config, cam, open_source(cam))
                self.cameras.append(camera)
                self._start_feeder(camera)
        log.info("reloaded configuration%s", " (switching to size {})".format(config.size) if model_changed else "")
        return model_changed

    def publish_counts(self):
        """Send every camera's current counts again (the service calls it every timing interval)."""
        self._tracking.publish_counts(self.config, list(self.cameras))

    # --- threads ---------------------------------------------------------------------------

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
                detector = self._detector
                job = FrameJob(camera, frame, detector, t_start=now())
                job.prepared = detector.prepare(frame.image)
                camera.frames += 1
                self._enqueue(camera, job)
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
                    item.release()
                    return
                if camera.source.live:
                    try:  # freshest frame wins: drop the oldest waiting one
                        old = camera.queue.get_nowait()
                        if old is not _END:
                            old.release()
                            camera.dropped += 1
                    except queue.Empty:
                        pass
        with self._ready:
            self._ready.notify()

    def _next_item(self, name, index=0):
        """Round-robin over cameras; returns (camera, item), None when all have ended, or False
        when inference thread ``index`` > 0 must leave the next frame to the first thread: with
        nothing else being inferred, a frame goes to the first thread, so that the lone frames
        of a paced camera all run on one thread (with two threads taking turns, the fast demo
        model's p50 at 30 fps was 1.37 ms over bare, against 1.02 ms: medians of 10 rounds on
        the 2-core box, benchmarks/README.md)."""
        start = self._rr
        while True:
            cams = list(self.cameras)
            live = [c for c in cams if not c.ended.is_set()]
            if not live and not self._swap:
                return None
            if index and not self._inflight:
                return False
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
                self._beat(name)
                with self._ready:
                    self._ready.wait(0.05)

    def _take_job(self, name, index):
        """The next frame for inference thread ``name`` (the ``index``-th): (camera, job, parallel),
        None once every camera has ended, or False when the first thread has a swap to do first.
        ``parallel``: other frames are inferred meanwhile."""
        while True:
            self._beat(name)
            if index == 0 and self._swap is not None:
                return False
            if index and index >= self._detector.concurrency:  # a detector that runs one frame at a time
                if self._stop.is_set() or self._done_feeding():
                    return None
                time.sleep(0.1)
                continue
            if index and not self._inflight:  # a frame alone is the first thread's (_next_item)
                if self._stop.is_set() or self._done_feeding():
                    return None
                with self._busy:
                    if not self._inflight:
                        self._busy.wait(0.25)
                continue
            if not self._take.acquire(timeout=0.25):  # another thread is waiting for a frame
                continue
            try:
                got = self._next_item(name, index)
                if got is None:
                    return None
                if got is False:
                    continue
                got[1].ticket = self._tickets
                self._tickets += 1
                with self._busy:
                    self._inflight += 1
                    others = self._inflight > 1
                    self._busy.notify_all()
                waiting = any(not c.queue.empty() for c in self.cameras)
                return got[0], got[1], others or (waiting and self._detector.concurrency > 1)
            finally:
                self._take.release()

    def _done_feeding(self):
        return all(c.ended.is_set() for c in self.cameras) and not self._swap

    def _infer_loop(self, name, index=0):
        """Inference thread ``name``, the ``index``-th (0: the one that owns the detector)."""
        try:
            while True:
                self._beat(name)
                if index == 0 and self._swap is not None:
                    with self._gate.alone():
                        self._do_swap()
                got = self._take_job(name, index)
                if got is None:
                    break
                if got is False:
                    continue
                camera, job, parallel = got
                try:
                    with self._gate.shared():
                        detector = self._detector
                        if job.detector is not detector:  # prepared for the detector we just swapped out
                            camera.dropped += 1
                        else:
                            job.pending = detector.infer(job.frame.image, job.prepared, parallel)
                finally:
                    with self._busy:
                        self._inflight -= 1
                        idle = not self._inflight
                    if idle and self._helpers:  # a helper waiting for a frame lets the first thread have it
                        with self._ready:
                            self._ready.notify_all()
                    job.release()
                    self._out.put(job)  # also unfinished: the output thread must see every ticket
        except Exception:
            log.exception("inference thread %s failed", name)
            self._state = "failed"
            self._stop.set()
        finally:
            if index:
                self._beats.pop(name, None)  # an idle helper is not a hung thread
            else:
                for t in self._helpers:
                    t.join()
                # The thread that created the backend frees it (CUDA contexts are per thread).
                if self._detector is not None:
                    self._detector.close()
                self._out.put(_END)

    def _do_swap(self):
        config, self._swap = self._swap, None
        size = config.size
        log.info("loading size %s", size)
        try:
            new = self._open_detector(config, size)
        except AgentError as e:
            log.error("cannot switch to size %s, keeping %s: %s", size, self._detector.size, e)
            self.swap_error = str(e)
            self.swaps += 1
            return
        old, self._detector = self._detector, new
        old.close()
        log.info("switched to size %s (%s)", size, new.engine_id)
        self.swap_error = None
        self.swaps += 1

    def _output_loop(self):
        waiting, following = {}, 0  # jobs inferred out of turn, by ticket; the ticket due next
        try:
            while True:
                self._beat("output")
                try:
                    got = self._out.get(timeout=0.5)
                except queue.Empty:
                    continue
                if got is _END:
                    break
                waiting[got.ticket] = got
                while following in waiting:
                    job = waiting.pop(following)
                    following += 1
                    if job.pending is not None:
                        self._emit(job)
        finally:
            self._tracking.close(self.config, list(self.cameras))  # 'end' events; counts back to zero
            if self._state == "running":
                self._state = "finished"
            self._done.set()

    def _emit(self, got):
        """Finish one inferred job and hand its record to the sinks (output thread)."""
        camera, frame, detector = got.camera, got.frame, got.detector
        got.detections = found = detector.finish(got.pending)
        got.pending = None
        t_post = now()
        boxes, scores, class_ids, ids = self._tracking.frame(self.config, camera, found, frame, detector.labels)
        times = {"capture": max(0.0, (got.t_start - frame.monotonic) * 1000.0)}
        times.update(found.times)
        t = now()
        times["publish"] = (t - t_post) * 1000.0
        times["total"] = (t - frame.monotonic) * 1000.0
        record = make_record(self.config.device_id, camera.id, self._seq.next(camera.id), frame,
                             detector.size, detector.labels, boxes, scores, class_ids, times, ids)
        camera.stats.add(times, t)
        for sink in self.sinks:
            try:
                sink.emit(record, frame.image)
            except Exception:
                log.exception("sink %s failed", type(sink).__name__)
        self._processed += 1  # only this thread writes it


class _Gate(object):
    """Many holders at once (inference threads using the detector), or one alone (a swap); one
    waiting to be alone goes first, else back-to-back inferences would starve it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._holders = 0
        self._alone = False
        self._wanted = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._alone or self._wanted:
                self._cond.wait()
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self):
        with self._cond:
            self._wanted += 1
            while self._alone or self._holders:
                self._cond.wait()
            self._wanted -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()
