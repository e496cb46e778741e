"""Stage timing: the same stage names everywhere, rolling percentiles and FPS."""

import collections
import threading
import time

import numpy as np

# Fixed names: records, MQTT timing payloads and benchmarks all use these.
STAGES = ("capture", "preprocess", "infer", "postprocess", "publish", "total")


def now():
    """Monotonic seconds, for stage timing."""
    return time.monotonic()


def percentiles(values):
    """{'p50','p95','p99','mean'} in ms of a sequence of ms values; None when empty."""
    if not len(values):
        return None
    arr = np.asarray(values, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "p99": round(float(p99), 3),
            "mean": round(float(arr.mean()), 3)}


class RollingStats(object):
    """Per-stage p50/p95/p99 over the last ``window`` frames, and FPS; thread-safe."""

    def __init__(self, window=300):
        self._lock = threading.Lock()
        self._stages = {s: collections.deque(maxlen=window) for s in STAGES}
        self._done = collections.deque(maxlen=window)
        self.frames = 0

    def add(self, times_ms, done_at=None):
        """Record one frame's stage times (ms) finished at monotonic ``done_at``."""
        with self._lock:
            for stage, value in times_ms.items():
                if stage in self._stages:
                    self._stages[stage].append(value)
            self._done.append(now() if done_at is None else done_at)
            self.frames += 1

    def fps(self, at=None):
        """Frames per second over the window; 0 once no frame came for 3 frame intervals (at
        least 1 s): a stalled camera reads 0, not the rate from before the stall."""
        with self._lock:
            done = list(self._done)
        if len(done) < 2 or done[-1] <= done[0]:
            return 0.0
        interval = (done[-1] - done[0]) / (len(done) - 1)
        if (now() if at is None else at) - done[-1] > max(1.0, 3 * interval):
            return 0.0
        return 1.0 / interval

    def summary(self):
        """{'fps': f, 'frames': n, 'stages': {stage: {'p50','p95','p99','mean'}}} in ms."""
        with self._lock:
            snap = {s: list(v) for s, v in self._stages.items()}
            frames = self.frames
        stages = {stage: percentiles(values) for stage, values in snap.items() if values}
        return {"fps": round(self.fps(), 2), "frames": frames, "stages": stages}
