"""``edge-agent simulate``: a fleet of virtual devices publishing replayed records (agent.fleet)."""

import json

import click


def _brokers(ctx, param, values):
    from ..fleet import SimulationError, parse_brokers

    try:
        parse_brokers(values)
    except SimulationError as e:
        raise click.BadParameter(str(e).split(" ", 1)[1], ctx=ctx, param=param)
    return values


@click.command("simulate")
@click.option("--devices", type=click.IntRange(min=1), default=10, show_default=True, help="Virtual devices.")
@click.option("--fps", type=click.FloatRange(min=0.01), default=10.0, show_default=True,
              help="Records per second of each device.")
@click.option("--broker", "brokers", multiple=True, default=("mqtt://localhost:1883",), show_default=True,
              callback=_brokers, help="mqtt://host[:port]; repeat it to spread the devices round-robin.")
@click.option("--duration", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds of publishing.")
@click.option("--prefix", default="edge-agent", show_default=True, help="Topic prefix (the agents' mqtt.prefix).")
@click.option("--device-prefix", default="sim", show_default=True, help="Device ids are PREFIX-0001, PREFIX-0002, ...")
@click.option("--qos", type=click.IntRange(0, 1), default=1, show_default=True, help="QoS of the detection records.")
@click.option("--replay", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON lines (.gz or not) of recorded detection records (default: agent/fleet/replay.jsonl.gz).")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Seconds for every device to connect; exit 1 naming the first that did not.")
@click.option("--drop-at-end", is_flag=True,
              help="End by dropping the connections (the broker publishes every last will), not by a clean stop.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON line.")
def simulate(devices, fps, brokers, duration, prefix, device_prefix, qos, replay, connect_timeout, drop_at_end,
             as_json):
    """Run DEVICES virtual agents, each publishing FPS detection records a second.

    Each device has its own client, device id, boot id, retained status with a
    last will and seq, as the agent has (docs/mqtt.md); the records are replayed
    from a recorded run, re-stamped: no inference. Prints what was published
    and the CPU time publishing cost (docs/fleet.md).
    """
    from ..fleet import load_replay, simulate as run

    kwargs = {"prefix": prefix, "device_prefix": device_prefix, "qos": qos, "drop_at_end": drop_at_end,
              "connect_timeout": connect_timeout}
    if replay:
        kwargs["replay"] = load_replay(replay)
    summary = run(devices, fps, list(brokers), duration, **kwargs)
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo("{devices} devices x {fps:g} fps for {duration_s} s: {published} records published, {acked} acked, "
               "{rate} records/s".format(**summary))
    click.echo("CPU: {cpu_s} s, {cpu_us_per_record} us per record, {core_per_1000_rps} of a core per 1,000 records/s; "
               "max lag {max_lag_s} s, {reconnects} reconnects".format(**summary))
