"""What a command is on the wire: its topic, its payload (command.schema.json), where the reply goes.

A command is a PUBLISH on ``{prefix}/{device}/cmd/{command}`` whose payload is empty or
a JSON object of at most MAX_PAYLOAD_BYTES: ``id`` (the request id: replies go to
``{prefix}/{device}/reply/{id}``), ``arg`` (the command's argument) and ``client_id``
(who sends it, as the sender says). Under MQTT 5 the request's response topic and
correlation data win: replies go to that topic and carry the same correlation data; a
``client_id`` user property names the sender. ``parse`` runs on paho's network thread
for every message, garbage included: it never raises anything but RequestError, which
carries where its error reply goes. No paho here (the caller passes the properties).
"""

import json
import re

COMMANDS = ("size", "snapshot", "reload", "status", "benchmark")
MAX_PAYLOAD_BYTES = 4096
REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
# Where errors about requests without a usable id go: not a valid request id (leading '_').
INVALID_ID_TOPIC = "_invalid"
_FIELDS = ("id", "arg", "client_id")


class RequestError(Exception):
    """A command that cannot run: ``code`` (schema.REPLY_ERRORS), the message, and ``request``
    (a Request with what could be read: the reply address, the id, the sender)."""

    def __init__(self, code, message, request):
        Exception.__init__(self, message)
        self.code = code
        self.request = request


class Request(object):
    """One command: ``command``, ``arg``, ``id`` (None when absent), ``client`` (who says they send it),
    ``reply_topic``, ``correlation`` (MQTT 5 correlation data, bytes or None)."""

    __slots__ = ("command", "arg", "id", "client", "reply_topic", "correlation")

    def __init__(self, command, arg, request_id, client, reply_topic, correlation):
        self.command, self.arg, self.id, self.client = command, arg, request_id, client
        self.reply_topic, self.correlation = reply_topic, correlation

    def describe(self):
        """'size accurate' (for log lines; bounded, printable)."""
        arg = self.arg
        return printable("{} {}".format(self.command, arg if arg is not None else "").strip(), 120)


def printable(text, limit=80):
    """``text`` as one bounded, printable line (it comes from whoever can publish)."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(value):
    return printable(json.dumps(value) if not isinstance(value, str) else repr(value), 60)


def parse(base, topic, payload, retain=False, response_topic=None, correlation=None, user_properties=None):
    """The Request published on ``topic`` (under ``base`` = ``{prefix}/{device}``); raises RequestError.

    ``payload``: bytes; ``response_topic``, ``correlation``, ``user_properties``: MQTT 5's, else None.
    """
    command = topic[len(base) + len("/cmd/"):] if topic.startswith(base + "/cmd/") else topic
    who = (user_properties or {}).get("client_id")
    req = Request(printable(command, 64), None, None, printable(who, 128) if who else None,
                  response_topic or "{}/reply/{}".format(base, INVALID_ID_TOPIC), correlation)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise RequestError("too_large", "payload of {} bytes, more than {}".format(len(payload), MAX_PAYLOAD_BYTES),
                           req)
    data = _decode(payload, req)
    request_id = data.get("id")
    if request_id is not None:
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            raise RequestError("malformed", "id: expected 1 to 64 characters of A-Z a-z 0-9 _ . : - "
                                            "(starting with a letter or digit), got {}".format(_describe(request_id)),
                               req)
        req.id = request_id
        if not response_topic:
            req.reply_topic = "{}/reply/{}".format(base, request_id)
    client = data.get("client_id")
    if client is not None and req.client is None:
        if not isinstance(client, str) or not 0 < len(client) <= 128:
            raise RequestError("malformed", "client_id: expected a string of 1 to 128 characters, got {}".format(
                _describe(client)), req)
        req.client = printable(client, 128)
    unknown = sorted(k for k in data if k not in _FIELDS)
    if unknown:
        raise RequestError("malformed", "unknown key {} (known: {})".format(
            _describe(unknown[0]), ", ".join(_FIELDS)), req)
    if retain:
        raise RequestError("malformed", "a retained command is never run (publish commands without the retain "
                                        "flag; clear it with an empty retained message)", req)
    if request_id is None and not response_topic:
        raise RequestError("malformed", "id: required (replies go to {}/reply/<id>), or an MQTT 5 response "
                                        "topic".format(base), req)
    if command not in COMMANDS:
        raise RequestError("unknown_command", "unknown command {} (known: {})".format(
            _describe(command), ", ".join(COMMANDS)), req)
    req.arg = _arg(command, data.get("arg"), req)
    return req


def _decode(payload, req):
    if not payload:
        return {}
    try:
        data = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise RequestError("malformed", "payload is not UTF-8 text", req)
    except RecursionError:
        raise RequestError("malformed", "payload is not a JSON object: nested too deeply", req)
    except ValueError as e:
        raise RequestError("malformed", "payload is not JSON: {}".format(printable(e, 100)), req)
    if not isinstance(data, dict):
        raise RequestError("malformed", "payload: expected a JSON object, got {}".format(
            type(data).__name__ if not isinstance(data, (str, int, float)) else _describe(data)), req)
    return data


def _arg(command, arg, req):
    """The argument, checked for its shape (its meaning is the controller's to check)."""
    if command in ("reload", "status", "benchmark"):
        if arg is not None:
            raise RequestError("bad_argument", "{} takes no argument, got {}".format(command, _describe(arg)), req)
        return None
    if arg is not None and (not isinstance(arg, str) or not 0 < len(arg) <= 256):
        raise RequestError("bad_argument", "{}: expected a name of 1 to 256 characters, got {}".format(
            command, _describe(arg)), req)
    if command == "size" and arg is None:
        raise RequestError("bad_argument", "size: which size? (a configured size name, or auto)", req)
    return arg
