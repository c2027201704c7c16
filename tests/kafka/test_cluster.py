"""iotdata on the three-node Kafka cluster of scripts/services.sh (replication factor 3,
min.insync.replicas 2): the topics it creates, and the producer through a SIGKILL of the node
that leads the most partitions and through the loss of two nodes of three, checked by
``(device_id, seq)`` against what the topic holds."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from iotdata import codec
from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics
from iotdata.model import Batch
from tests._kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(300)]

BASE = 1_700_000_000_000_000
READINGS = 5  # a frame
Key = tuple[str, int]


def frame(device: int, index: int) -> tuple[str, bytes]:
    """Frame ``index`` of device ``dev-<device>``: readings ``index * READINGS`` and on."""
    device_id = f"dev-{device}"
    seqs = list(range(index * READINGS, (index + 1) * READINGS))
    ts = [BASE + seq * 1_000_000 for seq in seqs]
    batch = Batch.from_columns(device_id, {"temp": (ts, [float(s) for s in seqs], seqs)})
    return device_id, codec.encode(batch)


def keys_of(value: bytes) -> list[Key]:
    return [(reading.device_id, reading.seq) for reading in codec.decode(value)]


async def read_topic(bootstrap: str, topic: str, timeout: float = 60) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its end offsets now, partition by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = [TopicPartition(topic, p) for p in await consumer.partitions_for(topic)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            records: list[ConsumerRecord] = []
            while any(await consumer.position(tp) < end[tp] for tp in partitions):
                for batch in (await consumer.getmany(*partitions, timeout_ms=500)).values():
                    records.extend(
                        r for r in batch if r.offset < end[TopicPartition(topic, r.partition)]
                    )
            return records
    finally:
        await consumer.stop()


def tally(records: list[ConsumerRecord]) -> Counter[Key]:
    """How many times each ``(device_id, seq)`` is in ``records``."""
    return Counter(key for record in records for key in keys_of(record.value))


def in_device_order(records: list[ConsumerRecord]) -> bool:
    """Whether each device's readings first appear in seq order (records in offset order)."""
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[Key] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        for device, seq in keys_of(record.value):
            if (device, seq) not in seen:
                seen.add((device, seq))
                first[device].append(seq)
    return all(seqs == sorted(seqs) for seqs in first.values())


def settings(cluster: KafkaCluster, **options: object) -> ProducerSettings:
    return ProducerSettings(
        bootstrap=cluster.bootstrap,
        linger=0.005,
        batch_bytes=16 * 1024,
        request_timeout=10,
        **options,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# Topics


def test_topics_made_by_ensure_topics_get_three_replicas_and_min_isr_2(
    kafka_cluster: KafkaCluster, unique_name: str
) -> None:
    """Read back from the cluster: the replicas and ISR of every partition, and the topic's
    effective ``min.insync.replicas``, for a TopicSpec that names no replication."""
    bootstrap = kafka_cluster.bootstrap
    spec = TopicSpec(name=unique_name, partitions=6, retention_ms=3_600_000)
    assert spec.replication is None  # the cluster's default.replication.factor

    async def scenario() -> None:
        assert await ensure_topics(bootstrap, spec) == {unique_name: 6}
        await kafka_cluster.wait_full_isr(unique_name, timeout=60)
        states = await kafka_cluster.partitions([unique_name])
        assert sorted(p for _, p in states) == list(range(6))
        assert {len(set(s.replicas)) for s in states.values()} == {3}
        assert all(set(s.isr) == set(s.replicas) for s in states.values())
        assert {s.leader for s in states.values()} <= set(kafka_cluster.nodes)
        config = await kafka_cluster.topic_config(unique_name)
        assert config["min.insync.replicas"] == "2"
        assert config["retention.ms"] == "3600000"
        # An explicit replication is what the topic gets.
        two = f"{unique_name}.two"
        await ensure_topics(bootstrap, TopicSpec(name=two, partitions=2, replication=2))
        await kafka_cluster.wait_full_isr(two, timeout=60)
        assert {len(s.replicas) for s in (await kafka_cluster.partitions([two])).values()} == {2}
        await kafka_cluster.delete_topics(unique_name, two)

    asyncio.run(scenario())


def test_ensure_topics_right_after_a_creation_sees_the_new_topic(
    kafka_cluster: KafkaCluster, unique_name: str
) -> None:
    """Two processes of a pipeline starting together both ensure its topics: the second call
    lands on a broker that may not have applied the new topic's metadata yet. It must still
    return the real partition count (not refuse a topic "with 0 partitions") and set the
    configuration it asks for."""
    bootstrap = kafka_cluster.bootstrap

    async def scenario() -> None:
        names = [f"{unique_name}.{i}" for i in range(8)]
        for name in names:
            spec = TopicSpec(name=name, partitions=3, retention_ms=3_600_000)
            together = await asyncio.gather(
                ensure_topics(bootstrap, spec), ensure_topics(bootstrap, spec)
            )
            assert together == [{name: 3}, {name: 3}]
            changed = TopicSpec(name=name, partitions=3, retention_ms=7_200_000)
            assert await ensure_topics(bootstrap, changed) == {name: 3}
            await kafka_cluster.wait_topic_config(name, {"retention.ms": "7200000"})
        await kafka_cluster.delete_topics(*names)

    asyncio.run(scenario())
