"""The frame-source interface and its capture contract.

Contract (every source honours it):
- ``read(timeout_ms)`` returns the newest ``Frame`` not yet returned, waiting at
  most ``timeout_ms``; it returns ``None`` on a timeout (a live source with no new
  frame yet). It never blocks longer than ``timeout_ms`` plus a few ms.
- ``read`` raises ``EndOfStream`` once a finite source (a file or folder that does
  not loop) is exhausted, and ``SourceError`` (naming the URI) for a failure that
  reopening cannot fix.
- Live sources capture on their own thread and keep only the newest frame
  (freshest-frame policy); frames overwritten before being read count as dropped.
  A live source without a frame for ``stall_timeout_s`` is reopened with backoff.
- A live source whose device is down when it starts does not fail: it is
  ``waiting`` and keeps trying with capped backoff (cameras often come up after
  the Jetson). ``state`` says where a source is: ``running``, ``waiting`` (no
  frame yet), ``stalled`` (frames stopped; reopening) or ``ended``.
- ``close()`` releases the device (always: a CSI camera left open wedges nvargus).
"""

import collections
import sys

from ..errors import AgentError

Frame = collections.namedtuple("Frame", "image index timestamp monotonic")
Frame.__doc__ = """A captured frame: BGR uint8 HxWx3 ``image``, per-source ``index``,
wall-clock ``timestamp`` (s since epoch) and ``monotonic`` time of capture."""


class EndOfStream(AgentError):
    """A finite source has no more frames."""


class SourceStats(object):
    """Counters a source keeps; read by the pipeline for timing and status."""

    __slots__ = ("captured", "dropped", "reconnects", "last_error")

    def __init__(self):
        self.captured = 0
        self.dropped = 0
        self.reconnects = 0
        self.last_error = ""

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


class FramePool(object):
    """Frame buffers for OpenCV's ``read(image)``, so a decoder does not allocate (and
    page-fault in) a new HxWx3 array per frame: ``read(cap)`` decodes into a buffer that
    nothing else refers to any more (no Frame, queue, sink or view of it), else into a new
    one, kept while fewer than ``size`` are. A frame in use is never overwritten.
    """

    def __init__(self, size=8):
        self.size = size
        self._bufs = []

    def _free(self):
        for buf in self._bufs:
            if sys.getrefcount(buf) <= _UNUSED:
                return buf
        return None

    def read(self, cap):
        """``cap.read()`` into a free buffer; returns (ok, image) as ``cap.read()`` does."""
        buf = self._free()
        ok, image = cap.read() if buf is None else cap.read(buf)
        if ok and image is not None and image is not buf:  # a new array (or a new frame size)
            if buf is not None:
                self._bufs.remove(buf)
            if len(self._bufs) < self.size:
                self._bufs.append(image)
        return ok, image


def _refs_of_unused(bufs):
    for buf in bufs:  # as in FramePool._free: the list, ``buf`` and getrefcount's argument
        return sys.getrefcount(buf)


_UNUSED = _refs_of_unused([object()])  # measured, not assumed: interpreters count differently


class FrameSource(object):
    """A camera, stream, file or folder yielding frames; see the module contract."""

    uri = ""
    live = False
    state = "running"  # running | waiting | stalled | ended (see the contract)

    def __init__(self):
        self.stats = SourceStats()

    def read(self, timeout_ms=1000):
        """Return the next Frame, ``None`` on timeout; raise EndOfStream or SourceError."""
        raise NotImplementedError

    def close(self):
        """Release the device or file."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def redact(uri):
    """``uri`` with its password hidden (``user:***@host``), for logs, errors and check-config.

    Everything between the user's ':' and the last '@' is hidden, so a password with '@' or
    '/' in it does not leak (a path with '@' in it is hidden too: the safe side).
    """
    scheme, sep, rest = uri.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return uri
    return "{}://{}:***@{}".format(scheme, userinfo.split(":", 1)[0], host)
