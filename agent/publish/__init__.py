"""Where processed frames go: JSON lines and MQTT, chosen by the configuration.

schema.py builds every payload (one SCHEMA_VERSION); base.py holds the Sink interface
and the JSON-lines sink; mqtt.py is the MQTT transport, with broker.py (URL, password,
TLS), store_forward.py (ordinals, in-flight window, drain) over spool.py (SQLite),
snapshot.py (when to send a snapshot, and its JPEG) and paho_compat.py (paho 1.6 / 2.x).
"""

from .base import JsonLinesSink, Sink, dumps  # noqa: F401


def make_sinks(config):
    """The sinks ``config`` asks for: JSON lines if ``output.jsonl``, MQTT if ``mqtt.enabled``.

    Raises ConfigError (bad mqtt.url, unreadable password file) or AgentError (spool).
    """
    sinks = []
    if config.output.jsonl:
        sinks.append(JsonLinesSink(config.output.jsonl))
    if config.mqtt.enabled:
        from .mqtt import MqttSink  # lazy: paho is only needed when MQTT is on

        sinks.append(MqttSink(config))
    return sinks
