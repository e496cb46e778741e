"""``Consumer``: one subscriber to every device's detection records that checks each seq and the delay.

It subscribes (QoS 1) to ``{prefix}/+/+/detections`` and counts, per ``(boot_id, camera_id)``,
the seqs received, the duplicates and the end-to-end delay (receive time minus the record's
``timestamp``: one clock, so one host). benchmarks/bench_fleet.py and tests/test_simulate.py use it.
"""

import json
import threading
import time
import uuid

from ..publish import paho_compat
from ..publish.broker import parse_url
from .simulation import SimulationError


class Consumer(object):
    """Subscribes (QoS 1) to ``{prefix}/+/+/detections``; counts seqs, duplicates and delays.

    ``stats()`` per (boot_id, camera_id): how many, which seqs are missing below the highest
    seen, duplicates; and the delay percentiles.
    """

    def __init__(self, url, prefix="edge-agent", client_id=None):
        _, self.host, self.port, _ = parse_url(url)
        self.topic = "{}/+/+/detections".format(prefix.rstrip("/"))
        self.lock = threading.Lock()
        self.seen = {}  # (boot_id, camera_id) -> set of seqs
        self.devices = {}  # (boot_id, camera_id) -> device_id
        self.duplicates = 0
        self.received = 0
        self.delays = []
        self.subscribed = threading.Event()
        self.client = paho_compat.make_client(client_id or "fleet-consumer-" + uuid.uuid4().hex[:6])
        self.client.max_inflight_messages_set(1000)
        paho_compat.set_callbacks(self.client, on_connect=self._on_connect, on_message=self._on_message,
                                  on_subscribe=lambda mid, ok: self.subscribed.set())

    def _on_connect(self, ok, reason):
        if ok:
            self.client.subscribe(self.topic, 1)

    def _on_message(self, msg):
        now = time.time()
        rec = json.loads(msg.payload)
        key = (rec["boot_id"], rec["camera_id"])
        with self.lock:
            self.received += 1
            seqs = self.seen.get(key)
            if seqs is None:
                seqs = self.seen[key] = set()
                self.devices[key] = rec["device_id"]
            if rec["seq"] in seqs:
                self.duplicates += 1
            else:
                seqs.add(rec["seq"])
                self.delays.append(now - rec["timestamp"])

    def start(self, timeout=10.0):
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise SimulationError("consumer: not subscribed to {}:{} after {} s".format(self.host, self.port, timeout))
        return self

    def unique(self):
        with self.lock:
            return sum(len(s) for s in self.seen.values())

    def wait_for(self, count, timeout):
        """Wait until ``count`` distinct records arrived, or ``timeout``; True if they did."""
        deadline = time.monotonic() + timeout
        while self.unique() < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.unique() >= count

    def stats(self, last_seq=None):
        """Counts and delay percentiles; ``last_seq`` ({device_id: seq}) also counts the tail never received."""
        with self.lock:
            gaps = sum(max(s) - len(s) for s in self.seen.values())
            unique = sum(len(s) for s in self.seen.values())
            delays = sorted(self.delays)
            highest = {self.devices[k]: max(s) for k, s in self.seen.items()}
        missing = None
        if last_seq is not None:
            missing = gaps + sum(seq - highest.get(dev, 0) for dev, seq in last_seq.items())

        def pct(q):
            return round(delays[min(len(delays) - 1, int(q * len(delays)))], 4) if delays else None

        return {"received": self.received, "unique": unique, "duplicates": self.duplicates, "gaps": gaps,
                "missing": missing, "streams": len(highest), "delay_p50_s": pct(0.50), "delay_p95_s": pct(0.95),
                "delay_max_s": round(delays[-1], 4) if delays else None}

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
