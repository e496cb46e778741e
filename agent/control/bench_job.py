"""The ``benchmark`` command's work: ``size: auto``'s quick measurement, off the frame path.

The sizes are measured by ``autosize.measure`` (speed only, on synthetic frames: a few
seconds per size) in a child process (agent.engines.child) under Linux's SCHED_IDLE
policy (it runs only on CPU time nothing else wants, and a waking pipeline thread takes
its core at once; ``nice`` 19 where SCHED_IDLE is missing), so that a crash in the
measurement cannot touch the agent and the running pipeline keeps its CPU. A thread of the agent only waits on the child's pipe
and turns its events into ``progress(text)`` calls (at most one a second); the report
is saved where ``size: auto`` reads it (``autosize.report_path``), and ``finished(report,
error)`` runs on that thread at the end. Figures measured beside a running pipeline are
slower than on an idle device: for exact ones, run ``edge-agent benchmark`` with the
service stopped.
"""

import logging
import os
import threading
import time

log = logging.getLogger("edge_agent.control")

NICE = 19  # the fallback without SCHED_IDLE
PROGRESS_EVERY_S = 1.0


def measure_in_child(job, send):
    """The child's entry (agent.engines.child): measure every configured size, save and return the report."""
    config, nice = job
    if nice:
        lowest_priority(nice)
    from ..autosize import load_report, measure, report_path
    from ..engines.child import stopping

    def progress(event):
        if stopping():
            raise KeyboardInterrupt  # unwinds the Measurer's pipelines; run_benchmark reports it
        if event[0] in ("step", "tick"):
            send(event)

    return measure(config, previous=load_report(report_path(config)), progress=progress)


def lowest_priority(nice=NICE):
    """Put this process under SCHED_IDLE (else ``nice``); returns which one it got."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "SCHED_IDLE"
    except (AttributeError, OSError):  # not Linux, or refused
        os.nice(nice)
        return "nice {}".format(nice)


class BenchmarkJob(object):
    """One quick benchmark of ``config``'s sizes in a child process (see the module docstring)."""

    def __init__(self, config, progress, finished, nice=NICE):
        self.config = config
        self._progress = progress
        self._finished = finished
        self._nice = nice
        self._cancel = threading.Event()
        self._last = 0.0
        self.thread = threading.Thread(target=self._run, name="benchmark", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def cancel(self, timeout=6.0):
        """Ask the child to stop and wait (at most ``timeout``) for the thread."""
        self._cancel.set()
        self.thread.join(timeout)

    @property
    def running(self):
        return self.thread.is_alive()

    def _on_event(self, event):
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        if event[0] == "step":
            self._progress(str(event[1]))
        elif event[0] == "tick":
            self._progress("{}: {}/{}".format(event[1], event[2], event[3]))

    def _run(self):
        from ..engines.child import run_in_child
        from ..errors import AgentError

        report, error = None, None
        try:
            report = run_in_child(measure_in_child, (self.config, self._nice), self._on_event,
                                  stop_grace_s=5.0, cancel=self._cancel)
        except AgentError as e:
            error = str(e)
        except Exception as e:  # the agent must survive whatever the measurement does
            log.exception("benchmark: measuring failed")
            error = "{}: {}".format(type(e).__name__, e)
        self._finished(report, error)
