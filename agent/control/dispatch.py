"""Acting on commands: the service loop's side of the remote control.

``Controller.tick`` runs on the service's main thread, between its other duties, so a
command changes the agent exactly as a SIGHUP reload does and never from another thread:

- ``size NAME|auto``: ``agent.set_size`` (the reload path: the inference thread loads the
  new model while cameras keep capturing); 'accepted' at once, 'ok' once the inference
  thread has switched (``Pipeline.swaps``), 'error' if it could not. ``auto`` without a
  usable benchmark report measures first (as ``benchmark``), then applies.
- ``snapshot [CAMERA]``: the MQTT sink snapshots that camera's next frame; 'ok' once published.
- ``reload``: the SIGHUP path; 'ok' or an error naming the config problem.
- ``status``: the status payload, now.
- ``benchmark``: 'accepted', then progress, then the result (bench_job: a child process);
  with ``size: auto`` in force, the new figures pick the size again.

Each command acted on is logged in one line when it ends: who (the sender's client id,
as the sender gives it), what, and the result. Nothing here waits: slow work runs
elsewhere and reports back through a queue this loop drains.
"""

import logging
import queue
import time

from ..errors import AgentError
from . import protocol
from .bench_job import BenchmarkJob

log = logging.getLogger("edge_agent.control")

PER_TICK = 8  # commands acted on per service tick at most (the rest wait in the bounded queue)
SNAPSHOT_TIMEOUT_S = 10.0


class Controller(object):
    """Runs the commands of ``channel`` (a CommandChannel) on ``agent`` (the service's Agent)."""

    def __init__(self, agent, channel, snapshots=None):
        self.agent = agent
        self.channel = channel
        self.snapshots = snapshots  # the MQTT sink (request_snapshot), or None
        self._events = queue.Queue()  # (function, args) from other threads, run by tick()
        self._switch = None  # (request, size, swaps before): a size switch the inference thread is doing
        self._shots = {}  # camera id -> (request, deadline)
        self._bench = None  # (BenchmarkJob, request, apply auto afterwards)

    # --- the loop's side ---------------------------------------------------------------------

    def tick(self):
        """Act on what came in since the last tick; never blocks."""
        while True:
            try:
                func, args = self._events.get_nowait()
            except queue.Empty:
                break
            func(*args)
        self._check_switch()
        self._check_snapshots()
        for _ in range(PER_TICK):
            try:
                req = self.channel.requests.get_nowait()
            except queue.Empty:
                break
            try:
                getattr(self, "_do_" + req.command)(req)
            except AgentError as e:
                self._end(req, "error", str(e), error="failed")
            except Exception as e:  # a bug in a command must not take the agent down
                log.exception("command %s failed", req.describe())
                self._end(req, "error", "{}: {}".format(type(e).__name__, e), error="failed")
        self.channel.flush_log()

    def close(self):
        """The agent stops: cancel a benchmark, answer what is still pending."""
        if self._bench is not None:
            job, req, _ = self._bench
            self._bench = None
            job.cancel()
            self._end(req, "error", "the agent is stopping", error="failed")
        if self._switch is not None:
            self._end(self._switch[0], "error", "the agent is stopping", error="failed")
            self._switch = None
        for req, _ in self._shots.values():
            self._end(req, "error", "the agent is stopping", error="failed")
        self._shots = {}

    # --- replies and the one log line per command ----------------------------------------------

    def _end(self, req, status, message, result=None, error=None):
        """The final reply, and the command's one log line."""
        self.channel.reply(req, status, message, result=result, error=error)
        who = req.client or "unknown client"
        if status == "ok":
            log.info("command %s from %s (id %s): ok: %s", req.describe(), who, req.id or "none", message)
        else:
            log.warning("command %s from %s (id %s): %s: %s", req.describe(), who, req.id or "none", error, message)

    def _later(self, func, *args):
        """Run ``func(*args)`` on the loop's thread at the next tick (for other threads)."""
        self._events.put((func, args))

    # --- commands ------------------------------------------------------------------------------

    def _do_status(self, req):
        status = self.agent.status()
        status["timestamp"] = round(time.time(), 3)
        self._end(req, "ok", "{} size {} backend {} {:.1f} FPS".format(
            status.get("pipeline_state", "?"), status.get("model_size"), status.get("backend"),
            status.get("fps", 0.0)), result=status)

    def _do_reload(self, req):
        ok, message = self.agent.reload()
        result = {"model_size": self.agent.config.size, "size_setting": self.agent.requested.size}
        if ok:
            self._end(req, "ok", message, result=result)
        else:
            self._end(req, "error", message, result=result, error="failed")

    def _do_size(self, req):
        size = req.arg
        sizes = sorted(self.agent.requested.sizes)
        if size != "auto" and size not in sizes:
            return self._end(req, "error", "unknown size {} (configured: {}, auto)".format(
                protocol.printable(repr(size), 60), ", ".join(sizes)), error="bad_argument")
        auto = self.agent.requested.auto_size
        if size == "auto" and not (auto.latency_budget_ms or auto.target_fps):
            return self._end(req, "error", "size auto needs auto_size.latency_budget_ms or auto_size.target_fps in "
                                           "the configuration", error="bad_argument")
        if self._switch is not None:
            return self._end(req, "error", "busy: switching to size {} already".format(self._switch[1]),
                             error="busy")
        if size == "auto":
            from ..autosize import load_report, report_path, stale_reasons

            report = load_report(report_path(self.agent.requested))
            reasons = stale_reasons(report, self.agent.requested) if report is not None else ["no benchmark report"]
            if reasons:
                if self._bench is not None:
                    return self._end(req, "error", "busy: a benchmark is running; size auto after it",
                                     error="busy")
                self._start_benchmark(req, apply_auto=True)
                self.channel.reply(req, "accepted", "size auto: measuring the sizes first ({})".format(
                    "; ".join(reasons)))
                return None
        self._switch_size(req, size)
        return None

    def _switch_size(self, req, size):
        before = self.agent.pipeline.swaps
        was = self.agent.config.size
        changed = self.agent.set_size(size)
        running = self.agent.config.size
        if not changed:
            return self._end(req, "ok", "size {} running{}".format(
                running, " (auto)" if size == "auto" else ""), result=self._size_result())
        self._switch = (req, running, before)
        self.channel.reply(req, "accepted", "switching from size {} to {}".format(was, running))
        return None

    def _size_result(self):
        return {"model_size": self.agent.config.size, "size_setting": self.agent.requested.size,
                "size_reason": self.agent.pipeline.size_reason or None}

    def _check_switch(self):
        if self._switch is None:
            return
        req, size, before = self._switch
        pipeline = self.agent.pipeline
        if pipeline.swaps == before:
            return
        self._switch = None
        running = pipeline.status().get("size")
        if running == size and pipeline.swap_error is None:
            self._end(req, "ok", "switched to size {}".format(size), result=self._size_result())
        else:
            self._end(req, "error", "size {} not loaded, running {}: {}".format(
                size, running, pipeline.swap_error or "superseded by a reload"), error="failed",
                result=self._size_result())

    def _do_snapshot(self, req):
        cameras = sorted(self.agent.pipeline.camera_states())
        camera = req.arg
        if camera is None and len(cameras) == 1:
            camera = cameras[0]
        if camera not in cameras:
            return self._end(req, "error", "{} (cameras: {})".format(
                "which camera?" if camera is None else "unknown camera {}".format(protocol.printable(repr(camera), 60)),
                ", ".join(cameras)), error="bad_argument")
        if self.snapshots is None:
            return self._end(req, "error", "snapshots need the MQTT sink", error="failed")
        if camera in self._shots:
            return self._end(req, "error", "busy: a snapshot of {} is pending".format(camera), error="busy")
        self._shots[camera] = (req, time.monotonic() + SNAPSHOT_TIMEOUT_S)
        self.snapshots.request_snapshot(camera, lambda ok, info: self._later(self._snapshot_done, camera, ok, info))
        return None

    def _snapshot_done(self, camera, ok, info):
        pending = self._shots.pop(camera, None)
        if pending is None:
            return
        req = pending[0]
        if ok:
            self._end(req, "ok", "snapshot of {} (seq {}, {} bytes) on {}".format(
                camera, info.get("seq"), info.get("bytes"), info.get("topic")), result=info)
        else:
            self._end(req, "error", "snapshot of {} failed: {}".format(camera, info), error="failed")

    def _check_snapshots(self):
        now = time.monotonic()
        states = None
        for camera, (req, deadline) in list(self._shots.items()):
            if now >= deadline:
                del self._shots[camera]
                states = states or self.agent.pipeline.camera_states()
                self._end(req, "error", "no frame from camera {} within {:.0f} s (state: {})".format(
                    camera, SNAPSHOT_TIMEOUT_S, states.get(camera, "?")), error="failed")

    def _do_benchmark(self, req):
        if self._bench is not None:
            return self._end(req, "error", "busy: a benchmark is running", error="busy")
        self._start_benchmark(req, apply_auto=self.agent.requested.size == "auto")
        self.channel.reply(req, "accepted", "measuring sizes {} (speed, synthetic frames, lowest CPU priority)".format(
            ", ".join(sorted(self.agent.requested.sizes))))
        return None

    # --- the benchmark -------------------------------------------------------------------------

    def _start_benchmark(self, req, apply_auto):
        def progress(text):
            self.channel.reply(req, "progress", protocol.printable(text, 200))

        def finished(report, error):
            self._later(self._benchmark_done, report, error)

        job = BenchmarkJob(self.agent.config, progress, finished)
        self._bench = (job, req, apply_auto)
        job.start()

    def _benchmark_done(self, report, error):
        if self._bench is None:
            return
        _, req, apply_auto = self._bench
        self._bench = None
        if error is not None:
            return self._end(req, "error", "benchmark failed: {}".format(error), error="failed")
        from ..autosize import pick, report_path, stale_reasons

        summary = {name: {"latency_p50_ms": _get(entry, "latency", "stages", "total", "p50"),
                          "fps": next((r.get("fps") for r in entry.get("throughput") or [] if r.get("streams") == 1),
                                      None)}
                   for name, entry in sorted(report.get("sizes", {}).items())}
        result = {"report": report_path(self.agent.requested), "sizes": summary}
        text = "; ".join("{} p50 {} ms, {} FPS".format(n, _fmt(s["latency_p50_ms"]), _fmt(s["fps"]))
                         for n, s in summary.items())
        auto = self.agent.requested.auto_size
        if auto.latency_budget_ms or auto.target_fps:
            picked, reason, _ = pick(report, sorted(self.agent.requested.sizes), auto.latency_budget_ms,
                                     auto.target_fps)
            result["auto"] = {"size": picked, "reason": reason, "applied": False}
            if apply_auto or self.agent.requested.size == "auto":
                stale = stale_reasons(report, self.agent.requested)
                if stale:
                    result["auto"]["reason"] += " (not applied: {})".format("; ".join(stale))
                elif self._switch is None:
                    before = self.agent.pipeline.swaps
                    changed = self.agent.set_size("auto")
                    result["auto"]["applied"] = True
                    if changed:
                        self._switch = (req, self.agent.config.size, before)
                        self.channel.reply(req, "progress", "{}; size auto picked {}: switching".format(
                            text, picked), result=result)
                        return None
            text += "; size auto: {}".format(picked)
        self._end(req, "ok", text, result=result)
        return None


def _get(mapping, *keys):
    for k in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(k)
    return mapping


def _fmt(value):
    return "-" if value is None else "{:.1f}".format(value)
