"""The GStreamer paths run for real, through open_source and the real source classes: a gst://
pipeline, the CSI pipeline, and the Jetson RTSP pipeline against a real RTSP server (H.264
and H.265), each with its stall detection.

The pipelines are the ones the agent builds, with only the Jetson elements swapped here (never
in agent/) for desktop ones: nvarguscamerasrc -> videotestsrc, NVMM caps -> system memory,
nvvidconv -> videoconvert (+ videoscale). The RTSP pipeline's decodebin picks avdec_h264 or
avdec_h265 here where it picks nvv4l2decoder on a Jetson.

They need an OpenCV built with GStreamer (Debian's python3-opencv, like JetPack's): the
.venv-gst of scripts/setup_gst.sh. Elsewhere they skip, unless REQUIRE_GSTREAMER=1 (set by
scripts/test.sh for the .venv-gst run) turns a missing piece into a failure. That name is not
EDGE_AGENT_*, because those variables are read as config overrides.
"""

import os
import re
import select
import signal
import subprocess
import time

import cv2
import pytest

from agent.config import CameraConfig
from agent.sources import cameras, open_source
from agent.sources.live import image_signature

REQUIRED = os.environ.get("REQUIRE_GSTREAMER") == "1"
SYSTEM_PYTHON = "/usr/bin/python3"  # python3-gi and the RTSP server are Debian packages
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gst_rtsp_server.py")
STALL_S = 1.0
# The watchdog notices within STALL_S plus a poll; a reader stuck in a native read then
# gets LiveSource.JOIN_TIMEOUT_S before the reopen is counted.
STALL_REPORTED_S = STALL_S + 2.0


def need(ok, reason):
    """Skip without a prerequisite, or fail when this run is there to exercise GStreamer."""
    if not ok:
        if REQUIRED:
            pytest.fail("REQUIRE_GSTREAMER=1 but " + reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture(autouse=True)
def gstreamer():
    need(cameras.has_gstreamer(), "OpenCV {} has no GStreamer (pip's never has; scripts/setup_gst.sh "
                                  "makes .venv-gst with Debian's)".format(cv2.__version__))


def cam(source, **kw):
    return CameraConfig(id="t", source=source, stall_timeout_s=STALL_S, **kw)


def swapped(builder, built, *subs):
    """``builder`` with each (regex, replacement) applied to its pipeline, kept in ``built``."""
    def build(*args):
        pipeline = builder(*args)
        for pattern, replacement in subs:
            pipeline, n = re.subn(pattern, replacement, pipeline)
            assert n, "the builder changed: {!r} is not in {}".format(pattern, pipeline)
        built.append(pipeline)
        return pipeline
    return build


def take(src, n, timeout_s=10.0):
    """The next ``n`` frames from ``src``; fails after ``timeout_s``."""
    frames = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < n:
        assert time.monotonic() < deadline, "{} of {} frames in {:.0f} s; stats {}".format(
            len(frames), n, timeout_s, src.stats.as_dict())
        frame = src.read(timeout_ms=500)
        if frame is not None:
            frames.append(frame)
    return frames


def wait_for_reconnect(src, timeout_s):
    """Seconds until ``src`` reports a stall (a reconnect and its reason); fails after ``timeout_s``."""
    start = time.monotonic()
    while src.stats.reconnects < 1 or not src.stats.last_error:
        assert time.monotonic() - start < timeout_s, "no stall reported in {:.1f} s; stats {}".format(
            timeout_s, src.stats.as_dict())
        time.sleep(0.02)
    return time.monotonic() - start


def check_frames(frames, shape):
    assert [f.image.shape for f in frames] == [shape] * len(frames)
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices))


# --- gst:// --------------------------------------------------------------------------------


def test_gst_uri_frames_and_reopen_at_end_of_stream():
    # 15 frames, then end of stream: what a pipeline whose device went away does.
    src = open_source(cam("gst://videotestsrc is-live=true pattern=ball num-buffers=15 ! "
                          "video/x-raw,width=160,height=120,framerate=30/1"))
    try:
        assert src.live and src.pipeline.endswith("appsink drop=true max-buffers=1 sync=false")
        first = take(src, 10)
        check_frames(first, (120, 160, 3))
        assert len({image_signature(f.image) for f in first}) > 1  # the ball moves
        assert wait_for_reconnect(src, STALL_REPORTED_S) < STALL_REPORTED_S
        assert src.stats.last_error == "read() returned no frame"
        again = take(src, 5)  # the pipeline was reopened: frames again, indices go on
        check_frames(first + again, (120, 160, 3))
    finally:
        src.close()


# --- CSI -----------------------------------------------------------------------------------


def test_csi_pipeline_frames_and_frozen_sensor(monkeypatch):
    # smpte100 is a still image (smpte is not: it has a noise patch): a sensor that keeps
    # sending the same buffer, which the watchdog must take for a stall.
    built = []
    monkeypatch.setattr(cameras, "csi_pipeline", swapped(
        cameras.csi_pipeline, built,
        (r"^nvarguscamerasrc sensor-id=1 ", "videotestsrc is-live=true pattern=smpte100 "),
        (r"video/x-raw\(memory:NVMM\)", "video/x-raw"),
        (r"nvvidconv flip-method=0 ", "videoconvert ")))
    src = open_source(cam("csi://1", width=640, height=360, fps=30))
    try:
        assert isinstance(src, cameras.CsiSource) and src.pipeline == built[0]
        assert "width=640,height=360,framerate=30/1" in src.pipeline
        frames = take(src, 5)
        check_frames(frames, (360, 640, 3))
        # smpte100's first bars, white then yellow: BGR, in that channel order
        bars = [tuple(int(v) for v in frames[0].image[20, x]) for x in (45, 137)]
        assert all(abs(v - want) < 20 for bar, bgr in zip(bars, [(255, 255, 255), (0, 255, 255)])
                   for v, want in zip(bar, bgr)), bars
        assert wait_for_reconnect(src, STALL_REPORTED_S) < STALL_REPORTED_S
        assert src.stats.last_error.startswith("the same frame repeated")
        take(src, 2)  # reopened
    finally:
        src.close()


# --- RTSP on Jetson -------------------------------------------------------------------------


class RtspServer(object):
    """tests/gst_rtsp_server.py in a child process; ``stop()`` then ``start()`` is an outage."""

    def __init__(self, codec, log_path):
        self.codec, self.log_path, self.port, self.proc = codec, log_path, 0, None

    @property
    def url(self):
        return "rtsp://127.0.0.1:{}/cam".format(self.port)

    def start(self, timeout_s=10.0):
        """Start serving (on the same port after a stop); return None, or why it did not."""
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([SYSTEM_PYTHON, SERVER, self.codec, str(self.port)],
                                         stdout=subprocess.PIPE, stderr=log, universal_newlines=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline().strip() if ready else ""
        if not line.isdigit():
            self.stop()
            with open(self.log_path) as log:
                return "the RTSP server did not start: " + (log.read().strip() or "no output")
        self.port = int(line)
        return None

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must be able to die
            self.proc.kill()
            self.proc.wait(5)
        if self.proc is not None:
            self.proc.stdout.close()

    def freeze(self):
        """Silence without a goodbye: what a pulled cable looks like to the client."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self):
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture(params=["h264", "h265"])
def rtsp_server(request, tmp_path):
    need(os.access(SYSTEM_PYTHON, os.X_OK), "no " + SYSTEM_PYTHON + " for the RTSP server")
    server = RtspServer(request.param, str(tmp_path / "rtsp_server.log"))
    error = server.start()
    need(error is None, error)
    yield server
    server.stop()


@pytest.mark.parametrize("outage", ["restart", "freeze"])
def test_jetson_rtsp_pipeline_frames_outage_and_recovery(rtsp_server, outage, monkeypatch):
    monkeypatch.setattr(cameras, "is_jetson", lambda: True)
    built = []
    monkeypatch.setattr(cameras, "rtsp_jetson_pipeline", swapped(
        cameras.rtsp_jetson_pipeline, built, (r"nvvidconv ", "videoconvert ! videoscale ")))
    src = open_source(cam(rtsp_server.url, width=160, height=120))  # the server sends 320x240
    try:
        assert isinstance(src, cameras.RtspSource) and src.pipeline == built[0]
        frames = take(src, 45)  # 1.5 s, longer than STALL_S: no false stall on a healthy stream
        check_frames(frames, (120, 160, 3))
        assert src.stats.reconnects == 0, src.stats.as_dict()
        image = frames[-1].image  # decoded, not grey or green: a white ball on black
        assert image.max() > 200 and image.mean() < 100, (image.max(), image.mean())
        assert len({image_signature(f.image) for f in frames}) > 1

        if outage == "restart":  # the camera reboots: the connection closes, the stream ends
            rtsp_server.stop()
            assert wait_for_reconnect(src, STALL_REPORTED_S) < STALL_REPORTED_S
            error = src.stats.last_error
            assert error == "read() returned no frame" or error.startswith("no frame for"), error
            assert rtsp_server.start() is None  # back on the same address
        else:  # the network goes silent: the read blocks and only the watchdog can tell
            rtsp_server.freeze()
            assert wait_for_reconnect(src, STALL_REPORTED_S) < STALL_REPORTED_S
            assert src.stats.last_error.startswith("no frame for"), src.stats.last_error
            rtsp_server.thaw()
        again = take(src, 5, timeout_s=15.0)
        check_frames(frames + again, (120, 160, 3))
    finally:
        src.close()
