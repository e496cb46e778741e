"""Remote control over the broker the agent already talks to; Home Assistant discovery.

protocol.py: a command's topic, payload and reply address (no paho); channel.py: the
command topics on the MQTT sink's connection (parse, queue, reply); dispatch.py: acting
on commands from the service loop; bench_job.py: the ``benchmark`` command's child
process; homeassistant.py: discovery configs; remote.py: what the service attaches;
client.py: ``edge-agent ctl``'s side. Topics and payloads: docs/mqtt.md.
"""
