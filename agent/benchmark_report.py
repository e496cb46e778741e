"""Presenting a benchmark report (table, plot) and the MQTT subscriber of the end-to-end run."""

import json
import logging
import os
import threading
import time

from .errors import AgentError

log = logging.getLogger("edge_agent.benchmark")


class Subscriber(object):
    """An MQTT subscriber timing ``recv wall time - record timestamp`` of each detection record."""

    def __init__(self, url, topic):
        from .publish import paho_compat

        self.latencies = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        hostport = url.split("://", 1)[1].rstrip("/")
        host, _, port = hostport.partition(":")
        self.client = paho_compat.make_client("edge-agent-bench-{}".format(os.getpid()))
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(host, int(port or 1883), 30)
        self.client.loop_start()
        if not self._subscribed.wait(10.0):
            self.client.loop_stop()
            raise AgentError("--mqtt {}: could not subscribe to {} within 10 s".format(url, topic))

    def _on_message(self, client, userdata, msg):
        received = time.time()
        try:
            record = json.loads(msg.payload.decode("utf-8"))
            with self._lock:
                self.latencies.append((received - float(record["timestamp"])) * 1000.0)
        except Exception:  # never raise into paho's network thread
            log.debug("bench subscriber: unreadable message on %s", msg.topic)

    def close(self, expected, timeout=5.0):
        """Wait up to ``timeout`` for ``expected`` records; return the latencies in ms."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.latencies) < expected:
            time.sleep(0.05)
        self.client.loop_stop()
        self.client.disconnect()
        with self._lock:
            return list(self.latencies)


# --- presenting ---------------------------------------------------------------------------------


def lookup(entry, *path):
    """The value at ``path`` in a size entry (an int picks the throughput run of that many streams)."""
    node = entry
    for p in path:
        if node is None:
            return None
        if isinstance(p, int):
            node = next((r for r in node if r.get("streams") == p), None)
        else:
            node = node.get(p)
    return node


def _fmt(value, spec):
    if value is None:
        return "-"
    return format(value, spec)


def table_rows(report):
    """[(label, [cell per size])] of the side-by-side table."""
    entries = [report["sizes"][s] for s in report["sizes"]]
    streams = report["options"]["streams"]
    rows = [
        ("mAP50", [_fmt(lookup(e, "accuracy", "map50"), ".3f") for e in entries]),
        ("mAP50-95", [_fmt(lookup(e, "accuracy", "map50_95"), ".3f") for e in entries]),
        ("latency p50 ms (1 frame)", [_fmt(lookup(e, "latency", "stages", "total", "p50"), ".1f") for e in entries]),
        ("latency p95 ms", [_fmt(lookup(e, "latency", "stages", "total", "p95"), ".1f") for e in entries]),
        ("  preprocess p50 ms", [_fmt(lookup(e, "latency", "stages", "preprocess", "p50"), ".2f") for e in entries]),
        ("  infer p50 ms", [_fmt(lookup(e, "latency", "stages", "infer", "p50"), ".2f") for e in entries]),
        ("  postprocess p50 ms", [_fmt(lookup(e, "latency", "stages", "postprocess", "p50"), ".2f") for e in entries]),
        ("bare infer p50 ms", [_fmt(lookup(e, "baseline", "infer_ms", "p50"), ".2f") for e in entries]),
        ("latency / bare infer", [_fmt(lookup(e, "overhead", "latency_ratio"), ".2f") for e in entries]),
    ]
    for n in streams:
        rows.append(("FPS, {} stream{}".format(n, "s" if n > 1 else ""),
                     [_fmt(lookup(e, "throughput", n, "fps"), ".1f") for e in entries]))
    rows += [
        ("bare FPS (best setting)", [_fmt(lookup(e, "baseline", "fps"), ".1f") for e in entries]),
        ("  bare setting", [lookup(e, "baseline", "setting") or "-" for e in entries]),
        ("FPS / bare FPS", [_fmt(lookup(e, "overhead", "fps_ratio"), ".2f") for e in entries]),
        ("e2e MQTT p50 ms", [_fmt(lookup(e, "e2e", "latency_ms", "p50"), ".1f") for e in entries]),
        ("params (M)", [_fmt(None if lookup(e, "model", "params") is None else lookup(e, "model", "params") / 1e6, ".3f")
                        for e in entries]),
        ("GFLOPs", [_fmt(lookup(e, "model", "gflops"), ".3f") for e in entries]),
        ("build s", [_fmt(lookup(e, "build", "build_time_s"), ".1f") for e in entries]),
        ("train s", [_fmt(lookup(e, "model", "train_time_s"), ".0f") for e in entries]),
        ("peak RSS MB", [_fmt(e.get("peak_rss_mb"), ".0f") for e in entries]),
    ]
    if not any(lookup(e, "e2e") for e in entries):
        rows = [r for r in rows if not r[0].startswith("e2e")]
    return rows


def format_table(report):
    """The report as a plain-text table, sizes side by side, with a footer of how it was measured."""
    sizes = list(report["sizes"])
    rows = table_rows(report)
    width0 = max(len(r[0]) for r in rows)
    widths = [max([len(s)] + [len(r[1][i]) for r in rows]) for i, s in enumerate(sizes)]
    lines = ["  ".join([" " * width0] + [s.rjust(w) for s, w in zip(sizes, widths)])]
    for label, cells in rows:
        lines.append("  ".join([label.ljust(width0)] + [c.rjust(w) for c, w in zip(cells, widths)]))
    env, opts = report["environment"], report["options"]
    lines.append("")
    lines.append("{} on {} ({}, {} CPUs); {} timed frames after {} warm-up per run".format(
        env.get("runtime") or env["backend"], env["hostname"], env["machine"], env["cpu_count"], opts["frames"],
        opts["warmup"]))
    if report.get("dataset"):
        lines.append("mAP: {} with conf {} and max {} detections per image (speed runs use conf {})".format(
            report["dataset"], opts["map_conf_threshold"], opts["map_max_detections"], opts["conf_threshold"]))
    for s in sizes:
        if report["sizes"][s].get("error"):
            lines.append("{}: error: {}".format(s, report["sizes"][s]["error"]))
    if report.get("interrupted"):
        lines.append("interrupted: partial results")
    return "\n".join(lines)


def plot(report, path):
    """A PNG of accuracy (mAP50-95) against single-frame p50 latency, one point per size.

    Raises AgentError when matplotlib is missing (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AgentError("--plot needs matplotlib: pip install 'edge-agent[plot]'")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    points = 0
    for name, e in report["sizes"].items():
        x = lookup(e, "latency", "stages", "total", "p50")
        y = lookup(e, "accuracy", "map50_95")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
        points += 1
    ax.set_xlabel("single-frame latency p50 (ms)")
    ax.set_ylabel("mAP50-95")
    ax.set_title("accuracy vs latency ({})".format(report["environment"].get("runtime") or ""))
    ax.grid(True, alpha=0.3)
    ax.margins(0.25)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    if not points:
        log.warning("--plot %s: no size has both accuracy and latency; the plot is empty", path)
    return path
