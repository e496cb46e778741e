"""edge-agent doctor on this CPU-only machine: GPU parts missing with fixes, exit code by backend."""

import json
import os
import shutil

import pytest

from conftest import free_port, run_cli


@pytest.fixture
def config_file(tmp_path, demo_models, small_video):
    def write(backend):
        path = tmp_path / "config-{}.yaml".format(backend)
        path.write_text("backend: {}\nsizes:\n  fast:\n    onnx: {}\ncameras:\n  - id: cam0\n    source: {}\n"
                        "engines_dir: {}\n".format(backend, demo_models["fast"], small_video, tmp_path / "engines"))
        return str(path)
    return write


def _checks(res):
    return {c["name"]: c for c in json.loads(res.stdout)["checks"]}


def test_doctor_cpu_box_auto_backend(config_file):
    res = run_cli(["doctor", "--json", "--config", config_file("auto")], timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    checks = _checks(res)
    for name in ("tensorrt", "pycuda", "cuda"):
        assert checks[name]["level"] == "WARN" and checks[name]["fix"], checks[name]
    assert checks["onnxruntime"]["level"] == "OK"
    assert checks["camera cam0"]["level"] == "OK"
    assert checks["engines"]["level"] == "OK"
    assert checks["cuda kernels"]["level"] == "OK" and "not used" in checks["cuda kernels"]["detail"]
    text = run_cli(["doctor", "--config", config_file("auto")], timeout=60)
    assert text.returncode == 0
    assert any(l.startswith("WARN tensorrt") and "fix:" in l for l in text.stdout.splitlines())


def test_doctor_tensorrt_backend_blocks(config_file):
    res = run_cli(["doctor", "--json", "--config", config_file("tensorrt")], timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    checks = _checks(res)
    assert checks["tensorrt"]["level"] == "FAIL" and checks["tensorrt"]["blocking"]
    assert checks["pycuda"]["blocking"]
    # No engine yet, so no GPU to compile for: an nvcc is enough, none is a warning with the fix.
    kernels = checks["cuda kernels"]
    if shutil.which("nvcc"):
        assert kernels["level"] == "OK" and "nvcc found ({})".format(shutil.which("nvcc")) in kernels["detail"], kernels
    # sudo's secure_path: no nvcc on PATH, but /usr/local/cuda/bin/nvcc (or $CUDA_HOME/bin/nvcc) is found.
    env = {"PATH": _path_without_nvcc(), "CUDA_HOME": ""}
    kernels = _checks(run_cli(["doctor", "--json", "--config", config_file("tensorrt")], env=env, timeout=60))[
        "cuda kernels"]
    if os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
        assert kernels["level"] == "OK" and "nvcc found (/usr/local/cuda/bin/nvcc)" in kernels["detail"], kernels
    else:
        assert kernels["level"] == "WARN" and "no nvcc" in kernels["detail"], kernels


def _path_without_nvcc():
    return os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if not os.path.isfile(os.path.join(p, "nvcc")))


def test_doctor_kernels_without_any_nvcc_warns_with_the_fix(config_file, monkeypatch):
    from agent import doctor
    from agent.config import load_config
    from agent.kernels import build

    monkeypatch.setenv("PATH", _path_without_nvcc())
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.setattr(build, "DEFAULT_CUDA_HOME", "/nonexistent/cuda")
    kernels = doctor.check_kernels(load_config(config_file("tensorrt")))
    assert kernels.level == "WARN" and "no nvcc" in kernels.detail and "build-engine" in kernels.fix, kernels


def test_doctor_broker_down_warns(tmp_path, config_file, broker):
    path = config_file("onnxruntime")
    with open(path, "a") as f:
        f.write("mqtt:\n  enabled: true\n  url: {}\n".format(broker.url))
    assert _checks(run_cli(["doctor", "--json", "--config", path], timeout=60))["broker"]["level"] == "OK"
    broker.stop()
    res = run_cli(["doctor", "--json", "--config", path], timeout=60)
    assert res.returncode == 0  # the agent spools while the broker is away: not blocking
    assert _checks(res)["broker"]["level"] == "WARN"


def test_doctor_checks_each_broker_of_a_list(broker):
    from agent import doctor
    from agent.config import load_config

    dead = "mqtt://127.0.0.1:{}".format(free_port())
    config = load_config(None, {"mqtt": {"enabled": True, "url": [broker.url, dead]}}, environ={},
                         check_files=False)
    check = doctor.check_broker(config)
    assert check.level == "WARN" and check.detail.startswith("mqtt.url[1]: cannot connect to 127.0.0.1:"), check
    assert "the agent uses the others meanwhile (127.0.0.1:{})".format(broker.port) in check.fix, check
    config = load_config(None, {"mqtt": {"enabled": True, "url": [broker.url, broker.url]}}, environ={},
                         check_files=False)
    assert doctor.check_broker(config).level == "OK"


def test_doctor_bad_config_exits_78(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: cuda\n")
    res = run_cli(["doctor", "--config", str(bad)], timeout=60)
    assert res.returncode == 78
    assert "backend" in res.stderr
