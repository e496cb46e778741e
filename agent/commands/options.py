"""What every command shares: one ``--config`` option and one rule for the default file."""

import os

import click

from ..config import DEFAULT_CONFIG_PATH

# A plain string, not click.Path(dir_okay=False): read_yaml names a bad path in a ConfigError
# (exit 78, like every other config problem) where click would exit 2.
config_option = click.option(
    "--config", "config_path", default=None,
    help="YAML config (default: {} if it exists, else the embedded demo defaults).".format(DEFAULT_CONFIG_PATH))


def config_path_or_default(path):
    """``path``; else the service's config when it exists; else None (the embedded defaults)."""
    if path is None and os.path.isfile(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return path
