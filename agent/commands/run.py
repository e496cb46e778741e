"""``edge-agent run`` and ``edge-agent check-config``."""

import json
import os

import click

from ..config import load_config, to_dict
from ..config import check_sources as check_source_uris
from ..sources.base import redact
from .options import config_option, config_path_or_default



def overrides_from(source=None, size=None, model=None, max_frames=None, output=None, broker=None,
                   device_id=None, backend=None, realtime=None, loop=None):
    """The config overrides the command-line options stand for."""
    out = {}
    if model:
        # Any ONNX detector: a size of its own, named after the file.
        name = os.path.splitext(os.path.basename(model))[0]
        out["sizes"] = {name: {"onnx": os.path.abspath(model)}}
        out["size"] = name
    if size:
        out["size"] = size
    if source:
        cam = {"id": "cam0", "source": source}
        if realtime is not None:
            cam["realtime"] = realtime
        if loop is not None:
            cam["loop"] = loop
        out["cameras"] = [cam]
    if max_frames is not None:
        out["max_frames"] = max_frames
    if output is not None:
        out["output"] = {"jsonl": None if output in ("", "none") else output}
    if isinstance(broker, str):
        broker = (broker,)
    if broker:  # one URL, or several (--broker given again): a list, as mqtt.url takes
        out["mqtt"] = {"enabled": True, "url": broker[0] if len(broker) == 1 else list(broker)}
    if device_id:
        out["device_id"] = device_id
    if backend:
        out["backend"] = backend
    return out


def resolve(config_path, overrides, check_sources=True):
    """Load and validate the config as ``run`` needs it, opening no camera, model or GPU.

    With ``check_sources`` (run, check-config), also what run reads before it starts: the
    source URIs (parsed, files checked) and, with MQTT on, the password and TLS files.
    Raises ConfigError.
    """
    config_path = config_path_or_default(config_path)
    config = load_config(config_path, overrides)
    if check_sources:
        check_source_uris(config)
        if config.mqtt.enabled:
            from ..publish.broker import read_password, tls_context

            read_password(config.mqtt)
            tls_context(config.mqtt.tls)
    return config, config_path


@click.command("run")
@config_option
@click.option("--source", help="Override the cameras with one source URI (file, folder, csi://0, rtsp://, gst://...).")
@click.option("--size", help="Model size to run (a configured size name, or auto).")
@click.option("--model", type=click.Path(dir_okay=False), help="Run this ONNX detector instead of a configured size.")
@click.option("--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), help="Inference backend.")
@click.option("--max-frames", type=click.IntRange(min=0), help="Stop after N frames per camera.")
@click.option("--output", help="JSON-lines output: '-' for stdout, a file path, or 'none'.")
@click.option("--broker", multiple=True,
              help="Publish over MQTT to this broker: mqtt://host[:port] or mqtts://host[:port]; again for a "
                   "list (failover, round-robin).")
@click.option("--device-id", help="Device id in records and MQTT topics (default: the host name).")
@click.option("--realtime/--as-fast-as-possible", default=None,
              help="With --source FILE: pace at the file's frame rate, or read as fast as possible.")
@click.option("--loop/--no-loop", default=None, help="With --source FILE: start again at the end.")
def run(config_path, source, size, model, backend, max_frames, output, broker, device_id, realtime, loop):
    """Run the agent: frames in, detections and timing out, until the sources end or SIGTERM."""
    from ..publish import make_sinks
    from ..service import run_agent

    overrides = overrides_from(source, size, model, max_frames, output, broker, device_id, backend, realtime, loop)
    cli_level = (click.get_current_context().find_root().obj or {}).get("log_level")
    if cli_level:  # --log-level is one more override: it wins over the file, on reload too
        overrides["log_level"] = cli_level
    config, config_path = resolve(config_path, overrides)
    code = run_agent(config, make_sinks(config), config_path=config_path, overrides=overrides)
    raise click.exceptions.Exit(code)


@click.command("check-config")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the resolved configuration as JSON.")
def check_config(config_path, as_json):
    """Validate the configuration (exit 78 naming the bad key) and print it resolved."""
    config, path = resolve(config_path, {})
    if as_json:
        data = to_dict(config)
        urls = [redact(u) for u in config.mqtt.urls]
        data["mqtt"]["url"] = urls[0] if isinstance(config.mqtt.url, str) else urls
        for cam in data["cameras"]:
            cam["source"] = redact(cam["source"])
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    from ..sources import describe_source

    click.echo("config: {}".format(path or "embedded defaults"))
    click.echo("device: {}  backend: {}  size: {}".format(config.device_id, config.backend, config.size))
    for name, size in sorted(config.sizes.items()):
        click.echo("size {}: {}".format(name, size.onnx))
    for cam in config.cameras:
        click.echo("camera {}: {}".format(cam.id, describe_source(cam.source)))
    click.echo("mqtt: {}".format(", ".join(redact(u) for u in config.mqtt.urls) if config.mqtt.enabled else "off"))
    click.echo("ok")
