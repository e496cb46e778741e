"""``edge-agent ctl``'s side: send one command to an agent over MQTT and wait for its replies.

Works with paho-mqtt 1.6 and 2.x (through paho_compat), MQTT 3.1.1 and 5. Under MQTT 5 the
request carries a response topic, correlation data and a ``client_id`` user property, and
a PUBACK refusal (an ACL) is reported at once; under 3.1.1 a refused publish is silent and
shows as no reply. Each reply is handed to ``on_reply`` as it comes; the final one (``ok``
or ``error``) is returned. Every failure raises CtlError naming what to check.
"""

import json
import queue
import time
import uuid

from ..errors import AgentError
from ..publish import paho_compat
from ..publish.broker import parse_url
from . import protocol

EXIT_NO_REPLY = 3  # nothing answered: broker unreachable, refused, or no agent listening


class CtlError(AgentError):
    """ctl could not get a final reply; the message says what to check."""

    exit_code = EXIT_NO_REPLY


def check_level(name, value):
    """``value`` as one topic level (a device id or a command name); raises CtlError."""
    if not value or any(c in value for c in "/+#\x00") or len(value.encode("utf-8")) > 256:
        raise CtlError("{}: expected a name without '/', '+', '#', got {!r}".format(name, value))
    return value


def send_command(url, device, command, arg=None, prefix="edge-agent", mqtt_protocol="3.1.1", username=None,
                 password=None, tls_context=None, timeout=10.0, wait=600.0, on_reply=None, client_id=None):
    """Send ``command`` (with ``arg``) to ``device`` and return its final reply (a dict).

    ``timeout``: seconds for the broker to answer and for the first reply; ``wait``: seconds,
    after an 'accepted' or 'progress' reply, for the final one. Raises CtlError.
    """
    tls, host, port, url_user = parse_url(url)
    check_level("--device", device)
    check_level("command", command)
    prefix = prefix.rstrip("/")
    request_id = uuid.uuid4().hex[:12]
    client_id = client_id or "edge-agent-ctl-" + request_id[:8]
    base = "{}/{}".format(prefix, device)
    reply_topic = "{}/reply/{}".format(base, request_id)
    cmd_topic = "{}/cmd/{}".format(base, command)
    events = queue.Queue()
    client = paho_compat.make_client(client_id, mqtt_protocol)

    def on_message(msg):
        events.put(("message", msg))

    paho_compat.set_callbacks(
        client, on_connect=lambda ok, reason: events.put(("connect", ok, reason)),
        on_subscribe=lambda mid, ok: events.put(("subscribe", mid, ok)),
        on_publish=lambda mid, ok: events.put(("publish", mid, ok)), on_message=on_message,
        on_disconnect=lambda reason: events.put(("disconnect", reason)))
    user = username or url_user
    if user:
        client.username_pw_set(user, password)
    if tls or tls_context is not None:
        if tls_context is None:
            from ..config import TlsConfig
            from ..publish.broker import tls_context as make_context

            tls_context = make_context(TlsConfig())
        client.tls_set_context(tls_context)
    try:
        client.connect(host, port, 30)
    except (OSError, ValueError) as e:
        raise CtlError("cannot connect to {}: {}".format(url, getattr(e, "strerror", None) or e))
    client.loop_start()
    try:
        _expect(events, "connect", timeout, "the broker {} did not accept the connection within {:g} s".format(
            url, timeout), lambda e: e[1] or _fail("the broker {} refused the connection: {}".format(url, e[2])))
        client.subscribe(reply_topic, 1)
        _expect(events, "subscribe", timeout, "the broker did not confirm the subscription to {}".format(reply_topic),
                lambda e: e[2] or _fail("the broker refused the subscription to {} (ACL: may this user read "
                                        "{}/+/reply/#?)".format(reply_topic, prefix)))
        payload = {"id": request_id, "client_id": client_id}
        if arg is not None:
            payload["arg"] = arg
        props = None
        if mqtt_protocol == "5":
            props = paho_compat.publish_properties(response_topic=reply_topic, correlation=request_id.encode("ascii"),
                                                   user={"client_id": client_id})
        info = client.publish(cmd_topic, json.dumps(payload), qos=1, properties=props)
        return _wait_replies(events, info.mid, request_id, device, cmd_topic, reply_topic, timeout, wait, on_reply)
    finally:
        client.disconnect()
        client.loop_stop()


def _fail(message):
    raise CtlError(message)


def _expect(events, kind, timeout, message, check):
    """Wait for the next ``kind`` event, then ``check(event)``; CtlError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            event = events.get(timeout=max(0.0, left)) if left > 0 else events.get_nowait()
        except queue.Empty:
            raise CtlError(message)
        if event[0] == kind:
            check(event)
            return event
        if event[0] == "disconnect" and kind != "connect":
            raise CtlError("the broker closed the connection: {}".format(event[1]))


def _wait_replies(events, mid, request_id, device, cmd_topic, reply_topic, timeout, wait, on_reply):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CtlError("no reply from device {} within {:g} s (sent {}, listened on {}): is the agent running, "
                           "connected to this broker with mqtt.commands: true, and may this user write "
                           "{}/+/cmd/#?".format(device, timeout, cmd_topic, reply_topic, cmd_topic.split("/")[0]))
        try:
            event = events.get(timeout=min(left, 0.5))
        except queue.Empty:
            continue
        if event[0] == "publish" and event[1] == mid and not event[2]:
            raise CtlError("the broker refused the command on {} (not authorized: may this user write "
                           "{}/+/cmd/#?)".format(cmd_topic, cmd_topic.split("/")[0]))
        if event[0] == "disconnect":
            raise CtlError("the broker closed the connection: {}".format(event[1]))
        if event[0] != "message":
            continue
        try:
            reply = json.loads(event[1].payload.decode("utf-8"))
        except (ValueError, RecursionError):
            continue
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            continue
        if on_reply is not None:
            on_reply(reply)
        if reply.get("final"):
            return reply
        deadline = time.monotonic() + wait  # accepted / progress: the work goes on


def format_reply(reply):
    """One line (more for a result worth showing) for a reply, as ``ctl`` prints it."""
    status = protocol.printable(reply.get("status", "?"), 20)
    message = protocol.printable(reply.get("message", ""), 400)
    head = "{} ({}): {}".format(status, protocol.printable(reply.get("error"), 40), message) \
        if status == "error" else "{}: {}".format(status, message)
    result = reply.get("result")
    if reply.get("final") and isinstance(result, dict) and reply.get("command") in ("status", "benchmark"):
        head += "\n" + json.dumps(result, indent=2, sort_keys=True)
    return head
