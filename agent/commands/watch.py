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


class Board(object):
    """What we know of each device and camera, from the messages seen so far."""

    def __init__(self):
        self.lock = threading.Lock()
        self.devices = collections.OrderedDict()

    def _device(self, name):
        return self.devices.setdefault(name, {"state": "?", "cameras": collections.OrderedDict(), "spool": None})

    def _camera(self, device, cam):
        return self._device(device)["cameras"].setdefault(cam, {"fps": None, "stages": {}, "seq": None, "labels": ""})

    def update(self, parts, payload):
        """Fold one message (topic split below the prefix) into the board."""
        if not isinstance(payload, dict):
            return
        with self.lock:
            if len(parts) == 2 and parts[1] == "status":
                dev = self._device(parts[0])
                dev["state"] = payload.get("state", "?")
                dev["info"] = "{} {} {}".format(payload.get("agent_version", ""), payload.get("backend", ""),
                                                payload.get("model_size", "")).strip()
                for cam in payload.get("cameras") or ():
                    self._camera(parts[0], cam)
            elif len(parts) == 2 and parts[1] == "spool":
                self._device(parts[0])["spool"] = payload
            elif len(parts) == 2 and parts[1] == "health":
                self._device(parts[0])["health"] = payload
            elif len(parts) == 3 and parts[2] == "timing":
                cam = self._camera(parts[0], parts[1])
                cam["fps"] = payload.get("fps")
                cam["stages"] = payload.get("stages") or {}
            elif len(parts) == 3 and parts[2] == "detections":
                cam = self._camera(parts[0], parts[1])
                cam["seq"] = payload.get("seq")
                counts = collections.Counter(d.get("label", "?") for d in payload.get("detections") or ())
                cam["labels"] = ", ".join("{} x{}".format(k, v) if v > 1 else k for k, v in sorted(counts.items()))

    def render(self):
        """The table as text."""
        head = ["DEVICE", "STATE", "SPOOL q/drop", "CAMERA", "FPS"] + [
            "{} p50/p95".format(s) for s in STAGE_COLUMNS] + ["SEQ", "DETECTIONS"]
        rows = []
        with self.lock:
            for name, dev in self.devices.items():
                cams = dev["cameras"] or {"-": {"fps": None, "stages": {}, "seq": None, "labels": ""}}
                sp = dev["spool"]
                spool = "{}/{}".format(sp.get("queued", "?"), sp.get("dropped_boot", "?")) if sp else "-"
                for cam_id, cam in cams.items():
                    stages = []
                    for s in STAGE_COLUMNS:
                        st = cam["stages"].get(s)
                        stages.append("{:.1f}/{:.1f}".format(st["p50"], st["p95"]) if st else "-")
                    fps = "{:.1f}".format(cam["fps"]) if cam["fps"] is not None else "-"
                    seq = str(cam["seq"]) if cam["seq"] is not None else "-"
                    rows.append([name, dev["state"], spool, cam_id, fps] + stages + [seq, cam["labels"] or "-"])
        widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows]
        return "\n".join(lines) + "\n"


@click.command("watch")
@click.option("--broker", default="mqtt://localhost:1883", show_default=True, help="mqtt://host:port or mqtts://host:port.")
@click.option("--prefix", default="edge-agent", show_default=True, help="Topic prefix (mqtt.prefix of the agents).")
@click.option("--json", "as_json", is_flag=True, help="Print raw messages, one JSON object per line: {topic, payload}.")
@click.option("--count", type=int, default=0, help="Exit after this many messages (0: never).")
@click.option("--timeout", type=float, default=0.0, help="Exit after this many seconds (0: never).")
@click.option("--username", default=None, help="Broker user name (password: $EDGE_AGENT_MQTT_PASSWORD).")
@click.option("--ca", default=None, type=click.Path(exists=True, dir_okay=False), help="CA file for mqtts://.")
def watch(broker, prefix, as_json, count, timeout, username, ca):
    """Watch agents over MQTT: devices, FPS, latencies, detections."""
    import os

    from ..config import TlsConfig
    from ..publish import paho_compat
    from ..publish.mqtt import parse_url, tls_context

    tls, host, port, url_user = parse_url(broker)
    prefix = prefix.rstrip("/")
    board = Board()
    seen = [0]
    done = threading.Event()
    out_lock = threading.Lock()
    client = paho_compat.make_client("edge-agent-watch-" + uuid.uuid4().hex[:8])
    topics = ["{}/+/status".format(prefix), "{}/+/+/timing".format(prefix), "{}/+/+/detections".format(prefix),
              "{}/+/health".format(prefix), "{}/+/spool".format(prefix)]
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
        try:
            payload = json.loads(msg.payload.decode("utf-8"))
        except ValueError:
            payload = {"bytes": len(msg.payload)}
        parts = msg.topic[len(prefix) + 1:].split("/")
        if as_json:
            with out_lock:
                sys.stdout.write(json.dumps({"topic": msg.topic, "payload": payload}, separators=(",", ":")) + "\n")
                sys.stdout.flush()
        else:
            board.update(parts, payload)
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
