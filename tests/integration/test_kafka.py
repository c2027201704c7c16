"""Kafka round trip through a consumer group: keyed records produced with acks=all arrive once,
in per-key order, and committed offsets keep a second group member from seeing them again."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

PARTITIONS = 3
KEYS = [f"dev-{i}" for i in range(6)]
PER_KEY = 50
DEADLINE = 90.0  # seconds for the whole round trip


def test_keyed_records_arrive_once_in_key_order(kafka_bootstrap: str, unique_name: str) -> None:
    asyncio.run(asyncio.wait_for(round_trip(kafka_bootstrap, unique_name), DEADLINE))


async def round_trip(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)]
        )
        assert [(name, code) for name, code, *_ in response.topic_errors] == [(topic, 0)]
        try:
            await check_group_delivery(bootstrap, topic)
        finally:
            await admin.delete_topics([topic])
    finally:
        await admin.close()


async def check_group_delivery(bootstrap: str, topic: str) -> None:
    partition_of = await produce(bootstrap, topic)
    # Keyed records: one key, one partition; and the keys spread over the partitions.
    key_partitions = {key: {partition_of[key, seq] for seq in range(PER_KEY)} for key in KEYS}
    assert all(len(partitions) == 1 for partitions in key_partitions.values()), key_partitions
    assert len(set(partition_of.values())) > 1

    group = topic
    records = await consume_and_commit(bootstrap, topic, group, expected=len(partition_of))
    received = [(r.key.decode(), int(r.value.decode().split(":")[1]), r.partition) for r in records]
    assert Counter((key, seq) for key, seq, _ in received) == Counter(partition_of.keys())
    assert all(partition == partition_of[key, seq] for key, seq, partition in received)
    order: dict[str, list[int]] = defaultdict(list)
    for key, seq, _ in received:
        order[key].append(seq)
    assert order == {key: list(range(PER_KEY)) for key in KEYS}

    await check_nothing_left(bootstrap, topic, group)


async def produce(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    """Send PER_KEY records per key, keys interleaved; return the partition of each record."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        pending = {}
        for seq in range(PER_KEY):
            for key in KEYS:
                value = f"{key}:{seq}".encode()
                pending[key, seq] = await producer.send(topic, value=value, key=key.encode())
        return {record: (await future).partition for record, future in pending.items()}
    finally:
        await producer.stop()


def flatten(batches: dict[TopicPartition, list[ConsumerRecord]]) -> Iterable[ConsumerRecord]:
    return (record for batch in batches.values() for record in batch)


def group_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    """A member of ``group`` that commits by hand and starts where nothing was committed."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def consume_and_commit(
    bootstrap: str, topic: str, group: str, expected: int
) -> list[ConsumerRecord]:
    consumer = group_consumer(bootstrap, topic, group)
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        while len(records) < expected:  # bounded by the round trip's deadline
            records.extend(flatten(await consumer.getmany(timeout_ms=1000)))
        assert len(consumer.assignment()) == PARTITIONS
        await consumer.commit()
        return records
    finally:
        await consumer.stop()


async def check_nothing_left(bootstrap: str, topic: str, group: str) -> None:
    """A new member of the group starts from the committed offsets, at the end of each partition."""
    consumer = group_consumer(bootstrap, topic, group)
    await consumer.start()
    try:
        leftovers: list[ConsumerRecord] = []
        while len(consumer.assignment()) < PARTITIONS:  # joining the group assigns them
            leftovers.extend(flatten(await consumer.getmany(timeout_ms=200)))
        partitions = sorted(consumer.assignment())
        end = await consumer.end_offsets(partitions)
        assert sum(end.values()) == len(KEYS) * PER_KEY
        for tp in partitions:
            assert await consumer.committed(tp) == end[tp]
            assert await consumer.position(tp) == end[tp]
        leftovers.extend(flatten(await consumer.getmany(timeout_ms=500)))
        assert leftovers == []
    finally:
        await consumer.stop()
