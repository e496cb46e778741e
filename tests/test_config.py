"""Config loading: defaults run the demo, errors name the key, overrides layer."""

import os
import shlex

import pytest

from agent.config import ENVIRONMENT, is_config_variable, load_config
from agent.errors import EXIT_CONFIG, ConfigError
from conftest import ROOT


def write(tmp_path, text):
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def test_defaults_are_the_demo():
    config = load_config(environ={}, check_files=False)
    assert set(config.sizes) == {"fast", "accurate"}
    assert config.size == "fast"
    assert config.cameras[0].source.endswith("demo.mp4")
    assert config.device_id


@pytest.mark.parametrize("text, message", [
    ("cameras:\n  - {id: a, source: x.mp4, fps: 30fps}\n", "cameras[0].fps: expected a number, got '30fps'"),
    ("detection: {conf_threshold: -0.1}\n", "detection.conf_threshold: expected a value in [0, 1], got -0.1"),
    ("detection: {iou: 0.5}\n", "detection.iou: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("backend: cuda\n", "backend: expected one of auto, onnxruntime, tensorrt, got 'cuda'"),
    ("size: medium\n", "size: 'medium' is not a configured size"),
    ("sizes: {fast: {onnx: /nope/model.onnx}}\n", "sizes.fast.onnx: file not found: /nope/model.onnx"),
    ("cameras:\n  - {id: a, source: x.mp4, stall_timeout_s: 0}\n", "cameras[0].stall_timeout_s: expected a value > 0"),
    ("mqtt: {qos_detections: 3}\n", "mqtt.qos_detections: expected a value 0, 1 or 2, got 3"),
    ("cameras: []\n", "cameras: at least one camera is required"),
    ("cameras:\n  - {id: a, source: x}\n  - {id: a, source: y}\n", "cameras[1].id: duplicate camera id 'a'"),
    ("max_frames: true\n", "max_frames: expected an integer, got True"),
    ("- a\n- b\n", "expected a mapping at the top level"),
    ("detection: [\n", "not valid YAML (line"),
])
def test_errors_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert info.value.exit_code == EXIT_CONFIG


def test_env_and_overrides_layer(tmp_path):
    path = write(tmp_path, "size: accurate\ndetection: {conf_threshold: 0.4}\n")
    env = {"EDGE_AGENT_DETECTION__CONF_THRESHOLD": "0.6", "EDGE_AGENT_DEVICE_ID": "nx-01"}
    config = load_config(path, environ=env, check_files=False)
    assert config.size == "accurate"
    assert config.detection.conf_threshold == 0.6
    assert config.device_id == "nx-01"
    config = load_config(path, overrides={"detection": {"conf_threshold": 0.7}}, environ=env, check_files=False)
    assert config.detection.conf_threshold == 0.7
    assert config.detection.iou_threshold == 0.45  # untouched keys keep their defaults


def test_user_sizes_replace_demo_sizes(tmp_path, demo_models):
    path = write(tmp_path, "sizes: {small: {onnx: %s}}\nsize: small\n" % demo_models["fast"])
    config = load_config(path, environ={})
    assert list(config.sizes) == ["small"]


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.yaml"), environ={})
    assert "absent.yaml: cannot read config file" in str(info.value)


# --- environment variables: one table, no collisions -------------------------------------------

UNIT_FILES = [os.path.join(ROOT, "systemd", name) for name in ("edge-agent.service", "jetson.conf")]


def unit_environment(paths):
    """The variables systemd hands the agent: every ``Environment=`` line of ``paths``."""
    env = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("Environment="):
                    for assignment in shlex.split(line.strip()[len("Environment="):]):
                        name, value = assignment.split("=", 1)
                        env[name] = value
    return env


@pytest.mark.parametrize("paths", [UNIT_FILES[:1], UNIT_FILES], ids=["unit", "unit+jetson"])
def test_config_loads_under_exactly_the_units_environment(paths):
    env = unit_environment(paths)
    assert "EDGE_AGENT_KERNEL_CACHE" in env  # the variable that once made every start exit 78
    config = load_config(environ=env, check_files=False)
    assert config.size == "fast"


def test_every_variable_the_unit_sets_is_in_the_table():
    documented = {name for name, _, _ in ENVIRONMENT}
    assert set(unit_environment(UNIT_FILES)) <= documented


@pytest.mark.parametrize("name", sorted({n.replace("*", "RUN_SIZE") for n, _, _ in ENVIRONMENT
                                          if n.startswith("EDGE_AGENT_") and "<" not in n}))
def test_documented_variables_are_never_read_as_config_keys(name):
    assert not is_config_variable(name)
    config = load_config(environ={name: "{not: [valid"}, check_files=False)  # not even parsed
    assert config == load_config(environ={}, check_files=False)


@pytest.mark.parametrize("name, message", [
    ("EDGE_AGENT_SIZZE", "EDGE_AGENT_SIZZE (environment): sizze is not a configuration key"),
    ("EDGE_AGENT_MQTT__URLL", "EDGE_AGENT_MQTT__URLL (environment): mqtt.urll is not a configuration key"),
    ("EDGE_AGENT_KERNEL_CACHES", "EDGE_AGENT_KERNEL_CACHES (environment): kernel_caches is not a configuration key"),
    ("EDGE_AGENT_SIZES__FAST__ONXX", "sizes.fast.onxx is not a configuration key (known: labels, onnx)"),
    ("EDGE_AGENT_SIZE__FAST", "size has no sub-keys"),
])
def test_a_config_variable_with_a_typo_fails_naming_it(name, message):
    with pytest.raises(ConfigError) as e:
        load_config(environ={name: "x"}, check_files=False)
    assert message in str(e.value)


def test_config_variables_still_override():
    config = load_config(environ={"EDGE_AGENT_SIZE": "accurate", "EDGE_AGENT_MQTT__TLS__INSECURE": "true",
                                  "EDGE_AGENT_SIZES__FAST__LABELS": "/l.txt"}, check_files=False)
    assert (config.size, config.mqtt.tls.insecure, config.sizes["fast"].labels) == ("accurate", True, "/l.txt")
