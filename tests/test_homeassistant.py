"""Home Assistant MQTT discovery (agent/control/homeassistant.py) against a real mosquitto and agent.

The payloads are checked against tests/data/homeassistant_discovery.schema.json, written from
Home Assistant's documentation: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery
(topic format, payload, removal by an empty retained payload) and the entity pages
https://www.home-assistant.io/integrations/sensor.mqtt/,
https://www.home-assistant.io/integrations/binary_sensor.mqtt/ and
https://www.home-assistant.io/integrations/select.mqtt/ (configuration variables). Their
templates are rendered with Jinja2 (what Home Assistant renders them with) against the
agent's real payloads.
"""

import json
import os
import re
import signal
import time

import jinja2
import jsonschema
import pytest

from agent.config import load_config
from agent.control.homeassistant import MAX_CLASS_SENSORS, messages, safe_id
from conftest import ROOT, Broker, write_video
from test_control import Agent, status_of
from test_mqtt import Subscriber

with open(os.path.join(ROOT, "tests", "data", "homeassistant_discovery.schema.json")) as _f:
    HA_SCHEMA = json.load(_f)
TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor|select)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config$")
LABELS = {0: "circle", 1: "square", 2: "triangle", 3: "star", 4: "car"}  # the demo models'


def validate(topic, payload):
    match = TOPIC.match(topic)
    assert match, topic
    jsonschema.validate(payload, dict(HA_SCHEMA, **{"$ref": "#/definitions/" + match.group(1)}))
    return match.group(1)


def render(template, payload):
    """A value template as Home Assistant renders it for an MQTT message (``value``, ``value_json``)."""
    return jinja2.Environment().from_string(template).render(value=json.dumps(payload), value_json=payload).strip()


def available(config, payload):
    item = config["availability"][0]
    state = render(item["value_template"], payload)
    return {item["payload_available"]: True, item["payload_not_available"]: False}[state]


def test_schema_refuses_what_home_assistant_would_refuse():
    good = {"state_topic": "a/b", "unique_id": "u", "device": {"identifiers": ["x"]}}
    validate("homeassistant/sensor/n/o/config", good)
    for bad in ({"unique_id": "u"},  # no state_topic
                dict(good, device={"name": "x"}),  # a device needs identifiers or connections
                dict(good, stat_topic="a"),  # a misspelt key
                dict(good, availability=[{"topic": "s"}], availability_topic="s"),  # not together
                dict(good, device_class="duration", unit_of_measurement="fps")):
        with pytest.raises(jsonschema.ValidationError):
            validate("homeassistant/sensor/n/o/config", bad)
    with pytest.raises(jsonschema.ValidationError):
        validate("homeassistant/select/n/o/config", {"command_topic": "c", "unique_id": "u"})  # no options


def test_messages_for_odd_names_many_classes_and_no_tracking():
    config = load_config(None, {"device_id": "gate 1.b", "cameras": [{"id": "a.b", "source": "x.mp4"},
                                                                      {"id": "a_b", "source": "y.mp4"}],
                                "mqtt": {"enabled": True}}, environ={}, check_files=False)
    labels = {i: "class{}".format(i) for i in range(80)}
    out = messages(config, labels, has_temperature=True)
    for topic, payload in out.items():
        validate(topic, payload)
    assert len({p["unique_id"] for p in out.values()}) == len(out)  # 'a.b' and 'a_b' do not collide
    assert safe_id("a.b") != "a_b" and safe_id("a_b") == "a_b"
    per_camera = [t for t in out if "_count_" in t]
    assert len(per_camera) == 2 * MAX_CLASS_SENSORS
    narrowed = load_config(None, {"detection": {"classes": [3, 7]}, "tracking": {"enabled": True}},
                           environ={}, check_files=False)
    assert sorted(t.rsplit("_count_", 1)[1] for t in messages(narrowed, labels, False) if "_count_" in t) == [
        "class3/config", "class7/config"]
    untracked = load_config(None, {"tracking": {"enabled": False}}, environ={}, check_files=False)
    assert not [t for t in messages(untracked, labels, False) if "_count_" in t or "_objects" in t]
    assert not [t for t in messages(untracked, labels, False) if "temperature" in t]


@pytest.fixture
def ha_agent(tmp_path, demo_models):
    video = write_video(tmp_path / "video.avi", frames=60)
    broker = Broker(tmp_path).start()
    agent = Agent(tmp_path, broker.url, video, demo_models,
                  mqtt_extra="  commands: true\n  homeassistant: true\n", top_extra="health:\n  interval_s: 1.0\n")
    yield broker, agent
    agent.stop()
    broker.stop()


def test_discovery_configs_validate_and_drive_the_agent(ha_agent):
    broker, agent = ha_agent
    agent.start()
    sub = Subscriber(broker.url, ["homeassistant/#", "edge-agent/#"])
    try:
        assert agent.wait_log("discovery configs published"), agent.log_text()[-3000:]
        assert sub.wait_for(lambda: len(sub.on("/config")) >= 10 and sub.json("cam0/timing")
                            and sub.json("cam0/counts") and sub.json("dev1/spool") and sub.json("dev1/health"),
                            timeout=30)
        configs = {t: json.loads(p) for t, p, _ in sub.on("/config")}
        components = {t: validate(t, p) for t, p in configs.items()}
        by_id = {p["unique_id"]: p for p in configs.values()}
        assert len(by_id) == len(configs)
        # One Home Assistant device per agent.
        assert {json.dumps(p["device"], sort_keys=True) for p in configs.values()} == {json.dumps(
            configs["homeassistant/binary_sensor/edge_agent_dev1/online/config"]["device"], sort_keys=True)}
        expected = {"edge_agent_dev1_online", "edge_agent_dev1_model_size", "edge_agent_dev1_cam0_fps",
                    "edge_agent_dev1_cam0_latency_p95", "edge_agent_dev1_cam0_objects", "edge_agent_dev1_spool_queued"}
        expected |= {"edge_agent_dev1_cam0_count_" + label for label in LABELS.values()}
        assert expected <= set(by_id) and set(by_id) - expected <= {"edge_agent_dev1_temperature"}
        assert sorted(components.values()).count("select") == 1
        # The templates give numbers from the agent's real payloads.
        status = status_of(sub)
        online = by_id["edge_agent_dev1_online"]
        assert render(online["value_template"], status) == "ON" and "availability" not in online
        assert float(render(by_id["edge_agent_dev1_cam0_fps"]["value_template"], sub.json("cam0/timing")[-1])) > 0
        p95 = render(by_id["edge_agent_dev1_cam0_latency_p95"]["value_template"], sub.json("cam0/timing")[-1])
        assert float(p95) > 0
        counts = sub.json("cam0/counts")[-1]
        assert int(render(by_id["edge_agent_dev1_cam0_objects"]["value_template"], counts)) == counts["total"]
        for label in LABELS.values():
            n = int(render(by_id["edge_agent_dev1_cam0_count_" + label]["value_template"], counts))
            assert n == counts["classes"].get(label, 0)
        assert int(render(by_id["edge_agent_dev1_spool_queued"]["value_template"], sub.json("dev1/spool")[-1])) == 0
        if "edge_agent_dev1_temperature" in by_id:
            health = sub.json("dev1/health")[-1]
            assert float(render(by_id["edge_agent_dev1_temperature"]["value_template"], health)) == max(
                health["temperatures_c"].values())
        for payload in configs.values():
            if "availability" in payload:
                assert available(payload, status) is True
        # The select: its options, its state, and choosing an option switches the agent (the size command).
        select = by_id["edge_agent_dev1_model_size"]
        assert select["options"] == ["accurate", "fast", "auto"]
        assert render(select["value_template"], status) == "fast"
        command = jinja2.Environment().from_string(select["command_template"]).render(value="accurate")
        assert json.loads(command)["arg"] == "accurate"
        sub.client.publish(select["command_topic"], command, qos=1)
        assert sub.wait_for(lambda: status_of(sub).get("model_size") == "accurate", timeout=15)
        assert render(select["value_template"], status_of(sub)) == "accurate"
        assert sub.wait_for(lambda: [r for r in sub.json("dev1/reply/homeassistant") if r["final"]], timeout=5)
        replies = sub.json("dev1/reply/homeassistant")
        assert [r["status"] for r in replies] == ["accepted", "ok"]
        assert replies[-1]["message"] == "switched to size accurate"
        # The agent dies: the last will turns Online off and every other entity unavailable.
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        assert sub.wait_for(lambda: status_of(sub).get("state") == "offline", timeout=10)
        assert render(online["value_template"], status_of(sub)) == "OFF"
        assert available(select, status_of(sub)) is False
        assert render(select["value_template"], status_of(sub)) == "None"  # Home Assistant: unknown
    finally:
        sub.close()


def test_setting_it_false_clears_the_retained_configs(ha_agent):
    broker, agent = ha_agent
    agent.start()
    assert agent.wait_log("discovery configs published"), agent.log_text()[-3000:]
    time.sleep(1.0)
    agent.stop()
    sub = Subscriber(broker.url, ["homeassistant/#"])
    retained = {t for t, p, r in sub.messages if r and p}
    sub.close()
    assert len(retained) >= 10  # they stay on the broker while the agent is stopped (HA still knows the device)
    with open(agent.config) as f:
        text = f.read()
    with open(agent.config, "w") as f:
        f.write(text.replace("  homeassistant: true\n", "  homeassistant: false\n"))
    agent.start()
    assert agent.wait_log("homeassistant: cleared {} retained discovery config(s) (mqtt.homeassistant is false)".format(
        len(retained)), timeout=60), agent.log_text()[-2000:]
    time.sleep(0.5)
    after = Subscriber(broker.url, ["homeassistant/#"])
    time.sleep(0.5)
    left = [t for t, p, r in after.messages if r and p]
    after.close()
    assert left == []
