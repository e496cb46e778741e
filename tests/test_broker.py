"""broker.Failover: which broker next and when (round-robin, exponential backoff with full jitter).

The schedule is checked with seeded random generators, never with clocks.
"""

import collections
import random

from agent.publish.broker import Failover

URLS = ["mqtt://node1:1883", "mqtts://agent@node2:8883", "mqtt://node3"]


def test_round_robin_names_each_broker_without_its_user():
    f = Failover(URLS, rng=random.Random(1))
    seen = [f.current]
    for _ in range(4):
        f.failed()
        seen.append(f.current)
    assert [u for u, _, _ in seen] == ["mqtt://node1:1883", "mqtts://node2:8883", "mqtt://node3:1883",
                                       "mqtt://node1:1883", "mqtts://node2:8883"]
    assert seen[1][1:] == ("node2", 8883)


def test_full_jitter_schedule_with_a_seeded_rng():
    """Wait n is uniform in [0, min(max_s, min_s * 2**n)]: the same draws as a generator with the same seed."""
    f = Failover(URLS, min_s=1.0, max_s=30.0, rng=random.Random(42))
    waits = [f.failed() for _ in range(8)]
    ref = random.Random(42)
    caps = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert waits == [ref.uniform(0.0, cap) for cap in caps]
    assert all(0.0 <= w <= cap for w, cap in zip(waits, caps))
    f.connected()  # a connection resets the backoff: the next wait is again within min_s
    ref_next = ref.uniform(0.0, 1.0)
    assert f.failed() == ref_next <= 1.0
    assert f.failures == 1


def test_a_long_outage_stays_capped():
    f = Failover(URLS, min_s=0.5, max_s=10.0, rng=random.Random(3))
    waits = [f.failed() for _ in range(200)]  # 2**200 must not overflow or exceed the cap
    assert max(waits) <= 10.0 and max(waits[-50:]) > 5.0


def test_a_thousand_devices_spread_their_reconnects():
    """1000 devices losing the same node at once: their first tries spread over the first
    window, and those still failing spread wider; no instant takes a crowd."""
    devices = [Failover(URLS, min_s=1.0, max_s=30.0, rng=random.Random(seed)) for seed in range(1000)]
    first = [d.failed() for d in devices]
    per_100ms = collections.Counter(int(w * 10) for w in first)
    assert len(per_100ms) == 10 and max(per_100ms.values()) < 150  # ~100 per 100 ms, none near 1000
    assert len({round(w, 3) for w in first}) > 600  # and not in lockstep within a window
    # All three nodes down: by the fifth try (cap 16 s) they are spread over 16 s.
    fifth = [sum(d.failed() for _ in range(4)) + w for d, w in zip(devices, first)]
    per_second = collections.Counter(int(t) for t in fifth)
    assert max(per_second.values()) < 150 and max(fifth) - min(fifth) > 15.0
