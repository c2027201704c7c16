"""``iotdata gateway``: run the MQTT-to-Kafka bridge until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from iotdata._cliargs import (
    add_kafka_security,
    add_mqtt_tls,
    kafka_security,
    mqtt_url,
    mqtt_with_tls,
    port,
    positive_int,
    seconds,
    topics,
)
from iotdata.errors import InvalidInputError

__all__ = ["add_gateway"]

_DESCRIPTION = """\
Forward device telemetry from MQTT to Kafka. Subscribes to PREFIX/+/telemetry and
PREFIX/+/state with the shared subscription $share/GROUP/..., so several gateways with the same
--group split the load; each needs its own --client-id, kept across restarts (it names the
persistent session in which the broker keeps messages while the gateway is away). Valid frames
go unchanged to KAFKA_PREFIX.telemetry keyed by device id; presence messages to
KAFKA_PREFIX.devices; malformed, oversized and spoofed messages to KAFKA_PREFIX.dlq with a
reason header. An MQTT message is acknowledged only after Kafka acknowledged its record.
Exit status: 0 after Ctrl-C or SIGTERM, 1 when Kafka cannot be reached or fails a delivery,
2 for bad arguments."""


def add_gateway(commands: Any) -> None:
    """Add the ``gateway`` subcommand to the ``iotdata`` parser."""
    parser = commands.add_parser(
        "gateway",
        help="forward device telemetry from MQTT to Kafka, without loss",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--mqtt",
        type=mqtt_url,
        default=os.environ.get("IOTDATA_MQTT_URL") or "mqtt://127.0.0.1:1883",
        metavar="URL",
        help="the broker (default $IOTDATA_MQTT_URL or mqtt://127.0.0.1:1883)",
    )
    parser.add_argument(
        "--kafka",
        default=os.environ.get("IOTDATA_KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
        metavar="BOOTSTRAP",
        help="Kafka bootstrap servers (default $IOTDATA_KAFKA_BOOTSTRAP or 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--prefix", type=topics, default=None, help="MQTT topic prefix (default iotdata)"
    )
    parser.add_argument(
        "--kafka-prefix", default=None, help="Kafka topic prefix (default: the MQTT prefix)"
    )
    parser.add_argument("--group", default="iotdata-gateway", help="shared subscription group")
    parser.add_argument(
        "--client-id", help="MQTT client id, stable per gateway (default GROUP-HOSTNAME)"
    )
    parser.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=1000,
        metavar="N",
        help="messages received and not yet in Kafka (default 1000)",
    )
    parser.add_argument(
        "--create-topics",
        action="store_true",
        help="create the three Kafka topics when missing (see --partitions)",
    )
    parser.add_argument(
        "--partitions",
        type=positive_int,
        default=12,
        metavar="N",
        help="partitions of topics created by --create-topics (default 12)",
    )
    parser.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics on PORT (0: a free port, shown at start)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address the metrics are served on (default 127.0.0.1; 0.0.0.0 for all)",
    )
    parser.add_argument(
        "--stats-every",
        type=seconds,
        default=10.0,
        metavar="SECONDS",
        help="print a statistics line to stderr this often (default 10)",
    )
    add_mqtt_tls(parser)
    add_kafka_security(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from iotdata.gateway import Gateway, GatewaySettings, KafkaTopics  # noqa: PLC0415
    from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics  # noqa: PLC0415
    from iotdata.mqtt import Topics  # noqa: PLC0415

    mqtt_topics = args.prefix or Topics()
    try:
        kafka_topics = KafkaTopics.with_prefix(args.kafka_prefix or mqtt_topics.prefix)
        security = kafka_security(args)
        mqtt = mqtt_with_tls(args.mqtt, args)
        if args.create_topics:
            names = (kafka_topics.telemetry, kafka_topics.devices, kafka_topics.dead_letters)
            specs = [TopicSpec(name=name, partitions=args.partitions) for name in names]
            await ensure_topics(args.kafka, *specs, security=security)
        producer = ProducerSettings(
            bootstrap=args.kafka, client_id=args.client_id or args.group, security=security
        )
        settings = GatewaySettings(
            mqtt=mqtt,
            kafka=producer,
            topics=mqtt_topics,
            kafka_topics=kafka_topics,
            group=args.group,
            client_id=args.client_id,
            max_in_flight=args.max_in_flight,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        )
    except InvalidInputError as exc:
        print(f"iotdata gateway: error: {exc}", file=sys.stderr)
        return 2
    gateway = await Gateway.start(settings)
    try:
        await asyncio.to_thread(gateway.wait_ready, 60)
    except BaseException:
        await gateway.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    address = gateway.metrics_address
    where = f"; metrics on http://{address[0]}:{address[1]}/metrics" if address else ""
    print(f"iotdata gateway: {settings.session_id()} running{where}", file=sys.stderr, flush=True)
    reporter = loop.create_task(_report(gateway, args.stats_every))
    failed = loop.create_task(gateway.wait())
    try:
        await asyncio.wait([failed, loop.create_task(stop.wait())], return_when="FIRST_COMPLETED")
    finally:
        reporter.cancel()
        await gateway.close()
    if failed.done() and failed.exception() is not None:
        raise failed.exception()  # type: ignore[misc]
    failed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await failed
    print(f"iotdata gateway: stopped; {_line(gateway)}", file=sys.stderr)
    return 0


async def _report(gateway: Any, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        print(f"iotdata gateway: {_line(gateway)}", file=sys.stderr, flush=True)


def _line(gateway: Any) -> str:
    stats = gateway.statistics()
    p99 = "-" if stats.latency_p99 is None else f"{stats.latency_p99 * 1000:.0f} ms"
    return (
        f"received {stats.received}, forwarded {stats.forwarded} "
        f"({stats.forwarded_readings} readings), dead-lettered {stats.dead_lettered}, "
        f"in flight {stats.in_flight}, Kafka p99 {p99}, "
        f"{'connected' if stats.connected else 'disconnected'}"
    )
