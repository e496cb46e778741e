"""The MQTT sink: detections, timing, health, status and snapshots, with store and forward.

The caller (the pipeline's output thread) only puts into a bounded queue; one
publisher thread owns everything else: encoding, paho calls, the spool. QoS >= 1
records that cannot be acknowledged promptly (broker away, window full, a
disconnect mid-flight) go to the SQLite spool keyed by an emission ordinal, and
leave it only on PUBACK, so a subscriber sees every ``seq`` of a camera in order
(duplicates possible after a reconnect, gaps never, except those counted as
dropped when the spool is full). Topics and payloads: docs/mqtt.md.
"""

import collections
import itertools
import logging
import os
import queue
import socket
import ssl
import threading
import time
import uuid

from .. import __version__
from ..errors import ConfigError
from ..record import BOOT_ID
from . import paho_compat
from .base import Sink, dumps
from .spool import Spool

log = logging.getLogger("edge_agent.mqtt")

SCHEMA_VERSION = 1
_RECORD, _PLAIN, _SNAPSHOT = 0, 1, 2
_BATCH = 500


def parse_url(url):
    """(tls, host, port, username) from mqtt[s]://[user@]host[:port]; raises ConfigError."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ConfigError("mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {!r}".format(url))
    rest = rest.rstrip("/")
    user = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        user = user.split(":", 1)[0]  # a password in the URL is ignored: it would end up in logs
    host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    tls = scheme == "mqtts"
    try:
        port = int(port) if port else (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("mqtt.url: bad port in {!r}".format(url))
    if not host:
        raise ConfigError("mqtt.url: no host in {!r}".format(url))
    return tls, host, port, user


def read_password(mqtt_config, environ=None):
    """The broker password from ``mqtt.password_file`` or $EDGE_AGENT_MQTT_PASSWORD (never logged)."""
    if mqtt_config.password_file:
        try:
            with open(mqtt_config.password_file) as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise ConfigError("mqtt.password_file: cannot read {}: {}".format(mqtt_config.password_file, e.strerror))
    return (os.environ if environ is None else environ).get("EDGE_AGENT_MQTT_PASSWORD")


def tls_context(tls_config):
    """An SSLContext verifying the broker against ``tls.ca`` (else the system CAs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if tls_config.ca:
            ctx.load_verify_locations(cafile=tls_config.ca)
        else:
            ctx.load_default_certs()
        if tls_config.cert:
            ctx.load_cert_chain(tls_config.cert, tls_config.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("mqtt.tls: cannot load CA/cert/key ({}, {}, {}): {}".format(
            tls_config.ca, tls_config.cert, tls_config.key, e))
    ctx.check_hostname = not tls_config.insecure  # the CA check always stays on
    return ctx


class _Msg(object):
    __slots__ = ("topic", "qos", "payload", "spooled", "conn")

    def __init__(self, topic, qos, payload, spooled, conn):
        self.topic, self.qos, self.payload, self.spooled, self.conn = topic, qos, payload, spooled, conn


class MqttSink(Sink):
    """Publishes to ``{mqtt.prefix}/{device_id}/...``; see the module docstring."""

    def __init__(self, config, reconnect_min_s=1.0, reconnect_max_s=30.0, window=100):
        m = config.mqtt
        self.config = config
        self.device_id = config.device_id
        self.base = "{}/{}".format(m.prefix.rstrip("/"), config.device_id)
        self.tls, self.host, self.port, url_user = parse_url(m.url)
        self.url = "{}://{}:{}".format("mqtts" if self.tls else "mqtt", self.host, self.port)
        self.username = m.username or url_user
        self.client_id = m.client_id or "edge-agent-{}-{}".format(config.device_id, uuid.uuid4().hex[:6])
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        # Read credentials and TLS files now: make_sinks() runs before any camera opens, so a
        # bad file is a ConfigError (exit 78) naming the key instead of a sink that never connects.
        self._password = read_password(m)
        self._ssl = tls_context(m.tls) if (self.tls or m.tls.ca or m.tls.cert) else None
        self._queue = queue.Queue(m.queue_size)
        self._spool = Spool(os.path.join(config.state_dir, "spool.sqlite"), m.spool_max_records)
        # Ordinals continue above what a previous run left in the spool, so its rows go first.
        self._ord = itertools.count(self._spool.max_id() + 1)
        self._window = max(1, min(window, m.spool_max_records // 2))
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
        self._conn = 0
        self._cursor = 0
        self._live = 0
        self._mids = {}
        self._inflight = collections.OrderedDict()
        self._status = {}
        self._status_dirty = False
        self._rejected_logged_at = -60.0
        self._counters_at = 0.0
        self._counters_sent = None
        self.dropped_qos0 = 0
        self.rejected = 0
        # Caller-thread state.
        self._labels = {}
        self._snap_last = {}
        self._snap_labels = {}
        self._topics = {}
        self._snapshots_off = False

    # --- the Sink interface ----------------------------------------------------------------

    def start(self, status):
        """Connect asynchronously (never blocks on the broker) and start the publisher thread."""
        m = self.config.mqtt
        self._status = self._status_payload(status or {})
        client = paho_compat.make_client(self.client_id, m.protocol)
        client.will_set(self.base + "/status", dumps(self._offline("connection lost")), qos=1, retain=True)
        if self.username is not None:
            client.username_pw_set(self.username, self._password)
        if self._ssl is not None:
            client.tls_set_context(self._ssl)
            if m.tls.insecure:
                client.tls_insecure_set(True)
        # Bound paho's memory: our own window keeps far fewer than this in flight.
        client.max_inflight_messages_set(min(self._window, 20))
        client.max_queued_messages_set(self._window * 4 + 100)
        client.reconnect_delay_set(self._reconnect[0], self._reconnect[1])
        paho_compat.set_callbacks(client, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                                  on_publish=self._on_publish, on_connect_fail=self._on_connect_fail)
        self._client = client
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
        mode = self.config.mqtt.publish
        send = True
        if mode != "all":
            labels = frozenset(d["label"] for d in record["detections"])
            if mode == "detections":
                send = bool(labels)
            else:
                send = self._labels.get(cam) != labels
                self._labels[cam] = labels
        if send:
            qos = self.config.mqtt.qos_detections
            self._put((_RECORD, topics[0], qos, record, next(self._ord) if qos else 0, False))
        if image is not None and self.config.mqtt.snapshot.enabled and not self._snapshots_off:
            self._maybe_snapshot(cam, topics[2], record, image)

    def timing(self, camera_id, summary):
        payload = {"schema_version": SCHEMA_VERSION, "device_id": self.device_id, "boot_id": BOOT_ID,
                   "camera_id": camera_id, "timestamp": round(time.time(), 3),
                   "interval_s": self.config.mqtt.timing_interval_s,
                   "fps": summary.get("fps", 0.0), "frames": summary.get("frames", 0),
                   "dropped": summary.get("dropped", 0), "queue_depth": summary.get("queue_depth", 0),
                   "state": summary.get("state", "running"), "stages": summary.get("stages", {})}
        topic = "{}/{}/timing".format(self.base, camera_id)
        self._put((_PLAIN, topic, self.config.mqtt.qos_timing, payload, 0, False))

    def health(self, payload):
        payload = dict(payload)
        payload.setdefault("schema_version", SCHEMA_VERSION)
        payload.setdefault("device_id", self.device_id)
        payload.setdefault("timestamp", round(time.time(), 3))
        self._put((_PLAIN, self.base + "/health", self.config.mqtt.qos_timing, payload, 0, False))

    def status(self, payload):
        with self._lock:
            self._status.update(self._status_payload(payload, base=self._status))
            self._status_dirty = True

    def state(self):
        return self._state

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
                info = self._client.publish(self.base + "/status", dumps(self._offline("stopped")), qos=1, retain=True)
                while time.monotonic() < deadline and not _published(info):
                    time.sleep(0.01)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
            self._state = "disconnected (closed)"
        with self._lock:
            self._closed = True
            self._spool.close()

    # --- counters for status and tests -----------------------------------------------------

    def counters(self):
        """Spool and drop counters (also published on ``{prefix}/{device}/spool``)."""
        return {"schema_version": SCHEMA_VERSION, "device_id": self.device_id, "boot_id": BOOT_ID,
                "timestamp": round(time.time(), 3), "queued": self._spool.count,
                "max_records": self._spool.max_records, "dropped_total": self._spool.dropped_total,
                "dropped_boot": self._spool.dropped_boot, "dropped_qos0": self.dropped_qos0,
                "rejected": self.rejected}

    # --- caller side -----------------------------------------------------------------------

    def _put(self, item):
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if item[4]:
                self._overflow(item)
            else:
                self.dropped_qos0 += 1

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
                if ordinal:
                    rows.append((ordinal, topic, qos, dumps(payload).encode("utf-8")))
                else:
                    self.dropped_qos0 += 1
            self._spool.put_many(rows, self._inflight)
        finally:
            self._lock.release()

    def _maybe_snapshot(self, cam, topic, record, image):
        snap = self.config.mqtt.snapshot
        now = time.monotonic()
        last = self._snap_last.get(cam)
        due = last is None or now - last >= snap.interval_s
        if snap.classes:
            labels = {d["label"] for d in record["detections"]} & set(snap.classes)
            appeared = labels - self._snap_labels.get(cam, set())
            if appeared and not due and now - last < 1.0:
                labels -= appeared  # at most one a second: still "new" on the next frame
            else:
                due = due or bool(appeared)
            self._snap_labels[cam] = labels
        if due:
            self._snap_last[cam] = now
            # Copy only on snapshot frames: the source may reuse its buffer.
            self._put((_SNAPSHOT, topic, 0, (record, image.copy()), 0, False))

    # --- paho callbacks (paho's network thread; guarded by paho_compat) ---------------------

    def _on_connect(self, ok, reason):
        if ok:
            self._state = "connected"
            log.info("MQTT connected to %s", self.url)
            self._events.append(("connected",))
        else:
            self._state = "disconnected (refused by {}: {})".format(self.url, reason)
            log.error("MQTT broker %s refused the connection: %s (check mqtt.username / password); "
                      "retrying with backoff", self.url, reason)

    def _on_disconnect(self, reason):
        was = self._state
        self._events.append(("disconnected", reason))
        if self._closing is not None:
            self._state = "disconnected (closed)"
        elif was == "connected":
            self._state = "disconnected ({})".format(reason)
            log.warning("MQTT connection to %s lost: %s; spooling until it is back", self.url, reason)
        elif not was.startswith("disconnected (refused"):
            # Closed before CONNACK: e.g. a TLS 1.3 broker rejecting our (missing) client certificate.
            self._state = "disconnected ({}: closed before accepting: {})".format(self.url, reason)
            log.warning("MQTT broker %s closed the connection before accepting it (%s; client certificate "
                        "or ACL?); retrying with backoff", self.url, reason)

    def _on_connect_fail(self):
        why = self._probe()
        self._state = "disconnected ({}: {})".format(self.url, why)
        log.warning("MQTT broker %s: cannot connect: %s; retrying with backoff", self.url, why)

    def _on_publish(self, mid, ok):
        self._acks.append((mid, ok))

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
                    self._handle_acks()
                    self._handle_batch(batch)
                    self._drain()
                    self._publish_housekeeping()
                    if self._closing is not None and self._queue.empty() and (
                            not self._connected and self._state != "connecting"
                            or self._connected and not self._spool.count and not self._live
                            or time.monotonic() > self._closing):
                        self._handle_acks()
                        self._persist_inflight()
                        self._counters_at = 0.0  # the final counters go out now, not in a second
                        self._publish_housekeeping()
                        return
            except Exception:  # a bug must not silently stop publishing: log and keep going
                log.exception("MQTT publisher error")
                time.sleep(0.5)

    def _handle_events(self):
        while self._events:
            event = self._events.popleft()
            if event[0] == "connected":
                self._handle_acks()
                self._connected = True
                self._conn += 1
                self._cursor = 0  # resend every unacknowledged spool row, oldest first
                self._live = 0
                self._status_dirty = True
                self._counters_sent = None
            else:
                self._connected = False
                self._handle_acks()
                self._persist_inflight()

    def _persist_inflight(self):
        """Put unacknowledged live messages in the spool (they keep their place by ordinal)."""
        rows = [(o, m.topic, m.qos, m.payload) for o, m in self._inflight.items() if not m.spooled]
        for o, _, _, _ in rows:
            self._inflight[o].spooled = True
        self._spool.put_many(rows, self._inflight)

    def _handle_acks(self):
        done = []
        while self._acks:
            mid, ok = self._acks.popleft()
            ordinal = self._mids.pop(mid, None)
            if ordinal is None:
                continue
            if not ok:
                self.rejected += 1
                # An ACL that denies our topics rejects every record: one line a minute, not one a record.
                if time.monotonic() - self._rejected_logged_at >= 60.0:
                    self._rejected_logged_at = time.monotonic()
                    log.warning("MQTT broker %s rejected a publish (record %d; %d rejected so far; ACL?)",
                                self.url, ordinal, self.rejected)
            msg = self._inflight.pop(ordinal, None)
            if msg is not None and msg.conn == self._conn:
                self._live -= 1
            if msg is None or msg.spooled:
                done.append(ordinal)
        self._spool.delete(done)
        if len(self._mids) > 20 * self._window:  # acks that never came for old connections
            self._mids = {k: v for k, v in self._mids.items() if v in self._inflight}

    def _handle_batch(self, batch):
        rows = []
        for kind, topic, qos, payload, ordinal, retain in batch:
            try:
                data = self._render(payload) if kind == _SNAPSHOT else dumps(payload).encode("utf-8")
            except (ValueError, TypeError) as e:  # e.g. NaN in a payload: lose this one, not the batch
                log.error("MQTT: cannot encode a message for %s: %s", topic, e)
                self.rejected += 1
                continue
            if data is None:
                continue
            if ordinal:
                if (self._connected and not rows and not self._spool.count and self._live < self._window
                        and self._send(topic, qos, data, ordinal, spooled=False)):
                    continue
                rows.append((ordinal, topic, qos, data))
            elif not self._connected or self._client.publish(topic, data, qos=qos, retain=retain).rc not in (
                    paho_compat.ERR_SUCCESS, paho_compat.ERR_NO_CONN):
                self.dropped_qos0 += 1
        if rows:
            dropped = self._spool.put_many(rows, self._inflight)
            if dropped and (self._spool.dropped_boot == dropped or self._spool.dropped_boot % 1000 < dropped):
                log.warning("MQTT spool full (%d records): dropping the oldest (%d dropped so far)",
                            self._spool.max_records, self._spool.dropped_boot)

    def _send(self, topic, qos, data, ordinal, spooled):
        info = self._client.publish(topic, data, qos=qos, retain=False)
        if info.rc not in (paho_compat.ERR_SUCCESS, paho_compat.ERR_NO_CONN):
            return False  # paho's own queue is full: keep it in (or put it into) the spool
        self._mids[info.mid] = ordinal
        self._inflight[ordinal] = _Msg(topic, qos, data, spooled, self._conn)
        self._live += 1
        return True

    def _drain(self):
        while self._connected and self._spool.count and self._live < self._window:
            rows = self._spool.read_after(self._cursor, self._window - self._live)
            if not rows:
                return
            for ordinal, topic, qos, payload in rows:
                if not self._send(topic, qos, bytes(payload), ordinal, spooled=True):
                    return
                self._cursor = ordinal

    def _publish_housekeeping(self):
        if not self._connected:
            return
        # The retained spool counters follow the backlog (at most once a second), so they read
        # queued 0 once a drain is done; the status's copy is refreshed when the spool empties
        # or fills.
        now = time.monotonic()
        fields = self._counter_fields()
        sent = self._counters_sent
        if fields != sent and now - self._counters_at >= 1.0:
            if sent is not None and (fields["queued"] == 0) != (sent["queued"] == 0):
                self._status_dirty = True
            self._counters_sent, self._counters_at = fields, now
            self._client.publish(self.base + "/spool", dumps(self.counters()), qos=1, retain=True)
        if self._status_dirty:
            self._status_dirty = False
            self._status["timestamp"] = round(time.time(), 3)
            self._status["spool"] = fields
            self._client.publish(self.base + "/status", dumps(self._status), qos=1, retain=True)

    def _counter_fields(self):
        c = self.counters()
        return {k: c[k] for k in ("queued", "max_records", "dropped_total", "dropped_boot", "dropped_qos0")}

    def _render(self, payload):
        from . import snapshot

        record, image = payload
        snap = self.config.mqtt.snapshot
        try:
            data = snapshot.render(image, record, snap.max_bytes, snap.quality)
        except ImportError:
            log.warning("mqtt.snapshot: OpenCV is not installed; snapshots are disabled")
            self._snapshots_off = True
            return None
        if data is None:
            log.warning("mqtt.snapshot: cannot fit a snapshot of %s in %d bytes", record["camera_id"], snap.max_bytes)
        return data

    # --- payloads --------------------------------------------------------------------------

    def _status_payload(self, status, base=None):
        c = self.config
        out = dict(base or {"schema_version": SCHEMA_VERSION, "state": "online", "device_id": self.device_id,
                            "boot_id": BOOT_ID, "agent_version": __version__, "started_at": round(time.time(), 3),
                            "backend": c.backend, "model_size": c.size, "engine_id": None,
                            "cameras": [cam.id for cam in c.cameras], "mqtt": "connected"})
        for src, dst in (("backend", "backend"), ("size", "model_size"), ("model_size", "model_size"),
                         ("engine_id", "engine_id"), ("state", "pipeline_state"), ("fps", "fps"),
                         ("size_reason", "size_reason")):
            if status.get(src) not in (None, ""):
                out[dst] = status[src]
        if status.get("cameras"):  # the service's first status comes before the cameras open
            out["cameras"] = sorted(status["cameras"])
            out["camera_states"] = {k: v.get("state", "running") for k, v in status["cameras"].items()}
        return out

    def _offline(self, reason):
        return {"schema_version": SCHEMA_VERSION, "state": "offline", "device_id": self.device_id,
                "boot_id": BOOT_ID, "agent_version": __version__, "reason": reason,
                "timestamp": round(time.time(), 3)}


def _published(info):
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True  # not queued at all (no connection): nothing to wait for
