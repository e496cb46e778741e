"""The command line as a user meets it: real processes, real models, real files."""

import json
import os

import cv2
import pytest

from conftest import ROOT, run_cli

ULTRALYTICS = os.path.join(ROOT, "tests", "data", "ultralytics-yolo11-tiny.onnx")
NO_CONFIG = {"EDGE_AGENT_CLI_CONFIG": ""}


def records(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def assert_one_line_error(proc, *needles):
    lines = [l for l in proc.stderr.splitlines() if l.startswith("edge-agent: error:")]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_works_without_gpu_packages():
    proc = run_cli(["--help"])
    assert proc.returncode == 0
    for command in ("run", "build-engine", "benchmark", "watch", "doctor", "check-config"):
        assert command in proc.stdout


def test_run_with_defaults_processes_the_demo_video():
    proc = run_cli(["run", "--max-frames", "5"])
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(r["model_size"] == "fast" for r in recs)
    assert sum(len(r["detections"]) for r in recs) > 0  # the demo video shows objects the model knows
    assert "cam0: 5 frames" in proc.stderr  # the exit summary


def test_run_any_source_and_size(small_video):
    proc = run_cli(["run", "--source", small_video, "--size", "accurate", "--as-fast-as-possible"])
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert len(recs) == 30 and recs[-1]["model_size"] == "accurate"


def test_run_output_file(small_video, tmp_path):
    out = tmp_path / "out.jsonl"
    proc = run_cli(["run", "--source", small_video, "--max-frames", "4", "--output", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == []
    assert len(records(out.read_text())) == 4


def test_ultralytics_export_runs_without_model_type(small_video):
    proc = run_cli(["run", "--model", ULTRALYTICS, "--source", small_video, "--max-frames", "3",
                    "--as-fast-as-possible"])
    assert proc.returncode == 0, proc.stderr
    recs = records(proc.stdout)
    assert len(recs) == 3 and recs[0]["model_size"] == "ultralytics-yolo11-tiny"
    assert "decoding as yolov8" in proc.stderr


def test_gstreamer_pipeline_source():
    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV has no GStreamer (pip wheels never do; JetPack's does)")
    proc = run_cli(["run", "--source", "gst://videotestsrc num-buffers=10 ! video/x-raw,width=320,height=240",
                    "--max-frames", "5"])
    assert proc.returncode == 0, proc.stderr
    assert len(records(proc.stdout)) == 5


@pytest.mark.parametrize("args, code, needles", [
    (["run", "--model", "/nonexistent/m.onnx"], 78, ["/nonexistent/m.onnx", "file not found"]),
    (["run", "--source", "foo://bar"], 78, ["cameras[0].source", "unknown URI scheme 'foo://bar'"]),
    (["run", "--source", "/nonexistent/video.mp4"], 78, ["/nonexistent/video.mp4"]),
    (["run", "--size", "huge"], 78, ["size: 'huge' is not a configured size"]),
])
def test_bad_input_is_one_line(args, code, needles):
    proc = run_cli(args)
    assert proc.returncode == code, proc.stderr
    assert_one_line_error(proc, *needles)
    assert records(proc.stdout) == []


def test_corrupt_model_and_unreadable_video(tmp_path, small_video):
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(open(os.path.join(ROOT, "models", "demo-fast.onnx"), "rb").read()[:5000])
    proc = run_cli(["run", "--model", str(bad), "--source", small_video])
    assert proc.returncode == 1
    assert_one_line_error(proc, "corrupt.onnx")
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("not a video")
    proc = run_cli(["run", "--source", str(notvideo)])
    assert proc.returncode == 1
    assert_one_line_error(proc, "notes.mp4")


def test_bad_config_file_exits_78(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  - {id: a, source: x.mp4, fps: 30fps}\n")
    for command in ("run", "check-config"):
        proc = run_cli([command, "--config", str(cfg)])
        assert proc.returncode == 78
        assert_one_line_error(proc, "cameras[0].fps: expected a number, got '30fps'")


def test_check_config_describes_sources(small_video, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  - {id: door, source: %s}\n  - {id: yard, source: 'rtsp://u:secret@cam/s'}\n" % small_video)
    proc = run_cli(["check-config", "--config", str(cfg)])
    assert proc.returncode == 0, proc.stderr
    assert "camera door: video file" in proc.stdout
    assert "RTSP stream" in proc.stdout and "secret" not in proc.stdout


@pytest.mark.parametrize("content, env, needle", [
    (b"# cam\xe9ra\n", {}, "not UTF-8 text (line 1: byte 0xe9)"),
    (b"max_frames: 1\n", {"EDGE_AGENT_MAX_FRAMES": ".nan"}, "max_frames: expected a finite number, got nan"),
    (b"mqtt: {enabled: true, url: 'mqtt://user:secret@127.0.0.1:1883'}\n", {}, "mqtt://user:***@127.0.0.1:1883"),
    (None, {}, "is a directory"),  # --config <directory>: click's own check exited 2
], ids=["non-utf8", "env-nan", "url-password", "directory"])
def test_hostile_config_real_process(tmp_path, content, env, needle):
    """Issue 14, as users ran it: exit 78, one line, no traceback, nothing started, no secret shown."""
    path = tmp_path
    if content is not None:
        path = tmp_path / "c.yaml"
        path.write_bytes(content)
    for command in ("check-config", "run"):
        proc = run_cli([command, "--config", str(path)], env=dict(NO_CONFIG, **env), timeout=60)
        assert proc.returncode == 78, proc.stderr
        assert_one_line_error(proc, needle)
        assert len(proc.stderr.splitlines()) == 1, proc.stderr  # no log line: nothing was opened
        assert "secret" not in proc.stderr + proc.stdout and proc.stdout == ""


def test_log_level_from_the_config_and_the_command_line(tmp_path, small_video):
    config = tmp_path / "quiet.yaml"
    config.write_text("log_level: warning\n")
    quiet = run_cli(["run", "--config", str(config), "--source", small_video, "--max-frames", "3"])
    assert quiet.returncode == 0, quiet.stderr
    assert "INFO" not in quiet.stderr and len(records(quiet.stdout)) == 3
    loud = run_cli(["--log-level", "info", "run", "--config", str(config), "--source", small_video,
                    "--max-frames", "3"])  # the command line wins over the file
    assert loud.returncode == 0 and "INFO edge_agent.pipeline: running" in loud.stderr
