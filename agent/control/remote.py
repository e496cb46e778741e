"""The remote control of a running agent, as the service sees it: ``Remote.attach``, ``tick``, ``close``.

It joins the MQTT sink's connection (``Sink.channel()``): commands when ``mqtt.commands``
is true (CommandChannel + Controller), Home Assistant discovery always, to publish its
configs when ``mqtt.homeassistant`` is true and to clear them when it is false. MQTT
settings, these two included, take effect at a restart (a reload keeps the connection).
"""

import logging

from ..health import temperatures
from .channel import CommandChannel
from .dispatch import Controller
from .homeassistant import Discovery

log = logging.getLogger("edge_agent.control")


class Remote(object):
    """Commands and discovery for ``agent`` (the service's Agent) over ``sink`` (an MQTT sink's channel)."""

    def __init__(self, agent, sink):
        config = agent.config
        self.agent = agent
        self.controller = None
        if config.mqtt.commands:
            base = "{}/{}".format(config.mqtt.prefix.rstrip("/"), config.device_id)
            channel = CommandChannel(sink, base, config.device_id)
            self.controller = Controller(agent, channel, snapshots=sink)
            channel.start()
            log.info("remote control on: commands on %s/cmd/<command>, replies on %s/reply/<id>", base, base)
        self.discovery = Discovery(sink, config)
        self.discovery.start()
        self._has_temperature = bool(temperatures())

    @classmethod
    def attach(cls, agent, sinks):
        """A Remote over the first sink with a channel (the MQTT one), or None without one."""
        for sink in sinks:
            channel = sink.channel()
            if channel is not None:
                return cls(agent, channel)
        return None

    def tick(self):
        """Act on commands, keep the discovery configs right; from the service loop, never blocks."""
        if self.controller is not None:
            self.controller.tick()
        self.discovery.update(self.agent.requested, self.agent.pipeline.labels, self._has_temperature)

    def close(self):
        if self.controller is not None:
            self.controller.close()
