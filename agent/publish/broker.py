"""Where and how to reach the broker: ``mqtt.url`` (one or a list), the password, the TLS context,
and which broker to try next after a failure, and when (``Failover``).

No paho here: ``check-config``/``run`` validate these before anything opens, and
``watch`` uses them too.
"""

import os
import random
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


class Failover(object):
    """Round-robin over the broker URLs, with exponential backoff and full jitter between tries.

    After a lost connection or a failed try, ``failed()`` moves to the next URL and returns
    the wait before trying it: uniform in [0, min(max_s, min_s * 2**n)], n counting the
    failures since the last connection ("full jitter", as in AWS's "Exponential Backoff And
    Jitter"). A thousand devices losing the same node spread their reconnects over that
    window instead of arriving together, and the window grows while no broker answers.
    ``connected()`` resets n. ``rng``: a random.Random (seeded in tests).
    """

    def __init__(self, urls, min_s=1.0, max_s=30.0, rng=None):
        self.urls = list(urls)
        self.servers = [parse_url(u)[:3] for u in self.urls]  # (tls, host, port)
        self.min_s, self.max_s = min_s, max_s
        self.rng = rng or random.Random()
        self.index = 0
        self.failures = 0

    @property
    def current(self):
        """(url, host, port) of the broker in use or tried next; url without the user."""
        tls, host, port = self.servers[self.index]
        return "{}://{}:{}".format("mqtts" if tls else "mqtt", host, port), host, port

    def connected(self):
        self.failures = 0

    def failed(self):
        """Move to the next broker; the seconds to wait before trying it."""
        self.index = (self.index + 1) % len(self.urls)
        cap = min(self.max_s, self.min_s * 2 ** min(self.failures, 30))
        self.failures += 1
        return self.rng.uniform(0.0, cap)
