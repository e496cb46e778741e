"""Live cameras and streams through OpenCV: CSI (nvarguscamerasrc), V4L2, RTSP, raw GStreamer.

Each class only knows how to open its device; capture, freshest-frame policy and
reconnects live in LiveSource.
"""

import logging
import os
import re

import cv2

from ..errors import SourceError
from .base import redact
from .live import LiveSource

log = logging.getLogger("edge_agent.sources")

APPSINK = "appsink drop=true max-buffers=1 sync=false"
TO_BGR = "video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
JETSON_RELEASE_FILE = "/etc/nv_tegra_release"
CSI_DEFAULT = (1920, 1080, 30)  # a mode both IMX219 and IMX477 offer
RTSP_OPEN_TIMEOUT_MS = 10000
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"

_gstreamer = None


def opencv_version():
    """OpenCV's version as a tuple of ints, e.g. (4, 5, 4)."""
    return tuple(int(p) for p in re.findall(r"\d+", cv2.__version__)[:3])


def has_gstreamer():
    """Whether this OpenCV was built with GStreamer (pip wheels are not)."""
    global _gstreamer
    if _gstreamer is None:
        match = re.search(r"GStreamer:\s*(\S+)", cv2.getBuildInformation())
        _gstreamer = bool(match) and match.group(1).upper() not in ("NO", "OFF")
    return _gstreamer


def is_jetson():
    return os.path.exists(JETSON_RELEASE_FILE)


def require_gstreamer(uri):
    """Raise SourceError unless OpenCV can open GStreamer pipelines."""
    if not has_gstreamer():
        raise SourceError(
            "{}: this OpenCV {} was built without GStreamer (pip's opencv-python never has it); "
            "use JetPack's OpenCV: pip uninstall opencv-python opencv-python-headless, and create "
            "the venv with --system-site-packages".format(uri, cv2.__version__))


def csi_pipeline(sensor_id, width=0, height=0, fps=0, flip=0):
    """The nvarguscamerasrc pipeline for CSI sensor ``sensor_id``, ending in a BGR appsink."""
    w, h, rate = width or CSI_DEFAULT[0], height or CSI_DEFAULT[1], int(round(fps)) or CSI_DEFAULT[2]
    return ("nvarguscamerasrc sensor-id={} ! video/x-raw(memory:NVMM),width={},height={},framerate={}/1 ! "
            "nvvidconv flip-method={} ! {} ! {}".format(sensor_id, w, h, rate, flip, TO_BGR, APPSINK))


def rtsp_jetson_pipeline(url, width=0, height=0):
    """A low-latency RTSP pipeline for Jetson: H.264 or H.265, decoded by NVDEC.

    The codec is not configured: decodebin reads it from the stream (the SDP) and plugs the
    matching depayloader and parser, and then nvv4l2decoder, which NVIDIA registers at rank
    PRIMARY+11, above avdec_* and omx* (DeepStream's uridecodebin relies on the same). A
    fixed ``rtph264depay ! h264parse ! nvv4l2decoder`` needs the codec up front; parsebin
    cannot stand in for it, as it settles on avc/hvc1 before the decoder is linked and
    nvv4l2decoder takes only byte-stream. ``media=video`` keeps a camera's audio track out.
    A pipeline that must be fixed element by element goes in a gst:// URI.
    """
    size = ",width={},height={}".format(width, height) if width and height else ""
    return ('rtspsrc location="{}" latency=0 drop-on-latency=true ! application/x-rtp,media=video ! '
            "decodebin ! nvvidconv ! video/x-raw,format=BGRx{} ! videoconvert ! "
            "video/x-raw,format=BGR ! {}".format(url, size, APPSINK))


def gst_pipeline(text):
    """A user pipeline with a BGR appsink appended when it has none."""
    text = text.strip().rstrip("!").strip()
    if "appsink" in text:
        return text
    return "{} ! videoconvert ! video/x-raw,format=BGR ! {}".format(text, APPSINK)


def _opened(cap, uri, what):
    if cap is None or not cap.isOpened():
        if cap is not None:
            cap.release()
        raise SourceError("{}: cannot open {}".format(uri, what))
    return cap


class GstSource(LiveSource):
    """Any GStreamer pipeline ending in an appsink (gst://, and the base of CSI)."""

    def __init__(self, uri, pipeline, stall_timeout_s=5.0):
        LiveSource.__init__(self, uri, stall_timeout_s)
        require_gstreamer(uri)
        self.pipeline = pipeline

    def _open(self):
        log.debug("%s: pipeline %s", self.uri, self.pipeline)
        return _opened(cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER), self.uri,
                       "GStreamer pipeline: " + self.pipeline)


class CsiSource(GstSource):
    """A MIPI CSI camera on Jetson through nvarguscamerasrc."""

    def __init__(self, uri, sensor_id, camera):
        GstSource.__init__(self, uri, csi_pipeline(sensor_id, camera.width, camera.height, camera.fps,
                                                    camera.flip), camera.stall_timeout_s)


class V4l2Source(LiveSource):
    """A USB/V4L2 camera; asks for MJPG (less USB bandwidth) and the configured size and rate."""

    def __init__(self, uri, device, camera):
        LiveSource.__init__(self, uri, camera.stall_timeout_s)
        self.device = device
        self.camera = camera

    def _open(self):
        cap = _opened(cv2.VideoCapture(self.device, cv2.CAP_V4L2), self.uri, "V4L2 device " + self.device)
        # FOURCC first: the sizes a camera offers depend on the pixel format. A camera
        # without MJPG keeps its own format; the later gets show what was granted.
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if self.camera.width and self.camera.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.camera.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.camera.height)
        if self.camera.fps:
            cap.set(cv2.CAP_PROP_FPS, self.camera.fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fewer queued (stale) frames
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        log.info("%s: %dx%d @ %.1f fps, %s", self.uri, cap.get(cv2.CAP_PROP_FRAME_WIDTH),
                 cap.get(cv2.CAP_PROP_FRAME_HEIGHT), cap.get(cv2.CAP_PROP_FPS),
                 "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\0") or "?")
        return cap


class RtspSource(LiveSource):
    """An RTSP stream (H.264 or H.265): NVDEC through GStreamer on Jetson, else FFmpeg with timeouts."""

    def __init__(self, uri, camera):
        LiveSource.__init__(self, redact(uri), camera.stall_timeout_s)  # no password in logs
        self.url = uri
        self.camera = camera
        self.pipeline = None
        if has_gstreamer() and is_jetson():
            self.pipeline = rtsp_jetson_pipeline(uri, camera.width, camera.height)

    def _open(self):
        if self.pipeline is not None:
            return _opened(cv2.VideoCapture(self.pipeline, cv2.CAP_GSTREAMER), self.uri,
                           "RTSP stream through GStreamer")
        # TCP: UDP loses packets (grey smears) on busy Wi-Fi; a user setting wins.
        os.environ.setdefault(FFMPEG_OPTIONS_ENV, "rtsp_transport;tcp")
        read_ms = int(self.stall_timeout_s * 1000)
        open_prop = getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None)
        read_prop = getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None)
        cap = None
        if open_prop is not None and read_prop is not None and opencv_version() >= (4, 5, 2):
            try:
                cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG,
                                       [open_prop, RTSP_OPEN_TIMEOUT_MS, read_prop, read_ms])
            except TypeError:  # a build without the params overload
                cap = None
        if cap is None:
            # Older OpenCV: no timeouts, a dead stream can block read() forever; the
            # watchdog then abandons that reader and reopens.
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG)
        return _opened(cap, self.uri, "RTSP stream through FFmpeg")

