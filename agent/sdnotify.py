"""sd_notify(3) in stdlib: tell systemd we are ready, alive, reloading or stopping.

Every call is a no-op without ``$NOTIFY_SOCKET`` (not started by systemd with
Type=notify), so the agent runs the same in a terminal. A socket name starting
with ``@`` is in the Linux abstract namespace.
"""

import logging
import os
import socket
import time

log = logging.getLogger("edge_agent.service")


def _address(name):
    if name.startswith("@"):
        return "\0" + name[1:]
    return name


def notify(*fields, **kwargs):
    """Send ``KEY=value`` lines to systemd; returns True if sent. Never raises."""
    environ = kwargs.get("environ", os.environ)
    name = environ.get("NOTIFY_SOCKET", "")
    if not name or not fields:
        return False
    payload = "\n".join(fields).encode("utf-8", "replace")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(_address(name))
        sock.sendall(payload)
        return True
    except OSError as e:
        # systemd gone or socket not ours: the agent keeps running either way.
        log.debug("sd_notify to %s failed: %s", name, e)
        return False
    finally:
        sock.close()


def _monotonic_usec():
    # CLOCK_MONOTONIC is what systemd compares MONOTONIC_USEC= against.
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1000000)


def ready(status=None):
    """READY=1: startup finished (engine loaded, first frame processed)."""
    fields = ["READY=1"]
    if status:
        fields.append("STATUS=" + status)
    return notify(*fields)


def status(text):
    """STATUS=: one line shown by ``systemctl status``."""
    return notify("STATUS=" + text.replace("\n", " "))


def watchdog():
    """WATCHDOG=1: we are alive (send only when work really progresses)."""
    return notify("WATCHDOG=1")


def stopping(status=None):
    """STOPPING=1: shutdown has begun."""
    fields = ["STOPPING=1"]
    if status:
        fields.append("STATUS=" + status)
    return notify(*fields)


def reloading():
    """RELOADING=1 (+ MONOTONIC_USEC= for Type=notify-reload on systemd >= 253)."""
    return notify("RELOADING=1", "MONOTONIC_USEC={}".format(_monotonic_usec()))


def extend_timeout(seconds, status=None):
    """EXTEND_TIMEOUT_USEC=: ask for ``seconds`` more before the start/stop timeout fires."""
    fields = ["EXTEND_TIMEOUT_USEC={}".format(int(seconds * 1000000))]
    if status:
        fields.append("STATUS=" + status)
    return notify(*fields)


def watchdog_interval(environ=None):
    """WatchdogSec= in seconds if the watchdog is on for this process, else None."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    try:
        usec = int(usec)
    except ValueError:
        return None
    if usec <= 0:
        return None
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            return None
    return usec / 1000000.0
