"""The agent under a real sd_notify socket: READY, WATCHDOG, STATUS, RELOADING, STOPPING, exit codes.

The notify socket is a real AF_UNIX datagram socket in the abstract namespace,
as systemd's would be; the agent runs as ``python -m agent.cli run`` (what the
unit starts) except for the camera-stall test, which runs ``run_agent`` in this
process with the real Pipeline and a real FrameSource that stops delivering.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

from agent import sdnotify
from agent.errors import SourceError
from agent.publish.base import Sink
from conftest import ROOT


class NotifyListener(object):
    """Collects (monotonic time, message) from a bound abstract-namespace datagram socket."""

    def __init__(self):
        self.name = "@edge-agent-test-" + uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(0.2)
        self.messages = []
        self._lock = threading.Lock()
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def fields(self, key):
        """[(time, value)] of every ``key=value`` line received so far."""
        with self._lock:
            msgs = list(self.messages)
        out = []
        for t, msg in msgs:
            for line in msg.split("\n"):
                if line.startswith(key + "="):
                    out.append((t, line[len(key) + 1:]))
        return out

    def wait_for(self, key, count=1, timeout=30.0, after=0.0, proc=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [f for f in self.fields(key) if f[0] >= after]
            if len(got) >= count:
                return got
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("no {}x {} (got: {})".format(count, key, self.messages[-10:]))

    def close(self):
        self._stop = True
        self.sock.close()
        self.thread.join(2)


@pytest.fixture
def listener():
    lst = NotifyListener()
    yield lst
    lst.close()


def write_config(path, models, video, out, size="fast"):
    path.write_text(
        "size: {size}\nsizes:\n  fast:\n    onnx: {fast}\n  accurate:\n    onnx: {acc}\n"
        "cameras:\n  - id: cam0\n    source: {video}\n    loop: true\n    realtime: true\n"
        "output:\n  jsonl: {out}\nengines_dir: {eng}\nhealth:\n  interval_s: 1\n".format(
            size=size, fast=models["fast"], acc=models["accurate"], video=video, out=out,
            eng=path.parent / "engines"))
    return str(path)


def read_records(path):
    try:
        with open(path) as f:
            return [json.loads(l) for l in f if l.endswith("\n")]
    except FileNotFoundError:
        return []


def start_agent(config, listener, watchdog_usec=1000000):
    env = dict(os.environ, NOTIFY_SOCKET=listener.name, WATCHDOG_USEC=str(watchdog_usec), PYTHONUNBUFFERED="1")
    env.pop("WATCHDOG_PID", None)
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", config], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


def test_lifecycle_ready_watchdog_reload_stop(tmp_path, listener, demo_models, small_video):
    out = str(tmp_path / "out.jsonl")
    config = write_config(tmp_path / "config.yaml", demo_models, small_video, out)
    proc = start_agent(config, listener)
    try:
        (t_ready, _), = listener.wait_for("READY", timeout=60, proc=proc)
        # READY only once a frame went all the way through: its record is already written.
        assert read_records(out), "READY before the first record"
        assert listener.fields("STATUS")[0][1].startswith("starting")
        listener.wait_for("WATCHDOG", count=3, timeout=15, after=t_ready, proc=proc)
        # Pings exist now, so this cannot pass vacuously: none of them came before READY.
        pings = [t for t, _ in listener.fields("WATCHDOG")]
        assert len(pings) >= 3 and min(pings) >= t_ready, "watchdog ping before READY"
        assert any(v.startswith("running") and "size=fast" in v for _, v in listener.fields("STATUS"))

        # SIGHUP after a config edit: same process, next records from the accurate size.
        write_config(tmp_path / "config.yaml", demo_models, small_video, out, size="accurate")
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING", timeout=15, after=t_hup, proc=proc)
        listener.wait_for("READY", timeout=15, after=t_hup, proc=proc)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(r["model_size"] == "accurate" for r in read_records(out)):
            time.sleep(0.1)
        records = read_records(out)
        assert records[-1]["model_size"] == "accurate"
        assert proc.poll() is None
        assert len({r["boot_id"] for r in records}) == 1  # not restarted

        # A bad edit is refused with one error line; the agent keeps running on the old config.
        # The second is not even UTF-8 (issue 14: it used to kill the agent with a traceback).
        for bad in (b"size: huge\n", b"# cam\xe9ra\n"):
            (tmp_path / "config.yaml").write_bytes(bad)
            t_bad = time.monotonic()
            proc.send_signal(signal.SIGHUP)
            listener.wait_for("READY", timeout=15, after=t_bad, proc=proc)
            n = len(read_records(out))
            time.sleep(1.0)
            assert proc.poll() is None and len(read_records(out)) > n

        t_term = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)  # TimeoutStopSec=20 in the unit
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert time.monotonic() - t_term < 20
    listener.wait_for("STOPPING", timeout=1, after=t_term)
    assert "reload: keeping the running configuration: size:" in stderr
    assert "reload: keeping the running configuration: {}: not UTF-8 text".format(config) in stderr
    assert "Traceback" not in stderr


def test_bad_config_exits_78_before_ready(tmp_path, listener):
    bad = tmp_path / "bad.yaml"
    bad.write_text("detection:\n  conf_threshold: 2\n")
    proc = start_agent(str(bad), listener)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 78
    assert "detection.conf_threshold" in stderr
    time.sleep(0.2)
    assert listener.fields("READY") == []


def test_health_timing_status_over_mqtt(tmp_path, listener, demo_models, small_video, broker):
    """The service loop publishes health, timing and status through the real MQTT sink."""
    config = write_config(tmp_path / "config.yaml", demo_models, small_video, "null")
    with open(config, "a") as f:
        f.write("device_id: svc-test\nmqtt:\n  enabled: true\n  url: {}\n  timing_interval_s: 1\n".format(broker.url))
    sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-h", "127.0.0.1", "-v", "-W", "60",
                            "-t", "edge-agent/svc-test/health", "-t", "edge-agent/svc-test/cam0/timing"],
                           stdout=subprocess.PIPE, universal_newlines=True)
    time.sleep(0.3)  # let the subscription land before the agent publishes
    proc = start_agent(config, listener)
    try:
        listener.wait_for("READY", timeout=60, proc=proc)
        seen = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(seen) < 2:
            topic, _, payload = sub.stdout.readline().partition(" ")
            seen.setdefault(topic.rsplit("/", 1)[-1], json.loads(payload))
        assert seen["health"]["schema_version"] == 2 and seen["health"]["memory"]["total_mb"] > 0
        assert seen["timing"]["camera_id"] == "cam0" and "infer" in seen["timing"]["stages"]
        assert any("mqtt=connected" in v for _, v in listener.fields("STATUS"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        sub.kill()
        sub.wait()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _run_with_observer(tmp_path, listener, demo_models, small_video, monkeypatch, observe, sinks=None, source=None,
                       extra_camera=None):
    """run_agent under a 0.6 s watchdog, with ``observe(out)`` on a thread; SIGTERM when it returns.
    ``source`` replaces the camera's source; ``extra_camera`` (id, source object) adds a second camera."""
    from agent import pipeline as pipeline_module
    from agent.config import load_config
    from agent.publish import JsonLinesSink
    from agent.service import run_agent

    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 0.6
    if source is not None:
        monkeypatch.setattr(pipeline_module, "open_source", lambda cam: source)
    out = str(tmp_path / "out.jsonl")
    path = write_config(tmp_path / "config.yaml", demo_models, small_video, out)
    if extra_camera is not None:
        cam_id, extra = extra_camera
        text = open(path).read().replace("output:", "  - {{id: {}, source: 'rtsp://127.0.0.1:9/x'}}\noutput:".format(
            cam_id), 1)
        open(path, "w").write(text)
        real_open = pipeline_module.open_source
        monkeypatch.setattr(pipeline_module, "open_source", lambda cam: extra if cam.id == cam_id else real_open(cam))
    config = load_config(path, environ={})
    result = {}

    def observer():
        try:
            observe(out, result)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # run_agent's handler: stop like systemd would

    thread = threading.Thread(target=observer, daemon=True)
    thread.start()
    code = run_agent(config, [JsonLinesSink(out)] + list(sinks or []), pipeline_factory=pipeline_module.Pipeline)
    thread.join(5)
    assert code == 0
    assert listener.fields("STOPPING")
    return result


def test_a_stalled_camera_keeps_the_watchdog_fed_and_shows_stalled(tmp_path, listener, demo_models, small_video,
                                                                    monkeypatch):
    from test_sources import ScriptedSource

    # A real LiveSource: 20 frames, then its read blocks (an unplugged camera), then every
    # reopen fails. The agent must stay up, say "stalled", FPS 0, and keep pinging.
    unblock = threading.Event()
    source = ScriptedSource(small_video, [{"mode": "block", "after": 20, "unblock": unblock, "period": 0.04}]
                            + [SourceError("scripted://video.mp4: cannot open device")] * 1000, stall_timeout_s=0.5)

    def observe(out, result):
        (t_ready, _), = listener.wait_for("READY", timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any("cam0=stalled" in v for _, v in listener.fields("STATUS")):
            time.sleep(0.05)
        t_stalled = time.monotonic()
        result["records_at_stall"] = len(read_records(out))
        time.sleep(2.0)
        result["records"] = len(read_records(out))
        result["pings_after_stall"] = [t for t, _ in listener.fields("WATCHDOG") if t > t_stalled]
        result["status"] = [v for t, v in listener.fields("STATUS") if t > t_stalled - 0.1]

    try:
        result = _run_with_observer(tmp_path, listener, demo_models, small_video, monkeypatch, observe,
                                    source=source.start())
    finally:
        unblock.set()
    assert 0 < result["records"] == result["records_at_stall"] <= 20  # nothing new while stalled
    assert len(result["pings_after_stall"]) >= 3  # every 0.3 s: systemd leaves a retrying agent alone
    assert any("fps=0.0" in v and "cam0=stalled" in v for v in result["status"]), result["status"]


class HangingSink(Sink):
    """A sink whose write blocks after ``after`` records: a consumer that stopped reading."""

    def __init__(self, after):
        self.after, self.count, self.release = after, 0, threading.Event()

    def emit(self, record, image=None):
        self.count += 1
        if self.count > self.after:
            self.release.wait(60)

    def close(self, timeout=5.0):
        self.release.set()


def test_a_hung_output_thread_stops_the_watchdog(tmp_path, listener, demo_models, small_video, monkeypatch):
    sink = HangingSink(after=10)

    def observe(out, result):
        (t_ready, _), = listener.wait_for("READY", timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sink.count <= sink.after:
            time.sleep(0.05)
        t_hung = time.monotonic() + 2.4  # HUNG_AFTER_S, and one ping may still be due
        time.sleep(4.5)
        result["pings_after_hang"] = [t for t, _ in listener.fields("WATCHDOG") if t > t_hung]
        result["pings_before"] = [t for t, _ in listener.fields("WATCHDOG") if t_ready <= t < t_hung - 2.4]
        sink.release.set()

    result = _run_with_observer(tmp_path, listener, demo_models, small_video, monkeypatch, observe, sinks=[sink])
    assert result["pings_before"]
    assert result["pings_after_hang"] == []  # systemd would now restart the agent


def test_sdnotify_without_socket_is_noop(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1" if os.getpid() != 1 else "2")
    assert sdnotify.watchdog_interval() is None  # meant for another process


def test_sdnotify_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "n.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.extend_timeout(90, "building fast")
        assert sock.recv(1024).decode() == "EXTEND_TIMEOUT_USEC=90000000\nSTATUS=building fast"
    finally:
        sock.close()


@pytest.mark.parametrize("text", [b"# cam\xe9ra\n", b"a: " + b"[" * 20000 + b"]" * 20000, b"max_frames: .nan\n",
                                  b"cameras: [{id: a, source: /nonexistent/v.mp4}]\n"],
                         ids=["non-utf8", "nested", "nan", "missing-source"])
def test_a_bad_reload_keeps_the_running_config_with_one_error_line(tmp_path, caplog, text):
    from agent.config import load_config
    from agent.service import _reload

    class Pipeline(object):
        def reload(self, new):
            raise AssertionError("a bad config reached the pipeline")

    running = load_config(environ={}, check_files=False)
    path = tmp_path / "config.yaml"
    path.write_bytes(text)
    with caplog.at_level(logging.INFO, logger="edge_agent"):
        assert _reload(Pipeline(), running, str(path), {}) is running
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("reload: keeping the running configuration: ")


def test_a_camera_down_at_start_leaves_the_agent_ready_and_the_others_running(tmp_path, listener, demo_models,
                                                                              small_video, monkeypatch):
    from test_sources import ScriptedSource

    down = ScriptedSource(small_video, [SourceError("scripted://yard: cannot open device")] * 1000, stall_timeout_s=1)

    def observe(out, result):
        listener.wait_for("READY", timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(read_records(out)) < 20:
            time.sleep(0.05)
        time.sleep(1.5)  # a few status and watchdog rounds
        result["cameras"] = {r["camera_id"] for r in read_records(out)}
        result["records"] = len(read_records(out))
        result["status"] = [v for _, v in listener.fields("STATUS")]
        result["pings"] = len(listener.fields("WATCHDOG"))

    result = _run_with_observer(tmp_path, listener, demo_models, small_video, monkeypatch, observe,
                                extra_camera=("yard", down.start()))
    assert result["cameras"] == {"cam0"} and result["records"] >= 20
    assert any(v.startswith("running") and "yard=waiting" in v for v in result["status"]), result["status"]
    assert result["pings"] >= 3
