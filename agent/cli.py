"""The ``edge-agent`` command line: one click group, one module per command.

Commands load lazily (``agent/commands/<name>.py``) so ``edge-agent --help``
stays fast and works without tensorrt, pycuda or onnxruntime installed.
Errors derived from AgentError print one line and exit with their code (78 for
configuration errors); nothing else prints a traceback unless ``--debug``.
"""

import importlib
import logging
import sys

import click

from . import __version__
from .errors import AgentError

# name -> (module, attribute, one-line help)
COMMANDS = {
    "run": ("agent.commands.run", "run", "Run the agent: cameras -> detections -> JSON lines / MQTT."),
    "check-config": ("agent.commands.run", "check_config", "Validate the configuration; print it resolved."),
    "build-engine": ("agent.commands.build_engine", "build_engine", "Build the engine of a model size (TensorRT, or ONNX Runtime's optimized model)."),
    "benchmark": ("agent.commands.benchmark", "benchmark", "Measure accuracy and speed of model sizes on a labelled dataset."),
    "watch": ("agent.commands.watch", "watch", "Watch agents over MQTT: devices, FPS, latencies, detections."),
    "ctl": ("agent.commands.ctl", "ctl", "Send a command to an agent over MQTT (size, snapshot, reload, status, benchmark)."),
    "simulate": ("agent.commands.simulate", "simulate", "Simulate a fleet of devices publishing replayed records (load test)."),
    "doctor": ("agent.commands.doctor", "doctor", "Check this machine for what the agent needs, and print fixes."),
    "install-service": ("agent.commands.install", "install_service", "Install and enable the systemd service (root)."),
    "uninstall-service": ("agent.commands.install", "uninstall_service", "Remove the systemd service (root)."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported only when invoked."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def setup_logging(level):
    """One line per event on stderr (journald adds its own timestamp under systemd)."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if sys.stderr.isatty():
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, stream=sys.stderr)


@click.group(cls=LazyGroup, context_settings={"auto_envvar_prefix": "EDGE_AGENT_CLI"})
@click.version_option(__version__, prog_name="edge-agent")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None,
              help="Log level (default: the config's log_level, else info).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx, log_level, debug):
    """edge-agent: real-time detection on Jetson, x86 GPUs and CPUs, published over MQTT."""
    ctx.obj = {"log_level": log_level, "debug": debug}
    setup_logging(log_level or "info")


def main(argv=None):
    """Entry point: run the CLI, turning AgentError into one line and its exit code."""
    try:
        # standalone_mode=False returns ctx.exit(n)'s code instead of raising Exit.
        rv = cli.main(args=argv, prog_name="edge-agent", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except AgentError as e:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        # One line whatever the message holds (a key or path with a newline, a NUL, ...).
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
        click.echo("edge-agent: error: {}".format(text), err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
