"""The MQTT transport: the paho client, connect and reconnect, and the publisher thread.

The caller (the pipeline's output thread, the service loop) only puts into a bounded
queue; one publisher thread owns everything else: encoding, paho calls, and the
store and forward of QoS >= 1 records (``store_forward``). Payloads arrive in their
final shape (``schema``); this module adds only the status's ``timestamp`` and
``spool`` fields when it sends. Snapshots follow ``snapshot.SnapshotPolicy``.
The remote control (agent.control) uses the same connection through ``subscribe`` and
``send``, and asks for a snapshot now with ``request_snapshot``.
With several brokers in ``mqtt.url``, a lost or failed connection moves to the next one
after a jittered backoff (``broker.Failover``); the status names the broker in use.
Topics and payloads: docs/mqtt.md.

The module is longer than 400 lines because the publisher thread alone owns the paho
client: every kind of message it sends (records through the spool, plain payloads,
snapshots, the remote control's messages) and the connection callbacks that feed it
share its state, and read best together.
"""

import collections
import logging
import os
import queue
import socket
import ssl
import threading
import time
import uuid

from . import paho_compat, schema
from .base import Sink, dumps
from .broker import Failover, parse_url, read_password, tls_context
from .snapshot import SnapshotPolicy, render
from .store_forward import StoreForward

log = logging.getLogger("edge_agent.mqtt")

_RECORD, _PLAIN, _SNAPSHOT, _RAW = 0, 1, 2, 3
EVENTS_QOS = 1  # events are rare and each one matters: always acknowledged, spooled while offline
_BATCH = 500


class MqttSink(Sink):
    """Publishes to ``{mqtt.prefix}/{device_id}/...``; see the module docstring."""

    def __init__(self, config, reconnect_min_s=1.0, reconnect_max_s=30.0, window=100):
        m = config.mqtt
        self.config = config
        self.device_id = config.device_id
        self.base = "{}/{}".format(m.prefix.rstrip("/"), config.device_id)
        self.tls, _, _, url_user = parse_url(m.urls[0])  # config: one scheme and user for the whole list
        self.failover = Failover(m.urls, reconnect_min_s, reconnect_max_s)
        self.url, self.host, self.port = self.failover.current  # the broker in use (or tried next)
        self.username = m.username or url_user
        self.client_id = m.client_id or self._new_client_id()
        # Read credentials and TLS files now: make_sinks() runs before any camera opens, so a
        # bad file is a ConfigError (exit 78) naming the key instead of a sink that never connects.
        self._password = read_password(m)
        self._ssl = tls_context(m.tls) if (self.tls or m.tls.ca or m.tls.cert) else None
        self._queue = queue.Queue(m.queue_size)
        self.store_forward = StoreForward(os.path.join(config.state_dir, "spool.sqlite"), m.spool_max_records,
                                          window, self.url)
        self.snapshots = SnapshotPolicy(m.snapshot)
        self._lock = threading.Lock()  # publisher state; the caller takes it only on queue overflow
        self._events = collections.deque()  # from paho's thread: ('connected',) / ('disconnected', why)
        self._acks = collections.deque()  # (mid, ok) from on_publish
        self._state = "disconnected (not started)"
        self._client = None
        self._thread = None
        self._closing = None
        self._closed = False
        # Publisher-thread state.
        self._connected = False
        self._status = {}
        self._status_dirty = False
        self._counters_at = 0.0
        self._counters_sent = None
        self.dropped_qos0 = 0
        # Caller-thread state.
        self._labels = {}
        self._topics = {}
        self._subscriptions = []  # (topic filter, qos, callback(msg)), made again on every connect
        self._forced = {}  # camera id -> done(ok, info): its next frame gets a snapshot (request_snapshot)
        self.connections = 0  # connects so far (publisher thread): what a (re)connect must send again

    @property
    def rejected(self):
        """Publishes the broker refused (PUBACK with an error) or that could not be encoded."""
        return self.store_forward.rejected

    # --- the Sink interface ----------------------------------------------------------------

    def start(self, status):
        """Connect asynchronously (never blocks on the broker) and start the publisher thread."""
        m = self.config.mqtt
        self._status = dict(status or {})
        client = paho_compat.make_client(self.client_id, m.protocol)
        self._client = client
        self._set_will()
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self._ssl is not None:
            client.tls_set_context(self._ssl)
            if m.tls.insecure:
                client.tls_insecure_set(True)
        # Bound paho's memory: our own window keeps far fewer than this in flight.
        window = self.store_forward.window
        client.max_inflight_messages_set(min(window, 20))
        client.max_queued_messages_set(window * 4 + 100)
        paho_compat.set_callbacks(client, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                                  on_publish=self._on_publish, on_connect_fail=self._on_connect_fail,
                                  on_message=self._on_message)
        self._state = "connecting"
        log.info("MQTT connecting to %s as %s (topics %s/...)", self.url, self.client_id, self.base)
        paho_compat.connect_async(client, self.host, self.port, m.keepalive_s, m.protocol)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name="mqtt-publisher", daemon=True)
        self._thread.start()

    def emit(self, record, image=None):
        """Queue one frame's record (and maybe a snapshot); never blocks."""
        cam = record["camera_id"]
        topics = self._topics.get(cam)
        if topics is None:
            topics = self._topics[cam] = tuple("{}/{}/{}".format(self.base, cam, t)
                                               for t in ("detections", "timing", "snapshot"))
        if self._wanted(cam, record):
            qos = self.config.mqtt.qos_detections
            self._put((_RECORD, topics[0], qos, record, self.store_forward.next_ordinal() if qos else 0, False))
        done = self._forced.pop(cam, None) if self._forced else None
        if image is not None and (done is not None or self.snapshots.wanted(cam, record)):
            # Copy only on snapshot frames: the source may reuse its buffer.
            if not self._put((_SNAPSHOT, topics[2], 0, (record, image.copy(), done), 0, False)) and done:
                done(False, "the MQTT queue is full")

    def events(self, camera_id, payloads):
        """Queue track events: QoS 1 and spooled like detection records (never dropped while the spool has room)."""
        topic = "{}/{}/events".format(self.base, camera_id)
        for payload in payloads:
            self._put((_RECORD, topic, EVENTS_QOS, payload, self.store_forward.next_ordinal(), False))

    def counts(self, camera_id, payload):
        """Queue a camera's counts, retained: only the latest matters, so they are not spooled."""
        self._put((_PLAIN, "{}/{}/counts".format(self.base, camera_id), 1, payload, 0, True))

    def timing(self, camera_id, payload):
        self._put((_PLAIN, "{}/{}/timing".format(self.base, camera_id), self.config.mqtt.qos_timing, payload, 0, False))

    def health(self, payload):
        self._put((_PLAIN, self.base + "/health", self.config.mqtt.qos_timing, payload, 0, False))

    def status(self, payload):
        with self._lock:
            # Merged, not replaced: a key the new status leaves out keeps its last value.
            self._status.update(payload)
            self._status_dirty = True

    def state(self):
        return self._state

    def channel(self):
        return self

    # --- the remote control's side (agent.control) -----------------------------------------

    def subscribe(self, topic_filter, callback, qos=1):
        """Deliver messages matching ``topic_filter`` to ``callback(msg)`` (paho's network thread,
        guarded); the subscription is made again after every reconnect."""
        self._subscriptions.append((topic_filter, qos, callback))
        if self._client is not None and self._state == "connected":
            self._client.subscribe(topic_filter, qos)

    def send(self, topic, data, qos=1, retain=False, properties=None):
        """Queue ``data`` (bytes) for ``topic`` (with MQTT 5 ``properties``); False if the queue is full.
        Sent only while connected, never spooled."""
        return self._put((_RAW, topic, qos, (data, properties), 0, retain))

    def request_snapshot(self, camera_id, done):
        """Snapshot the next frame of ``camera_id`` whatever ``mqtt.snapshot`` says; ``done(ok, info)``
        runs on the publisher thread once it is published (info: {topic, bytes, seq}) or failed (a reason)."""
        self._forced[camera_id] = done

    def close(self, timeout=5.0):
        """Flush within ``timeout`` (unsent QoS>=1 records stay spooled), publish offline, disconnect."""
        if self._closed:
            return
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._closing = time.monotonic() + timeout * 0.6
            self._thread.join(max(0.1, timeout * 0.7))
            self._thread = None
        self._overflow(None, lock_timeout=1.0)  # what the publisher did not take stays on disk
        if self._client is not None:
            if self._state == "connected":
                offline = dumps(schema.offline(self.device_id, "stopped"))
                info = self._client.publish(self.base + "/status", offline, qos=1, retain=True)
                while time.monotonic() < deadline and not _published(info):
                    time.sleep(0.01)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
            self._state = "disconnected (closed)"
        with self._lock:
            self._closed = True
            self.store_forward.close()

    # --- counters for status and tests -----------------------------------------------------

    def counters(self):
        """Spool and drop counters (also published on ``{prefix}/{device}/spool``)."""
        return schema.spool(self.device_id, self.store_forward.counters(self.dropped_qos0))

    # --- caller side -----------------------------------------------------------------------

    def _wanted(self, cam, record):
        """Whether ``mqtt.publish`` (all, detections, changes, events) sends this record."""
        mode = self.config.mqtt.publish
        if mode == "all":
            return True
        if mode == "events":  # events and counts only: no per-frame records
            return False
        labels = frozenset(d["label"] for d in record["detections"])
        if mode == "detections":
            return bool(labels)
        changed = self._labels.get(cam) != labels
        self._labels[cam] = labels
        return changed

    def _put(self, item):
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if item[4]:
                self._overflow(item)
                return True
            self.dropped_qos0 += 1
            return False
        return True

    def _overflow(self, item, lock_timeout=-1):
        """Queue full (publisher stalled): move the queue and ``item`` to the spool, in order."""
        if not self._lock.acquire(True, lock_timeout):
            return
        try:
            if self._closed:  # emit() after close(): nowhere left to put it
                return
            items = []
            try:
                while True:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if item is not None:
                items.append(item)
            rows = []
            for kind, topic, qos, payload, ordinal, retain in items:
                if kind == _SNAPSHOT and payload[2] is not None:
                    payload[2](False, "the MQTT queue overflowed")
                if ordinal:
                    rows.append((ordinal, topic, qos, dumps(payload).encode("utf-8")))
                else:
                    self.dropped_qos0 += 1
            self.store_forward.store(rows)
        finally:
            self._lock.release()

    # --- paho callbacks (paho's network thread; guarded by paho_compat) ---------------------

    def _on_connect(self, ok, reason):
        if ok:
            self._state = "connected"
            log.info("MQTT connected to %s as %s", self.url, self.client_id)
            self.failover.connected()
            for topic_filter, qos, _ in list(self._subscriptions):
                self._client.subscribe(topic_filter, qos)
            self._events.append(("connected", self.url))
        else:
            self._state = "disconnected (refused by {}: {})".format(self.url, reason)
            log.error("MQTT broker %s refused the connection: %s (check mqtt.username / password); "
                      "retrying with backoff", self.url, reason)

    def _on_disconnect(self, reason):
        was, url = self._state, self.url
        self._events.append(("disconnected", reason))
        if self._closing is not None:
            self._state = "disconnected (closed)"
            return
        retry = self._next_broker()
        if was == "connected":
            self._state = "disconnected ({})".format(reason)
            log.warning("MQTT connection to %s lost: %s; spooling until one is back (%s)", url, reason, retry)
        elif not was.startswith("disconnected (refused"):
            # Closed before CONNACK: e.g. a TLS 1.3 broker rejecting our (missing) client certificate.
            self._state = "disconnected ({}: closed before accepting: {})".format(url, reason)
            log.warning("MQTT broker %s closed the connection before accepting it (%s; client certificate "
                        "or ACL?); %s", url, reason, retry)

    def _on_connect_fail(self):
        why, url = self._probe(), self.url
        self._state = "disconnected ({}: {})".format(url, why)
        log.warning("MQTT broker %s: cannot connect: %s; %s", url, why, self._next_broker())

    def _next_broker(self):
        """After a failure: move to the next broker of mqtt.url, to be tried after a jittered
        backoff (broker.Failover); says which and when, for the log line."""
        delay = self.failover.failed()
        url = self.url
        self.url, self.host, self.port = self.failover.current
        if self.url != url and not self.config.mqtt.client_id:
            # A generated id is new on another broker: RabbitMQ 3.x keeps a clean session's QoS 1
            # subscription (the commands) in a durable queue on the node it was made on, and refuses
            # the same id elsewhere while that node is down (docs/mqtt.md). A configured id stays.
            self.client_id = self._new_client_id()
            paho_compat.set_client_id(self._client, self.client_id)
        self._set_will()
        paho_compat.retry_at(self._client, self.host, self.port, delay)
        return "next try: {} in {:.1f} s".format(self.url, delay)

    def _new_client_id(self):
        return "edge-agent-{}-{}".format(self.device_id, uuid.uuid4().hex[:6])

    def _set_will(self):
        """The last will names the broker it goes to: paho sends it with every CONNECT."""
        will = dict(schema.offline(self.device_id, "connection lost"), broker=self.url)
        self._client.will_set(self.base + "/status", dumps(will), qos=1, retain=True)

    def _on_publish(self, mid, ok):
        self._acks.append((mid, ok))

    def _on_message(self, msg):
        for topic_filter, _, callback in list(self._subscriptions):
            if paho_compat.topic_matches(topic_filter, msg.topic):
                callback(msg)

    def _probe(self):
        """Why a connection fails (paho does not say): connect once more ourselves."""
        try:
            sock = socket.create_connection((self.host, self.port), timeout=3)
        except OSError as e:
            return e.strerror or str(e)
        try:
            if self._ssl is not None:
                self._ssl.wrap_socket(sock, server_hostname=self.host).close()
            return "connection failed"
        except ssl.SSLError as e:
            if getattr(e, "verify_message", None):  # Python 3.7+
                return "TLS: certificate verify failed ({}); check mqtt.tls.ca".format(e.verify_message)
            if getattr(e, "reason", None) == "CERTIFICATE_VERIFY_FAILED":  # Python 3.6 (JetPack 4)
                return "TLS: certificate verify failed; check mqtt.tls.ca"
            return "TLS: {}".format(getattr(e, "reason", None) or e)
        except OSError as e:
            return str(e)
        finally:
            sock.close()

    # --- the publisher thread --------------------------------------------------------------

    def _run(self):
        sf = self.store_forward
        while True:
            batch = []
            try:
                batch.append(self._queue.get(timeout=0.05))
                while len(batch) < _BATCH:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            try:
                if self._closing is None and not paho_compat.loop_alive(self._client):
                    self._state = "disconnected ({}: connection failed, see the error above)".format(self.url)
                    log.error("MQTT network thread for %s died; restarting it", self.url)
                    self._events.append(("disconnected", "network thread died"))
                    paho_compat.restart_loop(self._client)
                with self._lock:
                    self._handle_events()
                    self._publish_housekeeping()  # status first after a (re)connect
                    sf.handle_acks(self._acks)
                    self._handle_batch(batch)
                    if self._connected:
                        sf.drain(self._send)
                    self._publish_housekeeping()
                    if self._closing is not None and self._queue.empty() and (
                            not self._connected and self._state != "connecting"
                            or self._connected and sf.idle
                            or time.monotonic() > self._closing):
                        sf.handle_acks(self._acks)
                        sf.persist_inflight()
                        self._counters_at = 0.0  # the final counters go out now, not in a second
                        self._publish_housekeeping()
                        return
            except Exception:  # a bug must not silently stop publishing: log and keep going
                log.exception("MQTT publisher error")
                time.sleep(0.5)

    def _handle_events(self):
        sf = self.store_forward
        while self._events:
            event = self._events.popleft()
            if event[0] == "connected":
                sf.handle_acks(self._acks)
                self._connected = True
                sf.where = event[1]
                sf.connected()
                self._status["broker"] = event[1]
                self._status_dirty = True
                self._counters_sent = None
                self.connections += 1
            else:
                self._connected = False
                sf.handle_acks(self._acks)
                sf.persist_inflight()

    def _handle_batch(self, batch):
        send = self._send if self._connected else None
        for kind, topic, qos, payload, ordinal, retain in batch:
            props = None
            if kind == _SNAPSHOT:
                self._snapshot(topic, *payload)
                continue
            try:
                if kind == _RAW:
                    data, props = payload
                else:
                    data = dumps(payload).encode("utf-8")
            except (ValueError, TypeError) as e:  # e.g. NaN in a payload: lose this one, not the batch
                log.error("MQTT: cannot encode a message for %s: %s", topic, e)
                self.store_forward.rejected += 1
                continue
            if ordinal:
                self.store_forward.forward(send, ordinal, topic, qos, data)
            elif not self._connected or self._client.publish(topic, data, qos=qos, retain=retain,
                                                             properties=props).rc not in (
                    paho_compat.ERR_SUCCESS, paho_compat.ERR_NO_CONN):
                self.dropped_qos0 += 1
        self.store_forward.flush()

    def _snapshot(self, topic, record, image, done):
        """Render and publish one snapshot; a requested one (``done``) ignores mqtt.snapshot's policy."""
        snap = self.config.mqtt.snapshot
        try:
            data = render(image, record, snap.max_bytes, snap.quality) if done else self.snapshots.render(record, image)
        except ImportError:
            data = None
        sent = data is not None and self._connected and self._client.publish(topic, data, qos=0).rc in (
            paho_compat.ERR_SUCCESS, paho_compat.ERR_NO_CONN)
        if data is not None and not sent:
            self.dropped_qos0 += 1
        if done is not None:
            if sent:
                done(True, {"topic": topic, "bytes": len(data), "seq": record.get("seq")})
            else:
                done(False, "not connected to the broker" if data is not None else
                     "cannot make a JPEG (OpenCV missing, or mqtt.snapshot.max_bytes too small)")

    def _send(self, topic, qos, data):
        """Publish one QoS >= 1 record; its message id, or None if paho's own queue is full."""
        info = self._client.publish(topic, data, qos=qos, retain=False)
        if info.rc not in (paho_compat.ERR_SUCCESS, paho_compat.ERR_NO_CONN):
            return None
        return info.mid

    def _publish_housekeeping(self):
        if not self._connected:
            return
        # The retained spool counters follow the backlog (at most once a second), so they read
        # queued 0 once a drain is done; the status's copy is refreshed when the spool empties
        # or fills.
        now = time.monotonic()
        counters = self.counters()
        fields = {k: counters[k] for k in schema.SPOOL_FIELDS}
        sent = self._counters_sent
        if fields != sent and now - self._counters_at >= 1.0:
            if sent is not None and (fields["queued"] == 0) != (sent["queued"] == 0):
                self._status_dirty = True
            self._counters_sent, self._counters_at = fields, now
            self._client.publish(self.base + "/spool", dumps(counters), qos=1, retain=True)
        if self._status_dirty:
            self._status_dirty = False
            self._status["timestamp"] = round(time.time(), 3)
            self._status["spool"] = fields
            self._client.publish(self.base + "/status", dumps(self._status), qos=1, retain=True)


def _published(info):
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True  # not queued at all (no connection): nothing to wait for
