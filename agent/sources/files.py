"""Finite sources: a video file and a folder of images, optionally looped and paced.

They decode on the caller's thread (nothing to drop: every frame is delivered)
and never resize: the preprocessor letterboxes whatever size comes out.
"""

import logging
import os
import time

import cv2

from ..errors import SourceError
from .base import EndOfStream, Frame, FramePool, FrameSource

log = logging.getLogger("edge_agent.sources")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg", ".h264", ".h265",
                    ".ts", ".mpg", ".mpeg", ".flv", ".wmv")
MAX_SANE_FPS = 1000.0  # containers without a rate report 0, NaN or 90000


class _Pacer(object):
    """Spaces frames ``1/fps`` apart; resynchronises instead of bursting after a pause."""

    def __init__(self, fps):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.next_due = None

    def wait(self, timeout_s):
        """Sleep until the next frame is due; False if that is beyond ``timeout_s``."""
        if not self.period:
            return True
        now = time.monotonic()
        if self.next_due is None or now - self.next_due > self.period:
            self.next_due = now
        delay = self.next_due - now
        if delay > timeout_s:
            time.sleep(max(0.0, timeout_s))
            return False
        if delay > 0:
            time.sleep(delay)
        self.next_due += self.period
        return True


class _FiniteSource(FrameSource):
    def __init__(self, uri, loop, fps):
        FrameSource.__init__(self)
        self.uri = uri
        self.loop = loop
        self.fps = fps
        self._pacer = _Pacer(fps)
        self._index = 0
        self._ended = False
        self._closed = False

    def _next_image(self):
        """The next decoded image, or None at the end of one pass."""
        raise NotImplementedError

    def _rewind(self):
        raise NotImplementedError

    def read(self, timeout_ms=1000):
        if self._closed:
            raise SourceError("{}: read() after close()".format(self.uri))
        if self._ended:
            raise EndOfStream("{}: end of stream".format(self.uri))
        # Wait first, then decode, as a camera delivers: decoding the next frame ahead would
        # run it beside the inference of this one (a camera's decoder is idle between frames).
        if not self._pacer.wait(max(0, timeout_ms) / 1000.0):
            return None
        image = self._next_image()
        if image is None and self.loop:
            self._rewind()
            image = self._next_image()
            if image is None:
                raise SourceError("{}: no frame after rewinding".format(self.uri))
        if image is None:
            self._ended = True
            log.info("%s: end of stream after %d frames", self.uri, self.stats.captured)
            raise EndOfStream("{}: end of stream".format(self.uri))
        frame = Frame(image, self._index, time.time(), time.monotonic())
        self._index += 1
        self.stats.captured += 1
        return frame


class VideoFileSource(_FiniteSource):
    """A video file decoded by OpenCV; paced at its fps (or ``fps``) when ``realtime``."""

    def __init__(self, path, loop=False, realtime=True, fps=0.0):
        self.path = path
        self._cap = None
        self._pool = FramePool()
        self._cap = self._open()
        ok, first = self._cap.read()
        if not ok or first is None:
            self._cap.release()
            raise SourceError("{}: cannot decode the first frame (not a video, or a codec this "
                              "OpenCV lacks)".format(path))
        native = self._cap.get(cv2.CAP_PROP_FPS)
        if not (0 < native <= MAX_SANE_FPS):  # also false for NaN
            native = 0.0
        rate = (fps or native or 30.0) if realtime else 0.0
        _FiniteSource.__init__(self, path, loop, rate)
        self._first = first  # decoded to check the file: the first read returns it
        log.info("%s: video %dx%d, %.1f fps in the file, %s%s", path, first.shape[1], first.shape[0], native,
                 "paced at {:.1f} fps".format(rate) if rate else "unpaced", ", looping" if loop else "")

    def _open(self):
        cap = cv2.VideoCapture(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError("{}: cannot open video file".format(self.path))
        return cap

    def _next_image(self):
        if self._first is not None:
            image, self._first = self._first, None
            return image
        ok, image = self._pool.read(self._cap)
        return image if ok else None

    def _rewind(self):
        # Reopening is reliable for every container; seeking to frame 0 is not.
        self._cap.release()
        self._cap = self._open()

    def close(self):
        self._closed = True
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def list_images(folder):
    """The image files directly in ``folder``, sorted by name."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, n)))


class FolderSource(_FiniteSource):
    """The images of a folder in name order; unreadable ones are skipped with a warning."""

    def __init__(self, folder, loop=False, realtime=True, fps=0.0):
        try:
            self.files = list_images(folder)
        except OSError as exc:
            raise SourceError("{}: cannot list folder: {}".format(folder, exc.strerror or exc))
        if not self.files:
            raise SourceError("{}: no images ({}) in folder".format(folder, ", ".join(IMAGE_EXTENSIONS)))
        _FiniteSource.__init__(self, folder, loop, fps if realtime else 0.0)
        self._pos = 0
        self._good_in_pass = 0
        log.info("%s: folder of %d images, %s%s", folder, len(self.files),
                 "paced at {:.1f} fps".format(self.fps) if self.fps else "unpaced", ", looping" if loop else "")

    def _next_image(self):
        while self._pos < len(self.files):
            path = self.files[self._pos]
            self._pos += 1
            image = cv2.imread(path, cv2.IMREAD_COLOR)
            if image is not None:
                self._good_in_pass += 1
                return image
            self.stats.last_error = "{}: unreadable image skipped".format(path)
            log.warning("%s: unreadable image skipped", path)
        if not self._good_in_pass:
            raise SourceError("{}: none of the {} images could be read".format(self.uri, len(self.files)))
        return None

    def _rewind(self):
        self._pos = 0
        self._good_in_pass = 0

    def close(self):
        self._closed = True
