"""The agent under a real sd_notify socket: READY, WATCHDOG, STATUS, RELOADING, STOPPING, exit codes.

The notify socket is a real AF_UNIX datagram socket in the abstract namespace,
as systemd's would be; the agent runs as ``python -m agent.cli run`` (what the
unit starts) except for the camera-stall test, which runs ``run_agent`` in this
process with the real Pipeline and a real FrameSource that stops delivering.
"""

import json
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
        (tmp_path / "config.yaml").write_text("size: huge\n")
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
        assert seen["health"]["schema_version"] == 1 and seen["health"]["memory"]["total_mb"] > 0
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


class StallingSource(object):
    """A real video source that stops delivering after ``frames`` frames, like an unplugged camera."""

    live = True

    def __init__(self, inner, frames):
        self.inner, self.left, self.stats, self.uri = inner, frames, inner.stats, inner.uri

    def read(self, timeout_ms=1000):
        if self.left <= 0:
            time.sleep(timeout_ms / 1000.0)  # the capture contract: None after the timeout
            return None
        self.left -= 1
        return self.inner.read(timeout_ms)

    def close(self):
        self.inner.close()


def test_watchdog_stops_when_camera_stalls(tmp_path, listener, demo_models, small_video, monkeypatch):
    from agent import pipeline as pipeline_module
    from agent.config import load_config
    from agent.publish import JsonLinesSink
    from agent.service import run_agent
    from agent.sources import open_source

    monkeypatch.setenv("NOTIFY_SOCKET", listener.name)
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 0.6
    # The real sources, wrapped: the first camera delivers 20 frames, then nothing.
    monkeypatch.setattr(pipeline_module, "open_source", lambda cam: StallingSource(open_source(cam), 20))
    out = str(tmp_path / "out.jsonl")
    config = load_config(write_config(tmp_path / "config.yaml", demo_models, small_video, out), environ={})
    result = {}

    def observer():
        try:
            (t_ready, _), = listener.wait_for("READY", timeout=60)
            listener.wait_for("WATCHDOG", count=1, timeout=10, after=t_ready)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(read_records(out)) < 20:
                time.sleep(0.05)
            result["records"] = len(read_records(out))
            t_stalled = time.monotonic() + 0.7  # one ping may still be due for the last frames
            time.sleep(2.5)
            result["pings_after_stall"] = [t for t, _ in listener.fields("WATCHDOG") if t > t_stalled]
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # run_agent's handler: stop like systemd would

    thread = threading.Thread(target=observer, daemon=True)
    thread.start()
    code = run_agent(config, [JsonLinesSink(out)], pipeline_factory=pipeline_module.Pipeline)
    thread.join(5)
    assert code == 0
    assert result["records"] == 20
    assert result["pings_after_stall"] == []  # systemd would now restart the agent
    assert listener.fields("STOPPING")


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
