"""Checkpoints: the operator state of each source partition, with the offset it belongs to.

A checkpoint of partition ``p`` says: "the state after every record before ``offset``". The
runtime writes checkpoints in this order: sinks flushed, then state saved here, then offsets
committed to the source (for monitoring and lag). On restart, or when a rebalance hands the
partition to another worker, the state is restored and consumption resumes at the checkpoint's
offset, whatever the committed offset says: so nothing is counted twice or missed, and the
outputs re-emitted after the checkpoint land on the same idempotent sink keys.

Stores: :class:`MemoryCheckpoints` (tests, single process), :class:`FileCheckpoints` (the
embedded default: one file per partition, written atomically) and :class:`KafkaCheckpoints`
(a compacted topic, so a worker restarted on another machine recovers).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs
import msgpack
import zstandard

from iotdata._checks import (
    INT64_MAX,
    check_instance,
    check_int,
    check_path,
    check_text,
    each,
    validated,
)
from iotdata.errors import DecodeError, InvalidInputError
from iotdata.kafka._connect import check_bootstrap, start_client
from iotdata.kafka._security import KafkaSecurity
from iotdata.stream._errors import CheckpointTooLargeError

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "FileCheckpoints",
    "KafkaCheckpoints",
    "MemoryCheckpoints",
    "decode_checkpoint",
    "encode_checkpoint",
]

_VERSION = 2
#: Largest state a checkpoint decompresses to.
MAX_STATE_BYTES = 256 * 1024 * 1024
#: Largest checkpoint record in the Kafka store (the topic is created to take it).
MAX_KAFKA_CHECKPOINT = 8 * 1024 * 1024


@attrs.frozen
class Checkpoint:
    """Operator state of one source partition, as of ``offset`` (the next record to read)."""

    topic: str = attrs.field(validator=validated(check_text))
    partition: int = attrs.field(validator=validated(check_int, minimum=0))
    offset: int = attrs.field(validator=validated(check_int, minimum=0, maximum=INT64_MAX))
    state: bytes = attrs.field(validator=validated(check_instance, kind=bytes))

    @property
    def key(self) -> str:
        return f"{self.topic}:{self.partition}"


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """``[2, body, crc32(body)]`` in msgpack, where ``body`` is the msgpack array ``[topic,
    partition, offset, compressed, state]``; a state over 1 KiB is zstd-compressed (dedup runs
    and window states shrink a lot). The CRC-32 catches a damaged record, which would
    otherwise resume a partition at another offset or with other state."""
    state = checkpoint.state
    compressed = len(state) > 1024
    if compressed:
        state = zstandard.ZstdCompressor(level=3).compress(state)
    body = [checkpoint.topic, checkpoint.partition, checkpoint.offset, compressed, state]
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    data: bytes = msgpack.packb([_VERSION, packed, zlib.crc32(packed)], use_bin_type=True)
    return data


def decode_checkpoint(data: bytes) -> Checkpoint:
    """Raises :class:`~iotdata.errors.DecodeError` for anything but a checkpoint we wrote.

    Reads the current format and the first one (``[1, topic, partition, offset, compressed,
    state]``, without a checksum), which running pipelines may still have stored.
    """
    outer = _unpack(data)
    if len(outer) == 3 and outer[0] == _VERSION:
        _, packed, crc = outer
        if type(packed) is not bytes or type(crc) is not int or zlib.crc32(packed) != crc:
            raise DecodeError("damaged checkpoint: its checksum does not match")
        fields = _unpack(packed)
    elif len(outer) == 6 and outer[0] == 1:
        fields = outer[1:]
    else:
        raise DecodeError(f"checkpoint format {outer[0]!r} is not supported (expected 1 or 2)")
    if len(fields) != 5:
        raise DecodeError("malformed checkpoint")
    topic, partition, offset, compressed, state = fields
    if not (type(topic) is str and type(partition) is int and type(offset) is int):
        raise DecodeError("malformed checkpoint")
    if type(state) is not bytes or offset < 0 or partition < 0 or type(compressed) is not bool:
        raise DecodeError("malformed checkpoint")
    if compressed:
        try:
            state = zstandard.ZstdDecompressor().decompress(state, max_output_size=MAX_STATE_BYTES)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"malformed checkpoint: {exc}") from None
    try:
        return Checkpoint(topic, partition, offset, state)
    except InvalidInputError as exc:
        raise DecodeError(f"malformed checkpoint: {exc}") from None


def _folder(folder: object) -> Path:
    return Path(check_path("folder", folder))


def _partitions(partitions: object) -> list[int]:
    return each("partitions", partitions, check_int, minimum=0)


def _checkpoints(checkpoints: object) -> list[Checkpoint]:
    return each("checkpoints", checkpoints, check_instance, kind=Checkpoint)


def _bootstrap(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_bootstrap(value)


def _kafka_topic(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    from iotdata.kafka import TopicSpec  # noqa: PLC0415 (checks the name as Kafka does)

    TopicSpec(name=value)  # type: ignore[arg-type]


def _producer(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not all(callable(getattr(value, m, None)) for m in ("send", "close")):
        raise InvalidInputError(f"producer must be a PartitionedProducer or None: {value!r:.60}")


def _unpack(data: object) -> list[Any]:
    try:
        value = msgpack.unpackb(data, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise DecodeError(f"not a checkpoint: {exc}") from None
    if not isinstance(value, list) or not value:
        raise DecodeError("not a checkpoint")
    return value


class CheckpointStore(Protocol):
    """Where a runtime keeps its checkpoints."""

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, Checkpoint]:
        """The latest checkpoint of each of ``partitions`` that has one."""

    async def save(self, checkpoints: Iterable[Checkpoint]) -> None:
        """Store durably (return only when stored)."""

    async def close(self) -> None: ...


@attrs.define
class MemoryCheckpoints:
    """Checkpoints in a dict: shared by the workers of one process (tests)."""

    _saved: dict[str, Checkpoint] = attrs.Factory(dict)

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, Checkpoint]:
        check_text("topic", topic)
        found = (self._saved.get(f"{topic}:{p}") for p in _partitions(partitions))
        return {c.partition: c for c in found if c is not None}

    async def save(self, checkpoints: Iterable[Checkpoint]) -> None:
        for checkpoint in _checkpoints(checkpoints):
            self._saved[checkpoint.key] = checkpoint

    async def close(self) -> None:
        return None


@attrs.define
class FileCheckpoints:
    """One file per partition in ``folder``, replaced atomically (write, fsync, rename)."""

    folder: Path = attrs.field(converter=_folder)

    def __attrs_post_init__(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInputError(f"cannot use {self.folder} for checkpoints: {exc}") from exc

    def _path(self, topic: str, partition: int) -> Path:
        check_text("topic", topic)
        if "/" in topic or "\0" in topic or topic in {".", ".."} or len(topic.encode()) > 200:
            raise InvalidInputError(f"bad topic name {topic!r:.60}")
        check_int("partition", partition, minimum=0)
        return self.folder / f"{topic}-{partition}.checkpoint"

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, Checkpoint]:
        out = {}
        for partition in _partitions(partitions):
            path = self._path(topic, partition)
            if path.exists():
                out[partition] = decode_checkpoint(path.read_bytes())
        return out

    async def save(self, checkpoints: Iterable[Checkpoint]) -> None:
        for checkpoint in _checkpoints(checkpoints):
            path = self._path(checkpoint.topic, checkpoint.partition)
            temporary = path.with_name(path.name + ".tmp")
            with temporary.open("wb") as handle:
                handle.write(encode_checkpoint(checkpoint))
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)

    async def close(self) -> None:
        return None


@attrs.define
class KafkaCheckpoints:
    """Checkpoints in a compacted Kafka topic keyed ``topic:partition`` (one per group).

    ``load`` reads the topic from its start to its end and keeps the newest checkpoint per key:
    compaction keeps that bounded. ``save`` returns once Kafka acknowledged every checkpoint.
    Create the topic with :meth:`spec` (``cleanup.policy=compact``) before the first run.
    """

    bootstrap: str = attrs.field(validator=_bootstrap)
    topic: str = attrs.field(validator=_kafka_topic)
    #: TLS, mutual TLS or a SASL login (default: none).
    security: KafkaSecurity = attrs.field(
        factory=KafkaSecurity, kw_only=True, validator=validated(check_instance, kind=KafkaSecurity)
    )
    #: A started :class:`~iotdata.kafka.PartitionedProducer` to save with (None: one of its own).
    _producer: Any = attrs.field(default=None, validator=_producer)

    def spec(self, partitions: int = 1) -> Any:
        from iotdata.kafka import TopicSpec  # noqa: PLC0415

        config = {"cleanup.policy": "compact", "max.message.bytes": str(MAX_KAFKA_CHECKPOINT)}
        return TopicSpec(name=self.topic, partitions=partitions, config=config)

    async def load(self, topic: str, partitions: Iterable[int]) -> dict[int, Checkpoint]:
        from aiokafka import AIOKafkaConsumer  # noqa: PLC0415

        check_text("topic", topic)
        wanted = {f"{topic}:{p}" for p in _partitions(partitions)}
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=MAX_KAFKA_CHECKPOINT + 1024,
            fetch_max_bytes=4 * MAX_KAFKA_CHECKPOINT,
            **self.security.client_options(),
        )
        await start_client(consumer, self.bootstrap)
        latest: dict[str, Checkpoint] = {}
        try:
            assigned = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            if not assigned:
                raise InvalidInputError(
                    f"checkpoint topic {self.topic!r} does not exist: create it with "
                    "ensure_topics(bootstrap, store.spec())"
                )
            await consumer.seek_to_beginning(*assigned)
            ends: Mapping[Any, int] = await consumer.end_offsets(assigned)
            remaining = {tp for tp in assigned if ends[tp] > 0}
            while remaining:
                for records in (await consumer.getmany(*remaining, timeout_ms=500)).values():
                    for record in records:
                        key = record.key.decode() if record.key else ""
                        if key in wanted and record.value is not None:
                            latest[key] = decode_checkpoint(record.value)
                for tp in list(remaining):  # compaction leaves gaps: compare positions
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return {c.partition: c for c in latest.values()}

    async def save(self, checkpoints: Iterable[Checkpoint]) -> None:
        import asyncio  # noqa: PLC0415

        from iotdata.kafka import PartitionedProducer, ProducerSettings  # noqa: PLC0415

        if self._producer is None:
            settings = ProducerSettings(
                bootstrap=self.bootstrap,
                client_id="iotdata-checkpoints",
                batch_bytes=MAX_KAFKA_CHECKPOINT + 1024,
                max_request_bytes=MAX_KAFKA_CHECKPOINT + 1024,
                security=self.security,
            )
            self._producer = await PartitionedProducer.start(settings)
        futures = []
        for checkpoint in _checkpoints(checkpoints):
            data = encode_checkpoint(checkpoint)
            if len(data) > MAX_KAFKA_CHECKPOINT:
                raise CheckpointTooLargeError(
                    f"the checkpoint of {checkpoint.key} takes {len(data):,} bytes, more than "
                    f"the {MAX_KAFKA_CHECKPOINT:,} a Kafka record may hold here: spread the "
                    "devices over more partitions, or bound the state (Dedup(max_devices=...))"
                )
            futures.append(await self._producer.send(self.topic, checkpoint.key, data))
        await asyncio.gather(*futures)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
