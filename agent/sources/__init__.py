"""Frames in: a URI -> a FrameSource (see base.py for the capture contract).

URIs: ``csi://N``, ``v4l2://N``, ``v4l2:///dev/video0``, ``/dev/video0``,
``/dev/v4l/by-id/...``, ``rtsp://...``, ``gst://<pipeline>``, a video file
(``file://`` optional) or a folder of images.
"""

import collections
import os
import re

from ..errors import SourceError
from .base import EndOfStream, Frame, FrameSource, SourceStats, redact  # noqa: F401 (redact: the API)

__all__ = ["open_source", "check_uri", "describe_source", "parse_uri", "redact", "SourceSpec",
           "Frame", "FrameSource", "SourceStats", "EndOfStream", "SourceError"]

KNOWN = "csi, v4l2, rtsp, gst, file paths, folders"

SourceSpec = collections.namedtuple("SourceSpec", "kind target uri")
SourceSpec.__doc__ = """A parsed URI: ``kind`` (csi, v4l2, rtsp, gst, file, folder) and its
``target`` (sensor id, device path, URL, pipeline or filesystem path)."""

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.S)


def parse_uri(uri, key="source", check_paths=True):
    """Parse a source URI without opening anything; raise SourceError naming ``key`` and the URI.

    With ``check_paths``, a file or folder must exist (device nodes are not checked:
    a camera may be plugged in later).
    """
    if not isinstance(uri, str) or not uri.strip():
        raise SourceError("{}: a source URI is required, got {!r}".format(key, uri))
    uri = uri.strip()
    match = _SCHEME.match(uri)
    if match:
        scheme, rest = match.group(1).lower(), match.group(2)
        if scheme == "csi":
            if not rest.isdigit():
                raise SourceError("{}: expected csi://<sensor id>, e.g. csi://0, got '{}'".format(key, uri))
            return SourceSpec("csi", int(rest), uri)
        if scheme == "v4l2":
            if rest.isdigit():
                return SourceSpec("v4l2", "/dev/video" + rest, uri)
            if rest.startswith("/dev/"):
                return SourceSpec("v4l2", rest, uri)
            raise SourceError("{}: expected v4l2://<N> or v4l2:///dev/videoN, got '{}'".format(key, uri))
        if scheme in ("rtsp", "rtsps"):
            if not rest or rest.startswith("/"):
                raise SourceError("{}: expected rtsp://host[:port]/path, got '{}'".format(key, uri))
            return SourceSpec("rtsp", uri, uri)
        if scheme == "gst":
            if not rest.strip():
                raise SourceError("{}: gst:// needs a GStreamer pipeline, got '{}'".format(key, uri))
            return SourceSpec("gst", rest.strip(), uri)
        if scheme == "file":
            return _path_spec(rest, uri, key, check_paths)
        raise SourceError("{}: unknown URI scheme '{}' (known: {})".format(key, uri, KNOWN))
    if uri.startswith("/dev/video") or uri.startswith("/dev/v4l/"):
        return SourceSpec("v4l2", uri, uri)
    return _path_spec(uri, uri, key, check_paths)


def _path_spec(path, uri, key, check_paths):
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        return SourceSpec("folder", path, uri)
    if os.path.exists(path):
        if not os.access(path, os.R_OK):
            raise SourceError("{}: file not readable: {}".format(key, path))
        return SourceSpec("file", path, uri)
    if check_paths:
        raise SourceError("{}: no such file or folder: {} (URI schemes: {})".format(key, path, KNOWN))
    return SourceSpec("file", path, uri)


def check_uri(uri, key="source"):
    """Validate a source URI for ``check-config``: parse it, check files exist, open nothing."""
    return parse_uri(uri, key, check_paths=True)


def describe_source(uri, key="source"):
    """A one-line human description of a URI, without opening anything."""
    spec = parse_uri(uri, key, check_paths=False)
    if spec.kind == "csi":
        return "CSI camera {} (nvarguscamerasrc)".format(spec.target)
    if spec.kind == "v4l2":
        return "V4L2 camera {}".format(spec.target)
    if spec.kind == "rtsp":
        return "RTSP stream {}".format(redact(spec.target))
    if spec.kind == "gst":
        return "GStreamer pipeline: {}".format(spec.target)
    if spec.kind == "folder":
        return "image folder {}".format(spec.target)
    return "video file {}".format(spec.target)


def open_source(camera, key=None):
    """Open ``camera.source`` (a CameraConfig) and return a started FrameSource.

    Raises SourceError naming the URI (and ``key``, default "cameras[id=<id>].source")
    when the scheme is unknown, a path is missing or unreadable, or the device
    cannot be opened.
    """
    key = key or "cameras[id={}].source".format(camera.id)
    spec = parse_uri(camera.source, key)
    if spec.kind in ("file", "folder"):
        from .files import FolderSource, VideoFileSource
        cls = FolderSource if spec.kind == "folder" else VideoFileSource
        return cls(spec.target, loop=camera.loop, realtime=camera.realtime, fps=camera.fps)
    from . import cameras
    if spec.kind == "csi":
        source = cameras.CsiSource(spec.uri, spec.target, camera)
    elif spec.kind == "v4l2":
        source = cameras.V4l2Source(spec.uri, spec.target, camera)
    elif spec.kind == "rtsp":
        source = cameras.RtspSource(spec.uri, camera)
    else:
        source = cameras.GstSource(spec.uri, cameras.gst_pipeline(spec.target), camera.stall_timeout_s)
    return source.start()
