"""LocalProducer and LocalConsumer: the Kafka shapes over the embedded log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition as KafkaTopicPartition

from iotdata.errors import ClosedError, DeliveryError, InvalidInputError
from iotdata.kafka import Delivered, ProducerStats, partition_for
from iotdata.local import (
    CommitFailedError,
    LocalConsumer,
    LocalLog,
    LocalProducer,
    LogRecord,
    Retention,
    TopicPartition,
)

TP = TopicPartition


@pytest.fixture
def log() -> LocalLog:
    local = LocalLog()
    local.create_topic("t", 4)
    return local


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


async def drain(consumer: LocalConsumer, count: int, timeout: float = 5) -> list[LogRecord]:
    records: list[LogRecord] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in (await consumer.getmany(timeout_ms=200)).values():
            records.extend(batch)
    return records


def test_producer_sends_like_the_partitioned_producer(log: LocalLog) -> None:
    async def scenario() -> None:
        async with LocalProducer(log) as producer:
            assert await producer.partitions("t") == 4
            future = await producer.send("t", "pump-7", b"frame", headers=[("h", b"1")])
            assert future.done()
            delivered = future.result()
            assert delivered == Delivered("t", partition_for(b"pump-7", 4), 0)
            (record,) = log.read("t", delivered.partition, 0)
            assert (record.key, record.value, record.headers) == (
                b"pump-7",
                b"frame",
                (("h", b"1"),),
            )
            await producer.send("t", b"pump-7", b"again", timestamp_ms=5)
            await producer.flush(1)
            assert producer.statistics() == ProducerStats(2, 2, 0, 0, 0, 0)
            with pytest.raises(DeliveryError, match="no metadata"):
                await producer.partitions("missing")
            with pytest.raises(DeliveryError):
                await producer.send("missing", b"k", b"v")
            with pytest.raises(InvalidInputError):
                await producer.send("t", 7, b"v")  # type: ignore[arg-type]
        with pytest.raises(ClosedError):
            await producer.send("t", b"k", b"v")
        await producer.close()  # twice is fine
        assert not log.closed  # the log has its own owner

    run(scenario())


def test_producer_to_consumer_round_trip_with_commit_and_resume(log: LocalLog) -> None:
    async def scenario() -> None:
        producer = LocalProducer(log)
        for i in range(40):
            await producer.send("t", f"dev-{i % 9}", b"%d" % i)
        async with LocalConsumer(log, "workers", ["t"], "w1") as consumer:
            assert consumer.assignment() == {TP("t", p) for p in range(4)}
            first = await drain(consumer, 40)
            assert sorted(int(r.value) for r in first) == list(range(40))
            for device in {r.key for r in first}:  # per-key order holds
                values = [int(r.value) for r in first if r.key == device]
                assert values == sorted(values)
            await consumer.commit()
            assert await consumer.committed(TP("t", 0)) == log.end_offset("t", 0)
            assert await consumer.getmany(timeout_ms=0) == {}
        for i in range(40, 50):
            await producer.send("t", f"dev-{i % 9}", b"%d" % i)
        async with LocalConsumer(log, "workers", "t", "w2") as consumer:
            rest = await drain(consumer, 10)
            assert sorted(int(r.value) for r in rest) == list(range(40, 50))
            assert consumer.statistics().skipped == 0

    run(scenario())


def test_getmany_wakes_on_an_append_and_honours_max_records(log: LocalLog) -> None:
    async def scenario() -> None:
        async with LocalConsumer(log, "g", "t", max_poll_records=3) as consumer:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: log.append("t", b"k", b"v", partition=1))
            started = time.monotonic()
            batch = await consumer.getmany(timeout_ms=10_000)
            assert 0.15 < time.monotonic() - started < 5
            assert list(batch) == [TP("t", 1)]
            for i in range(10):
                log.append("t", b"k", b"%d" % i, partition=i % 2)
            assert sum(map(len, (await consumer.getmany()).values())) == 3
            got = await consumer.getmany(TP("t", 0), max_records=100)
            assert list(got) == [TP("t", 0)]
            with pytest.raises(InvalidInputError):
                await consumer.getmany(timeout_ms=-1)
            with pytest.raises(InvalidInputError):
                await consumer.getmany(max_records=0)

    run(scenario())


def test_round_robin_serves_every_partition_under_a_small_budget(log: LocalLog) -> None:
    for p in range(4):
        for _ in range(20):
            log.append("t", b"k", b"v", partition=p)

    async def scenario() -> set[TopicPartition]:
        async with LocalConsumer(log, "g", "t") as consumer:
            served: set[TopicPartition] = set()
            for _ in range(4):
                served |= set(await consumer.getmany(max_records=5))
            return served

    assert run(scenario()) == {TP("t", p) for p in range(4)}


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, list[TopicPartition]]] = []

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.events.append(("revoked", sorted(revoked)))

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.events.append(("assigned", sorted(assigned)))


def test_a_rebalance_moves_partitions_and_refuses_the_stale_commit(log: LocalLog) -> None:
    async def scenario() -> None:
        for i in range(20):
            log.append("t", b"k", b"%d" % i, partition=i % 4)
        listener = Listener()
        first = LocalConsumer(log, "g", "t", "a", listener=listener)
        await first.start()
        assert len(await drain(first, 20)) == 20
        assert first.generation == 1
        second = LocalConsumer(log, "g", "t", "b")
        waiting = asyncio.ensure_future(first.getmany(timeout_ms=10_000))
        await asyncio.sleep(0.05)
        await second.start()  # a rebalance wakes the waiting member: its listener hears
        for _ in range(100):
            if len(listener.events) == 3:
                break
            await asyncio.sleep(0.02)
        assert not waiting.done()  # it goes on waiting for records, now of its new partitions
        log.append("t", b"k", b"new", partition=0)
        assert [r.value for r in (await asyncio.wait_for(waiting, 5))[TP("t", 0)]] == [b"new"]
        assert listener.events == [
            ("assigned", [TP("t", p) for p in range(4)]),
            ("revoked", [TP("t", 2), TP("t", 3)]),
            ("assigned", []),
        ]
        assert first.assignment() == {TP("t", 0), TP("t", 1)}
        assert second.assignment() == {TP("t", 2), TP("t", 3)}
        assert first.generation == second.generation == 2
        await first.commit()
        # the second reads partitions 2 and 3 from the start: the first never committed them
        assert len(await drain(second, 10)) == 10
        assert await first.committed(TP("t", 0)) == 6
        third = LocalConsumer(log, "g", "t", "c")
        await third.start()
        with pytest.raises(CommitFailedError, match="stale"):
            await second.commit()  # it has not seen generation 3 yet
        await second.getmany()
        await second.commit()
        await third.close()
        await first.close()
        await first.close()
        await second.getmany()
        assert second.assignment() == {TP("t", p) for p in range(4)}
        stats = second.statistics()
        assert (stats.rebalances, stats.generation) == (3, 5)  # 4 and 5 seen as one
        # t-3 went to c, which committed nothing: back with b, it is read again from 0
        assert stats.fetched == 10 + 5
        with pytest.raises(ClosedError):
            await first.getmany()

    run(scenario())


def test_aiokafka_topic_partitions_work_as_keys(log: LocalLog) -> None:
    assert KafkaTopicPartition("t", 1) == TP("t", 1)
    assert hash(KafkaTopicPartition("t", 1)) == hash(TP("t", 1))
    log.append("t", b"k", b"v", partition=1)

    async def scenario() -> None:
        async with LocalConsumer(log, "g", "t") as consumer:
            await consumer.getmany()
            await consumer.commit({KafkaTopicPartition("t", 1): 1})  # type: ignore[dict-item]
            assert await consumer.committed(KafkaTopicPartition("t", 1)) == 1  # type: ignore[arg-type]

    run(scenario())


def test_retention_gaps_are_reset_and_counted(log: LocalLog) -> None:
    small = LocalLog(retention=Retention(max_records=5))
    small.create_topic("t", 1)

    async def scenario(reset: str) -> tuple[list[int], int, int]:
        for i in range(3):
            small.append("t", b"k", b"%d" % i)
        consumer = LocalConsumer(small, reset, "t", auto_offset_reset=reset)  # type: ignore[arg-type]
        await consumer.start()
        start = small.end_offset("t", 0)
        for i in range(start, start + 12):  # 12 more: the consumer's position falls away
            small.append("t", b"k", b"%d" % i)
        records = await drain(consumer, 5, timeout=0.5)
        stats = consumer.statistics()
        await consumer.close()
        return [int(r.value) for r in records], stats.skipped, stats.resets

    values, skipped, resets = run(scenario("earliest"))
    assert values == list(range(10, 15))
    assert (skipped, resets) == (10, 1)
    values, skipped, resets = run(scenario("latest"))
    assert values == []  # latest joins at the end, then falls behind by 12: skips them all
    assert (skipped, resets) == (12, 1)


def test_seek_position_and_seek_to_beginning_and_end(log: LocalLog) -> None:
    for i in range(6):
        log.append("t", b"k", b"%d" % i, partition=0)

    async def scenario() -> None:
        async with LocalConsumer(log, "g", ["t"], auto_offset_reset="latest") as consumer:
            assert await consumer.position(TP("t", 0)) == 6
            consumer.seek(TP("t", 0), 4)
            assert [r.value for r in (await consumer.getmany())[TP("t", 0)]] == [b"4", b"5"]
            await consumer.seek_to_beginning(TP("t", 0))
            assert await consumer.position(TP("t", 0)) == 0
            await consumer.seek_to_end()
            assert await consumer.getmany() == {}
            with pytest.raises(InvalidInputError, match="not assigned"):
                consumer.seek(TP("other", 0), 0)
            with pytest.raises(InvalidInputError):
                consumer.seek(TP("t", 0), -1)

    run(scenario())


def test_consumer_settings_are_checked(log: LocalLog) -> None:
    with pytest.raises(InvalidInputError):
        LocalConsumer(log, "g", "t", auto_offset_reset="none")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        LocalConsumer(log, "g", "t", max_poll_records=0)

    async def commit_before_joining() -> None:
        with pytest.raises(CommitFailedError):
            await LocalConsumer(log, "g", "t").commit()

    run(commit_before_joining())


def test_a_durable_demo_run_resumes_where_it_committed(tmp_path: Path) -> None:
    async def first_run() -> None:
        with LocalLog.open(tmp_path) as log:
            log.create_topic("t", 2)
            producer = LocalProducer(log)
            for i in range(30):
                await producer.send("t", f"d{i % 5}", b"%d" % i)
            async with LocalConsumer(log, "g", "t") as consumer:
                await consumer.getmany(max_records=12)
                await consumer.commit()

    async def second_run() -> list[LogRecord]:
        with LocalLog.open(tmp_path) as log:
            async with LocalConsumer(log, "g", "t") as consumer:
                return await drain(consumer, 18)

    run(first_run())
    assert len(run(second_run())) == 18  # type: ignore[arg-type]


def test_a_waiting_member_keeps_its_session_and_a_vanished_one_loses_it() -> None:
    log = LocalLog(session_timeout=0.3)
    log.create_topic("t", 2)

    async def scenario() -> None:
        patient = LocalConsumer(log, "g", "t", "patient")
        vanished = LocalConsumer(log, "g", "t", "vanished")
        await vanished.start()
        await patient.start()
        assert patient.assignment() == {TP("t", 0)}
        # vanished never calls again (a crashed worker); patient waits 1 s in one getmany
        assert await patient.getmany(timeout_ms=1000) == {}
        assert patient.assignment() == {TP("t", 0), TP("t", 1)}
        assert log.assignment("g", "patient").generation == patient.generation == 3
        with pytest.raises(CommitFailedError):
            await vanished.commit()

    run(scenario())
