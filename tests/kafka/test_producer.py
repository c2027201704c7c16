"""PartitionedProducer and ensure_topics against the real local Kafka."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer

from iotdata.errors import ClosedError, ConnectError, InvalidInputError
from iotdata.kafka import (
    PartitionedProducer,
    ProducerSettings,
    TopicSpec,
    ensure_topics,
    partition_for,
)
from iotdata.stream import KafkaSource

pytestmark = pytest.mark.kafka


async def consume(bootstrap: str, topic: str, count: int, timeout: float = 60) -> list[object]:
    """The first ``count`` records of ``topic``, in partition order."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[object] = []
    try:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def test_records_land_in_the_java_partition_in_order_with_their_offsets(
    kafka_bootstrap: str, unique_name: str
) -> None:
    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=5))
        sent: list[tuple[str, bytes]] = [
            (f"dev-{i % 37}", f"{i % 37}:{i // 37}".encode()) for i in range(3000)
        ]
        async with await PartitionedProducer.start(
            ProducerSettings(bootstrap=kafka_bootstrap, linger=0.002, batch_bytes=4096)
        ) as producer:
            futures = [await producer.send(unique_name, key, value) for key, value in sent]
            results = await asyncio.gather(*futures)
            stats = producer.statistics()
        assert stats.sent == stats.acknowledged == 3000 and stats.failed == 0
        assert stats.batches > 5  # small batches: many per partition, still in order
        for (key, _), delivered in zip(sent, results, strict=True):
            assert delivered.partition == partition_for(key.encode(), 5)
        records = await consume(kafka_bootstrap, unique_name, 3000)
        where = {(r.partition, r.offset): (r.key.decode(), r.value) for r in records}  # type: ignore[attr-defined]
        assert [where[d.partition, d.offset] for d in results] == [
            (key, value) for key, value in sent
        ]
        per_key: dict[str, list[int]] = defaultdict(list)
        for record in records:
            device, index = record.value.decode().split(":")  # type: ignore[attr-defined]
            per_key[device].append(int(index))
        assert all(indexes == sorted(indexes) for indexes in per_key.values())
        assert sum(len(v) for v in per_key.values()) == 3000  # nothing doubled

    asyncio.run(scenario())


def test_send_waits_when_the_buffer_is_full(kafka_bootstrap: str, unique_name: str) -> None:
    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=2))
        settings = ProducerSettings(
            bootstrap=kafka_bootstrap, buffer_bytes=64 * 1024, batch_bytes=16 * 1024
        )
        async with await PartitionedProducer.start(settings) as producer:
            futures = []
            peak = 0
            for i in range(600):
                futures.append(await producer.send(unique_name, f"d{i % 3}", bytes(1000)))
                peak = max(peak, producer.statistics().buffered_bytes)
            await producer.flush(30)
            stats = producer.statistics()
        assert peak <= 64 * 1024
        assert stats.waits > 0 and stats.acknowledged == 600 and stats.buffered_bytes == 0
        assert all(f.done() and f.exception() is None for f in futures)

    asyncio.run(scenario())


def test_bad_input_and_unreachable_kafka_give_clear_errors(
    kafka_bootstrap: str, unique_name: str
) -> None:
    with pytest.raises(InvalidInputError, match="compression"):
        ProducerSettings(compression="brotli")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="linger"):
        ProducerSettings(linger=-1)
    with pytest.raises(InvalidInputError, match="topic name"):
        TopicSpec(name="bad/name")
    for bootstrap in ("", "bad:host::", "h:99999", "mqtt://h:1883", "a b:9092", "k1:9092,"):
        with pytest.raises(InvalidInputError, match="bootstrap servers are host:port"):
            ProducerSettings(bootstrap=bootstrap)
        with pytest.raises(InvalidInputError, match="bootstrap servers are host:port"):
            asyncio.run(ensure_topics(bootstrap, TopicSpec(name=unique_name)))
        with pytest.raises(InvalidInputError, match="bootstrap servers are host:port"):
            KafkaSource(unique_name, bootstrap=bootstrap, group=unique_name)
    for bootstrap in ("kafka", "k1:9092,k2:9093", "[::1]:9092"):  # a lone host: port 9092
        assert ProducerSettings(bootstrap=bootstrap).bootstrap == bootstrap

    async def scenario() -> None:
        with pytest.raises(ConnectError, match=r"127\.0\.0\.1:1"):
            await PartitionedProducer.start(
                ProducerSettings(bootstrap="127.0.0.1:1", request_timeout=2)
            )
        await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=3))
        producer = await PartitionedProducer.start(ProducerSettings(bootstrap=kafka_bootstrap))
        with pytest.raises(InvalidInputError, match="key"):
            await producer.send(unique_name, 42, b"x")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="max_request_bytes"):
            await producer.send(unique_name, "d", bytes(2 * 1024 * 1024))
        await producer.close()
        await producer.close()  # twice is fine
        with pytest.raises(ClosedError):
            await producer.send(unique_name, "d", b"x")

    asyncio.run(scenario())


def test_ensure_topics_is_idempotent_and_refuses_a_partition_change(
    kafka_bootstrap: str, unique_name: str
) -> None:
    async def scenario() -> None:
        spec = TopicSpec(name=unique_name, partitions=4, retention_ms=3_600_000)
        assert await ensure_topics(kafka_bootstrap, spec) == {unique_name: 4}
        assert await ensure_topics(kafka_bootstrap, spec) == {unique_name: 4}
        with pytest.raises(InvalidInputError, match="4 partitions"):
            await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=6))

    asyncio.run(scenario())


@pytest.mark.parametrize("compression", ["zstd", "lz4", "gzip"])
def test_compressed_batches_arrive_intact(
    kafka_bootstrap: str, unique_name: str, compression: str
) -> None:
    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=2))
        values = [f"reading {i} ".encode() * 20 for i in range(200)]
        settings = ProducerSettings(bootstrap=kafka_bootstrap, compression=compression)  # type: ignore[arg-type]
        async with await PartitionedProducer.start(settings) as producer:
            futures = [await producer.send(unique_name, "dev-1", value) for value in values]
            await asyncio.gather(*futures)
        records = await consume(kafka_bootstrap, unique_name, 200)
        assert [r.value for r in records] == values  # type: ignore[attr-defined]

    asyncio.run(scenario())
