"""``edge-agent doctor``."""

import json

import click

from ..config import DEFAULT_CONFIG_PATH, load_config


@click.command("doctor")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (default: {} if it exists, else the embedded defaults).".format(DEFAULT_CONFIG_PATH))
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(config_path, as_json):
    """Check Python, OpenCV, ONNX Runtime, TensorRT, CUDA, cameras, broker and engines; print fixes.

    Exits 1 only when something blocks the configured backend, model or cameras.
    """
    import os

    from ..doctor import format_check, run_checks

    if config_path is None and os.path.isfile(DEFAULT_CONFIG_PATH):
        config_path = DEFAULT_CONFIG_PATH
    config = load_config(config_path, check_files=False)
    checks = run_checks(config)
    blocking = [c for c in checks if c.blocking]
    if as_json:
        click.echo(json.dumps({"config": config_path, "ok": not blocking,
                               "checks": [c._asdict() for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(format_check(c))
        click.echo("{} blocking problem(s)".format(len(blocking)) if blocking else "ready to run")
    raise click.exceptions.Exit(1 if blocking else 0)
