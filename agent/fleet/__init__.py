"""A fleet load simulation: N virtual devices publishing replayed detection records, and a consumer.

``simulate`` (``simulation.py``) runs N virtual devices, each with its own paho client,
device id, boot id, retained status with a last will, and its own ``seq``: the agent's
topics and payloads (``agent.publish.schema``, docs/mqtt.md). Each device publishes, at
``fps``, detection records replayed from a recorded run of the agent, re-stamped with its
ids, seq and time: no inference, only the publishing. A record's ``timestamp`` is the
moment it was due (its "capture"), so a simulator that falls behind shows in the
end-to-end delay. Devices are spread round-robin over the broker URLs.

``Consumer`` (``consumer.py``) checks every seq and measures the delay. docs/fleet.md has
the measured figures; benchmarks/bench_fleet.py steps the load.

``replay.jsonl.gz``: 150 records (5 s) of the agent on the demo video, recorded with
``edge-agent run --max-frames 200 --as-fast-as-possible --output rec.jsonl --device-id recorder``
(its first 150 lines, gzipped).
"""

from .consumer import Consumer
from .simulation import Simulation, SimulationError, load_replay, parse_brokers, simulate

__all__ = ["Consumer", "Simulation", "SimulationError", "load_replay", "parse_brokers", "simulate"]
