"""``iotdata inspect``: decode and pretty-print telemetry frames from files, the embedded log,
a Kafka topic or an MQTT topic."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncGenerator, Generator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from iotdata._cliargs import (
    add_kafka_security,
    add_mqtt_tls,
    kafka_security,
    mqtt_url,
    mqtt_with_tls,
    positive_int,
    seconds,
)
from iotdata.errors import DecodeError, InvalidInputError
from iotdata.kafka._security import KafkaSecurity
from iotdata.model import ts_to_datetime

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
        "--seconds", type=seconds, default=10.0, help="how long to listen on MQTT (10)"
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

    decoder = Decoder()
    printer = _Printer(decoder, args.readings, args.json, args.max)
    if args.kafka:
        asyncio.run(_show_kafka(printer, args.kafka, args.topic, kafka_security(args)))
    elif args.files:
        printer.show_all(_files(args.files, decoder.limits.max_frame_bytes))
    elif args.log:
        printer.show_all(_log(args.log, args.topic))
    else:
        settings = mqtt_with_tls(args.mqtt, args)
        with contextlib.closing(_mqtt(settings, args.topic, args.max, args.seconds)) as frames:
            printer.show_all(frames)
    if not args.json:
        print(f"{printer.frames} frames, {printer.readings:,} readings, {printer.bad} bad")
    return 1 if printer.bad else 0


def _usage(message: str) -> int:
    print(f"iotdata inspect: error: {message}", file=sys.stderr)
    return 2


#: What a source gives for each frame: where it came from, and its bytes, or why there are none.
Frame = tuple[str, bytes | DecodeError]


class _Printer:
    def __init__(self, decoder: Any, readings: int, as_json: bool, most: int | None) -> None:
        self.decoder, self.shown, self.as_json, self.most = decoder, readings, as_json, most
        self.frames = self.readings = self.bad = 0

    @property
    def done(self) -> bool:
        """Whether ``--max`` frames, good or bad, have been shown."""
        return self.most is not None and self.frames + self.bad >= self.most

    def show_all(self, frames: Iterable[Frame]) -> None:
        for where, frame in frames:
            self.show(where, frame)
            if self.done:
                break

    def show(self, where: str, frame: bytes | DecodeError) -> None:
        try:
            if isinstance(frame, DecodeError):
                raise frame
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
        per = f" ({_per_reading(len(frame) / len(batch))} a reading)" if len(batch) else ""
        print(
            f"{where}: {batch.device_id}: {len(batch):,} readings of {metrics}; {span}; "
            f"seq {min(seq, default=0)}..{max(seq, default=0)}; {len(frame):,} bytes{per}"
        )
        for index, r in enumerate(batch):
            if index >= self.shown:
                break
            print(f"    {_time(r.ts)}  {r.metric} = {r.value!r}  (seq {r.seq})")


def _per_reading(size: float) -> str:
    return f"{size:.1f}" if size >= 1 else f"{size:.3f}"


def _time(ts: int) -> str:
    """ISO 8601 UTC, to the microsecond; outside the years 1 to 9999, the integer itself."""
    try:
        moment = ts_to_datetime(ts)
    except InvalidInputError:  # outside the years 1 to 9999
        return f"{ts}us"
    return moment.isoformat().replace("+00:00", "Z")


def _files(paths: list[Path], limit: int) -> Iterator[Frame]:
    """Each file's bytes, reading no more than a frame of ``limit`` bytes can hold."""
    for path in paths:
        if str(path) == "-":
            yield "stdin", _read_frame(sys.stdin.buffer, limit)
            continue
        try:
            with path.open("rb") as handle:
                data = _read_frame(handle, limit)
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
        yield str(path), data


def _read_frame(handle: IO[bytes], limit: int) -> bytes | DecodeError:
    data = handle.read(limit + 1)
    if len(data) <= limit:
        return data
    size = os.fstat(handle.fileno()).st_size if handle.seekable() else 0
    what = f"{size:,} bytes" if size > limit else f"more than {limit:,} bytes"
    return DecodeError(f"{what}, over the decoder's max_frame_bytes ({limit:,})")


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


async def _show_kafka(
    printer: _Printer, bootstrap: str, topic: str, security: KafkaSecurity
) -> None:
    async with contextlib.aclosing(_kafka(bootstrap, topic, security)) as frames:
        async for where, frame in frames:
            printer.show(where, frame)
            if printer.done:
                break


async def _kafka(
    bootstrap: str, topic: str, security: KafkaSecurity
) -> AsyncGenerator[Frame, None]:
    """From the beginning of every partition to the end it had when we looked, a fetch at a
    time (never the whole topic in memory)."""
    from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

    from iotdata.errors import ConnectError, InvalidInputError  # noqa: PLC0415
    from iotdata.kafka._connect import start_client  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **security.client_options()
    )
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
        while left:
            batches = await consumer.getmany(*left, timeout_ms=1000, max_records=500)
            for tp, records in batches.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield f"{topic}-{tp.partition}@{record.offset}", record.value
                if await consumer.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()


def _mqtt(
    settings: Any, topic_filter: str, most: int | None, listen: float
) -> Generator[Frame, None, None]:
    """Messages as they arrive, for ``listen`` seconds or ``most`` messages. At most 1,000
    wait to be shown: beyond that the broker's thread waits (backpressure, never a backlog)."""
    import uuid  # noqa: PLC0415

    from iotdata.mqtt import MqttConnection  # noqa: PLC0415

    waiting: queue.Queue[Frame] = queue.Queue(maxsize=1000)
    stopped = threading.Event()

    def arrived(message: Any) -> None:  # on the connection's network thread
        item = (message.topic, bytes(message.payload))
        while not stopped.is_set():
            with contextlib.suppress(queue.Full):
                waiting.put(item, timeout=0.1)
                return

    connection = MqttConnection.start(
        settings, f"iotdata-inspect-{uuid.uuid4().hex[:8]}", subscriptions={topic_filter: arrived}
    )
    try:
        connection.wait_connected(10)
        deadline = time.monotonic() + listen
        for _ in iter(int, 1) if most is None else range(most):
            frame = _next(waiting, deadline)
            if frame is None:
                return
            yield frame
    finally:
        stopped.set()
        connection.close()


def _next(waiting: queue.Queue[Frame], deadline: float) -> Frame | None:
    try:
        return waiting.get(timeout=max(deadline - time.monotonic(), 0))
    except queue.Empty:
        return None
