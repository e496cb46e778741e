"""``edge-agent ctl``: send a command to an agent over MQTT and print its replies."""

import json
import os

import click


@click.command("ctl")
@click.option("--broker", default="mqtt://localhost:1883", show_default=True,
              help="mqtt://[user@]host[:port] or mqtts://...")
@click.option("--device", required=True, help="The agent's device_id.")
@click.option("--prefix", default="edge-agent", show_default=True, help="Topic prefix (the agent's mqtt.prefix).")
@click.option("--protocol", "mqtt_protocol", type=click.Choice(["3.1.1", "5"]), default="3.1.1", show_default=True,
              help="MQTT version; 5 uses a response topic and reports an ACL refusal at once.")
@click.option("--username", default=None, help="Broker user name (an operator's, whom the ACL lets write +/+/cmd/#).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the password (default: $EDGE_AGENT_MQTT_PASSWORD).")
@click.option("--ca", default=None, type=click.Path(exists=True, dir_okay=False), help="CA file for mqtts://.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for the broker and for the first reply.")
@click.option("--wait", type=click.FloatRange(min=0.1), default=600.0, show_default=True,
              help="Seconds to wait for the final reply once the command is accepted (benchmark: minutes).")
@click.option("--json", "as_json", is_flag=True, help="Print each reply as one JSON line.")
@click.argument("command")
@click.argument("arg", required=False)
def ctl(broker, device, prefix, mqtt_protocol, username, password_file, ca, timeout, wait, as_json, command, arg):
    """Send COMMAND [ARG] to an agent and print its replies.

    \b
    Commands: size NAME|auto, snapshot [CAMERA], reload, status, benchmark.
    Exit status: 0 ok, 1 the agent answered with an error, 3 no answer
    (the message says what to check). The agent acts on commands only
    with mqtt.commands: true (docs/mqtt.md).
    """
    from ..control.client import format_reply, send_command

    password = os.environ.get("EDGE_AGENT_MQTT_PASSWORD")
    if password_file:
        with open(password_file) as f:
            password = f.read().rstrip("\r\n")
    context = None
    if ca:
        from ..config import TlsConfig
        from ..publish.broker import tls_context

        context = tls_context(TlsConfig(ca=ca))

    def show(reply):
        click.echo(json.dumps(reply, sort_keys=True) if as_json else format_reply(reply))

    final = send_command(broker, device, command, arg, prefix=prefix, mqtt_protocol=mqtt_protocol,
                         username=username, password=password, tls_context=context, timeout=timeout, wait=wait,
                         on_reply=show)
    if final.get("status") != "ok":
        raise click.exceptions.Exit(1)

