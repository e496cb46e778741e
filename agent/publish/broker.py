"""Where and how to reach the broker: ``mqtt.url``, the password, the TLS context.

No paho here: ``check-config``/``run`` validate these before anything opens, and
``watch`` uses them too.
"""

import os
import ssl

from ..errors import ConfigError


def parse_url(url):
    """(tls, host, port, username) from mqtt[s]://[user@]host[:port]; raises ConfigError."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ConfigError("mqtt.url: expected mqtt://host[:port] or mqtts://host[:port], got {!r}".format(url))
    rest = rest.rstrip("/")
    user = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        user = user.split(":", 1)[0]  # a password in the URL is ignored: it would end up in logs
    host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    tls = scheme == "mqtts"
    try:
        port = int(port) if port else (8883 if tls else 1883)
    except ValueError:
        raise ConfigError("mqtt.url: bad port in {!r}".format(url))
    if not host:
        raise ConfigError("mqtt.url: no host in {!r}".format(url))
    return tls, host, port, user


def read_password(mqtt_config, environ=None):
    """The broker password from ``mqtt.password_file`` or $EDGE_AGENT_MQTT_PASSWORD (never logged)."""
    if mqtt_config.password_file:
        try:
            with open(mqtt_config.password_file) as f:
                return f.read().rstrip("\r\n")
        except OSError as e:
            raise ConfigError("mqtt.password_file: cannot read {}: {}".format(mqtt_config.password_file, e.strerror))
    return (os.environ if environ is None else environ).get("EDGE_AGENT_MQTT_PASSWORD")


def tls_context(tls_config):
    """An SSLContext verifying the broker against ``tls.ca`` (else the system CAs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if tls_config.ca:
            ctx.load_verify_locations(cafile=tls_config.ca)
        else:
            ctx.load_default_certs()
        if tls_config.cert:
            ctx.load_cert_chain(tls_config.cert, tls_config.key)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("mqtt.tls: cannot load CA/cert/key ({}, {}, {}): {}".format(
            tls_config.ca, tls_config.cert, tls_config.key, e))
    ctx.check_hostname = not tls_config.insecure  # the CA check always stays on
    return ctx
