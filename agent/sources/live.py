"""LiveSource: a capture thread, the freshest-frame policy and a stall watchdog.

Two threads per source. A *reader* owns one opened capture and loops on its
blocking ``read()``; it never touches the caller. A *supervisor* (the watchdog)
opens the capture, starts a reader for it and watches frame age: no new frame
for ``stall_timeout_s``, the same image for ``stall_timeout_s`` (an unplugged USB
camera repeats its last frame forever, opencv#5221) or a failed read abandons
that reader and reopens with exponential backoff. A reader stuck in a native
read cannot be interrupted from Python: it is left as a daemon and releases its
capture if the read ever returns. So neither ``read()`` nor ``close()`` of the
caller ever waits on the device. A device that cannot be opened at start is not
an error either: the source is ``waiting`` and the supervisor keeps trying.
"""

import logging
import threading
import time
import zlib

import cv2

from ..errors import SourceError
from .base import Frame, FramePool, FrameSource

log = logging.getLogger("edge_agent.sources")


def image_signature(image):
    """A cheap hash of a ~32x32 subsample: equal signatures mean a repeated buffer."""
    h, w = image.shape[:2]
    sub = image[:: max(1, h // 32), :: max(1, w // 32)]
    return zlib.crc32(sub.tobytes())


class _Generation(object):
    """One opened capture and the reader thread looping on it."""

    def __init__(self, cap, now):
        self.cap = cap
        self.stop = threading.Event()
        self.thread = None
        self.failed = ""  # why the reader ended on its own
        self.frames = 0
        self.last_frame = now  # monotonic time of the last frame (or of the open)
        self.last_change = now  # monotonic time the image last changed
        self.signature = None


class LiveSource(FrameSource):
    """A camera or stream read on its own thread; subclasses implement ``_open``.

    ``_open()`` returns an opened capture object with ``read() -> (ok, image)`` and
    ``release()`` (a ``cv2.VideoCapture`` fits) or raises SourceError.
    """

    live = True
    BACKOFF_MIN_S = 0.5
    BACKOFF_MAX_S = 5.0  # a camera that comes back is read again within ~5 s
    OPEN_TIMEOUT_S = 20.0  # how long start() waits for the first open attempt to finish
    JOIN_TIMEOUT_S = 1.0  # how long close waits for each thread

    def __init__(self, uri, stall_timeout_s=5.0):
        FrameSource.__init__(self)
        self.uri = uri
        self.stall_timeout_s = float(stall_timeout_s)
        self._cond = threading.Condition()
        self._latest = None
        self._taken = True
        self._index = 0
        self._closed = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._gen = None
        self._supervisor = None
        self.state = "waiting"

    # -- subclass hook ------------------------------------------------------------------

    def _open(self):
        """Open the device; return a capture with ``read()`` and ``release()``."""
        raise NotImplementedError

    # -- caller side --------------------------------------------------------------------

    def start(self):
        """Start capturing; wait (at most OPEN_TIMEOUT_S) for the first open attempt, never fail on it."""
        self._supervisor = threading.Thread(target=self._supervise, name="capture-" + self.uri[:40])
        self._supervisor.daemon = True
        self._supervisor.start()
        if not self._started.wait(self.OPEN_TIMEOUT_S):
            log.warning("%s: still opening after %.0f s; going on without it", self.uri, self.OPEN_TIMEOUT_S)
        return self

    def read(self, timeout_ms=1000):
        """Return the newest frame not yet returned, or None after ``timeout_ms``."""
        deadline = time.monotonic() + max(0, timeout_ms) / 1000.0
        with self._cond:
            while True:
                if self._closed:
                    raise SourceError("{}: read() after close()".format(self.uri))
                if not self._taken:
                    self._taken = True
                    return self._latest
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def close(self):
        """Stop the threads and release the device; never waits long on a stuck read."""
        if self._closed:
            return
        self._stop.set()
        with self._cond:
            self._closed = True
            self._latest = None
            self._cond.notify_all()
        if self._supervisor is not None:
            self._supervisor.join(self.JOIN_TIMEOUT_S)
        gen = self._gen
        if gen is not None:
            gen.stop.set()
            if gen.thread is not None:
                gen.thread.join(self.JOIN_TIMEOUT_S)
                if gen.thread.is_alive():
                    log.warning("%s: capture thread stuck in a native read; left as a daemon, "
                                "it releases the device if the read returns", self.uri)
        log.info("%s: closed (%s)", self.uri, _stats_line(self.stats))

    # -- threads ------------------------------------------------------------------------

    def _supervise(self):
        backoff, failures, reason = self.BACKOFF_MIN_S, 0, ""
        while not self._stop.is_set():
            if failures:
                self.stats.reconnects += 1
                self.stats.last_error = reason
                # One WARNING per outage, then DEBUG: a camera down for hours must not flood the journal.
                log.log(logging.WARNING if failures == 1 else logging.DEBUG,
                        "%s: %s; %s in %.1f s (attempt %d)", self.uri, reason,
                        "reopening" if self._gen is not None else "retrying", backoff, failures)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.BACKOFF_MAX_S)
            try:
                cap = self._open()
            except Exception as exc:  # a driver can raise anything; the reason is kept
                reason = str(exc) if isinstance(exc, SourceError) else "cannot open: {}".format(exc)
                reason = reason[len(self.uri) + 2:] if reason.startswith(self.uri + ": ") else reason
                failures += 1
                self._started.set()  # start() goes on without it: the camera may come up later
                continue
            if self._stop.is_set():  # closed while the open was in progress
                cap.release()
                break
            gen = _Generation(cap, time.monotonic())
            gen.thread = threading.Thread(target=self._reader, args=(gen,), name="reader-" + self.uri[:40])
            gen.thread.daemon = True
            self._gen = gen
            gen.thread.start()
            if not self._started.is_set():
                log.info("%s: opened", self.uri)
                self._started.set()
            # Coming back is logged by the reader at the first frame: an open stream can stay silent.
            reason = self._watch(gen)
            gen.stop.set()
            if reason is None:
                break
            if self.stats.captured:
                self.state = "stalled"
            if gen.frames:
                backoff, failures = self.BACKOFF_MIN_S, 0
            failures += 1
            # Give the reader a moment to release the device before reopening it.
            gen.thread.join(self.JOIN_TIMEOUT_S)
            if gen.thread.is_alive():
                log.warning("%s: reader stuck in a native read; abandoned as a daemon", self.uri)

    def _watch(self, gen):
        """Return why ``gen`` must be replaced, or None when the source is closing."""
        poll = min(0.1, self.stall_timeout_s / 4.0)
        while not self._stop.wait(poll):
            if gen.failed:
                return gen.failed
            now = time.monotonic()
            if now - gen.last_frame > self.stall_timeout_s:
                return "no frame for {:.1f} s".format(now - gen.last_frame)
            if now - gen.last_change > self.stall_timeout_s:
                return "the same frame repeated for {:.1f} s".format(now - gen.last_change)
        return None

    def _reader(self, gen):
        cap = gen.cap
        # OpenCV's captures decode into reused buffers; other capture objects only have read().
        read = FramePool().read if isinstance(cap, cv2.VideoCapture) else lambda c: c.read()
        try:
            while not gen.stop.is_set():
                ok, image = read(cap)
                mono = time.monotonic()
                wall = time.time()
                if gen.stop.is_set():
                    break
                if not ok or image is None:
                    gen.failed = "read() returned no frame"
                    break
                signature = image_signature(image)
                if self.state != "running":  # before the frame is visible: read() then sees "running"
                    self.state = "running"
                    log.info("%s: frames flowing%s", self.uri, " again" if self.stats.reconnects else "")
                with self._cond:
                    if gen.stop.is_set() or self._closed:
                        break
                    if not self._taken:
                        self.stats.dropped += 1
                    self._latest = Frame(image, self._index, wall, mono)
                    self._taken = False
                    self._index += 1
                    self.stats.captured += 1
                    self._cond.notify_all()
                gen.frames += 1
                gen.last_frame = mono
                if signature != gen.signature:
                    gen.signature = signature
                    gen.last_change = mono
        except Exception as exc:  # a driver error must end this reader, not the process
            gen.failed = "read() raised {}: {}".format(type(exc).__name__, exc)
        finally:
            try:
                cap.release()
            except Exception as exc:
                log.warning("%s: release failed: %s", self.uri, exc)


def _stats_line(stats):
    return "captured={} dropped={} reconnects={}".format(stats.captured, stats.dropped, stats.reconnects)
