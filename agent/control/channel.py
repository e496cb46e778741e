"""The command topics on the agent's MQTT connection: requests in, replies out.

``CommandChannel`` subscribes ``{prefix}/{device}/cmd/+`` through the MQTT sink.
Every message is parsed on paho's network thread (``protocol.parse``: bounded, never
raises): a malformed one is answered with an error at once and logged (at most
LOG_BURST lines per LOG_WINDOW_S, then one line counting the rest); a good one waits in
a bounded queue for the service loop (``Controller``), which acts on it. A full queue
answers ``busy``. Replies go through the sink's publisher thread like everything else
the agent sends, so nothing here waits on the network.
"""

import logging
import queue
import time

from ..publish import paho_compat, schema
from ..publish.base import dumps
from . import protocol

log = logging.getLogger("edge_agent.control")

QUEUE_SIZE = 16  # commands waiting for the service loop; more get 'busy'
LOG_BURST = 20  # malformed commands logged one line each per window; the rest are counted
LOG_WINDOW_S = 10.0


class CommandChannel(object):
    """Requests from ``{base}/cmd/+`` (``base`` = ``{prefix}/{device}``) and replies, over ``sink``
    (the MQTT sink's ``channel()``)."""

    def __init__(self, sink, base, device_id):
        self.sink = sink
        self.base = base
        self.device_id = device_id
        self.requests = queue.Queue(QUEUE_SIZE)
        self.malformed = 0  # requests answered with an error without reaching the service loop
        self._window = (0.0, 0, 0)  # (start, logged, suppressed)

    def start(self):
        self.sink.subscribe(self.base + "/cmd/+", self._on_message, qos=1)

    def _on_message(self, msg):
        """paho's network thread: parse, then queue or answer."""
        response_topic, correlation, user = paho_compat.message_properties(msg)
        try:
            req = protocol.parse(self.base, msg.topic, bytes(msg.payload or b""), bool(msg.retain), response_topic,
                                 correlation, user)
        except protocol.RequestError as e:
            self.malformed += 1
            self._log_malformed(e)
            self.reply(e.request, "error", str(e), error=e.code)
            return
        try:
            self.requests.put_nowait(req)
        except queue.Full:
            self._log_malformed(protocol.RequestError("busy", "{} commands already wait".format(QUEUE_SIZE), req))
            self.reply(req, "error", "busy: {} commands already wait; try again".format(QUEUE_SIZE), error="busy")

    def _log_malformed(self, error):
        now = time.monotonic()
        start, logged, suppressed = self._window
        if now - start >= LOG_WINDOW_S:
            if suppressed:
                log.warning("%d more refused command(s) in the last %.0f s not logged one by one", suppressed,
                            LOG_WINDOW_S)
            start, logged, suppressed = now, 0, 0
        if logged < LOG_BURST:
            req = error.request
            log.warning("command %s from %s (id %s): refused: %s: %s", protocol.printable(req.command, 64),
                        req.client or "unknown client", req.id or "none", error.code, error)
            logged += 1
        else:
            suppressed += 1
        self._window = (start, logged, suppressed)

    def flush_log(self):
        """Log the count of refused commands not logged one by one, once their window is over."""
        start, logged, suppressed = self._window
        if suppressed and time.monotonic() - start >= LOG_WINDOW_S:
            log.warning("%d more refused command(s) in the last %.0f s not logged one by one", suppressed,
                        LOG_WINDOW_S)
            self._window = (time.monotonic(), 0, 0)

    def reply(self, req, status, message, result=None, error=None):
        """Send one reply to ``req`` (schema.reply); False when the MQTT queue is full."""
        payload = schema.reply(self.device_id, req.id, req.command if req.command in protocol.COMMANDS else None,
                               status, message, result=result, error=error)
        props = paho_compat.publish_properties(correlation=req.correlation) if req.correlation is not None else None
        try:
            data = dumps(payload).encode("utf-8")
        except (TypeError, ValueError) as e:  # a result that is not JSON (a bug): still answer
            payload = schema.reply(self.device_id, req.id, payload["command"], "error",
                                   "cannot encode the reply: {}".format(e), error="failed")
            data = dumps(payload).encode("utf-8")
        return self.sink.send(req.reply_topic, data, qos=1, retain=False, properties=props)
