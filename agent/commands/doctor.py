"""``edge-agent doctor``."""

import json

import click

from ..config import load_config
from .options import config_option, config_path_or_default


@click.command("doctor")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
def doctor(config_path, as_json):
    """Check Python, OpenCV, ONNX Runtime, TensorRT, CUDA, cameras, broker and engines; print fixes.

    Exits 1 only when something blocks the configured backend, model or cameras.
    """
    import os

    from .. import service_checks
    from ..config import env_problems
    from ..doctor import format_check, run_checks

    config_path = config_path_or_default(config_path)
    # An unknown EDGE_AGENT_* variable is one check among the others, not the end of doctor.
    environ = {k: v for k, v in os.environ.items() if not env_problems({k: v})}
    config = load_config(config_path, environ=environ, check_files=False)
    checks = run_checks(config)
    checks.append(service_checks.check_environment(os.environ, "this shell"))
    checks += service_checks.run(config_path)
    blocking = [c for c in checks if c.blocking]
    if as_json:
        click.echo(json.dumps({"config": config_path, "ok": not blocking,
                               "checks": [c._asdict() for c in checks]}, indent=2))
    else:
        for c in checks:
            click.echo(format_check(c))
        click.echo("{} blocking problem(s)".format(len(blocking)) if blocking else "ready to run")
    raise click.exceptions.Exit(1 if blocking else 0)
