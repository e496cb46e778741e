"""Home Assistant MQTT discovery: one HA device per agent, its entities as retained configs.

Format: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (topic
``<discovery_prefix>/<component>/<node_id>/<object_id>/config``, a JSON payload, an empty
retained payload deletes) and the entity pages sensor.mqtt, binary_sensor.mqtt,
select.mqtt. Every entity reads the agent's own topics (no extra state topic):

- binary_sensor ``online``: ON/OFF from the retained status (``online``; ``offline`` after a
  clean stop, or the last will when the agent dies). It has no availability of its own,
  so it reads Off, not unavailable, when the agent is gone;
- every other entity is available while the retained status says ``online``;
- select ``model_size``: the configured sizes (and ``auto`` when auto_size has a target),
  wired to the ``size`` command; its state is the status' ``size_setting``;
- sensors per camera: FPS and p95 end-to-end latency (timing), objects in view and one per
  class (counts, with tracking on); per agent: the hottest thermal zone (health; only on a
  machine that has one) and the spool queue.

``messages`` builds the configs (pure); ``Discovery`` publishes them retained after every
connect and whenever they change, and clears any retained config of this node that is not
(or no longer) wanted: all of them when ``mqtt.homeassistant`` is false.
"""

import hashlib
import json
import logging
import re

from .. import __version__

log = logging.getLogger("edge_agent.control")

MAX_CLASS_SENSORS = 32  # per camera; detection.classes narrows the model's labels
SUPPORT_URL = "https://github.com/edge-agent/edge-agent"
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def safe_id(text):
    """``text`` within HA's ``[a-zA-Z0-9_-]``; a changed one gets a hash suffix (no two names collide)."""
    out = _UNSAFE.sub("_", text)
    if out != text:
        out += "_" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
    return out


def node_id(device_id):
    return "edge_agent_" + safe_id(device_id)


def _class_labels(config, labels):
    """The (class id, label) pairs that get a count sensor on each camera."""
    ids = sorted(labels)
    if config.detection.classes:
        ids = [i for i in ids if i in set(config.detection.classes)]
    if len(ids) > MAX_CLASS_SENSORS:
        log.warning("homeassistant: %d classes, count sensors for the first %d only (set detection.classes to "
                    "choose)", len(ids), MAX_CLASS_SENSORS)
        ids = ids[:MAX_CLASS_SENSORS]
    seen, out = set(), []
    for i in ids:
        if labels[i] not in seen:  # counts are per label
            seen.add(labels[i])
            out.append(labels[i])
    return out


def messages(config, labels, has_temperature):
    """{config topic: payload dict} of every entity of this agent (see the module docstring).

    ``labels``: {class id: name} of the running model; ``has_temperature``: this machine has
    a thermal zone (``health.temperatures``).
    """
    m = config.mqtt
    base = "{}/{}".format(m.prefix.rstrip("/"), config.device_id)
    node = node_id(config.device_id)
    status = base + "/status"
    device = {"identifiers": [node], "name": "edge-agent {}".format(config.device_id), "manufacturer": "edge-agent",
              "model": "edge inference agent", "sw_version": __version__}
    origin = {"name": "edge-agent", "sw_version": __version__, "support_url": SUPPORT_URL}
    availability = [{"topic": status, "value_template": "{{ value_json.state }}",
                     "payload_available": "online", "payload_not_available": "offline"}]
    out = {}

    def add(component, object_id, name, payload, available=True):
        object_id = safe_id(object_id)
        payload.update({"name": name, "unique_id": "{}_{}".format(node, object_id), "device": device,
                        "origin": origin})
        if available:
            payload["availability"] = availability
        out["{}/{}/{}/{}/config".format(m.homeassistant_prefix, component, node, object_id)] = payload

    add("binary_sensor", "online", "Online", {
        "state_topic": status, "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
        "payload_on": "ON", "payload_off": "OFF", "device_class": "connectivity",
        "entity_category": "diagnostic"}, available=False)
    options = sorted(config.sizes)
    if config.auto_size.latency_budget_ms or config.auto_size.target_fps:
        options.append("auto")
    add("select", "model_size", "Model size", {
        "command_topic": base + "/cmd/size", "options": options,
        # The size command's payload; replies go to {prefix}/{device}/reply/homeassistant.
        "command_template": '{"id": "homeassistant", "client_id": "homeassistant", "arg": {{ value | tojson }}}',
        "state_topic": status,
        "value_template": "{{ value_json.size_setting if value_json.size_setting is defined else None }}",
        "icon": "mdi:tune"})
    for cam in config.cameras:
        prefix = "{}/{}".format(base, cam.id)
        add("sensor", cam.id + "_fps", "{} FPS".format(cam.id), {
            "state_topic": prefix + "/timing", "value_template": "{{ value_json.fps }}",
            "unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer"})
        add("sensor", cam.id + "_latency_p95", "{} latency p95".format(cam.id), {
            "state_topic": prefix + "/timing",
            "value_template": "{{ value_json.stages.total.p95 if value_json.stages.total is defined else None }}",
            "unit_of_measurement": "ms", "device_class": "duration", "state_class": "measurement",
            "suggested_display_precision": 1})
        if not config.tracking.enabled:
            continue  # counts come from the tracker
        add("sensor", cam.id + "_objects", "{} objects".format(cam.id), {
            "state_topic": prefix + "/counts", "value_template": "{{ value_json.total }}",
            "json_attributes_topic": prefix + "/counts", "json_attributes_template": "{{ value_json.classes | tojson }}",
            "state_class": "measurement", "icon": "mdi:counter"})
        for label in _class_labels(config, labels):
            add("sensor", "{}_count_{}".format(cam.id, label), "{} {}".format(cam.id, label), {
                "state_topic": prefix + "/counts",
                "value_template": "{{{{ value_json.classes[{}] | default(0) }}}}".format(json.dumps(label)),
                "state_class": "measurement", "icon": "mdi:counter"})
    if has_temperature:
        add("sensor", "temperature", "Temperature", {
            "state_topic": base + "/health",
            "value_template": "{% set t = value_json.temperatures_c | default({}) %}"
                              "{{ t.values() | max if t else None }}",
            "unit_of_measurement": "\u00b0C", "device_class": "temperature", "state_class": "measurement",
            "entity_category": "diagnostic"})
    add("sensor", "spool_queued", "Spool queue", {
        "state_topic": base + "/spool", "value_template": "{{ value_json.queued }}",
        "unit_of_measurement": "records", "state_class": "measurement", "entity_category": "diagnostic",
        "icon": "mdi:tray-full"})
    return out


class Discovery(object):
    """Keeps this agent's retained discovery configs right on the broker (see the module docstring)."""

    def __init__(self, sink, config):
        self.sink = sink
        self.enabled = config.mqtt.homeassistant
        self._filter = "{}/+/{}/+/config".format(config.mqtt.homeassistant_prefix, node_id(config.device_id))
        self._seen = set()  # retained config topics of this node found on the broker (network thread adds)
        self._wanted = None  # {topic: bytes} last published; None until the first update
        self._key = None
        self.cleared = 0

    def start(self):
        # QoS 0: only the retained configs matter, and a QoS 1 subscription of a clean session is a
        # durable queue on RabbitMQ 3.x, which pins the agent to that node (docs/mqtt.md, failover).
        self.sink.subscribe(self._filter, self._on_message, qos=0)

    def _on_message(self, msg):
        if msg.retain and msg.payload:  # what the broker kept; our own live echoes are not retained
            self._seen.add(msg.topic)

    def update(self, config, labels, has_temperature):
        """Publish the configs after a (re)connect or a change; clear stale ones. Never blocks."""
        connections = getattr(self.sink, "connections", 0)
        if not connections:
            return
        if self.enabled:
            key = (connections, tuple(sorted(config.sizes)), tuple(c.id for c in config.cameras),
                   tuple(sorted(labels.items())), config.tracking.enabled, tuple(config.detection.classes),
                   bool(config.auto_size.latency_budget_ms or config.auto_size.target_fps), has_temperature)
            if key != self._key:
                wanted = {t: json.dumps(p, sort_keys=True).encode("utf-8")
                          for t, p in messages(config, labels, has_temperature).items()}
                for topic, data in sorted(wanted.items()):
                    self.sink.send(topic, data, qos=1, retain=True)
                if self._key is None or self._key[1:] != key[1:]:
                    log.info("homeassistant: %d discovery configs published under %s", len(wanted),
                             self._filter.replace("/+/config", "/..."))
                self._wanted, self._key = wanted, key
        else:
            self._wanted = {}
        stale = sorted(t for t in list(self._seen) if t not in self._wanted)
        for topic in stale:
            self._seen.discard(topic)
            self.sink.send(topic, b"", qos=1, retain=True)  # an empty retained config deletes the entity
        if stale:
            self.cleared += len(stale)
            log.info("homeassistant: cleared %d retained discovery config(s)%s", len(stale),
                     "" if self.enabled else " (mqtt.homeassistant is false)")
