"""The one child-process runner: a function run in a fresh Python, its events and result sent back.

``run_in_child(target, job, on_event)`` runs ``target(job, send)`` in a new interpreter
(not fork: unsafe once CUDA is initialised; not multiprocessing's spawn: it re-runs the
caller's ``__main__``, which breaks for stdin, ``-c`` and unguarded scripts). Used by the
engine build (a crashing parser or builder cannot kill the CLI, an auto-build keeps the
service free of the build side) and by benchmark isolation (each size's peak memory is
its own). The job goes in on stdin, pickled; events and the result come back pickled on a
dedicated pipe (TensorRT and ONNX Runtime print on stdout/stderr, which stay the caller's).
"""

import importlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from typing import List

from .. import errors
from ..errors import EngineError

log = logging.getLogger("edge_agent.engines")

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_HEADER = struct.Struct("!I")
# -c, not -m: under -m this module would run twice (as __main__ and as itself), with two stop flags.
_ENTRY = "from agent.engines.child import main; main()"
_stop_requested = []  # type: List[int]


_CANCELLED = ("cancelled",)


class Cancelled(EngineError):
    """``run_in_child``'s ``cancel`` was set: the child was asked to stop and did not finish."""


class ChildDied(EngineError):
    """The child ended without a result; ``code`` is its exit status (negative: killed by that signal)."""

    def __init__(self, code):
        super(ChildDied, self).__init__("child process ended with status {}".format(code))
        self.code = code


def signal_name(number):
    """'SIGSEGV' for 11."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal {}".format(number)


def stopping():
    """True in a child once its parent asked it to stop (see ``stop_grace_s``)."""
    return bool(_stop_requested)


def run_in_child(target, job, on_event, idle=None, idle_s=30.0, stop_grace_s=None, ignore_sigint=False,
                 cancel=None):
    """Run ``target(job, send)`` in a child; return its result, or raise the AgentError it raised.

    ``target``: a module-level function or 'module:name' (the child imports it by name);
    ``job`` must pickle. ``on_event(event)`` receives each ``send(event)`` of the child;
    ``idle()`` is called after ``idle_s`` without an event. ``ignore_sigint``: the child
    ignores a terminal's Ctrl-C and the parent decides. ``stop_grace_s``: on
    KeyboardInterrupt the parent asks the child to stop (SIGTERM; ``stopping()`` turns
    True there), still forwards its events for that long, then re-raises. ``cancel``: a
    threading.Event another thread may set (the caller need not be the main thread): the
    child is asked to stop the same way; a result it still sends within ``stop_grace_s``
    (default 5 s) is returned, else Cancelled is raised. Raises ChildDied when the child
    ends without a result.
    """
    name = target if isinstance(target, str) else "{}:{}".format(target.__module__, target.__name__)
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    # Inherited through exec; only the main thread may change a handler.
    ignore = ignore_sigint and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore else None
    try:
        proc = subprocess.Popen([sys.executable, "-c", _ENTRY], stdin=subprocess.PIPE, pass_fds=(write_fd,),
                                env=env, close_fds=True)
    finally:
        os.close(write_fd)  # the child holds the only write end: EOF means it is gone
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    try:
        try:
            if proc.stdin is not None:
                # Two pickles: the header's sys.path first, so the job may hold a test module's classes.
                pickle.dump({"target": name, "sys_path": [p for p in sys.path if p], "fd": write_fd}, proc.stdin)
                pickle.dump(job, proc.stdin)
                proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass  # the child died at once; its exit status says why
        reader = _Reader(read_fd)
        try:
            message = reader.next_message(on_event, idle, idle_s, cancel=cancel)
        except KeyboardInterrupt:
            if stop_grace_s is None:
                raise
            proc.send_signal(signal.SIGTERM)
            try:
                reader.next_message(on_event, None, idle_s, deadline=time.monotonic() + stop_grace_s)
            except KeyboardInterrupt:
                pass
            raise
        if message is _CANCELLED:
            proc.send_signal(signal.SIGTERM)
            grace = stop_grace_s if stop_grace_s is not None else 5.0
            message = reader.next_message(on_event, None, idle_s, deadline=time.monotonic() + grace)
            if message is None:
                raise Cancelled("cancelled: {} stopped".format(name))
        if message is not None:
            if message[0] == "done":
                return message[1]
            if len(message) > 3:
                log.debug("child traceback:\n%s", message[3])
            raise getattr(errors, message[1], EngineError)(message[2])
    finally:
        os.close(read_fd)
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    raise ChildDied(proc.returncode)


class _Reader(object):
    """Length-prefixed pickles from the result pipe."""

    def __init__(self, fd):
        self.fd = fd
        self.buffered = b""

    def next_message(self, on_event, idle, idle_s, deadline=None, cancel=None):
        """Forward events until 'done' or 'error' (returned); None at EOF or past ``deadline``;
        _CANCELLED once ``cancel`` is set."""
        last = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                return _CANCELLED
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                if idle is not None and time.monotonic() - last >= idle_s:
                    idle()
                    last = time.monotonic()
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffered += chunk
            while len(self.buffered) >= _HEADER.size:
                (length,) = _HEADER.unpack_from(self.buffered)
                if len(self.buffered) < _HEADER.size + length:
                    break
                message = pickle.loads(self.buffered[_HEADER.size:_HEADER.size + length])
                self.buffered = self.buffered[_HEADER.size + length:]
                if message[0] == "event":
                    on_event(message[1])
                    last = time.monotonic()
                else:
                    return message
        return None


def main():
    """The child: read the header and job from stdin, run the target, report on the result pipe."""
    stdin = sys.stdin.buffer
    header = pickle.load(stdin)
    sys.path[:0] = [p for p in header["sys_path"] if p not in sys.path]  # e.g. a test module's folder
    job = pickle.load(stdin)
    out = os.fdopen(header["fd"], "wb")
    signal.signal(signal.SIGTERM, lambda number, frame: _stop_requested.append(number))

    def put(message):
        data = pickle.dumps(message)
        out.write(_HEADER.pack(len(data)) + data)
        out.flush()

    def send(event):
        put(("event", event))

    module, name = header["target"].split(":")
    try:
        put(("done", getattr(importlib.import_module(module), name)(job, send)))
    except errors.AgentError as e:
        put(("error", type(e).__name__, str(e)))
    except BaseException as e:  # anything else: one line for the user, the traceback at debug level
        put(("error", "EngineError", "{}: {}".format(type(e).__name__, e), traceback.format_exc()))
    finally:
        out.close()
