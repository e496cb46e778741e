"""install-service / uninstall-service into a temporary root, and the shipped config template."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

import yaml

from agent.config import AgentConfig, load_config
from conftest import ROOT, run_cli

EXAMPLE = os.path.join(ROOT, "systemd", "config.example.yaml")
UNIT = "etc/systemd/system/edge-agent.service"
WANTS = "etc/systemd/system/multi-user.target.wants/edge-agent.service"
DROPIN = "etc/systemd/system/edge-agent.service.d/jetson.conf"


def _install(root, *extra):
    res = run_cli(["install-service", "--root", str(root), "--exec-path", "/opt/venv/bin/edge-agent"] + list(extra))
    assert res.returncode == 0, res.stderr
    return res


def _db(root, name):
    with open(os.path.join(str(root), "etc", name)) as f:
        return {l.split(":")[0]: l.strip().split(":") for l in f}


def test_install_then_uninstall_keeps_config(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("root:x:0:\nvideo:x:44:alice\n")
    (root / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1\n")
    _install(root)
    unit = (root / UNIT).read_text()
    assert re.search(r"(?m)^ExecStart=/opt/venv/bin/edge-agent run --config /etc/edge-agent/config.yaml$", unit)
    assert os.readlink(str(root / WANTS)) == "/etc/systemd/system/edge-agent.service"
    assert (root / DROPIN).is_file()  # a Jetson root gets the CSI drop-in
    users, groups = _db(root, "passwd"), _db(root, "group")
    assert users["edge-agent"][6] == "/usr/sbin/nologin"
    assert int(users["edge-agent"][2]) < 1000  # a system user
    assert groups["video"][3].split(",") == ["alice", "edge-agent"]
    assert users["edge-agent"][3] == groups["edge-agent"][2]
    for d in ("etc/edge-agent", "var/lib/edge-agent/engines", "var/cache/edge-agent"):
        assert (root / d).is_dir()
    config = root / "etc/edge-agent/config.yaml"
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    # A second install keeps an edited config.
    config.write_text("size: accurate\n")
    _install(root)
    assert config.read_text() == "size: accurate\n"

    res = run_cli(["uninstall-service", "--root", str(root)])
    assert res.returncode == 0, res.stderr
    assert not (root / UNIT).exists() and not os.path.lexists(str(root / WANTS)) and not (root / DROPIN).exists()
    assert config.read_text() == "size: accurate\n"
    assert (root / "var/lib/edge-agent/engines").is_dir()
    assert "edge-agent" in _db(root, "passwd")


def test_purge_removes_config_state_and_user(tmp_path):
    root = tmp_path / "root"
    _install(root, "--no-enable", "--no-jetson")
    assert not os.path.lexists(str(root / WANTS)) and not (root / DROPIN).exists()
    res = run_cli(["uninstall-service", "--root", str(root), "--purge"])
    assert res.returncode == 0, res.stderr
    assert not (root / "etc/edge-agent").exists() and not (root / "var/lib/edge-agent").exists()
    assert "edge-agent" not in _db(root, "passwd") and "edge-agent" not in _db(root, "group")
    assert _db(root, "group")["video"][3] == ""


def _uncomment(text):
    """The template with every setting uncommented ('#key: v' -> 'key: v'; '##' stays a comment)."""
    return "\n".join(l[1:] if l.startswith("#") and not l.startswith("##") else l for l in text.splitlines())


def _missing_keys(cls, data, prefix=""):
    missing = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if f.name not in data:
            missing.append(key)
            continue
        value = data[f.name]
        if dataclasses.is_dataclass(f.type):
            missing += _missing_keys(f.type, value, key + ".")
    return missing


def test_config_example_is_valid_and_complete(tmp_path):
    with open(EXAMPLE) as f:
        text = f.read()
    load_config(EXAMPLE, check_files=False, environ={})  # as shipped: all commented
    full = tmp_path / "full.yaml"
    full.write_text(_uncomment(text))
    config = load_config(str(full), check_files=False, environ={})
    assert config.size == "fast" and config.cameras[0].stall_timeout_s == 5.0
    data = yaml.safe_load(full.read_text())
    assert _missing_keys(AgentConfig, data) == []
    from agent.config import CameraConfig, SizeConfig

    assert _missing_keys(CameraConfig, data["cameras"][0]) == []
    assert _missing_keys(SizeConfig, data["sizes"]["fast"]) == []


# --- scripts/install.sh: what it refuses, before anything is installed -------------------------

INSTALL_SH = os.path.join(ROOT, "scripts", "install.sh")


def _install_sh(tmp_path, root, python="/usr/bin/python3"):
    env = dict(os.environ, VENV=str(tmp_path / "venv"), PYTHON=python)
    return subprocess.run(["sh", INSTALL_SH, "--root", str(root)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def _nothing_installed(tmp_path, root):
    return not (tmp_path / "venv").exists() and not (root / UNIT).exists()


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs the distribution's /usr/bin/python3")
def test_install_sh_on_a_jetson_without_tensorrt_refuses_in_one_line(tmp_path):
    root = tmp_path / "l4t"  # a fake L4T root: the release file, and no TensorRT bindings here
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "nv_tegra_release").write_text("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t186ref\n")
    res = _install_sh(tmp_path, root)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "install.sh: TensorRT's Python bindings are missing: sudo apt-get install python3-libnvinfer (JetPack), "
        "then run this again"]
    assert _nothing_installed(tmp_path, root)


def test_install_sh_refuses_an_interpreter_the_service_cannot_reach(tmp_path):
    home = tempfile.mkdtemp(dir="/root") if os.access("/root", os.W_OK) else None
    if home is None:
        pytest.skip("needs a writable /root (runs as root in CI)")
    try:
        python = os.path.join(home, "python3")  # what a pyenv or conda interpreter looks like
        os.symlink(sys.executable, python)
        root = tmp_path / "root"
        res = _install_sh(tmp_path, root, python)
        assert res.returncode == 1
        assert res.stderr.startswith("install.sh: {} is {}, which the service cannot execute (ProtectHome=yes)".format(
            python, python))
        assert _nothing_installed(tmp_path, root)
    finally:
        shutil.rmtree(home)
