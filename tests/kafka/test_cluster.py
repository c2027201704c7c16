"""iotdata on the three-node Kafka cluster of scripts/services.sh (replication factor 3,
min.insync.replicas 2): the topics it creates, and the producer through a SIGKILL of the node
that leads the most partitions and through the loss of two nodes of three, checked by
``(device_id, seq)`` against what the topic holds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from iotdata import codec
from iotdata.errors import DeliveryError, DeliveryTimeoutError, InvalidInputError
from iotdata.kafka import Delivered, PartitionedProducer, ProducerSettings, TopicSpec, ensure_topics
from iotdata.model import Batch
from iotdata.stream import KafkaCheckpoints
from tests._kafka_cluster import REPO_ROOT, KafkaCluster
from tests.stream._support import check, stored
from tests.stream._support import frames as stream_frames
from tests.stream._worker import status

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


async def read_topic(
    bootstrap: str, topic: str, count: int, timeout: float = 60
) -> list[ConsumerRecord]:
    """Every record of the ``count`` partitions of ``topic``, up to their end offsets now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            partitions = [TopicPartition(topic, p) for p in range(count)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            end = await consumer.end_offsets(partitions)
            records: list[ConsumerRecord] = []
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                for tp, batch in (await consumer.getmany(*partitions, timeout_ms=500)).items():
                    records.extend(r for r in batch if r.offset < end[tp])
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


def test_a_topic_spec_leaves_the_replication_to_the_cluster_unless_it_names_one() -> None:
    assert TopicSpec(name="t").replication is None
    assert TopicSpec(name="t", replication=3).replication == 3
    for bad in (0, -1, 1.5, "3"):
        with pytest.raises(InvalidInputError, match="replication"):
            TopicSpec(name="t", replication=bad)  # type: ignore[arg-type]


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


def test_topics_are_usable_through_any_broker_once_ensure_topics_returns(
    kafka_cluster: KafkaCluster, unique_name: str
) -> None:
    """A stream worker creates its checkpoint topic and reads it at once, through whichever
    broker its consumer asks (the leader of the partition included): that must never find the
    topic unknown, as it did when ensure_topics returned before every broker knew the topic."""
    bootstrap = kafka_cluster.bootstrap

    async def scenario() -> None:
        stores = [KafkaCheckpoints(bootstrap, f"{unique_name}.{i}.checkpoints") for i in range(6)]
        for store in stores:
            await ensure_topics(bootstrap, store.spec())
            assert await store.load("input", [0, 1]) == {}
        await kafka_cluster.delete_topics(*(store.topic for store in stores))

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# The producer when the leader of most partitions is killed


DEVICES = 40
FRAMES = 30  # a device
SPREAD = 24.0  # seconds over which the frames are sent


def test_acknowledged_records_survive_a_sigkill_of_the_leader_of_most_partitions(
    kafka_cluster_faults: KafkaCluster, unique_name: str
) -> None:
    """The node leading the most partitions is SIGKILLed a quarter into the run and started
    again (with its data) once the others lead its partitions; every record the producer
    acknowledged is in the topic at the offset it was acknowledged with."""
    cluster = kafka_cluster_faults
    data = [frame(d, i) for i in range(FRAMES) for d in range(DEVICES)]

    async def scenario() -> None:
        await ensure_topics(cluster.bootstrap, TopicSpec(name=unique_name, partitions=6))
        await cluster.wait_full_isr(unique_name, timeout=60)
        victim = await cluster.leader_of_most(unique_name)
        assert (await cluster.leaders(unique_name))[victim] >= 2
        loop = asyncio.get_running_loop()
        restarted: asyncio.Task[float] | None = None
        failover: asyncio.Task[float] | None = None
        waits: list[float] = []  # seconds from send to acknowledgement

        async def timed_failover() -> float:
            killed = loop.time()
            await cluster.wait_failover(victim, unique_name, timeout=60)
            return loop.time() - killed

        async with await PartitionedProducer.start(
            settings(cluster, delivery_timeout=90)
        ) as producer:
            began = loop.time()
            futures: list[asyncio.Future[Delivered]] = []
            for n, (device, value) in enumerate(data):
                await asyncio.sleep(max(0.0, began + SPREAD * n / len(data) - loop.time()))
                if n == len(data) // 4:
                    assert sum(f.done() for f in futures) > 0  # the run is under way
                    cluster.kill(victim)
                    failover = asyncio.create_task(timed_failover())
                if n == len(data) // 2:
                    assert failover is not None
                    await failover  # the others lead the victim's partitions
                    restarted = asyncio.create_task(asyncio.to_thread(cluster.start))
                future = await producer.send(unique_name, device, value)
                sent = loop.time()
                future.add_done_callback(lambda _, sent=sent: waits.append(loop.time() - sent))
                futures.append(future)
            await producer.flush(120)
            results = await asyncio.gather(*futures, return_exceptions=True)
            stats = producer.statistics()
        assert restarted is not None and failover is not None
        seconds = await restarted
        await cluster.wait_full_isr(unique_name, timeout=120)

        failed = [r for r in results if not isinstance(r, Delivered)]
        assert failed == [] and stats.failed == 0
        assert stats.acknowledged == stats.sent == len(data)
        records = await read_topic(cluster.bootstrap, unique_name, 6)
        at = {(r.partition, r.offset): r.value for r in records}
        assert all(
            at.get((d.partition, d.offset)) == value
            for d, (_, value) in zip(results, data, strict=True)
        )  # type: ignore[union-attr]
        counts = tally(records)
        expected = {key for _, value in data for key in keys_of(value)}
        assert expected - set(counts) == set()  # nothing acknowledged is missing
        assert set(counts) == expected
        duplicated = {key: n for key, n in counts.items() if n > 1}
        print(
            f"node {victim} killed; its partitions led by others after "
            f"{failover.result():.1f} s; restarted in {seconds:.1f} s; {len(data)} frames, "
            f"longest wait for an acknowledgement {max(waits):.1f} s, {stats.batches} "
            f"batches, {stats.renewals} producer renewals, {len(duplicated)} readings duplicated"
        )
        # One producer duplicates only when it sends a batch again with a new producer id.
        assert not duplicated or stats.renewals > 0, duplicated
        assert in_device_order(records)
        await cluster.delete_topics(unique_name)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Two nodes of three down: no quorum, no acknowledgement


def test_with_two_of_three_nodes_down_sends_fail_clearly_and_nothing_acknowledged_is_lost(
    kafka_cluster_faults: KafkaCluster, unique_name: str
) -> None:
    cluster = kafka_cluster_faults

    async def scenario() -> None:
        await ensure_topics(cluster.bootstrap, TopicSpec(name=unique_name, partitions=3))
        await cluster.wait_full_isr(unique_name, timeout=60)
        first = [frame(d, 0) for d in range(12)]
        second = [frame(d, 1) for d in range(12)]
        third = [frame(d, 2) for d in range(12)]
        producer = await PartitionedProducer.start(settings(cluster, delivery_timeout=8))
        try:
            acknowledged = await asyncio.gather(
                *[await producer.send(unique_name, device, value) for device, value in first]
            )
            assert all(isinstance(d, Delivered) for d in acknowledged)
            survivor = await cluster.leader_of_most(unique_name)
            for node_id in cluster.nodes:
                if node_id != survivor:
                    cluster.kill(node_id)
            doomed = [await producer.send(unique_name, device, value) for device, value in second]
            outcomes = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), 60)
            assert all(isinstance(o, DeliveryTimeoutError) and o.retriable for o in outcomes), (
                outcomes
            )
            stats = producer.statistics()
            assert stats.acknowledged == len(first) and stats.failed == len(second)
            with pytest.raises(DeliveryError):  # the producer stopped: nothing overtakes them
                await producer.send(unique_name, *third[0])
        finally:
            await asyncio.wait_for(producer.close(), 60)
        await asyncio.to_thread(cluster.start)
        await cluster.wait_full_isr(unique_name, timeout=120)

        # The caller sends what failed again with a new producer, and goes on.
        async with await PartitionedProducer.start(settings(cluster, delivery_timeout=60)) as again:
            resent = [
                await again.send(unique_name, device, value) for device, value in second + third
            ]
            assert all(isinstance(d, Delivered) for d in await asyncio.gather(*resent))
        counts = tally(await read_topic(cluster.bootstrap, unique_name, 3))
        expected = {key for _, value in first + second + third for key in keys_of(value)}
        assert set(counts) == expected  # nothing acknowledged lost, nothing unknown
        timed_out_but_written = sum(
            counts[key] - 1 for _, value in second for key in keys_of(value)
        )
        print(
            f"node {survivor} survived; {timed_out_but_written} of {len(second) * READINGS} "
            "readings that timed out were written anyway (the leader had them; they committed "
            f"once the nodes were back) and are in the topic twice after the resend; "
            f"{stats.renewals} producer renewals during the outage"
        )
        assert all(counts[key] == 1 for _, value in first + third for key in keys_of(value))
        await cluster.delete_topics(unique_name)

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# A stream worker through a SIGKILL of the leader


def test_a_stream_worker_goes_on_through_a_sigkill_of_the_leader_and_stores_exactly(
    kafka_cluster_faults: KafkaCluster, unique_name: str, tmp_path: Path
) -> None:
    """A worker (Kafka source, checkpoints in a Kafka topic, SQLite sink) runs while the node
    leading the most partitions of its input and checkpoint topics is SIGKILLed and restarted:
    the sink ends with every (device_id, seq) once and exactly the reference's windows."""
    cluster = kafka_cluster_faults
    asyncio.run(ensure_topics(cluster.bootstrap, TopicSpec(name=unique_name, partitions=4)))
    path = tmp_path / "out.sqlite"
    # python -m tests.stream._worker BOOTSTRAP TOPIC GROUP SQLITE_PATH MEMBER IDLE_SECONDS
    command = ["tests.stream._worker", cluster.bootstrap, unique_name, unique_name, str(path)]
    worker = subprocess.Popen(
        [sys.executable, "-m", *command, "w1", "15"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    data = stream_frames()
    first, rest = data[: len(data) // 2], data[len(data) // 2 :]

    async def scenario() -> tuple[int, float]:
        async with await PartitionedProducer.start(settings(cluster, delivery_timeout=90)) as feed:
            await send_spread(feed, unique_name, first, 6)
            deadline = asyncio.get_running_loop().time() + 90
            while not (len(stored(path)) >= 20 and status(path, "w1")[2] > 0):  # checkpointed
                assert asyncio.get_running_loop().time() < deadline, status(path, "w1")
                await asyncio.sleep(0.05)
            topics = (unique_name, f"{unique_name}.checkpoints")
            victim = await cluster.leader_of_most(*topics)
            cluster.kill(victim)
            await send_spread(feed, unique_name, rest[: len(rest) // 2], 3)
            await cluster.wait_failover(victim, *topics, timeout=60)
            seconds = await asyncio.to_thread(cluster.start)
            await send_spread(feed, unique_name, rest[len(rest) // 2 :], 2)
            await feed.flush(120)
        return victim, seconds

    try:
        victim, seconds = asyncio.run(scenario())
        out, _ = worker.communicate(timeout=180)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    report = out.decode()
    assert worker.returncode == 0, report
    print(f"node {victim} killed and restarted in {seconds:.1f} s; {report.strip()}")
    check(path)
    asyncio.run(cluster.delete_topics(unique_name, f"{unique_name}.checkpoints"))


async def send_spread(
    producer: PartitionedProducer, topic: str, data: list[tuple[str, bytes]], seconds: float
) -> None:
    """Send ``data`` spread over ``seconds``."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for n, (device, value) in enumerate(data):
        await asyncio.sleep(max(0.0, began + seconds * n / len(data) - loop.time()))
        await producer.send(topic, device, value)
