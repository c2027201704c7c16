"""``iotdata inspect``: decode and pretty-print telemetry frames from files, the embedded log,
a Kafka topic or an MQTT topic."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from iotdata._cliargs import (
    add_kafka_security,
    add_mqtt_tls,
    kafka_security,
    mqtt_url,
    mqtt_with_tls,
    positive_float,
    positive_int,
)
from iotdata.kafka._security import KafkaSecurity

__all__ = ["add_inspect"]

_DESCRIPTION = """\
Decode telemetry frames (the iotdata wire format) and print what is in them: the device, its
metrics, readings, time and seq ranges, bytes per reading, and the first readings. Frames come
from files (one frame a file; - for standard input), the embedded log's folder (--log), a
Kafka topic (--kafka, from its beginning to its current end) or an MQTT topic filter (--mqtt,
as they arrive, until --max frames or --seconds). A frame that does not decode is reported
with the reason, and the exit status is then 1.
"""


def add_inspect(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="decode and print telemetry frames from files, the embedded log, Kafka or MQTT",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inspect.add_argument("files", nargs="*", type=Path, help="files of one frame each (- : stdin)")
    inspect.add_argument("--log", type=Path, help="an embedded log's folder (needs --topic)")
    inspect.add_argument("--kafka", help="Kafka bootstrap servers (needs --topic)")
    inspect.add_argument("--mqtt", type=mqtt_url, help="an MQTT broker URL (needs --topic)")
    inspect.add_argument("--topic", help="the log or Kafka topic, or the MQTT topic filter")
    inspect.add_argument(
        "--readings", type=int, default=3, help="readings shown per frame (default 3; 0: none)"
    )
    inspect.add_argument("--max", type=positive_int, help="stop after this many frames")
    inspect.add_argument(
        "--seconds", type=positive_float, default=10.0, help="how long to listen on MQTT (10)"
    )
    inspect.add_argument("--json", action="store_true", help="one JSON object per reading instead")
    add_mqtt_tls(inspect)
    add_kafka_security(inspect)
    inspect.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    sources = sum(bool(x) for x in (args.files, args.log, args.kafka, args.mqtt))
    if sources != 1:
        return _usage("give files, or one of --log, --kafka, --mqtt")
    if not args.files and not args.topic:
        return _usage("--log, --kafka and --mqtt need --topic")
    from iotdata.codec import Decoder  # noqa: PLC0415

    printer = _Printer(Decoder(), args.readings, args.json)
    if args.files:
        frames: Any = _files(args.files)
    elif args.log:
        frames = _log(args.log, args.topic)
    elif args.kafka:
        frames = asyncio.run(_kafka(args.kafka, args.topic, args.max, kafka_security(args)))
    else:
        frames = _mqtt(mqtt_with_tls(args.mqtt, args), args.topic, args.max, args.seconds)
    for count, (where, frame) in enumerate(frames, 1):
        printer.show(where, frame)
        if args.max is not None and count >= args.max:
            break
    if not args.json:
        print(f"{printer.frames} frames, {printer.readings:,} readings, {printer.bad} bad")
    return 1 if printer.bad else 0


def _usage(message: str) -> int:
    print(f"iotdata inspect: error: {message}", file=sys.stderr)
    return 2


class _Printer:
    def __init__(self, decoder: Any, readings: int, as_json: bool) -> None:
        self.decoder, self.shown, self.as_json = decoder, readings, as_json
        self.frames = self.readings = self.bad = 0

    def show(self, where: str, frame: bytes) -> None:
        from iotdata.errors import DecodeError  # noqa: PLC0415

        try:
            batch = self.decoder.decode(frame)
        except DecodeError as exc:
            self.bad += 1
            print(
                f"{where}: not a frame: {exc}", file=sys.stdout if not self.as_json else sys.stderr
            )
            return
        self.frames += 1
        self.readings += len(batch)
        if self.as_json:
            from iotdata.sinks._json import strict_value  # noqa: PLC0415

            for r in batch:
                document = {"device_id": r.device_id, "metric": r.metric, "ts": r.ts}
                document |= {"value": strict_value(r.value), "seq": r.seq}
                print(json.dumps(document, allow_nan=False))
            return
        ts = [t for column in batch.columns for t in column.ts]
        seq = [s for column in batch.columns for s in column.seq]
        metrics = ", ".join(column.metric for column in batch.columns)
        span = f"{_time(min(ts))} .. {_time(max(ts))}" if ts else "no readings"
        per = f" ({len(frame) / len(batch):.1f} a reading)" if len(batch) else ""
        print(
            f"{where}: {batch.device_id}: {len(batch):,} readings of {metrics}; {span}; "
            f"seq {min(seq, default=0)}..{max(seq, default=0)}; {len(frame):,} bytes{per}"
        )
        for index, r in enumerate(batch):
            if index >= self.shown:
                break
            print(f"    {_time(r.ts)}  {r.metric} = {r.value!r}  (seq {r.seq})")


def _time(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1e6, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def _files(paths: list[Path]) -> Iterator[tuple[str, bytes]]:
    from iotdata.errors import InvalidInputError  # noqa: PLC0415

    for path in paths:
        if str(path) == "-":
            yield "stdin", sys.stdin.buffer.read()
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
        yield str(path), data


def _log(folder: Path, topic: str) -> Iterator[tuple[str, bytes]]:
    from iotdata.errors import InvalidInputError  # noqa: PLC0415
    from iotdata.local import LocalLog  # noqa: PLC0415

    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not an embedded log's folder")
    with LocalLog.open(folder) as log:
        if topic not in log.topics():
            known = ", ".join(sorted(log.topics())) or "none"
            raise InvalidInputError(f"no topic {topic!r} in {folder} (topics: {known})")
        for partition in range(log.partitions(topic)):
            offset = log.start_offset(topic, partition)
            while records := log.read(topic, partition, offset, 500):
                for record in records:
                    yield f"{topic}-{partition}@{record.offset}", record.value
                offset = records[-1].offset + 1


async def _kafka(
    bootstrap: str, topic: str, most: int | None, security: KafkaSecurity
) -> list[tuple[str, bytes]]:
    """From the beginning of every partition to the end it had when we looked."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    from iotdata.errors import ConnectError, InvalidInputError  # noqa: PLC0415
    from iotdata.kafka._connect import start_client  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **security.client_options()
    )
    out: list[tuple[str, bytes]] = []
    try:
        await asyncio.wait_for(start_client(consumer, bootstrap), 30)
    except TimeoutError:
        raise ConnectError(f"cannot reach Kafka at {bootstrap}: no answer in 30 s") from None
    try:
        if topic not in await consumer.topics():
            raise InvalidInputError(f"no topic {topic!r} in the Kafka cluster at {bootstrap}")
        consumer.subscribe([topic])  # no group: every partition is ours
        for _ in range(100):
            if consumer.assignment():
                break
            await asyncio.sleep(0.1)
        assigned = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        left = {tp for tp in assigned if ends[tp] > 0}
        while left and (most is None or len(out) < most):
            batches = await consumer.getmany(*left, timeout_ms=1000)
            for tp, records in batches.items():
                out.extend(
                    (f"{topic}-{tp.partition}@{record.offset}", record.value)
                    for record in records
                    if record.offset < ends[tp]
                )
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return out


def _mqtt(settings: Any, topic_filter: str, most: int | None, seconds: float) -> list[Any]:
    import uuid  # noqa: PLC0415

    from iotdata.mqtt import MqttConnection  # noqa: PLC0415

    got: list[tuple[str, bytes]] = []
    enough = threading.Event()

    def arrived(message: Any) -> None:
        got.append((message.topic, bytes(message.payload)))
        if most is not None and len(got) >= most:
            enough.set()

    connection = MqttConnection.start(
        settings, f"iotdata-inspect-{uuid.uuid4().hex[:8]}", subscriptions={topic_filter: arrived}
    )
    try:
        connection.wait_connected(10)
        enough.wait(seconds)
    finally:
        connection.close()
    return list(got)
