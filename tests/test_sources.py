"""Frame sources on real files decoded by OpenCV, and the LiveSource machinery on a real capture."""

import logging
import os
import threading
import time
import weakref

import cv2
import numpy as np
import pytest

from agent.config import CameraConfig
from agent.errors import SourceError
from agent.sources import EndOfStream, check_uri, describe_source, open_source, parse_uri
from agent.sources import redact
from agent.sources.base import FramePool
from agent.sources.cameras import csi_pipeline, gst_pipeline, has_gstreamer
from agent.sources.live import LiveSource

FRAMES = 30
STEP = 8  # frame i is a flat grey of level i * STEP: the decoded level gives the index back


def level(image):
    return int(round(float(image.mean()) / STEP))


@pytest.fixture
def video(tmp_path):
    """30 frames of 320x240 MJPG; frame i is grey level 8*i with a black corner."""
    path = str(tmp_path / "count.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    assert writer.isOpened()
    for i in range(FRAMES):
        writer.write(np.full((240, 320, 3), i * STEP, np.uint8))
    writer.release()
    return path


@pytest.fixture
def folder(tmp_path):
    """Five PNGs (levels 0, 40, ..., 160), a corrupt JPEG between them and a text file."""
    d = tmp_path / "images"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / "img_{:02d}.png".format(i * 2)), np.full((48, 64, 3), i * 40, np.uint8))
    (d / "img_03.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (d / "notes.txt").write_text("not an image")
    return str(d)


def cam(source, **kw):
    return CameraConfig(id="t", source=source, **kw)


def read_all(src, limit=1000):
    frames = []
    with pytest.raises(EndOfStream):
        for _ in range(limit):
            f = src.read(timeout_ms=2000)
            assert f is not None
            frames.append(f)
    return frames


# --- files and folders ------------------------------------------------------------------


def test_video_file_all_frames_then_end_of_stream(video):
    with open_source(cam(video, realtime=False)) as src:
        assert not src.live
        frames = read_all(src)
        assert [level(f.image) for f in frames] == list(range(FRAMES))
        assert [f.index for f in frames] == list(range(FRAMES))
        assert frames[0].image.shape == (240, 320, 3) and frames[0].image.dtype == np.uint8
        assert src.stats.captured == FRAMES
        with pytest.raises(EndOfStream):  # stays ended
            src.read()


def pooled_reads(video, size):
    """Reads the video through FramePool(size), keeping every third frame and a view of every
    third; returns how often a dropped frame's buffer came back, the pool and what was held."""
    pool = FramePool(size=size)
    cap = cv2.VideoCapture(video)
    held, reused, dropped = [], 0, None
    for i in range(FRAMES):
        ok, image = pool.read(cap)
        assert ok and level(image) == i
        if dropped is not None:
            reused += image is dropped()  # the only free buffer: taken again
        if i % 3 == 0:
            held.append((i, image))  # a user keeps the frame
        elif i % 3 == 1:
            held.append((i, image[100:140, 100:140]))  # a view keeps its base in use
        dropped = weakref.ref(image) if i % 3 == 2 else None
        del image
    cap.release()
    assert [level(image) for _, image in held] == [i for i, _ in held]  # none decoded over
    return reused, pool


def test_frame_pool_reuses_a_buffer_only_once_nothing_refers_to_it(video):
    reused, pool = pooled_reads(video, size=FRAMES)
    assert reused == FRAMES // 3 - 1  # every dropped frame's buffer, at the next read
    assert len(pool._bufs) == 2 * FRAMES // 3 + 1  # the held ones and one free
    reused, pool = pooled_reads(video, size=3)  # full of held buffers: new arrays, not kept
    assert reused == 1 and len(pool._bufs) == 3


def test_video_file_loops(video):
    with open_source(cam(video, realtime=False, loop=True)) as src:
        frames = [src.read() for _ in range(FRAMES * 2 + 5)]
    assert [level(f.image) for f in frames] == [i % FRAMES for i in range(FRAMES * 2 + 5)]
    assert [f.index for f in frames] == list(range(FRAMES * 2 + 5))


def test_video_file_realtime_pacing(video):
    with open_source(cam(video, fps=50)) as src:
        frames = [src.read(timeout_ms=1000) for _ in range(10)]
    monos = [f.monotonic for f in frames]
    assert monos == sorted(monos)
    assert monos[-1] - monos[0] >= 9 * 0.02 * 0.5  # roughly 50 fps, never faster than twice that
    stamps = [f.timestamp for f in frames]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 5


def test_video_file_realtime_read_times_out_before_next_frame(video):
    with open_source(cam(video, fps=2)) as src:
        assert level(src.read(timeout_ms=100).image) == 0
        t0 = time.monotonic()
        assert src.read(timeout_ms=50) is None  # the next frame is due in 0.5 s
        assert time.monotonic() - t0 < 0.4
        f = src.read(timeout_ms=1000)
        assert level(f.image) == 1 and f.index == 1  # the frame held back is not lost


def test_video_file_uses_its_own_fps_when_realtime(video):
    with open_source(cam(video)) as src:
        t0 = time.monotonic()
        for _ in range(4):
            src.read()
        assert time.monotonic() - t0 >= 3 * (1 / 30.0) * 0.5


def test_folder_sorted_corrupt_image_skipped(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.sources"):
        with open_source(cam(folder, realtime=False)) as src:
            frames = read_all(src)
            assert "img_03.jpg" in src.stats.last_error
    assert [int(round(f.image.mean() / 40)) for f in frames] == [0, 1, 2, 3, 4]
    assert [f.index for f in frames] == list(range(5))
    assert any("img_03.jpg" in r.getMessage() for r in caplog.records)


def test_folder_loops_and_paces(folder):
    with open_source(cam(folder, loop=True, fps=100)) as src:
        frames = [src.read(timeout_ms=1000) for _ in range(12)]
    assert [int(round(f.image.mean() / 40)) for f in frames] == [i % 5 for i in range(12)]
    assert frames[-1].monotonic - frames[0].monotonic >= 11 * 0.01 * 0.5


def test_folder_without_readable_images(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"junk")
    with open_source(cam(str(tmp_path), realtime=False)) as src:
        with pytest.raises(SourceError, match="none of the 1 images"):
            src.read()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images"):
        open_source(cam(str(empty)))


def test_unknown_scheme_names_uri():
    with pytest.raises(SourceError) as err:
        open_source(cam("foo://x"), key="cameras[0].source")
    assert str(err.value) == ("cameras[0].source: unknown URI scheme 'foo://x' "
                              "(known: csi, v4l2, rtsp, gst, file paths, folders)")


def test_missing_file_names_path(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(SourceError, match="nope.mp4"):
        open_source(cam(missing))


def test_undecodable_video_names_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(SourceError, match="broken.mp4"):
        open_source(cam(str(bad)))


def test_parse_and_describe_open_nothing(video, folder):
    assert parse_uri("csi://1") == ("csi", 1, "csi://1")
    assert parse_uri("v4l2://2").target == "/dev/video2"
    assert parse_uri("v4l2:///dev/video0").target == "/dev/video0"
    assert parse_uri("/dev/v4l/by-id/usb-cam-video-index0").kind == "v4l2"
    assert parse_uri("rtsp://cam.local:554/stream").kind == "rtsp"
    assert parse_uri("gst://videotestsrc ! videoconvert").target == "videotestsrc ! videoconvert"
    assert parse_uri(video).kind == "file" and parse_uri("file://" + video).kind == "file"
    assert check_uri(folder).kind == "folder"
    assert "CSI camera 0" in describe_source("csi://0")
    assert "secret" not in describe_source("rtsp://admin:secret@10.0.0.2/live")
    assert redact("rtsp://admin:secret@h/x") == "rtsp://admin:***@h/x"
    assert describe_source("/no/such/video.mp4") == "video file /no/such/video.mp4"
    for bad in ("csi://abc", "v4l2://cam", "gst://", "", "http://x/y.mjpg"):
        with pytest.raises(SourceError):
            check_uri(bad, key="cameras[1].source")
    with pytest.raises(SourceError, match="cameras\\[1\\].source: no such file"):
        check_uri("/no/such/video.mp4", key="cameras[1].source")


def test_pipelines():
    p = csi_pipeline(1, 1280, 720, 60, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1280,height=720,"
                        "framerate=60/1 ! nvvidconv flip-method=2 ! video/x-raw,format=BGRx")
    assert p.endswith("appsink drop=true max-buffers=1 sync=false")
    assert gst_pipeline("videotestsrc ! ").endswith("video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert gst_pipeline("videotestsrc ! appsink name=s") == "videotestsrc ! appsink name=s"


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer")
def test_csi_without_gstreamer_says_use_jetpack_opencv():
    with pytest.raises(SourceError, match="csi://0: .*without GStreamer.*JetPack's OpenCV"):
        open_source(cam("csi://0"))


@pytest.mark.skipif(not has_gstreamer(), reason="pip's OpenCV has no GStreamer (opencv-python#259)")
def test_gst_videotestsrc():
    src = open_source(cam("gst://videotestsrc is-live=true ! video/x-raw,width=160,height=120,framerate=30/1"))
    try:
        assert src.live
        frames = [src.read(timeout_ms=2000) for _ in range(3)]
        assert all(f is not None and f.image.shape == (120, 160, 3) for f in frames)
        assert [f.index for f in frames] == sorted(f.index for f in frames)
    finally:
        src.close()


# --- LiveSource on a real cv2.VideoCapture that misbehaves on cue -------------------------


class ScriptedCapture(object):
    """A real looping cv2.VideoCapture over a file that, after ``after`` frames, blocks
    in read() ("block"), fails ("fail") or repeats its last frame ("same")."""

    def __init__(self, path, mode="ok", after=0, period=0.002, unblock=None):
        self.path, self.mode, self.after, self.period, self.unblock = path, mode, after, period, unblock
        self.cap = cv2.VideoCapture(path)
        self.n = 0
        self.last = None
        self.released = False

    def read(self):
        time.sleep(self.period)
        if self.mode != "ok" and self.n >= self.after:
            if self.mode == "block":
                self.unblock.wait(30)  # like a native read on a dead stream
                return False, None
            if self.mode == "fail":
                return False, None
            return True, self.last.copy()
        ok, image = self.cap.read()
        if not ok:
            self.cap.release()
            self.cap = cv2.VideoCapture(self.path)
            ok, image = self.cap.read()
        self.n += 1
        self.last = image
        return ok, image

    def release(self):
        self.released = True
        self.cap.release()


class ScriptedSource(LiveSource):
    """Each open takes the next script entry (kwargs of ScriptedCapture, or an exception)."""

    def __init__(self, path, script, stall_timeout_s):
        LiveSource.__init__(self, "scripted://" + os.path.basename(path), stall_timeout_s)
        self.path = path
        self.script = list(script)
        self.opened = []

    def _open(self):
        step = self.script.pop(0) if self.script else {}
        if isinstance(step, Exception):
            raise step
        cap = ScriptedCapture(self.path, **step)
        self.opened.append(cap)
        return cap


def wait_frame(src, within_s):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        f = src.read(timeout_ms=100)
        if f is not None:
            return f
    return None


class FileLiveSource(LiveSource):
    """A LiveSource over a plain cv2.VideoCapture (the kind whose reads go through FramePool)."""

    def __init__(self, path):
        LiveSource.__init__(self, "file-live://" + os.path.basename(path), stall_timeout_s=5)
        self.path = path

    def _open(self):
        return cv2.VideoCapture(self.path)


def test_live_frames_kept_by_the_consumer_are_never_decoded_over(tmp_path):
    path = str(tmp_path / "long.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (320, 240))
    for i in range(8 * FRAMES):
        writer.write(np.full((240, 320, 3), (i % FRAMES) * STEP, np.uint8))
    writer.release()
    src = FileLiveSource(path).start()
    try:
        frames = []
        while len(frames) < 12:
            f = src.read(timeout_ms=2000)
            assert f is not None
            frames.append(f)  # kept: the reader must decode the next frames elsewhere
            time.sleep(0.002)
        assert src.stats.dropped > 0  # the reader ran ahead, into buffers nobody held
        assert [level(f.image) for f in frames] == [f.index % FRAMES for f in frames]
        assert len({id(f.image) for f in frames}) == len(frames)
    finally:
        src.close()


def test_live_freshest_frame_drops_counted(video):
    src = ScriptedSource(video, [{"period": 0.003}], stall_timeout_s=5).start()
    try:
        frames = []
        for _ in range(8):
            time.sleep(0.04)  # a slow consumer
            frames.append(src.read(timeout_ms=1000))
        assert all(f is not None for f in frames)
        indices = [f.index for f in frames]
        assert indices == sorted(set(indices))
        assert src.stats.dropped > 0
        assert src.stats.captured - src.stats.dropped - len(frames) in (0, 1)  # at most one unread
        assert [f.monotonic for f in frames] == sorted(f.monotonic for f in frames)
        assert all(time.monotonic() - f.monotonic < 5 for f in frames)
        assert src.stats.reconnects == 0
    finally:
        src.close()


def test_live_stall_detected_read_times_out_and_reopens(video, caplog):
    unblock = threading.Event()
    src = ScriptedSource(video, [{"mode": "block", "after": 3, "unblock": unblock}, {}], stall_timeout_s=0.5).start()
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.sources"):
            got = [wait_frame(src, 2) for _ in range(3)]
            assert all(f is not None for f in got)
            t0 = time.monotonic()
            assert src.read(timeout_ms=200) is None  # stalled: the caller is not blocked
            assert 0.15 <= time.monotonic() - t0 < 0.6
            f = wait_frame(src, 4)  # stall 0.5 s + abandoning the stuck reader 1 s + backoff 0.5 s
            assert f is not None and f.index >= 3
        assert src.stats.reconnects >= 1
        assert "no frame for" in src.stats.last_error
        assert any("reopening" in r.getMessage() for r in caplog.records)
        assert len(src.opened) >= 2
        t0 = time.monotonic()
        src.close()
        assert time.monotonic() - t0 < 1.5
    finally:
        unblock.set()
        src.close()
    assert src.opened[-1].released


def test_live_failed_reads_reopen_without_waiting_for_stall(video):
    src = ScriptedSource(video, [{"mode": "fail", "after": 3}, {}], stall_timeout_s=5).start()
    try:
        for _ in range(3):
            assert wait_frame(src, 2) is not None
        t0 = time.monotonic()
        assert wait_frame(src, 3) is not None
        assert time.monotonic() - t0 < 2.5  # backoff 0.5 s, far below the 5 s stall timeout
        assert src.stats.reconnects == 1
        assert "read() returned no frame" in src.stats.last_error
        assert src.opened[0].released
    finally:
        src.close()


def test_live_repeated_last_frame_is_a_stall(video):
    src = ScriptedSource(video, [{"mode": "same", "after": 4, "period": 0.01}, {}], stall_timeout_s=0.5).start()
    try:
        deadline = time.monotonic() + 4
        while src.stats.reconnects == 0 and time.monotonic() < deadline:
            src.read(timeout_ms=50)
        assert src.stats.reconnects == 1
        assert "same frame" in src.stats.last_error
        assert wait_frame(src, 2) is not None
    finally:
        src.close()


def test_live_close_is_prompt_with_reader_stuck_in_read(video, caplog):
    unblock = threading.Event()
    src = ScriptedSource(video, [{"mode": "block", "after": 1, "unblock": unblock}], stall_timeout_s=5).start()
    try:
        assert wait_frame(src, 2) is not None
        time.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="edge_agent.sources"):
            t0 = time.monotonic()
            src.close()
            assert time.monotonic() - t0 < 1.5
        assert any("stuck" in r.getMessage() for r in caplog.records)
        with pytest.raises(SourceError):
            src.read(timeout_ms=10)
    finally:
        unblock.set()
    # the stuck reader releases its capture once the read returns
    deadline = time.monotonic() + 2
    while not src.opened[0].released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert src.opened[0].released


def test_live_camera_down_at_start_waits_then_runs(video, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.sources")
    # Down for the first three opens (cameras often come up after the Jetson), then fine.
    down = [SourceError("scripted://count.avi: cannot open device")] * 3
    t0 = time.monotonic()
    src = ScriptedSource(video, down + [{"period": 0.01}], stall_timeout_s=1).start()
    try:
        assert time.monotonic() - t0 < 1.0  # start() does not wait for the camera to come up
        assert src.state == "waiting"
        assert src.read(timeout_ms=100) is None
        assert wait_frame(src, 10) is not None  # retried with backoff 0.5 + 1 + 2 s
        assert src.state == "running"
        assert src.stats.reconnects == 3
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert warnings == ["scripted://count.avi: cannot open device; retrying in 0.5 s (attempt 1)"]  # once per outage
    finally:
        src.close()


def test_live_stalled_state_then_frames_again(video, caplog):
    caplog.set_level(logging.INFO, logger="edge_agent.sources")
    unblock = threading.Event()
    src = ScriptedSource(video, [{"mode": "block", "after": 3, "unblock": unblock}, {}], stall_timeout_s=0.5).start()
    try:
        assert wait_frame(src, 5) is not None and src.state == "running"
        deadline = time.monotonic() + 5
        while src.state != "stalled" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert src.state == "stalled"
        assert not any("again" in r.getMessage() for r in caplog.records)  # not while still stalled
        unblock.set()
        deadline = time.monotonic() + 5
        while src.state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert src.state == "running"
        assert any(r.getMessage() == "scripted://count.avi: frames flowing again" for r in caplog.records)
    finally:
        unblock.set()
        src.close()
