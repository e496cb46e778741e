"""A bounded on-disk spool of unacknowledged MQTT messages (SQLite, WAL).

Rows are keyed by an ordinal assigned when the record was emitted, so draining
``ORDER BY id`` replays records in emission order (older spool rows before newer
live ones) and re-inserting an in-flight message after a disconnect puts it
back in its place. When full, the oldest rows not currently handed to paho are
dropped and counted; the counter is persisted across restarts.
"""

import logging
import os
import sqlite3
import threading
import time

from ..errors import AgentError

log = logging.getLogger("edge_agent.spool")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    qos INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Spool(object):
    """SQLite-backed FIFO of (id, topic, qos, payload); thread-safe, bounded by ``max_records``."""

    def __init__(self, path, max_records):
        """Open or create the spool at ``path``; raises AgentError naming the file."""
        self.path = path
        self.max_records = int(max_records)
        self._lock = threading.RLock()
        try:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                os.makedirs(parent)
            # The publisher thread and, when its queue is full, the caller both write.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: durable across an agent crash, fsync only at checkpoints
            # (spares the SD card / eMMC of a Jetson).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self.count = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
            row = self._db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        except (OSError, sqlite3.Error) as e:
            raise AgentError("state_dir: cannot open the MQTT spool {}: {}".format(path, e))
        self.dropped_total = row[0] if row else 0
        self.dropped_boot = 0

    def max_id(self):
        """The highest ordinal stored (0 when empty): new ordinals must start above it."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM spool").fetchone()
        return row[0] or 0

    def put_many(self, rows, protected=()):
        """Store ``(id, topic, qos, payload)`` rows (existing ids are kept); returns rows dropped."""
        if not rows:
            return 0
        now = time.time()
        with self._lock:
            with self._tx():
                cur = self._db.executemany(
                    "INSERT OR IGNORE INTO spool (id, topic, qos, payload, created) VALUES (?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], r[3], now) for r in rows],
                )
                self.count += max(cur.rowcount, 0)
                dropped = self._enforce_cap(protected)
        return dropped

    def _enforce_cap(self, protected):
        excess = self.count - self.max_records
        if excess <= 0:
            return 0
        # Rows handed to paho and not yet acknowledged may still arrive (paho resends them
        # on reconnect): dropping them would make the drop counter overstate the loss.
        ids = [r[0] for r in self._db.execute(
            "SELECT id FROM spool ORDER BY id LIMIT ?", (excess + len(protected),))]
        victims = [i for i in ids if i not in protected][:excess]
        if len(victims) < excess:  # more protected rows than room: the cap wins
            victims = ids[:excess]
        self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in victims])
        self.count -= len(victims)
        self.dropped_total += len(victims)
        self.dropped_boot += len(victims)
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)", (self.dropped_total,))
        return len(victims)

    def read_after(self, after_id, limit):
        """Up to ``limit`` rows with id > ``after_id``, oldest first."""
        with self._lock:
            return self._db.execute(
                "SELECT id, topic, qos, payload FROM spool WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            ).fetchall()

    def delete(self, ids):
        """Remove acknowledged rows (unknown ids are ignored)."""
        if not ids:
            return
        with self._lock:
            with self._tx():
                cur = self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
                self.count -= max(cur.rowcount, 0)

    def close(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _tx(self):
        return _Transaction(self._db)


class _Transaction(object):
    """BEGIN ... COMMIT (ROLLBACK on error): one commit per batch, not per row."""

    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN")

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
