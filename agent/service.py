"""Daemon life: signals, sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING), reload.

``run_agent`` owns the main thread. Signal handlers only set flags; the loop
below does the work every tick:

- READY=1 once the first frame went through the whole pipeline (engine loaded,
  camera delivering), so ``systemctl start`` returning means detections flow; or,
  when no camera is up yet, once the engine is loaded: the agent is ready and
  keeps retrying the cameras (STATUS= names them: ``cam0=waiting``);
- WATCHDOG=1 while every pipeline thread goes round its loop: a hung inference or
  output thread stops the pings and systemd restarts the agent (WatchdogSec=); a
  camera that is down or stalled does not, the agent retries it instead;
- while ``Pipeline.start()`` runs (loading, or building an engine for minutes)
  the start timeout is extended with EXTEND_TIMEOUT_USEC= and STATUS= shows the
  latest log line of the agent ("building ...");
- timing summaries, counts (agent.track), health and status changes go to every sink
  on schedule;
- the remote control (agent.control: commands over MQTT, Home Assistant discovery) acts
  here too, through the ``Agent`` below: a ``size`` command takes the reload's path.
"""

import dataclasses
import logging
import signal
import threading
import time

from . import sdnotify
from .autosize import resolve as resolve_size
from .errors import AgentError, ConfigError
from .health import read_health
from .publish import schema

log = logging.getLogger("edge_agent.service")

TICK_S = 0.5
EXTEND_EVERY_S = 10.0  # while starting: ask systemd for EXTEND_S more every EXTEND_EVERY_S
EXTEND_S = 30.0
MAX_START_S = 3600.0  # a first TensorRT build can take ~10 min; more than an hour is a hang
HUNG_AFTER_S = 2.0  # a pipeline thread waits at most ~0.5 s per loop: this long without a round is a hang
STOP_TIMEOUT_S = 5.0  # each of pipeline.stop() and sink.close(): well inside TimeoutStopSec=20
HANDLED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")


class _Flags(object):
    """What the signal handlers ask the main thread to do."""

    def __init__(self):
        self.stop = None  # the signal name that asked us to stop
        self.reload = False

    def handle(self, signum, frame):
        if signum == signal.SIGHUP:
            self.reload = True
        elif self.stop is None:
            self.stop = signal.Signals(signum).name


class _LastMessage(logging.Handler):
    """Keeps the latest INFO+ message of the agent's loggers, for STATUS= while starting."""

    def __init__(self):
        logging.Handler.__init__(self, logging.INFO)
        self.text = ""

    def emit(self, record):
        try:
            self.text = record.getMessage().splitlines()[0][:160]
        except Exception:
            pass


def _install_signals(flags):
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (tests calling from threads)
    old = {}
    for name in HANDLED_SIGNALS:
        sig = getattr(signal, name)
        old[sig] = signal.signal(sig, flags.handle)
    return old


def _restore_signals(old):
    for sig, handler in old.items():
        signal.signal(sig, handler)


def _each_sink(sinks, method, *args):
    """Call ``method`` on every sink; a failing sink is logged, never fatal."""
    for sink in sinks:
        try:
            getattr(sink, method)(*args)
        except Exception:
            log.exception("sink %s: %s() failed", type(sink).__name__, method)


def _sink_states(sinks):
    out = {}
    for sink in sinks:
        try:
            out[type(sink).__name__] = sink.state()
        except Exception:
            out[type(sink).__name__] = "error"
    return out


def status_line(status, sink_states):
    """The one-line STATUS= text of a ``schema.status`` payload: state, size, backend, FPS, sinks."""
    sinks = " ".join("{}={}".format(k.replace("Sink", "").lower() or k, v) for k, v in sorted(sink_states.items()))
    cams = status.get("camera_states", {})
    down = " ".join("{}={}".format(k, v) for k, v in sorted(cams.items()) if v != "running")
    return "{} size={} backend={} fps={:.1f} cameras={} {} {}".format(
        status.get("pipeline_state", "?"), status.get("model_size", "?"), status.get("backend", "?"),
        status.get("fps", 0.0), len(cams), down, sinks).replace("  ", " ").strip()


def _status_payload(config, pipeline, started_at):
    """The agent's status in its published shape."""
    return schema.status(config, pipeline.status(), started_at)


def _status_key(payload, sink_states):
    """What counts as a status change (not FPS, which moves every tick)."""
    return (payload.get("pipeline_state"), payload.get("model_size"), payload.get("size_setting"), payload.get("backend"),
            payload.get("engine_id"), tuple(sorted(payload.get("camera_states", {}).items())),
            tuple(sorted(sink_states.items())))


def _start(pipeline, flags):
    """Run ``pipeline.start()`` on a helper thread, extending systemd's start timeout meanwhile."""
    error = []

    def target():
        try:
            pipeline.start()
        except BaseException as e:  # re-raised on the main thread
            error.append(e)

    last = _LastMessage()
    logging.getLogger("edge_agent").addHandler(last)
    thread = threading.Thread(target=target, name="start", daemon=True)
    began = time.monotonic()
    thread.start()
    try:
        next_extend = 0.0
        while thread.is_alive():
            thread.join(0.25)
            elapsed = time.monotonic() - began
            if flags.stop is None and elapsed >= next_extend and elapsed < MAX_START_S:
                phase = "building" if "build" in last.text.lower() else "starting"
                text = "{} ({:.0f} s){}".format(phase, elapsed, ": " + last.text if last.text else "")
                if elapsed >= EXTEND_EVERY_S:
                    sdnotify.extend_timeout(EXTEND_S, text)
                else:
                    sdnotify.status(text)
                next_extend = elapsed + EXTEND_EVERY_S if elapsed >= EXTEND_EVERY_S else EXTEND_EVERY_S
    finally:
        logging.getLogger("edge_agent").removeHandler(last)
    if error:
        raise error[0]


def _reload(pipeline, config, config_path, overrides):
    """Re-read the config (same overrides) and apply it; returns the config now in force."""
    return reload_config(pipeline, config, config_path, overrides)[0]


def reload_config(pipeline, config, config_path, overrides):
    """Re-read the config (same overrides) and apply it: (config in force, the config as read
    (its size may be 'auto'), None) or, when the file is bad, (``config``, None, why).

    Checks what ``run`` checks at start (load_config, then the sources). A bad file is one
    ERROR line and the agent runs on: a reload must never take a working agent down.
    """
    from .config import check_sources, load_config

    sdnotify.reloading()
    try:
        requested = load_config(config_path, overrides)
        check_sources(requested)
        new, reason = resolve_size(requested)
    except ConfigError as e:
        log.error("reload: keeping the running configuration: %s", e)
        return config, None, str(e)
    except Exception as e:  # a loader bug: still no crash, still one line
        log.error("reload: keeping the running configuration: %s: %s", type(e).__name__, e)
        return config, None, "{}: {}".format(type(e).__name__, e)
    try:
        pipeline.reload(new, reason)
    except AgentError as e:
        log.error("reload: %s", e)
        return config, None, str(e)
    logging.getLogger().setLevel(new.log_level.upper())
    log.info("reload: configuration from %s applied", config_path or "defaults")
    return new, requested, None


class Agent(object):
    """The running agent as the loop and the remote control (agent.control) see it: the
    pipeline, the configuration in force (``config``: a concrete size) and as asked
    (``requested``: its size may be 'auto'). Only the service's main thread uses it."""

    def __init__(self, pipeline, sinks, config, requested, config_path, overrides, started_at):
        self.pipeline, self.sinks = pipeline, sinks
        self.config, self.requested = config, requested
        self.config_path, self.overrides = config_path, overrides
        self.started_at = started_at

    def status(self):
        """The status payload now (schema.status, and ``size_setting``: the size asked for)."""
        payload = schema.status(self.config, self.pipeline.status(), self.started_at)
        payload["size_setting"] = self.requested.size
        return payload

    def reload(self):
        """Re-read the configuration file, as SIGHUP does: (ok, what happened)."""
        new, requested, error = reload_config(self.pipeline, self.config, self.config_path, self.overrides)
        sdnotify.ready("reloaded: size {}".format(new.size))
        if error is not None:
            return False, "keeping the running configuration: {}".format(error)
        self.config, self.requested = new, requested
        return True, "configuration from {} applied: size {}{}".format(
            self.config_path or "defaults", new.size, " (auto)" if requested.size == "auto" else "")

    def set_size(self, size):
        """Switch to ``size`` (a configured size or 'auto') the way a reload does: the inference
        thread loads it while the cameras keep capturing. Returns whether the model changes.
        Lasts until the next reload or restart. Raises AgentError."""
        requested = dataclasses.replace(self.requested, size=size)
        new, reason = resolve_size(requested)
        changed = self.pipeline.reload(new, reason)
        self.config, self.requested = new, requested
        return changed


def run_agent(config, sinks, config_path=None, overrides=None, pipeline_factory=None):
    """Run the pipeline under systemd supervision until the sources end or a stop signal.

    Returns the exit code: 0 after a normal end or SIGTERM/SIGINT, 1 if the pipeline
    failed while running. Raises AgentError (e.g. ConfigError, EngineError) if it
    cannot start; sinks are closed either way.
    """
    if pipeline_factory is None:
        from .pipeline import Pipeline as pipeline_factory
    flags = _Flags()
    old_handlers = _install_signals(flags)
    pipeline = agent = remote = None
    try:
        sdnotify.status("starting: size {} backend {}".format(config.size, config.backend))
        started_at = time.time()
        initial = schema.status(config, {"state": "starting", "fps": 0.0}, started_at)
        initial["size_setting"] = config.size
        _each_sink(sinks, "start", initial)
        logging.getLogger().setLevel(config.log_level.upper())
        requested = config
        config, reason = resolve_size(config)  # size: auto is decided before a pipeline exists
        pipeline = pipeline_factory(config, sinks, size_reason=reason)
        try:
            _start(pipeline, flags)
        except AgentError as e:
            sdnotify.status("failed: {}".format(e))
            raise
        agent = Agent(pipeline, sinks, config, requested, config_path, overrides, started_at)
        if config.mqtt.enabled:
            from .control.remote import Remote

            remote = Remote.attach(agent, sinks)
        return _loop(agent, remote, flags)
    finally:
        sdnotify.stopping("stopping")
        if remote is not None:
            try:
                remote.close()
            except Exception:
                log.exception("remote control: close() failed")
        if agent is not None:
            config = agent.config
        if pipeline is not None:
            try:
                pipeline.stop(STOP_TIMEOUT_S)
                _log_summaries(pipeline)
            except Exception:
                log.exception("pipeline.stop() failed")
            try:
                final = agent.status() if agent is not None else _status_payload(config, pipeline, started_at)
                final["pipeline_state"] = "stopped"
                _each_sink(sinks, "status", final)
            except Exception:
                log.exception("final status failed")
        _each_sink(sinks, "close", STOP_TIMEOUT_S)
        _restore_signals(old_handlers)


def _log_summaries(pipeline):
    """One line per camera at exit: frames, FPS and p50 stage latencies."""
    for camera_id, summary in sorted(pipeline.timing_summaries().items()):
        if not summary.get("frames"):
            continue
        stages = summary.get("stages", {})
        log.info("%s: %d frames, %.1f FPS, %d dropped; p50 ms: %s", camera_id, summary["frames"], summary["fps"],
                 summary.get("dropped", 0), " ".join("{} {:.1f}".format(name, stages[name]["p50"])
                                                     for name in ("preprocess", "infer", "postprocess", "total")
                                                     if name in stages))


def _loop(agent, remote, flags):
    """The main loop; returns the exit code."""
    pipeline, sinks = agent.pipeline, agent.sinks
    watchdog = sdnotify.watchdog_interval()
    tick = min(TICK_S, watchdog / 4.0) if watchdog else TICK_S
    ready = False
    hung = False
    last_ping = time.monotonic()
    next_timing = next_health = time.monotonic()
    last_key = None
    last_line = ""
    while True:
        if flags.stop is not None:
            log.info("%s: stopping", flags.stop)
            sdnotify.stopping("stopping ({})".format(flags.stop))
            return 0
        if flags.reload:
            flags.reload = False
            agent.reload()
        if remote is not None:
            try:
                remote.tick()
            except Exception:  # the remote control must never stop the agent
                log.exception("remote control failed")
        config = agent.config
        if pipeline.wait(tick):
            state = pipeline.status().get("state")
            if state == "failed":
                log.error("pipeline failed")
                return 1
            log.info("all sources ended: %d frame(s) processed", pipeline.processed)
            return 0
        now = time.monotonic()
        if not ready:
            waiting = sorted(c for c, state in pipeline.camera_states().items() if state != "running")
            if pipeline.first_frame_done:
                log.info("ready: first frame processed")
            elif waiting and len(waiting) == len(pipeline.cameras):
                # No camera is up (yet): the agent itself is ready, and retries them.
                log.warning("ready without frames: waiting for camera(s) %s", ", ".join(waiting))
            else:
                continue
            ready = True
            sdnotify.ready("running")
        # The watchdog watches the agent, not the cameras: ping while every pipeline thread
        # goes round its loop. A hung inference or output thread stops the pings; a camera
        # that is down or stalled does not (its feeder keeps waiting, and retrying).
        thread, age = pipeline.stalest_thread()
        stuck = age >= max((watchdog or 0.0) / 2.0, HUNG_AFTER_S)
        if watchdog and now - last_ping >= watchdog / 2.0:
            if not stuck:
                sdnotify.watchdog()
                last_ping = now
            elif not hung:
                log.error("thread %s made no progress for %.1f s: no more watchdog pings", thread, age)
        hung = stuck
        payload = agent.status()
        sink_states = _sink_states(sinks)
        line = status_line(payload, sink_states)
        if line != last_line:
            sdnotify.status(line)
            last_line = line
        key = _status_key(payload, sink_states)
        if key != last_key:
            _each_sink(sinks, "status", payload)
            last_key = key
        if now >= next_timing:
            for camera_id, summary in sorted(pipeline.timing_summaries().items()):
                timing = schema.timing(config.device_id, camera_id, summary, config.mqtt.timing_interval_s)
                _each_sink(sinks, "timing", camera_id, timing)
            pipeline.publish_counts()  # the retained counts, also when nothing changed
            next_timing = now + config.mqtt.timing_interval_s
        if now >= next_health:
            _each_sink(sinks, "health", schema.health(config.device_id, read_health(), pipeline.camera_states()))
            next_health = now + config.health.interval_s
