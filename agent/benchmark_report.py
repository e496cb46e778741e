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


def fp32_of(report, entry):
    """The fp32 entry of ``entry``'s size (None when it is that entry or was not measured)."""
    if entry.get("precision", "fp32") == "fp32":
        return None
    return next((e for e in report["sizes"].values()
                 if e.get("size") == entry.get("size") and e.get("precision", "fp32") == "fp32"), None)


def versus_fp32(report, entry):
    """(mAP50-95 drop, bare speed-up) of ``entry`` against its size's fp32 entry; (None, None) when not
    comparable. The speed-up compares the bare loops, each at its best ONNX Runtime thread setting."""
    ref = fp32_of(report, entry)
    if ref is None:
        return None, None
    a, b = lookup(ref, "accuracy", "map50_95"), lookup(entry, "accuracy", "map50_95")
    fa, fb = lookup(ref, "baseline", "fps"), lookup(entry, "baseline", "fps")
    return (round(a - b, 4) if a is not None and b is not None else None,
            round(fb / fa, 3) if fa and fb else None)


def summary_rows(report):
    """[(header cells)] + one row per (size, precision): the trade-off in two dimensions."""
    rows = [["size", "precision", "mAP50-95", "drop vs fp32", "bare infer p50 ms", "speed-up vs fp32",
             "latency p50 ms", "FPS, 1 stream"]]
    for e in report["sizes"].values():
        drop, speedup = versus_fp32(report, e)
        rows.append([e.get("size") or "-", e.get("precision", "fp32"), _fmt(lookup(e, "accuracy", "map50_95"), ".3f"),
                     _fmt(None if drop is None else -drop, "+.3f"),
                     _fmt(lookup(e, "baseline", "infer_ms", "p50"), ".2f"),
                     "-" if speedup is None else "{:.2f}x".format(speedup),
                     _fmt(lookup(e, "latency", "stages", "total", "p50"), ".1f"), _fmt(lookup(e, "throughput", 1, "fps"), ".1f")])
    return rows


def table_rows(report):
    """[(label, [cell per size])] of the side-by-side table."""
    entries = [report["sizes"][s] for s in report["sizes"]]
    streams = report["options"]["streams"]
    rows = [
        ("precision", [e.get("precision", "fp32") for e in entries]),
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
    lines = []
    summary = summary_rows(report)
    if any(e.get("precision", "fp32") != "fp32" for e in report["sizes"].values()):
        # One row per (size, precision) first: accuracy drop and speed-up side by side.
        widths = [max(len(r[i]) for r in summary) for i in range(len(summary[0]))]
        for row in summary:
            lines.append("  ".join([c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]))
        lines.append("")
    rows = table_rows(report)
    width0 = max(len(r[0]) for r in rows)
    widths = [max([len(s)] + [len(r[1][i]) for r in rows]) for i, s in enumerate(sizes)]
    lines.append("  ".join([" " * width0] + [s.rjust(w) for s, w in zip(sizes, widths)]))
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


def pareto_front(points):
    """The points no other point beats on both axes (lower latency, higher mAP), by latency:
    ``points`` [(latency, map, label)]."""
    front, best = [], float("-inf")
    for x, y, label in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, label))
            best = y
    return front


def plot(report, path):
    """A PNG of accuracy (mAP50-95) against single-frame p50 latency: every (size, precision) point,
    and the Pareto front through the ones nothing beats on both.

    Raises AgentError when matplotlib is missing (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AgentError("--plot needs matplotlib: pip install 'edge-agent[plot]'")
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    points = []
    for name, e in report["sizes"].items():
        x = lookup(e, "latency", "stages", "total", "p50")
        y = lookup(e, "accuracy", "map50_95")
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=60, marker="o" if e.get("precision", "fp32") == "fp32" else "s")
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 6))
        points.append((x, y, name))
    front = pareto_front(points)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="0.4", linestyle="--",
                linewidth=1, label="Pareto front")
        ax.legend(loc="lower right")
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
