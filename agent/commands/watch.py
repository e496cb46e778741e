"""``edge-agent watch``: a live view of agents over MQTT (or their raw messages with --json)."""

import collections
import json
import sys
import threading
import time
import uuid

import click

from ..errors import AgentError

STAGE_COLUMNS = ("preprocess", "infer", "postprocess", "total")
MAX_TRACKS_SHOWN = 4  # per camera in the table; the count says how many there are
MAX_TRACKS_KEPT = 1000  # per camera: a lost 'end' event must not grow the board without limit


class Malformed(ValueError):
    """A payload field that watch shows has the wrong type; the message names the field."""


def _clip(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _field(mapping, key, kinds, what, name=None):
    """``mapping[key]`` if it is one of ``kinds``, None when absent or null; else raise Malformed."""
    value = mapping.get(key)
    if value is None or (isinstance(value, kinds) and not isinstance(value, bool)):
        return value
    raise Malformed("{}: expected {}, got {}".format(name or key, what, _clip(value)))


def _number(mapping, key, name=None):
    value = _field(mapping, key, (int, float), "a number", name)
    try:
        return None if value is None else float(value)  # an int beyond float range cannot be shown
    except OverflowError:
        raise Malformed("{}: number out of range".format(name or key))


def _items(mapping, key, kinds, what):
    """The list at ``key`` (empty when absent), each item one of ``kinds``; else raise Malformed."""
    values = _field(mapping, key, list, "a list") or []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, kinds):  # null items too
            raise Malformed("{}[{}]: expected {}, got {}".format(key, i, what, _clip(v)))
    return values


def _read(parts, payload):
    """(kind, the values the board shows) of one message; raises Malformed naming a bad field.

    Only the fields shown are checked, so agents newer than this watch still display.
    """
    if not isinstance(payload, dict):
        raise Malformed("expected a JSON object, got {}".format(_clip(payload)))
    if len(parts) == 2 and parts[1] == "status":
        return "status", {"state": _field(payload, "state", str, "a string") or "?",
                          "broker": _field(payload, "broker", str, "a string"),
                          "cameras": _items(payload, "cameras", str, "a string")}
    if len(parts) == 2 and parts[1] == "spool":
        return "spool", {k: _field(payload, k, int, "an integer") for k in ("queued", "dropped_boot")}
    if len(parts) == 2 and parts[1] == "health":
        return "health", payload
    if len(parts) == 3 and parts[2] == "timing":
        stages = _field(payload, "stages", dict, "a mapping") or {}
        shown = {}
        for s in STAGE_COLUMNS:
            st = _field(stages, s, dict, "a mapping", "stages." + s)
            if st is not None:
                shown[s] = tuple(_number(st, q, "stages.{}.{}".format(s, q)) for q in ("p50", "p95"))
        return "timing", {"fps": _number(payload, "fps"), "stages": shown}
    if len(parts) == 3 and parts[2] == "events":
        kind = _field(payload, "type", str, "a string")
        return "event", {"type": kind, "track_id": _field(payload, "track_id", int, "an integer"),
                         "label": _field(payload, "label", str, "a string") or "?",
                         "first_seen": _number(payload, "first_seen")}
    if len(parts) == 3 and parts[2] == "counts":
        classes = _field(payload, "classes", dict, "a mapping") or {}
        for k, v in classes.items():
            _field(classes, k, int, "an integer", "classes." + str(k))
        zones = {}
        for k, z in (_field(payload, "zones", dict, "a mapping") or {}).items():
            if _field({k: z}, k, dict, "a mapping", "zones." + str(k)) is not None:  # null: nothing to show
                zones[k] = _field(z, "total", int, "an integer", "zones.{}.total".format(k)) or 0
        return "counts", {"total": _field(payload, "total", int, "an integer"), "classes": classes,
                          "zones": zones}
    if len(parts) == 3 and parts[2] == "detections":
        dets = _items(payload, "detections", dict, "a mapping")
        labels = [_field(d, "label", str, "a string", "detections[{}].label".format(i)) or "?"
                  for i, d in enumerate(dets)]
        return "detections", {"seq": _field(payload, "seq", int, "an integer"), "labels": labels}
    return None, None


def _ms(value):
    return "-" if value is None else "{:.1f}".format(value)


def _printable(text):
    # Names and labels come from whoever can publish: no terminal escape sequences through.
    return "".join(c if c.isprintable() else "?" for c in str(text))


def _new_camera():
    return {"fps": None, "stages": {}, "seq": None, "labels": "", "tracks": collections.OrderedDict(),
            "counts": ""}


def _tracks_text(tracks, now):
    if not tracks:
        return ""
    shown = ["#{} {}{}".format(tid, label, " {:.0f}s".format(now - first) if first is not None else "")
             for tid, (label, first) in list(tracks.items())[-MAX_TRACKS_SHOWN:]]
    more = len(tracks) - len(shown)
    return "{}: {}{}".format(len(tracks), ", ".join(shown), ", +{}".format(more) if more else "")


def _counts_text(values):
    parts = ["{} {}".format(k, v) for k, v in sorted(values["classes"].items()) if v]
    text = ", ".join(parts) if parts else "none"
    if values["zones"]:
        text += "; " + ", ".join("{} {}".format(k, v) for k, v in sorted(values["zones"].items()))
    return text


class Board(object):
    """What we know of each device and camera, from the messages seen so far."""

    def __init__(self):
        self.lock = threading.Lock()
        self.devices = collections.OrderedDict()
        self.skipped = 0
        self.last_skipped = ""

    def _device(self, name):
        return self.devices.setdefault(name, {"state": "?", "broker": None, "cameras": collections.OrderedDict(),
                                              "spool": None})

    def _camera(self, device, cam):
        return self._device(device)["cameras"].setdefault(cam, _new_camera())

    def skip(self, parts, why):
        """Count a message the board cannot show; the table's last line names the latest."""
        with self.lock:
            self.skipped += 1
            self.last_skipped = "{}: {}".format("/".join(parts), why)

    def update(self, parts, payload):
        """Fold one message (topic split below the prefix) into the board; a malformed one is skipped."""
        try:
            kind, values = _read(parts, payload)
        except Malformed as e:
            self.skip(parts, e)
            return
        with self.lock:
            if kind == "status":
                dev = self._device(parts[0])
                dev["state"] = values["state"]
                if values["broker"] is not None:  # a status of an older agent leaves the last one known
                    dev["broker"] = values["broker"]
                for cam in values["cameras"]:
                    self._camera(parts[0], cam)
            elif kind in ("spool", "health"):
                self._device(parts[0])[kind] = values
            elif kind == "timing":
                self._camera(parts[0], parts[1]).update(values)
            elif kind == "event":
                tracks = self._camera(parts[0], parts[1])["tracks"]
                if values["type"] == "end":
                    tracks.pop(values["track_id"], None)
                elif values["track_id"] is not None:
                    tracks[values["track_id"]] = (values["label"], values["first_seen"])
                    while len(tracks) > MAX_TRACKS_KEPT:
                        tracks.popitem(last=False)
            elif kind == "counts":
                self._camera(parts[0], parts[1])["counts"] = _counts_text(values)
            elif kind == "detections":
                cam = self._camera(parts[0], parts[1])
                cam["seq"] = values["seq"]
                counts = collections.Counter(values["labels"])
                cam["labels"] = ", ".join("{} x{}".format(k, v) if v > 1 else k for k, v in sorted(counts.items()))

    def render(self, now=None):
        """The table as text (track ages relative to ``now``, default the clock)."""
        now = time.time() if now is None else now
        head = ["DEVICE", "STATE", "BROKER", "SPOOL q/drop", "CAMERA", "FPS"] + [
            "{} p50/p95".format(s) for s in STAGE_COLUMNS] + ["SEQ", "DETECTIONS", "TRACKS", "COUNTS"]
        rows = []
        with self.lock:
            for name, dev in self.devices.items():
                cams = dev["cameras"] or {"-": _new_camera()}
                sp = dev["spool"]
                spool = "{}/{}".format(*("?" if sp[k] is None else sp[k] for k in ("queued", "dropped_boot"))) \
                    if sp else "-"
                for cam_id, cam in cams.items():
                    stages = ["{}/{}".format(*map(_ms, cam["stages"][s])) if s in cam["stages"] else "-"
                              for s in STAGE_COLUMNS]
                    seq = str(cam["seq"]) if cam["seq"] is not None else "-"
                    rows.append([name, dev["state"], dev["broker"] or "-", spool, cam_id, _ms(cam["fps"])] + stages +
                                [seq, cam["labels"] or "-", _tracks_text(cam["tracks"], now) or "-",
                                 cam["counts"] or "-"])
            tail = ["skipped {} malformed message(s); last: {}".format(self.skipped, self.last_skipped)] \
                if self.skipped else []
        rows = [[_printable(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
        return "\n".join(lines + [_printable(t) for t in tail]) + "\n"


@click.command("watch")
@click.option("--broker", default="mqtt://localhost:1883", show_default=True, help="mqtt://host:port or mqtts://host:port.")
@click.option("--prefix", default="edge-agent", show_default=True, help="Topic prefix (mqtt.prefix of the agents).")
@click.option("--json", "as_json", is_flag=True, help="Print raw messages, one JSON object per line: {topic, payload}.")
@click.option("--count", type=int, default=0, help="Exit after this many messages (0: never).")
@click.option("--timeout", type=float, default=0.0, help="Exit after this many seconds (0: never).")
@click.option("--username", default=None, help="Broker user name (password: $EDGE_AGENT_MQTT_PASSWORD).")
@click.option("--ca", default=None, type=click.Path(exists=True, dir_okay=False), help="CA file for mqtts://.")
def watch(broker, prefix, as_json, count, timeout, username, ca):
    """Watch agents over MQTT: devices, FPS, latencies, detections, tracks and counts."""
    import os

    from ..config import TlsConfig
    from ..publish import paho_compat
    from ..publish.broker import parse_url, tls_context

    tls, host, port, url_user = parse_url(broker)
    prefix = prefix.rstrip("/")
    board = Board()
    seen = [0]
    done = threading.Event()
    out_lock = threading.Lock()
    client = paho_compat.make_client("edge-agent-watch-" + uuid.uuid4().hex[:8])
    topics = ["{}/+/status".format(prefix), "{}/+/+/timing".format(prefix), "{}/+/+/detections".format(prefix),
              "{}/+/health".format(prefix), "{}/+/spool".format(prefix), "{}/+/+/events".format(prefix),
              "{}/+/+/counts".format(prefix)]
    failure = []

    def on_connect(ok, reason):
        if not ok:
            failure.append(reason)
            done.set()
            return
        for t in topics:
            client.subscribe(t, qos=0)

    def on_message(msg):
        if done.is_set():
            return
        parts = msg.topic[len(prefix) + 1:].split("/")
        try:
            payload = json.loads(msg.payload.decode("utf-8"))
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested beyond the parser's depth
            payload = {"bytes": len(msg.payload)}
            if not as_json:
                board.skip(parts, "not JSON ({} bytes)".format(len(msg.payload)))
        else:
            if not as_json:
                board.update(parts, payload)
        if as_json:
            with out_lock:
                sys.stdout.write(json.dumps({"topic": msg.topic, "payload": payload}, separators=(",", ":")) + "\n")
                sys.stdout.flush()
        seen[0] += 1
        if count and seen[0] >= count:
            done.set()

    paho_compat.set_callbacks(client, on_connect=on_connect, on_message=on_message)
    user = username or url_user
    if user:
        client.username_pw_set(user, os.environ.get("EDGE_AGENT_MQTT_PASSWORD"))
    if tls or ca:
        client.tls_set_context(tls_context(TlsConfig(ca=ca)))
    try:
        client.connect(host, port, 30)
    except OSError as e:
        raise AgentError("--broker: cannot connect to {}: {}".format(broker, e.strerror or e))
    client.loop_start()
    deadline = time.time() + timeout if timeout else None
    try:
        while not done.is_set():
            if deadline is not None and time.time() >= deadline:
                break
            done.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.time())))
            if not as_json:
                sys.stdout.write("\x1b[H\x1b[2J" + board.render())
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if failure:
        raise AgentError("--broker: {} refused the connection: {}".format(broker, failure[0]))
