"""Where processed frames go: JSON lines and MQTT, chosen by the configuration."""

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
