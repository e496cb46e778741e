"""``edge-agent benchmark``: the fast-vs-accurate trade-off of the configured sizes on this device."""

import os
import sys

import click

from .options import config_option


def _parse_streams(ctx, param, value):
    try:
        counts = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        counts = ()
    if not counts or any(n < 1 for n in counts):
        raise click.BadParameter("expected camera counts like 1,2,4, got {!r}".format(value))
    return tuple(sorted(set(counts)))


class ProgressBar(object):
    """A one-line ``\\r`` progress bar on a TTY stderr; silent otherwise (the log has one line per step)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.shown = False

    def __call__(self, event):
        if not self.enabled:
            return
        if event[0] == "tick":
            label, done, total = event[1], event[2], max(1, event[3])
            filled = int(30 * min(done, total) / total)
            self.stream.write("\r{} [{}{}] {}/{}".format(label, "#" * filled, " " * (30 - filled), done, total))
            self.stream.flush()
            self.shown = True
        else:
            self.clear()

    def clear(self):
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


@click.command("benchmark")
@config_option
@click.option("--size", "sizes", multiple=True, help="A size to measure; repeat for several (default: all configured).")
@click.option("--dataset", default=None,
              help="COCO split folder (instances.json + images/) or an instances.json (default: data/demo/val).")
@click.option("--no-accuracy", is_flag=True, help="Speed and cost only: no dataset, no mAP.")
@click.option("--frames", type=click.IntRange(min=2), default=100, show_default=True,
              help="Timed frames per speed run, and the most images used for mAP.")
@click.option("--warmup", type=click.IntRange(min=1), default=5, show_default=True,
              help="Warm-up frames per run (excluded, reported separately).")
@click.option("--streams", default="1,2", callback=_parse_streams, show_default=True,
              help="Parallel camera counts for the throughput runs.")
@click.option("--mqtt", "mqtt_url", default=None,
              help="Also measure end to end: capture -> detection received by an MQTT subscriber (mqtt://host:port).")
@click.option("--e2e", is_flag=True, help="Like --mqtt, with the broker of the config's mqtt.url.")
@click.option("--no-build", is_flag=True, help="Do not time an engine build when no manifest records one.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the JSON report here.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG of mAP50-95 against latency (needs matplotlib).")
@click.option("--no-save", is_flag=True, help="Do not store the report as <state_dir>/benchmark.json (used by size: auto).")
@click.option("--inline", is_flag=True, help="Measure in this process (no peak-memory figure; for debugging).")
def benchmark(config_path, sizes, dataset, no_accuracy, frames, warmup, streams, mqtt_url, e2e, no_build, json_path,
              plot_path, no_save, inline):
    """Measure accuracy (mAP), speed (latency, FPS, parallel streams) and cost of model sizes.

    Everything runs through the agent's own preprocessing, backend, NMS and pipeline.
    Ctrl-C stops cleanly, prints what was measured and exits 130.
    """
    from .. import benchmark as bench
    from ..config import data_path
    from ..errors import ConfigError
    from .run import resolve

    config, _ = resolve(config_path, {}, check_sources=False)
    names = list(sizes) or sorted(config.sizes, key=lambda s: (s != "fast", s))
    for name in names:
        if name not in config.sizes:
            raise ConfigError("--size: {!r} is not a configured size (known: {})".format(
                name, ", ".join(sorted(config.sizes))))
        if not os.path.isfile(config.sizes[name].onnx):
            raise ConfigError("sizes.{}.onnx: file not found: {}".format(name, config.sizes[name].onnx))
    if e2e and not mqtt_url:
        mqtt_url = config.mqtt.urls[0]
    if mqtt_url and not mqtt_url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError("--mqtt: expected mqtt://host[:port], got {!r}".format(mqtt_url))
    if no_accuracy:
        dataset = None
    elif dataset is None:
        dataset = data_path("data", "demo", "val")
        if not os.path.isfile(os.path.join(dataset, "instances.json")):
            raise ConfigError("--dataset: the demo val set is missing at {}; generate it with: "
                              "python scripts/make_dataset.py (or pass --no-accuracy)".format(dataset))
    if dataset is not None:
        from ..coco import evaluator_name, open_dataset

        open_dataset(dataset)
        evaluator_name()  # fail before measuring anything when no evaluator is installed
    options = bench.Options(dataset=dataset, frames=frames, warmup=warmup, streams=streams, mqtt_url=mqtt_url,
                            measure_build=not no_build)
    bar = ProgressBar()
    try:
        report = bench.run_benchmark(config, names, options, progress=bar, isolate=not inline)
    except bench.Interrupted as e:
        bar.clear()
        click.echo(bench.format_table(e.report))
        if json_path:
            bench.save_report(e.report, json_path)
        click.echo("edge-agent: benchmark interrupted; partial results above", err=True)
        raise click.exceptions.Exit(130)
    bar.clear()
    click.echo(bench.format_table(report))
    if json_path:
        bench.save_report(report, json_path)
    if plot_path:
        bench.plot(report, plot_path)
    if not no_save:
        path = config.auto_size.report or os.path.join(config.state_dir, "benchmark.json")
        bench.save_report(report, path)
        click.echo("report saved to {} (used by size: auto)".format(path), err=True)
    failed = [n for n in names if report["sizes"][n].get("error")]
    if failed:
        raise click.exceptions.Exit(1)

