"""Where processed frames go: the Sink interface and the JSON-lines sink.

Every sink (MQTT, JSON lines, the benchmark's collector, the tests' fakes) inherits
``Sink`` and overrides only what it uses. The callers: the pipeline's output thread
(``emit``) and the service loop (``start``, ``timing``, ``health``, ``status``,
``state``, ``close``). A sink must never block them for long (the MQTT sink hands
everything to its own bounded queue).

Every payload a sink receives is final, built by ``agent.publish.schema`` (one
``schema_version``): a sink publishes it as it is and never renames its keys.
"""

import json
import sys
import threading


class Sink(object):
    """A consumer of detection records, timing, health and status payloads."""

    def start(self, status):
        """Begin (connect, open files); ``status`` is the first ``schema.status`` payload."""

    def emit(self, record, image=None):
        """Publish one ``schema.make_record`` record; ``image`` is the BGR frame (for snapshots), not to be kept."""
        raise NotImplementedError

    def events(self, camera_id, payloads):
        """Publish one frame's ``schema.event`` payloads of a camera (track start, update, end), in order."""

    def counts(self, camera_id, payload):
        """Publish a camera's current ``schema.counts`` (on change, and again every timing interval)."""

    def timing(self, camera_id, payload):
        """Publish one camera's periodic ``schema.timing`` payload."""

    def health(self, payload):
        """Publish a periodic ``schema.health`` payload."""

    def status(self, payload):
        """Publish a change of the agent's ``schema.status``; keys it leaves out keep their last value."""

    def state(self):
        """A short word for status lines: 'ok', 'connected', 'disconnected', ..."""
        return "ok"

    def channel(self):
        """The object the remote control (agent.control) subscribes and replies through (its
        ``subscribe``, ``send``, ``request_snapshot``), or None: only the MQTT sink has one."""
        return None

    def close(self, timeout=5.0):
        """Flush what can be flushed within ``timeout`` seconds, then release."""


def dumps(payload):
    """Compact, deterministic JSON for records and payloads."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=False, allow_nan=False)


class JsonLinesSink(Sink):
    """Writes each record as one JSON line to stdout (``-``) or a file (appended).

    Detection records only (with their ``track_id``): events and counts go to MQTT, so
    that every line of the file keeps one shape.
    """

    def __init__(self, target="-"):
        self.target = target
        self._lock = threading.Lock()
        self._file = None

    def start(self, status):
        if self.target == "-":
            self._file = sys.stdout
        else:
            self._file = open(self.target, "a", buffering=1)

    def emit(self, record, image=None):
        line = dumps(record)
        with self._lock:
            self._file.write(line + "\n")

    def close(self, timeout=5.0):
        with self._lock:
            if self._file is None:
                return
            self._file.flush()
            if self._file is not sys.stdout:
                self._file.close()
            self._file = None
