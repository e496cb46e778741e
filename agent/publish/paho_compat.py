"""The one place that knows paho-mqtt 1.6 from 2.x (callback signatures, reason codes).

paho 2.x requires ``CallbackAPIVersion`` and passes ReasonCode objects; 1.6
(the last release for JetPack 4's Python 3.6) passes ints for MQTT 3.1.1 and
ReasonCodes for MQTT 5. Callers get one signature whatever the version:
``on_connect(ok, reason)``, ``on_disconnect(reason)``, ``on_publish(mid, ok)``,
``on_message(msg)``, ``on_connect_fail()``, ``on_subscribe(mid, ok)``. Every callback body
is guarded: an exception is logged, never raised into paho's network thread (paho#365).
MQTT 5 properties (response topic, correlation data, user properties) are read and made
here too (``message_properties``, ``publish_properties``): 1.6 and 2.x share that module.
"""

import logging

import paho.mqtt
import paho.mqtt.client as mqtt

log = logging.getLogger("edge_agent.mqtt")

PAHO_VERSION = tuple(int(p) for p in paho.mqtt.__version__.split(".")[:2] if p.isdigit())
PAHO_V2 = PAHO_VERSION >= (2, 0)
PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}
ERR_SUCCESS = mqtt.MQTT_ERR_SUCCESS
ERR_NO_CONN = mqtt.MQTT_ERR_NO_CONN


def make_client(client_id, protocol="3.1.1", clean_session=True):
    """A paho Client for ``protocol`` ('3.1.1' or '5') under either paho major version."""
    proto = PROTOCOLS[protocol]
    kwargs = {"client_id": client_id, "protocol": proto}
    if proto != mqtt.MQTTv5:
        kwargs["clean_session"] = clean_session
    if PAHO_V2:
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    return mqtt.Client(**kwargs)


def connect_async(client, host, port, keepalive, protocol):
    """Schedule the connection; the loop thread connects and reconnects."""
    if protocol == "5":
        client.connect_async(host, port, keepalive, clean_start=True)
    else:
        client.connect_async(host, port, keepalive)


def _code(rc):
    """(int value, readable reason) of a paho 1.6 int or a ReasonCode(s) object."""
    value = getattr(rc, "value", rc)
    try:
        value = int(value)
    except (TypeError, ValueError):
        value = -1
    if hasattr(rc, "getName"):
        name = rc.getName()
    elif isinstance(rc, int):
        name = None
    else:
        name = str(rc)
    return value, name


def retry_at(client, host, port, delay):
    """Make paho's next reconnect go to ``host:port`` after ``delay`` seconds.

    Call it from on_disconnect / on_connect_fail: paho (1.6 and 2.x) runs those before it
    waits (its reconnect delay, here pinned to ``delay``) and reconnects to ``_host:_port``.
    """
    client._host, client._port = host, port  # 2.x's host/port setters refuse while paho still holds the socket
    client.reconnect_delay_set(delay, delay)


def set_client_id(client, client_id):
    """The client id of the next (re)connect (paho keeps it as bytes in ``_client_id``, 1.6 and 2.x)."""
    client._client_id = client_id.encode("utf-8")


def connack_reason(rc):
    """(ok, text) for a CONNACK code of any paho version / protocol."""
    value, name = _code(rc)
    if name is None:
        name = mqtt.connack_string(value)
    return value == 0, name


def disconnect_reason(rc):
    value, name = _code(rc)
    if value == 0:
        return "normal disconnection"
    if name is None:
        name = mqtt.error_string(value)
    return name


def _guard(name, func):
    def call(*args):
        try:
            func(*args)
        except Exception:  # paho's network thread must survive a bug in a callback
            log.exception("error in MQTT %s callback", name)
    return call


def set_callbacks(client, on_connect=None, on_disconnect=None, on_publish=None, on_message=None,
                  on_connect_fail=None, on_subscribe=None):
    """Install version-independent, guarded callbacks (see the module docstring)."""
    if on_connect is not None:
        def _on_connect(c, u, flags, rc, *rest):
            ok, reason = connack_reason(rc)
            on_connect(ok, reason)
        client.on_connect = _guard("connect", _on_connect)
    if on_disconnect is not None:
        if PAHO_V2:
            def _on_disconnect(c, u, flags, rc, props=None):
                on_disconnect(disconnect_reason(rc))
        else:
            def _on_disconnect(c, u, rc, *rest):
                on_disconnect(disconnect_reason(rc))
        client.on_disconnect = _guard("disconnect", _on_disconnect)
    if on_publish is not None:
        def _on_publish(c, u, mid, *rest):
            # paho 2.x with MQTT 5 passes the PUBACK reason code; >= 0x80 means rejected.
            ok = True
            if rest:
                value, _ = _code(rest[0])
                ok = value < 0x80
            on_publish(mid, ok)
        client.on_publish = _guard("publish", _on_publish)
    if on_message is not None:
        client.on_message = _guard("message", lambda c, u, msg: on_message(msg))
    if on_connect_fail is not None:
        client.on_connect_fail = _guard("connect_fail", lambda c, u: on_connect_fail())
    if on_subscribe is not None:
        def _on_subscribe(c, u, mid, granted, *rest):
            # 1.6 / MQTT 3.1.1: granted QoS ints; MQTT 5 and 2.x: ReasonCodes. >= 0x80 is a refusal.
            codes = granted if isinstance(granted, (list, tuple)) else [granted]
            on_subscribe(mid, all(_code(rc)[0] < 0x80 for rc in codes))
        client.on_subscribe = _guard("subscribe", _on_subscribe)


def message_properties(msg):
    """(response topic or None, correlation data bytes or None, {user property: value}) of a
    received message; all empty under MQTT 3.1.1."""
    props = getattr(msg, "properties", None)
    if props is None:
        return None, None, {}
    topic = getattr(props, "ResponseTopic", None) or None
    correlation = getattr(props, "CorrelationData", None)
    user = {}
    for pair in getattr(props, "UserProperty", None) or ():
        try:
            key, value = pair
        except (TypeError, ValueError):
            continue
        user.setdefault(str(key), str(value))
    return topic, (bytes(correlation) if correlation is not None else None), user


def publish_properties(response_topic=None, correlation=None, user=None):
    """MQTT 5 PUBLISH properties (None when there is none to set); 3.1.1 clients pass None."""
    if response_topic is None and correlation is None and not user:
        return None
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation is not None:
        props.CorrelationData = correlation
    for key, value in sorted((user or {}).items()):
        props.UserProperty = (key, value)  # paho appends: one pair per assignment
    return props


def loop_alive(client):
    """False when paho's network thread has died (it never should; paho 1.6 lets some errors kill it)."""
    thread = getattr(client, "_thread", None)
    return thread is None or thread.is_alive()


def restart_loop(client):
    """Start a new network thread after ``loop_alive`` said it died; it reconnects with backoff.

    paho 1.6 only catches ConnectionError while reading, so an ssl.SSLError after the
    handshake (a TLS 1.3 broker rejecting a missing client certificate) ends its thread.
    """
    client._thread = None
    try:
        client._sock_close()
    except Exception:  # already closed
        pass
    client.loop_start()


def topic_matches(topic_filter, topic):
    """Whether ``topic`` matches the subscription ``topic_filter`` (+ and # wildcards)."""
    return mqtt.topic_matches_sub(topic_filter, topic)
