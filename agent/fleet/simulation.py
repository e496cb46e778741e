"""N virtual devices on one thread: ``Simulation`` and ``simulate`` (see the package docstring).

One thread drives every client: paho's external-loop API (``loop_read``, ``loop_write``,
``loop_misc``) under one ``selectors`` selector. A publish writes to its socket at once;
only a full socket buffer waits for the selector. On a 2-core box that costs far less than
a network thread per client (benchmarks/bench_fleet.py measures it).
"""

import gzip
import heapq
import json
import logging
import os
import selectors
import socket
import time
import uuid

from ..errors import AgentError
from ..publish import paho_compat, schema
from ..publish.base import dumps
from ..publish.broker import Failover, parse_url

log = logging.getLogger("edge_agent.fleet")

REPLAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "replay.jsonl.gz")  # see the package docstring
CAMERA = "cam0"


class SimulationError(AgentError):
    """A bad simulation argument or brokers the devices cannot reach; the message names the culprit."""


def load_replay(path=REPLAY):
    """The recorded detection records (a list of dicts) of a JSON-lines file, gzipped or not."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        raise SimulationError("--replay: cannot read {}: {}".format(path, e))
    if not records:
        raise SimulationError("--replay: no records in {}".format(path))
    return records


def parse_brokers(urls):
    """[(host, port)] of the ``--broker`` URLs; raises SimulationError naming the bad one."""
    if not urls:
        raise SimulationError("--broker: give at least one broker URL")
    out = []
    for i, url in enumerate(urls):
        try:
            tls, host, port, _ = parse_url(url)
        except AgentError as e:
            raise SimulationError("--broker (URL {} of {}): {}".format(i + 1, len(urls),
                                                                      str(e).replace("mqtt.url: ", "")))
        if tls:
            raise SimulationError("--broker (URL {} of {}): the simulator speaks plain mqtt:// only, got {!r}"
                                  .format(i + 1, len(urls), url))
        out.append((host, port))
    return out


class _Device(object):
    """One virtual device: its client, ids, seq and the next frame due."""

    def __init__(self, index, device_id, prefix, broker, offset):
        self.index = index
        self.device_id = device_id
        self.boot_id = uuid.uuid4().hex
        self.base = "{}/{}".format(prefix.rstrip("/"), device_id)
        self.topic = "{}/{}/detections".format(self.base, CAMERA)
        self.broker = broker
        self.offset = offset
        self.seq = 0
        self.connected = False
        self.sock = None
        self.events = 0  # what the selector watches on sock
        self.retry_at = 0.0
        self.failover = Failover(["mqtt://{}:{}".format(*broker)])  # the agent's backoff with jitter
        self.client = None

    def status(self, reason=None, **online):
        """This device's status payload: offline with ``reason``, else online with ``online``'s keys."""
        out = schema.offline(self.device_id, reason or "")
        out["boot_id"] = self.boot_id
        out["broker"] = self.failover.current[0]
        if reason is None:
            del out["reason"]
            out.update(online, state="online")
        return dumps(out)


class Simulation(object):
    """N virtual devices on one selector thread; ``run(duration_s)`` returns a summary dict."""

    def __init__(self, devices, fps, brokers, prefix="edge-agent", device_prefix="sim", replay=None,
                 qos=1, keepalive=30, drop_at_end=False, connect_timeout=30.0):
        if devices < 1:
            raise SimulationError("--devices: expected an integer >= 1, got {}".format(devices))
        if not fps > 0:
            raise SimulationError("--fps: expected a number > 0, got {}".format(fps))
        self.brokers = parse_brokers(brokers)
        self.fps = float(fps)
        self.qos = qos
        self.keepalive = keepalive
        self.drop_at_end = drop_at_end
        self.connect_timeout = connect_timeout
        self.records = replay if replay is not None else load_replay()
        self.devices = [_Device(i, "{}-{:04d}".format(device_prefix, i + 1), prefix,
                                self.brokers[i % len(self.brokers)], (i * 7) % len(self.records))
                        for i in range(devices)]
        self.selector = selectors.DefaultSelector()
        self.acked = 0
        self.published = 0
        self.max_lag_s = 0.0
        self.reconnects = 0

    # --- connections ------------------------------------------------------------------------

    def _client(self, dev):
        client = paho_compat.make_client("sim-{}-{}".format(dev.device_id, dev.boot_id[:6]))
        client.will_set(dev.base + "/status", dev.status("connection lost"), qos=1, retain=True)
        client.max_inflight_messages_set(100)

        def on_connect(ok, reason):
            if not ok:
                log.warning("%s: broker refused the connection: %s", dev.device_id, reason)
                return
            dev.connected = True
            dev.failover.connected()
            online = dev.status(started_at=round(time.time(), 3), backend="simulated", engine_id=None,
                                model_size=self.records[0].get("model_size", "fast"), cameras=[CAMERA],
                                camera_states={CAMERA: "running"}, fps=self.fps, mqtt="connected")
            client.publish(dev.base + "/status", online, qos=1, retain=True)

        def on_disconnect(reason):
            if dev.connected:
                log.warning("%s: disconnected: %s", dev.device_id, reason)
            dev.connected = False

        def on_publish(mid, ok):
            self.acked += 1

        paho_compat.set_callbacks(client, on_connect=on_connect, on_disconnect=on_disconnect, on_publish=on_publish)
        return client

    def _connect(self, dev, now):
        host, port = dev.broker
        try:
            if dev.client is None:
                dev.client = self._client(dev)
                dev.client.connect(host, port, self.keepalive)
            else:
                self.reconnects += 1
                dev.client.reconnect()
        except (OSError, ValueError) as e:
            # Retried as the agent retries: backoff with full jitter (a fleet must not reconnect in step).
            dev.retry_at = now + dev.failover.failed()
            log.debug("%s: cannot connect to %s:%s: %s", dev.device_id, host, port, e)
        self._watch(dev)

    def _watch(self, dev):
        """Keep the selector in step with the client's socket (a new one after a reconnect)."""
        sock = dev.client.socket() if dev.client is not None else None
        if sock is not dev.sock:
            if dev.sock is not None:
                try:
                    self.selector.unregister(dev.sock)
                except (KeyError, ValueError, OSError):
                    pass
            dev.sock = sock
            if sock is not None:
                dev.events = selectors.EVENT_READ
                self.selector.register(sock, dev.events, dev)
        if sock is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if dev.client.want_write() else 0)
            if events != dev.events:
                dev.events = events
                self.selector.modify(sock, events, dev)

    def _poll(self, timeout):
        for key, events in self.selector.select(timeout):
            dev = key.data
            if events & selectors.EVENT_READ:
                dev.client.loop_read(100)
            if events & selectors.EVENT_WRITE and dev.client.socket() is not None:
                dev.client.loop_write()
            self._watch(dev)

    def _misc(self, now):
        for dev in self.devices:
            if dev.client is not None and dev.client.socket() is not None:
                dev.client.loop_misc()
            elif now >= dev.retry_at:
                self._connect(dev, now)
            self._watch(dev)

    def connect(self):
        """Connect every device and wait for their CONNACKs; raises SimulationError after ``connect_timeout``."""
        timeout = self.connect_timeout
        now = time.monotonic()
        for dev in self.devices:
            self._connect(dev, now)
            self._poll(0)
        deadline = now + timeout
        while not all(d.connected for d in self.devices):
            now = time.monotonic()
            if now > deadline:
                down = [d for d in self.devices if not d.connected]
                raise SimulationError("--broker: {} of {} devices not connected after {:.0f} s (first: {} on {}:{})"
                                      .format(len(down), len(self.devices), timeout, down[0].device_id,
                                              *down[0].broker))
            self._poll(0.05)
            self._misc(now)

    # --- publishing -------------------------------------------------------------------------

    def _record(self, dev, due):
        dev.seq += 1
        rec = dict(self.records[(dev.offset + dev.seq - 1) % len(self.records)])
        rec.update(device_id=dev.device_id, camera_id=CAMERA, boot_id=dev.boot_id, seq=dev.seq,
                   frame_index=dev.seq - 1, timestamp=round(due, 6))
        return dumps(rec)

    def run(self, duration_s, flush_s=10.0):
        """Publish for ``duration_s``; returns the summary (counts, rate, the CPU time of publishing)."""
        period = 1.0 / self.fps
        start_wall = time.time() + 0.1
        start = time.monotonic() + 0.1
        n = len(self.devices)
        # Devices spread evenly over one frame period, like unsynchronized cameras.
        heap = [(start + period * i / n, i) for i in range(n)]
        heapq.heapify(heap)
        frames = max(1, int(round(duration_s * self.fps)))  # per device
        next_misc = start
        cpu0 = time.process_time()
        while heap:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                due, i = heapq.heappop(heap)
                dev = self.devices[i]
                self.max_lag_s = max(self.max_lag_s, now - due)
                dev.client.publish(dev.topic, self._record(dev, start_wall + (due - start)), qos=self.qos)
                self.published += 1
                self._watch(dev)
                if dev.seq < frames:
                    heapq.heappush(heap, (due + period, i))
            if now >= next_misc:
                self._misc(now)
                next_misc = now + 0.5
            self._poll(max(0.0, min(heap[0][0] if heap else now, next_misc) - time.monotonic()))
        wall = max(time.monotonic() - start, duration_s)
        cpu = time.process_time() - cpu0
        deadline = time.monotonic() + flush_s
        while self.qos and self.acked < self.published + n and time.monotonic() < deadline:
            self._poll(0.05)
            self._misc(time.monotonic())
        rate = self.published / wall if wall > 0 else 0.0
        return {"devices": n, "fps": self.fps, "brokers": ["{}:{}".format(*b) for b in self.brokers],
                "duration_s": round(wall, 3), "published": self.published,
                "acked": max(0, self.acked - n),  # minus each device's online status
                "rate": round(rate, 1), "cpu_s": round(cpu, 3),
                "cpu_us_per_record": round(cpu / max(1, self.published) * 1e6, 1),
                # The share of one core publishing 1,000 records/s costs: CPU s per s, per 1,000 rec/s.
                "core_per_1000_rps": round((cpu / wall) / (rate / 1000.0), 4) if rate else None,
                "max_lag_s": round(self.max_lag_s, 3), "reconnects": self.reconnects,
                "last_seq": {d.device_id: d.seq for d in self.devices}}

    def close(self, timeout=10.0):
        """Publish each device's offline status and disconnect (or, with ``drop_at_end``, drop the
        connections so that the broker publishes the last wills)."""
        deadline = time.monotonic() + timeout
        for dev in self.devices:
            if dev.client is None or not dev.connected:
                continue
            if self.drop_at_end:
                dev.sock.shutdown(socket.SHUT_RDWR)  # no DISCONNECT: the broker sends the will
            else:
                dev.client.publish(dev.base + "/status", dev.status("stopped"), qos=1,
                                   retain=True)
                self._watch(dev)
        target = self.published + 2 * len(self.devices)
        while not self.drop_at_end and self.acked < target and time.monotonic() < deadline:
            self._poll(0.05)
        for dev in self.devices:
            if dev.client is not None:
                if not self.drop_at_end and dev.connected:
                    dev.connected = False  # a stop, not a lost connection
                    dev.client.disconnect()
                    dev.client.loop_write()
                if dev.sock is not None:
                    self.selector.unregister(dev.sock)
                    dev.sock.close()
        self.selector.close()


def simulate(devices, fps, brokers, duration_s, **kwargs):
    """Connect, publish for ``duration_s``, stop; the summary of ``Simulation.run``."""
    sim = Simulation(devices, fps, brokers, **kwargs)
    try:
        sim.connect()
        return sim.run(duration_s)
    finally:
        sim.close()
