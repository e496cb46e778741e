"""Shared fixtures: a real mosquitto broker on a free port, a 3-node RabbitMQ MQTT cluster, the demo
models, a generated video."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker(object):
    """A mosquitto process on 127.0.0.1:<port>; ``stop()``/``start()`` simulate outages."""

    def __init__(self, workdir, port=None, extra_conf=""):
        self.workdir = str(workdir)
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.proc = None

    @property
    def url(self):
        return "mqtt://127.0.0.1:{}".format(self.port)

    def conf_lines(self):
        return [self.extra_conf or "allow_anonymous true\n", "persistence false\n"]

    def start(self):
        conf = os.path.join(self.workdir, "mosquitto.conf")
        with open(conf, "w") as f:
            f.write("listener {} 127.0.0.1\n".format(self.port))
            f.writelines(self.conf_lines())
        self.log = open(os.path.join(self.workdir, "mosquitto.log"), "ab")
        self.proc = subprocess.Popen([shutil.which("mosquitto"), "-c", conf], stdout=self.log, stderr=self.log)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("mosquitto exited: see {}".format(self.log.name))
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen on port {}".format(self.port))

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self.log.close()


@pytest.fixture
def broker(tmp_path):
    """A fresh mosquitto on a free port, stopped after the test."""
    if shutil.which("mosquitto") is None:
        pytest.fail("mosquitto is not installed: run scripts/setup.sh (apt-get install mosquitto)")
    b = Broker(tmp_path).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def demo_models():
    """{'fast': path, 'accurate': path} of the committed demo models."""
    paths = {s: os.path.join(MODELS, "demo-{}.onnx".format(s)) for s in ("fast", "accurate")}
    for p in paths.values():
        assert os.path.isfile(p), "demo model missing: {}".format(p)
    return paths


def write_video(path, frames=30, size=(320, 240), fps=30.0):
    """A small MJPG video of a moving bright square; returns its path."""
    import cv2

    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened(), "cannot write {}".format(path)
    for i in range(frames):
        img = np.full((h, w, 3), 40, np.uint8)
        x = 10 + (i * 5) % (w - 60)
        img[60:110, x:x + 50] = (255, 255, 255)
        writer.write(img)
    writer.release()
    return str(path)


@pytest.fixture
def small_video(tmp_path):
    return write_video(tmp_path / "small.avi")


def run_cli(args, env=None, timeout=120, input=None):
    """Run ``python -m agent.cli ARGS``; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "agent.cli"] + list(args), cwd=ROOT, env=full_env, timeout=timeout,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, input=input,
    )


class PersistentBroker(Broker):
    """A mosquitto that keeps sessions and queued QoS 1 messages across stop()/start()."""

    def conf_lines(self):
        # As root, mosquitto drops to the mosquitto user, which cannot write under pytest's 0700
        # tmp dirs: it would log "Error saving in-memory database" and lose every session at restart.
        user = ["user root\n"] if os.geteuid() == 0 else []
        return ["allow_anonymous true\n", "persistence true\npersistence_location {}/\n".format(self.workdir),
                "max_queued_messages 0\nmax_inflight_messages 0\n"] + user


@pytest.fixture
def persistent_broker(tmp_path):
    """A mosquitto with persistence: a subscriber's session survives a broker restart."""
    d = tmp_path / "persistent-broker"
    d.mkdir()
    b = PersistentBroker(d).start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A CA, a server cert for 127.0.0.1 and a client cert signed by it, an unrelated CA (paths by name)."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.check_call(["openssl"] + list(args), cwd=str(d), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", name + ".key", "-out", name + ".crt", "-days", "2",
                "-subj", "/CN=edge-agent test " + name)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(str(d / "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    openssl("req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=edge-agent-client")
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "client.crt", "-days", "2")
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key"),
            "other_ca": str(d / "other-ca.crt"), "client_cert": str(d / "client.crt"),
            "client_key": str(d / "client.key")}


@pytest.fixture(scope="session")
def rabbitmq_cluster():
    """A 3-node RabbitMQ MQTT cluster (tests/rabbitmq_cluster.py), started once per session.

    Tests that kill a node must start it again before they end (``start_node``): the next
    test gets all three nodes. Skipped with the reason where rabbitmq-server is absent.
    """
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from rabbitmq_cluster import RabbitCluster, available

    reason = available()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp_path: its parents are mode 0700, and the nodes run as the rabbitmq user.
    workdir = tempfile.mkdtemp(prefix="edge-agent-rabbitmq-")
    cluster = RabbitCluster(workdir, nodes=3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
