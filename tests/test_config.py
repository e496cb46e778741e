"""Config loading: defaults run the demo, errors name the key, overrides layer."""

import json
import os

import pytest

from agent.config import ENVIRONMENT, is_config_variable, load_config
from agent.errors import EXIT_CONFIG, ConfigError
from agent.service_checks import unit_environment
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
    ("cameras:\n  - {id: a, source: x.mp4, stall_timeout_s: 0}\n", "cameras[0].stall_timeout_s: expected a value in (0, 86400] seconds"),
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


def test_tensorrt_zero_copy_is_a_setting_off_by_default(tmp_path):
    """Mapped (zero-copy) frames on Jetson are not measured to win on a Xavier: copy unless asked."""
    assert load_config(write(tmp_path, "backend: auto\n"), environ={}, check_files=False).tensorrt.zero_copy is False
    on = load_config(write(tmp_path, "tensorrt:\n  zero_copy: true\n"), environ={}, check_files=False)
    assert on.tensorrt.zero_copy is True
    with pytest.raises(ConfigError, match="tensorrt.zero_copy"):
        load_config(write(tmp_path, "tensorrt:\n  zero_copy: maybe\n"), environ={}, check_files=False)


# --- hostile input (issue 14): exit 78 with one line naming the culprit, in check-config as in run,
# before anything opens (run_agent and make_sinks must never be reached) ---------------------------

class _Reached(Exception):
    pass


def _cli(args, env=None):
    """agent.cli.main in-process with ``env`` as the only EDGE_AGENT_ variables: (rc, stdout, stderr)."""
    import contextlib
    import io
    from unittest import mock

    from agent import cli

    def reached(*a, **k):
        raise _Reached()

    environ = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, environ, clear=True), mock.patch("agent.service.run_agent", reached), \
            mock.patch("agent.publish.make_sinks", reached), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def assert_config_error(args, needle, env=None):
    for command in ("check-config", "run"):
        rc, out, err = _cli([command] + list(args), env)
        lines = err.splitlines()
        assert rc == 78 and len(lines) == 1 and lines[0].startswith("edge-agent: error: "), (command, err)
        assert needle in lines[0], (command, lines[0])
    return lines[0]


def _deep(n):
    return b"a: " + b"[" * n + b"]" * n + b"\n"


def _alias_bomb():
    """Nine lines that expand to 10**9 items if anything walks or prints them whole."""
    items = ["&x0 [1,1,1,1,1,1,1,1,1,1]"] + ["&x{} [{}]".format(i, ",".join(["*x{}".format(i - 1)] * 10))
                                              for i in range(1, 10)]
    return "sizes: {fast: {onnx: [%s]}}\n" % ", ".join(items)


HOSTILE = [
    # name, config file (str or bytes), environment, what the one line must contain
    ("non-utf8", b"# cam\xe9ra\n", {}, "config.yaml: not UTF-8 text (line 1: byte 0xe9)"),
    ("nested-20000", _deep(20000), {}, "config.yaml: not valid YAML: nested too deeply"),
    ("bad-date", "device_id: 2001-13-45\n", {}, "config.yaml: not valid YAML: month must be in 1..12"),
    ("over-1MiB", "#" * (1 << 20) + "\n", {}, "config.yaml: larger than 1048576 bytes"),
    ("alias-bomb", _alias_bomb(), {}, "sizes.fast.onnx: expected a string, got [[1, 1, 1"),
    ("max-frames-nan", "max_frames: .nan\n", {}, "max_frames: expected a finite number, got nan"),
    ("max-frames-inf", "max_frames: .inf\n", {}, "max_frames: expected a finite number, got inf"),
    ("max-frames-env-nan", "{}\n", {"EDGE_AGENT_MAX_FRAMES": ".nan"}, "max_frames: expected a finite number"),
    ("max-frames-huge", "max_frames: 1%s\n" % ("0" * 30), {}, "max_frames: expected a number of magnitude below 2**63"),
    ("threshold-nan", "detection: {conf_threshold: .nan}\n", {}, "detection.conf_threshold: expected a finite number"),
    ("fps-minus-inf", "cameras: [{id: a, source: x, fps: -.inf}]\n", {}, "cameras[0].fps: expected a finite number"),
    ("fps-tiny", "cameras: [{id: a, source: x, fps: 1.0e-300}]\n", {}, "cameras[0].fps: expected a value 0 (the"),
    ("interval-huge", "health: {interval_s: 1.0e+10}\n", {}, "health.interval_s: expected a value in (0, 86400]"),
    ("ort-threads", "onnxruntime: {threads: 100000}\n", {}, "onnxruntime.threads: expected a value in [0, "),
    ("keepalive", "mqtt: {keepalive_s: 100000000}\n", {}, "mqtt.keepalive_s: expected a value in [1, 65535]"),
    ("port-0", "mqtt: {url: 'mqtt://127.0.0.1:0'}\n", {}, "mqtt.url: port must be in [1, 65535]"),
    ("port-99999", "mqtt: {url: 'mqtt://127.0.0.1:99999'}\n", {}, "mqtt.url: cannot parse 'mqtt://127.0.0.1:99999'"),
    ("port-text", "mqtt: {url: 'mqtt://host:http'}\n", {}, "mqtt.url: cannot parse 'mqtt://host:http'"),
    ("url-no-scheme", "mqtt: {url: 'broker.local'}\n", {}, "mqtt.url: expected mqtt://host[:port]"),
    ("url-path", "mqtt: {url: 'mqtt://host/topic'}\n", {}, "mqtt.url: expected mqtt://host[:port]"),
    ("url-ipv6", "mqtt: {url: 'mqtt://[::1]:1883'}\n", {}, "mqtt.url: expected mqtt://host[:port]"),
    ("url-password", "mqtt: {url: 'mqtt://user:secret@host'}\n", {}, "got 'mqtt://user:***@host'"),
    ("url-list-empty", "mqtt: {url: []}\n", {}, "mqtt.url: expected a broker URL or a non-empty list of them"),
    ("url-list-index", "mqtt: {url: ['mqtt://a:1883', 'mqtt://b:1883', 'broker.local']}\n", {},
     "mqtt.url[2]: expected mqtt://host[:port] or mqtts://host[:port], got 'broker.local'"),
    ("url-list-password", "mqtt: {url: ['mqtt://a', 'mqtt://u:secret@b']}\n", {},
     "mqtt.url[1]: a password in the URL is not used"),
    ("device-plus", "device_id: nx+1\n", {}, "device_id: expected a name of 1 to 256 bytes without '/', '+', '#'"),
    ("device-slash", "device_id: a/b\n", {}, "device_id: expected a name"),
    ("device-nul", 'device_id: "nx\\0"\n', {}, "device_id: NUL characters are not allowed"),
    ("device-surrogate", 'device_id: "nx\\udc80"\n', {}, "device_id: not valid Unicode text"),
    ("prefix-hash", "mqtt: {prefix: 'edge/#'}\n", {}, "mqtt.prefix: expected topic levels joined by '/'"),
    ("prefix-leading-slash", "mqtt: {prefix: /edge}\n", {}, "mqtt.prefix: expected topic levels"),
    ("prefix-empty-level", "mqtt: {prefix: 'site//edge'}\n", {}, "mqtt.prefix: expected topic levels"),
    ("prefix-sys", "mqtt: {prefix: $SYS/x}\n", {}, "mqtt.prefix: expected topic levels"),
    ("camera-id-hash", "cameras: [{id: 'a#', source: x}]\n", {}, "cameras[0].id: expected a name"),
    ("size-name-slash", "sizes: {'../x': {onnx: m.onnx}}\nsize: ../x\n", {}, "sizes.../x: expected a size name"),
    ("key-newline", '"a\\nb": 1\n', {}, "'a\\nb': unknown key"),
    ("tls-key-only", "mqtt: {tls: {key: k.pem}}\n", {}, "mqtt.tls.key: set without mqtt.tls.cert"),
    ("jsonl-missing-dir", "output: {jsonl: /nonexistent/dir/out.jsonl}\n", {},
     "output.jsonl: directory /nonexistent/dir does not exist"),
    ("state-dir-under-file", "state_dir: {tmp}/config.yaml/state\n", {}, "state_dir: cannot create"),
]


@pytest.mark.parametrize("text, env, needle", [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_hostile_config_is_one_line_and_exit_78(tmp_path, text, env, needle):
    path = tmp_path / "config.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{tmp}", str(tmp_path)), encoding="utf-8")
    line = assert_config_error(["--config", str(path)], needle, env)
    assert "secret" not in line


def test_config_path_that_is_a_directory_exits_78_naming_it(tmp_path):
    assert_config_error(["--config", str(tmp_path)], "{}: is a directory".format(tmp_path))


def test_mqtt_files_are_checked_by_check_config_as_by_run(tmp_path):
    """The CA is loaded (not just found) before anything opens, in both commands."""
    ca = tmp_path / "ca.crt"
    ca.write_text("not a certificate\n")
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {enabled: true, url: 'mqtts://broker:8883', tls: {ca: %s}}\n" % ca)
    assert_config_error(["--config", str(path)], "mqtt.tls: cannot load CA/cert/key ({}".format(ca))
    path.write_text("mqtt: {enabled: true, password_file: %s}\n" % tmp_path)  # a directory
    assert_config_error(["--config", str(path)], "mqtt.password_file: file not found")


def test_topic_prefix_with_levels_and_urls_with_a_user_are_fine(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {prefix: site/edge-agent, url: 'mqtt://agent@broker.local:1883'}\ndevice_id: nx-01\n")
    config = load_config(str(path), environ={}, check_files=False)
    assert (config.mqtt.prefix, config.device_id) == ("site/edge-agent", "nx-01")


@pytest.mark.parametrize("url,message", [
    (["mqtt://a:1883", "mqtt://b:99999"], "mqtt.url[1]: cannot parse 'mqtt://b:99999'"),
    (["mqtt://a:1883", "mqtt://b:0"], "mqtt.url[1]: port must be in [1, 65535]"),
    (["mqtt://a", {"host": "b"}], "mqtt.url[1]: expected a string, got {'host': 'b'}"),
    (["mqtt://a", "mqtt://b", "mqtt://c/x"], "mqtt.url[2]: expected mqtt://host[:port]"),
    (["mqtts://a", "mqtt://b"], "mqtt.url[1]: every broker in the list must use the scheme of mqtt.url[0] (mqtts://)"),
    (["mqtt://edge@a", "mqtt://b"], "mqtt.url[1]: every broker in the list must use the user of mqtt.url[0] (edge)"),
    ([None], "mqtt.url[0]: expected a string, got None"),
    (7, "mqtt.url: expected mqtt://host[:port]"),
])
def test_url_list_errors_name_the_index(url, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"mqtt": {"url": url}}, environ={}, check_files=False)
    assert str(e.value).startswith(message), str(e.value)


def test_url_list_from_yaml_and_environment(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mqtt:\n  url:\n    - mqtt://node1:1883\n    - mqtt://node2:1884\n")
    config = load_config(str(path), environ={}, check_files=False)
    assert config.mqtt.urls == ["mqtt://node1:1883", "mqtt://node2:1884"]
    env = {"EDGE_AGENT_MQTT__URL": "[mqtt://a:1, mqtt://b:2, mqtt://c:3]"}
    assert load_config(str(path), environ=env, check_files=False).mqtt.urls == ["mqtt://a:1", "mqtt://b:2", "mqtt://c:3"]
    env = {"EDGE_AGENT_MQTT__URL": "mqtt://one:1883"}  # one string stays one string
    config = load_config(str(path), environ=env, check_files=False)
    assert (config.mqtt.url, config.mqtt.urls) == ("mqtt://one:1883", ["mqtt://one:1883"])
    env = {"EDGE_AGENT_MQTT__URL": "[mqtt://a:1, 'x y']"}
    with pytest.raises(ConfigError) as e:
        load_config(str(path), environ=env, check_files=False)
    assert str(e.value).startswith("mqtt.url[1]: expected mqtt://host[:port]"), str(e.value)


def test_broker_option_given_again_makes_a_list():
    from agent.commands.run import overrides_from

    assert overrides_from(broker=("mqtt://a:1883",))["mqtt"]["url"] == "mqtt://a:1883"
    assert overrides_from(broker=("mqtt://a:1883", "mqtt://b:1883"))["mqtt"]["url"] == ["mqtt://a:1883",
                                                                                         "mqtt://b:1883"]
    assert "mqtt" not in overrides_from(broker=())


def test_check_config_shows_the_url_list(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("mqtt: {enabled: true, url: ['mqtt://u:secret@n1:1883', 'mqtt://u@n2:1883']}\n")
    rc, out, err = _cli(["check-config", "--config", str(path)])
    assert rc != 0 and "mqtt.url[0]: a password in the URL is not used" in err and "secret" not in err
    path.write_text("mqtt: {enabled: true, url: ['mqtt://u@n1:1883', 'mqtt://u@n2:1884']}\n")
    rc, out, err = _cli(["check-config", "--json", "--config", str(path)])
    assert rc == 0, err
    assert json.loads(out)["mqtt"]["url"] == ["mqtt://u@n1:1883", "mqtt://u@n2:1884"]
    rc, out, err = _cli(["check-config", "--config", str(path)])
    assert rc == 0 and "mqtt: mqtt://u@n1:1883, mqtt://u@n2:1884" in out, (out, err)


def test_check_config_json_hides_source_passwords(tmp_path, small_video):
    path = tmp_path / "config.yaml"
    path.write_text("cameras: [{id: yard, source: 'rtsp://u:secret@cam/s'}]\n")
    rc, out, err = _cli(["check-config", "--json", "--config", str(path)])
    assert rc == 0, err
    assert "secret" not in out and "rtsp://u:***@cam/s" in out


def test_the_environment_table_is_the_documented_one():
    with open(os.path.join(ROOT, "docs", "service.md")) as f:
        doc = f.read()
    for name, who, what in ENVIRONMENT:
        assert "| `{}` | {} | {} |".format(name, who, what) in doc, name


@pytest.mark.parametrize("overrides,message", [
    ({"cameras": [{"id": "cmd", "source": "x.mp4"}]}, "cameras[0].id: 'cmd' is reserved"),
    ({"cameras": [{"id": "reply", "source": "x.mp4"}]}, "cameras[0].id: 'reply' is reserved"),
    ({"mqtt": {"homeassistant_prefix": "home/+"}}, "mqtt.homeassistant_prefix: expected topic levels"),
    ({"mqtt": {"commands": "yes"}}, "mqtt.commands: expected true or false"),
])
def test_remote_control_keys(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, environ={}, check_files=False)
    assert str(e.value).startswith(message), str(e.value)
    defaults = load_config(None, {}, environ={}, check_files=False).mqtt
    assert (defaults.commands, defaults.homeassistant, defaults.homeassistant_prefix) == (False, False, "homeassistant")
