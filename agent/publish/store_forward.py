"""Store and forward for QoS >= 1 records: ordinals, the in-flight window, the spool, the drain.

Every QoS >= 1 record gets an emission ordinal. A record goes out live only when
nothing older waits (spool empty, window not full); otherwise, and when it cannot be
acknowledged (a disconnect mid-flight), it goes to the SQLite spool under its
ordinal and leaves it only on PUBACK. After a reconnect the drain resends every
unacknowledged row, oldest first, so a subscriber sees every ``seq`` of a camera in
order (duplicates possible, gaps never, except those counted as dropped when the
spool is full).

Not thread-safe: the MQTT publisher thread owns it (the caller's thread only under
the sink's lock, on queue overflow). ``send(topic, qos, data)`` is the transport's:
it returns the message id, or None when the transport cannot take the message now.
"""

import collections
import itertools
import logging
import time

from .spool import Spool

log = logging.getLogger("edge_agent.mqtt")


class _Msg(object):
    __slots__ = ("topic", "qos", "payload", "spooled", "conn")

    def __init__(self, topic, qos, payload, spooled, conn):
        self.topic, self.qos, self.payload, self.spooled, self.conn = topic, qos, payload, spooled, conn


class StoreForward(object):
    """The spool at ``path`` (at most ``max_records`` rows) and the live window in front of it."""

    def __init__(self, path, max_records, window, where):
        self.spool = Spool(path, max_records)
        # Ordinals continue above what a previous run left in the spool, so its rows go first.
        self._ord = itertools.count(self.spool.max_id() + 1)
        self.window = max(1, min(window, max_records // 2))
        self.where = where  # the broker URL, for log lines
        self.rejected = 0
        self._rejected_logged_at = -60.0
        self._conn = 0
        self._cursor = 0
        self._live = 0
        self._mids = {}
        self._inflight = collections.OrderedDict()
        self._pending = []

    def next_ordinal(self):
        """The next emission ordinal (the caller's thread; ``itertools.count`` is atomic)."""
        return next(self._ord)

    @property
    def idle(self):
        """Nothing spooled and nothing live in flight: a close may stop waiting."""
        return not self.spool.count and not self._live

    def connected(self):
        """A new connection: resend every unacknowledged spool row, oldest first."""
        self._conn += 1
        self._cursor = 0
        self._live = 0

    def persist_inflight(self):
        """Put unacknowledged live messages in the spool (they keep their place by ordinal)."""
        rows = [(o, m.topic, m.qos, m.payload) for o, m in self._inflight.items() if not m.spooled]
        for o, _, _, _ in rows:
            self._inflight[o].spooled = True
        self.spool.put_many(rows, self._inflight)

    def handle_acks(self, acks):
        """Consume ``(mid, ok)`` pairs from the deque ``acks``; acknowledged rows leave the spool."""
        done = []
        while acks:
            mid, ok = acks.popleft()
            ordinal = self._mids.pop(mid, None)
            if ordinal is None:
                continue
            if not ok:
                self.rejected += 1
                # An ACL that denies our topics rejects every record: one line a minute, not one a record.
                if time.monotonic() - self._rejected_logged_at >= 60.0:
                    self._rejected_logged_at = time.monotonic()
                    log.warning("MQTT broker %s rejected a publish (record %d; %d rejected so far; ACL?)",
                                self.where, ordinal, self.rejected)
            msg = self._inflight.pop(ordinal, None)
            if msg is not None and msg.conn == self._conn:
                self._live -= 1
            if msg is None or msg.spooled:
                done.append(ordinal)
        self.spool.delete(done)
        if len(self._mids) > 20 * self.window:  # acks that never came for old connections
            self._mids = {k: v for k, v in self._mids.items() if v in self._inflight}

    def forward(self, send, ordinal, topic, qos, data):
        """Send one record live if nothing older waits, else keep it for ``flush``; ``send`` None: offline."""
        if (send is not None and not self._pending and not self.spool.count and self._live < self.window
                and self._send(send, topic, qos, data, ordinal, spooled=False)):
            return
        self._pending.append((ordinal, topic, qos, data))

    def flush(self):
        """Spool what ``forward`` kept, in order (the oldest rows go if the spool is full)."""
        rows, self._pending = self._pending, []
        if not rows:
            return
        dropped = self.spool.put_many(rows, self._inflight)
        if dropped and (self.spool.dropped_boot == dropped or self.spool.dropped_boot % 1000 < dropped):
            log.warning("MQTT spool full (%d records): dropping the oldest (%d dropped so far)",
                        self.spool.max_records, self.spool.dropped_boot)

    def store(self, rows):
        """Spool ``(ordinal, topic, qos, data)`` rows at once (the caller's queue overflowed)."""
        self.spool.put_many(rows, self._inflight)

    def drain(self, send):
        """Resend spooled rows while the window has room."""
        while self.spool.count and self._live < self.window:
            rows = self.spool.read_after(self._cursor, self.window - self._live)
            if not rows:
                return
            for ordinal, topic, qos, payload in rows:
                if not self._send(send, topic, qos, bytes(payload), ordinal, spooled=True):
                    return
                self._cursor = ordinal

    def _send(self, send, topic, qos, data, ordinal, spooled):
        mid = send(topic, qos, data)
        if mid is None:
            return False  # the transport's own queue is full: keep it in (or put it into) the spool
        self._mids[mid] = ordinal
        self._inflight[ordinal] = _Msg(topic, qos, data, spooled, self._conn)
        self._live += 1
        return True

    def counters(self, dropped_qos0):
        """The spool counters (schema.SPOOL_FIELDS and ``rejected``)."""
        s = self.spool
        return {"queued": s.count, "max_records": s.max_records, "dropped_total": s.dropped_total,
                "dropped_boot": s.dropped_boot, "dropped_qos0": dropped_qos0, "rejected": self.rejected}

    def close(self):
        self.spool.close()
