"""The on-disk spool: order, idempotent re-insert, cap with protected rows, persisted drop counter."""

import sqlite3

import pytest

from agent.errors import AgentError
from agent.publish.spool import Spool


def rows(ids):
    return [(i, "t/{}".format(i), 1, "p{}".format(i).encode()) for i in ids]


def test_order_by_ordinal_and_reinsert(tmp_path):
    s = Spool(str(tmp_path / "spool.sqlite"), 100)
    s.put_many(rows([5, 6, 7]))
    s.put_many(rows([2, 3]))  # in-flight messages put back after a disconnect keep their place
    s.put_many(rows([3]))  # already there: kept once
    assert s.count == 5
    assert [r[0] for r in s.read_after(0, 10)] == [2, 3, 5, 6, 7]
    assert s.read_after(3, 2) == [(5, "t/5", 1, b"p5"), (6, "t/6", 1, b"p6")]
    s.delete([2, 6, 99])
    assert s.count == 3 and [r[0] for r in s.read_after(0, 10)] == [3, 5, 7]
    assert s.max_id() == 7
    mode = sqlite3.connect(str(tmp_path / "spool.sqlite")).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    s.close()


def test_cap_drops_oldest_unprotected_and_counts(tmp_path):
    path = str(tmp_path / "spool.sqlite")
    s = Spool(path, 5)
    assert s.put_many(rows(range(1, 6))) == 0
    # 1 and 2 are with paho (unacknowledged): they may still arrive, so 3 and 4 go first.
    assert s.put_many(rows([6, 7]), protected={1: None, 2: None}) == 2
    assert [r[0] for r in s.read_after(0, 10)] == [1, 2, 5, 6, 7]
    assert s.put_many(rows([8])) == 1  # nothing protected: the oldest goes
    assert [r[0] for r in s.read_after(0, 10)] == [2, 5, 6, 7, 8]
    assert (s.count, s.dropped_boot, s.dropped_total) == (5, 3, 3)
    s.close()
    again = Spool(path, 5)  # the counter and the rows survive a restart
    assert (again.count, again.dropped_total, again.dropped_boot, again.max_id()) == (5, 3, 0, 8)
    again.close()


def test_unwritable_state_dir_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AgentError, match="state_dir: cannot open the MQTT spool .*file/spool.sqlite"):
        Spool(str(blocker / "spool.sqlite"), 10)
