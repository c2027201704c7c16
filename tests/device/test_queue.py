"""The device's durable reading queue, on real SQLite files (and memory-only)."""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdata import InvalidInputError, IotDataError, Reading, Value
from iotdata.device._queue import (
    Lease,
    Overflow,
    QueueClosedError,
    QueueConfig,
    QueueFullError,
    QueueStats,
    QueueStorageError,
    ReadingQueue,
)

DEVICE = "pump-7"
TS0 = 1_700_000_000_000_000
CHILD = Path(__file__).with_name("_queue_child.py")
NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_1234))[0]
SIGNALING_NAN = struct.unpack("<d", struct.pack("<Q", 0xFFF0_0000_0000_0001))[0]


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["file", "memory"])
def path(request: pytest.FixtureRequest, tmp_path: Path) -> Path | None:
    """Where the queue lives: a real SQLite file, or None for memory-only."""
    return tmp_path / "queue.db" if request.param == "file" else None


@pytest.fixture
def file_path(tmp_path: Path) -> Path:
    return tmp_path / "queue.db"


def open_queue(path: Path | None, device: str = DEVICE, **config: Any) -> ReadingQueue:
    clock = config.pop("clock", time.time)
    config.setdefault("first_seq", 0)  # the same numbers for both kinds of storage
    return ReadingQueue.open(device, QueueConfig(path=path, **config), clock=clock)


def test_a_memory_only_queue_starts_at_the_clock_so_restarts_never_reuse_a_seq() -> None:
    with ReadingQueue.open(DEVICE, QueueConfig(), clock=lambda: 1_700_000_000.5) as queue:
        assert queue.put(make(3)) == 1_700_000_000_500_000
    with ReadingQueue.open(DEVICE, QueueConfig(), clock=lambda: 1_700_000_001.0) as queue:
        assert queue.put(make(1)) == 1_700_000_001_000_000


def make(count: int, metric: str = "temp", start: int = 0) -> list[tuple[str, int, Value]]:
    return [(metric, TS0 + (start + i) * 1_000_000, float(start + i)) for i in range(count)]


def take(queue: ReadingQueue, max_readings: int, max_bytes: int | None = None) -> Lease:
    """A lease that must exist."""
    lease = queue.take(max_readings, max_bytes=max_bytes)
    assert lease is not None
    assert lease.readings == len(lease.batch) > 0
    return lease


def seqs(lease: Lease) -> list[int]:
    """The seq numbers of a lease, sorted."""
    return sorted(reading.seq for reading in lease.batch)


def drain(queue: ReadingQueue, max_readings: int = 1000) -> list[Reading]:
    """Take and ack everything pending."""
    readings: list[Reading] = []
    while (lease := queue.take(max_readings)) is not None:
        readings.extend(lease.batch)
        queue.ack(lease)
    return readings


def exact(value: Value) -> tuple[type, object]:
    """Compare values bit for bit: NaN payloads, -0.0, and 1 != 1.0 != True."""
    return (float, struct.pack("<d", value)) if type(value) is float else (type(value), value)


# ---------------------------------------------------------------------------------------------
# put, take, ack
# ---------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_value_exact(path: Path | None) -> None:
    values: list[Value] = [
        NAN_PAYLOAD, SIGNALING_NAN, -0.0, 0.0, math.inf, -math.inf, 1.5, 5e-324,
        0, 1, -(2**63), 2**64 - 1, True, False, "", "on", "é" * 1024, None,
    ]  # fmt: skip
    readings = [(f"m{i % 3}", TS0 + i, value) for i, value in enumerate(values)]
    with open_queue(path) as queue:
        assert queue.put(readings) == 0
        lease = take(queue, 100)
        assert lease is not None and lease.batch.device_id == DEVICE
        got = {r.seq: r for r in lease.batch}
        assert sorted(got) == list(range(len(values)))
        for seq, (metric, ts, value) in enumerate(readings):
            assert (got[seq].metric, got[seq].ts) == (metric, ts)
            assert exact(got[seq].value) == exact(value)
        assert [c.metric for c in lease.batch.columns] == ["m0", "m1", "m2"]
        queue.ack(lease)
        assert queue.take(100) is None
        stats = queue.statistics()
        assert (stats.queued, stats.queued_bytes, stats.in_flight) == (0, 0, 0)
        assert (stats.acknowledged, stats.next_seq) == (len(values), len(values))


def test_seq_is_consecutive_across_puts_in_input_order(path: Path | None) -> None:
    with open_queue(path) as queue:
        assert queue.put(make(3)) == 0
        assert queue.put([("hum", TS0, 1), ("temp", TS0, 2.0)]) == 3
        assert queue.put([]) == 5  # empty: no-op, the next seq
        assert queue.put(make(4, start=10)) == 5
        readings = drain(queue, 4)  # leases hold whole puts: 3, then 2, then 4 readings
    by_seq = {(r.device_id, r.seq): r for r in readings}
    assert sorted(by_seq) == [(DEVICE, s) for s in range(9)]
    assert [by_seq[DEVICE, s].value for s in (3, 4, 5, 8)] == [1, 2.0, 10.0, 13.0]


def test_statistics_count_stored_and_in_flight(path: Path | None) -> None:
    with open_queue(path) as queue:
        assert queue.statistics() == QueueStats(0, 0, 0, 0, 0, 0, 0)
        queue.put(make(5))
        queue.put(make(5))
        lease = take(queue, 5)
        stats = queue.statistics()
        assert (stats.queued, stats.in_flight, stats.next_seq) == (10, 5, 10)
        assert stats.queued_bytes > 0
        queue.ack(lease)
        assert queue.statistics().queued == 5
        assert queue.statistics().acknowledged == 5


def test_take_splits_a_put_larger_than_the_lease(path: Path | None) -> None:
    readings = [(("temp", "hum")[i % 2], TS0 + i, i) for i in range(25)]
    with open_queue(path) as queue:
        queue.put(readings)
        leases = [take(queue, 10), take(queue, 10), take(queue, 10)]
        assert [seqs(lease) for lease in leases] == [
            list(range(10)), list(range(10, 20)), list(range(20, 25))
        ]  # fmt: skip
        assert queue.take(10) is None
        for lease in leases:
            for reading in lease.batch:
                assert reading.value == reading.seq
                assert reading.metric == ("temp", "hum")[reading.seq % 2]
        queue.ack(leases[2])  # out of order
        queue.ack(leases[0])
        queue.release(leases[1])
        assert seqs(take(queue, 100)) == list(range(10, 20))
        assert queue.statistics().acknowledged == 15


def test_take_respects_max_bytes_but_lends_at_least_one_reading(path: Path | None) -> None:
    with open_queue(path) as queue:
        queue.put(make(100))
        queue.put(make(100))
        first = seqs(take(queue, 1000, 1))
        assert first == [0]
        second = take(queue, 1000, queue.statistics().queued_bytes // 4)
        assert 1 <= len(seqs(second)) < 99
        assert seqs(second)[0] == 1
        rest = drain(queue)
    assert sorted(r.seq for r in rest) == list(range(len(seqs(second)) + 1, 200))


def test_leases_hold_whole_puts_up_to_max_readings(path: Path | None) -> None:
    with open_queue(path) as queue:
        for _ in range(4):
            queue.put(make(3))
        assert seqs(take(queue, 7)) == list(range(6))  # a third put would exceed 7
        assert seqs(take(queue, 3)) == [6, 7, 8]
        assert seqs(take(queue, 1000)) == [9, 10, 11]


def test_released_readings_are_taken_again_first_in_seq_order(path: Path | None) -> None:
    with open_queue(path) as queue:
        for _ in range(4):
            queue.put(make(2))
        a, b, c = take(queue, 2), take(queue, 2), take(queue, 2)
        queue.release(c)
        queue.release(a)
        assert seqs(take(queue, 2)) == [0, 1]
        assert seqs(take(queue, 2)) == [4, 5]
        assert seqs(take(queue, 2)) == [6, 7]
        queue.ack(b)
        queue.release_all()
        assert queue.statistics().in_flight == 0
        assert seqs(take(queue, 100)) == [0, 1, 4, 5, 6, 7]
        queue.release_all()
        assert seqs(take(queue, 1)) == [0]  # the row of seq 0 and 1 is split
        assert seqs(take(queue, 2)) == [1]  # the next row would not fit
        assert seqs(take(queue, 3)) == [4, 5]
        assert queue.statistics().queued == 6


def test_a_released_split_row_splits_again(path: Path | None) -> None:
    with open_queue(path) as queue:
        queue.put(make(10))
        queue.put(make(10))
        first = take(queue, 20)
        queue.release(first)
        assert seqs(take(queue, 4)) == [0, 1, 2, 3]
        assert seqs(take(queue, 4)) == [4, 5, 6, 7]
        assert seqs(take(queue, 100)) == list(range(8, 20))


def test_ack_is_idempotent_and_ignores_unknown_leases(path: Path | None) -> None:
    with open_queue(path) as queue:
        queue.put(make(1))
        queue.put(make(1))
        a, b = take(queue, 1), take(queue, 1)
        assert a is not None and b is not None and a.id != b.id
        queue.ack(b)
        queue.ack(b)
        queue.release(b)  # already acknowledged: nothing to release
        queue.ack(a)
        queue.ack(a)
        assert queue.statistics().acknowledged == 2
        assert queue.statistics().queued == 0


def test_a_lease_of_a_closed_queue_never_acks_a_new_lease(file_path: Path) -> None:
    with open_queue(file_path) as queue:
        queue.put(make(3))
        stale = take(queue, 10)
    with open_queue(file_path) as queue:
        fresh = take(queue, 10)
        assert seqs(fresh) == seqs(stale) == [0, 1, 2]
        queue.ack(stale)
        assert queue.statistics().in_flight == 3
        queue.ack(fresh)
        assert queue.statistics().queued == 0


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 30)),
        st.tuples(st.just("take"), st.integers(1, 40)),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("release"), st.integers(0, 5)),
        st.tuples(st.just("release_all")),
        st.tuples(st.just("reopen")),
    ),
    max_size=30,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS, durable=st.booleans())
def test_queue_behaves_like_its_model(
    tmp_path: Path, operations: list[tuple[Any, ...]], durable: bool
) -> None:
    """Against a plain model: a lease is the oldest pending seqs, acked ones never come back,
    released ones come back first, a reopen makes everything stored pending again."""
    path = tmp_path / f"{uuid.uuid4().hex}.db" if durable else None
    stored: dict[int, float] = {}  # seq -> value of every unacknowledged reading
    lent: list[tuple[Lease, list[int]]] = []
    next_seq = 0
    queue = open_queue(path)
    try:
        for operation, *args in operations:
            if operation == "put":
                assert queue.put(make(args[0], start=next_seq)) == next_seq
                stored.update((s, float(s)) for s in range(next_seq, next_seq + args[0]))
                next_seq += args[0]
            elif operation == "take":
                in_flight = {s for _, taken in lent for s in taken}
                pending = sorted(set(stored) - in_flight)
                lease = queue.take(args[0])
                if not pending:
                    assert lease is None
                    continue
                assert lease is not None
                got = seqs(lease)
                assert got == pending[: len(got)] and 1 <= len(got) <= args[0]
                assert all(r.value == stored[r.seq] for r in lease.batch)
                lent.append((lease, got))
            elif operation in ("ack", "release") and lent:
                lease, taken = lent.pop(args[0] % len(lent))
                getattr(queue, operation)(lease)
                getattr(queue, operation)(lease)  # twice: a no-op
                if operation == "ack":
                    for seq in taken:
                        del stored[seq]
            elif operation == "release_all":
                queue.release_all()
                lent.clear()
            elif operation == "reopen" and path is not None:
                queue.close()
                queue = open_queue(path)
                lent.clear()
            stats = queue.statistics()
            assert stats.queued == len(stored)
            assert stats.in_flight == sum(len(taken) for _, taken in lent)
            assert stats.next_seq == next_seq
        lent.clear()
        queue.release_all()
        assert sorted(r.seq for r in drain(queue, 7)) == sorted(stored)
    finally:
        queue.close()


# ---------------------------------------------------------------------------------------------
# Reopen and durability
# ---------------------------------------------------------------------------------------------


def test_reopen_continues_seq_and_returns_unacknowledged_readings(file_path: Path) -> None:
    with open_queue(file_path) as queue:
        queue.put(make(5))
        queue.put(make(5, start=5))
        queue.put(make(5, start=10))
        queue.ack(take(queue, 5))
        assert seqs(take(queue, 5)) == list(range(5, 10))  # in flight, never acknowledged
    with open_queue(file_path) as queue:
        assert queue.statistics().next_seq == 15
        assert queue.statistics().queued == 10
        readings = drain(queue)
        assert queue.put(make(1)) == 15
    assert sorted((r.device_id, r.seq) for r in readings) == [(DEVICE, s) for s in range(5, 15)]
    assert all(r.value == float(r.seq) for r in readings)


def test_next_seq_survives_when_every_reading_was_acknowledged(file_path: Path) -> None:
    with open_queue(file_path) as queue:
        queue.put(make(7))
        drain(queue)
    with open_queue(file_path) as queue:
        assert queue.statistics().queued == 0
        assert queue.put(make(1)) == 7


def test_memory_only_queues_forget_everything(tmp_path: Path) -> None:
    with open_queue(None) as queue:
        queue.put(make(3))
    with open_queue(None) as queue:
        assert queue.statistics().queued == 0
        assert queue.put(make(1)) == 0


def test_a_queue_file_of_another_device_is_refused(file_path: Path) -> None:
    with open_queue(file_path):
        pass
    with pytest.raises(InvalidInputError, match="belongs to device 'pump-7'"):
        open_queue(file_path, device="pump-8")


def test_a_file_in_use_by_another_queue_is_refused(file_path: Path) -> None:
    with open_queue(file_path) as queue:
        queue.put(make(1))
        with pytest.raises(QueueStorageError, match="another ReadingQueue"):
            open_queue(file_path)
        assert queue.take(1) is not None  # the first queue goes on working


def test_files_that_are_not_queues_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    with pytest.raises(QueueStorageError):
        open_queue(garbage)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE things (x)")
    connection.close()
    with pytest.raises(QueueStorageError, match="not an iotdata reading queue"):
        open_queue(other)
    with pytest.raises(QueueStorageError):
        open_queue(tmp_path / "no-such-dir" / "queue.db")


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_every_durability_stores_and_reopens(file_path: Path, durability: str) -> None:
    with open_queue(file_path, durability=durability) as queue:
        queue.put(make(4))
    with open_queue(file_path, durability=durability) as queue:
        assert seqs(take(queue, 10)) == [0, 1, 2, 3]


def run_child_and_kill(path: Path, durability: str, seed: int) -> tuple[list[str], float]:
    """Start the child, SIGKILL it at a random moment; return the lines it completed."""
    rng = random.Random(seed)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(path), DEVICE, durability, str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        delay = rng.uniform(0.2, 0.8)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        output, _ = child.communicate(timeout=10)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    lines = output.split("\n")[:-1]  # the last line may have been cut by the kill
    return lines, delay


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_sigkill_loses_no_accepted_reading(file_path: Path, durability: str) -> None:
    seed = random.randrange(1 << 30)
    lines, delay = run_child_and_kill(file_path, durability, seed)
    printed: set[int] = set()  # put returned
    acked: set[int] = set()  # ack returned
    taken: set[int] = set()  # the last lease, if its ack had not returned: gone or not
    for line in lines:
        kind, *numbers = line.split()
        if kind == "P":
            first, count = map(int, numbers)
            printed.update(range(first, first + count))
        elif kind == "T":
            low, high, count = map(int, numbers)
            assert high - low + 1 == count  # without releases, a lease is a run of seqs
            taken = set(range(low, high + 1))
        else:
            acked |= taken
            taken = set()
    with open_queue(file_path, durability=durability) as queue:
        readings = drain(queue, 997)
        next_seq = queue.put(make(1))
    found = Counter((r.device_id, r.seq) for r in readings)
    context = f"seed={seed} kill after {delay:.2f}s"
    assert printed, context
    assert max(found.values(), default=1) == 1, f"a reading stored twice ({context})"
    assert all(r.value == float(r.seq) for r in readings), context
    missing = {(DEVICE, s) for s in printed - acked - taken} - set(found)
    assert not missing, f"{len(missing)} accepted readings lost ({context})"
    assert not {(DEVICE, s) for s in acked} & set(found), f"acknowledged reading back ({context})"
    assert next_seq > max(printed | {r.seq for r in readings}), context
    unreported = len({r.seq for r in readings} - printed)
    print(
        f"\nSIGKILL durability={durability} {context}: {len(printed)} readings accepted, "
        f"{len(acked)} acknowledged, {len(found)} recovered ({unreported} stored by a put "
        f"that had not returned, {len(taken)} in an ack that had not returned), "
        f"next seq {next_seq}"
    )


# ---------------------------------------------------------------------------------------------
# Overflow and expiry
# ---------------------------------------------------------------------------------------------


def test_block_waits_until_an_ack_makes_room(path: Path | None) -> None:
    with open_queue(path, max_readings=10) as queue:
        queue.put(make(10))
        lease = take(queue, 10)
        result: dict[str, object] = {}
        putter = threading.Thread(target=lambda: result.setdefault("seq", queue.put(make(5))))
        putter.start()
        putter.join(0.2)
        assert putter.is_alive()  # blocked: the queue is full
        queue.ack(lease)
        putter.join(5)
        assert not putter.is_alive()
        assert result == {"seq": 10}
        assert queue.statistics().queued == 5


def test_block_timeout_raises_queue_full(path: Path | None) -> None:
    with open_queue(path, max_readings=3, block_timeout=0.05) as queue:
        queue.put(make(3))
        started = time.monotonic()
        with pytest.raises(QueueFullError) as caught:
            queue.put(make(1))
        assert time.monotonic() - started >= 0.05
        assert caught.value.retriable
        assert isinstance(caught.value, IotDataError)
        assert queue.statistics().queued == 3


def test_raise_refuses_at_once(path: Path | None) -> None:
    with open_queue(path, max_readings=4, overflow=Overflow.RAISE) as queue:
        queue.put(make(3))
        with pytest.raises(QueueFullError, match="full"):
            queue.put(make(2))
        assert queue.put(make(1)) == 3
        assert queue.statistics() == QueueStats(4, queue.statistics().queued_bytes, 0, 0, 0, 0, 4)


def test_max_bytes_bounds_the_stored_bytes(path: Path | None) -> None:
    with open_queue(path, overflow=Overflow.RAISE, max_bytes=2_000) as queue:
        with pytest.raises(QueueFullError):
            for start in range(0, 10_000, 10):
                queue.put(make(10, start=start))
        assert 0 < queue.statistics().queued_bytes <= 2_000


def test_drop_oldest_drops_pending_never_in_flight(
    path: Path | None, caplog: pytest.LogCaptureFixture
) -> None:
    with open_queue(path, max_readings=10, overflow=Overflow.DROP_OLDEST) as queue:
        for i in range(10):
            queue.put(make(1, start=i))
        lease = take(queue, 3)
        assert seqs(lease) == [0, 1, 2]
        with caplog.at_level(logging.WARNING, logger="iotdata.device"):
            assert queue.put(make(2, start=10)) == 10
            queue.put(make(1, start=12))  # drops 5; the warning is rate-limited
        assert queue.statistics().dropped == 3
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "2 dropped" in warnings[0].getMessage()
        rest = take(queue, 100)
        assert seqs(rest) == list(range(6, 13))
        with pytest.raises(QueueFullError):  # everything is in flight: nothing may be dropped
            queue.put(make(1))
        queue.ack(lease)
        queue.ack(rest)
        stats = queue.statistics()
        assert (stats.queued, stats.acknowledged, stats.dropped) == (0, 10, 3)


def test_drop_oldest_takes_released_readings_first(path: Path | None) -> None:
    with open_queue(path, max_readings=4, overflow=Overflow.DROP_OLDEST) as queue:
        for i in range(4):
            queue.put(make(1, start=i))
        take(queue, 2)
        queue.release_all()
        queue.put(make(1, start=4))
        assert seqs(take(queue, 100)) == [1, 2, 3, 4]


def test_max_age_expires_pending_readings(path: Path | None) -> None:
    clock = FakeClock(1_000.0)
    with open_queue(path, max_age=60, clock=clock) as queue:
        queue.put(make(3))
        clock.now = 1_030.0
        queue.put(make(2, start=3))
        clock.now = 1_070.0  # the first put is 70 s old, the second 40 s
        lease = take(queue, 100)
        assert seqs(lease) == [3, 4]
        assert queue.statistics().expired == 3
        clock.now = 2_000.0
        assert queue.take(100) is None  # in flight: never expired
        assert queue.statistics().expired == 3
        queue.release(lease)
        assert queue.take(100) is None
        stats = queue.statistics()
        assert (stats.expired, stats.queued, stats.queued_bytes) == (5, 0, 0)


def test_expired_readings_make_room(path: Path | None) -> None:
    clock = FakeClock()
    with open_queue(
        path, max_age=10, max_readings=2, overflow=Overflow.RAISE, clock=clock
    ) as queue:
        queue.put(make(2))
        clock.now += 11
        assert queue.put(make(2, start=2)) == 2
        assert queue.statistics().expired == 2
        assert seqs(take(queue, 10)) == [2, 3]


def test_age_survives_reopen(file_path: Path) -> None:
    clock = FakeClock(1_000.0)
    with open_queue(file_path, clock=clock) as queue:
        queue.put(make(2))
    clock.now = 1_100.0
    with open_queue(file_path, clock=clock, max_age=60) as queue:
        assert queue.take(10) is None
        assert queue.statistics().expired == 2


# ---------------------------------------------------------------------------------------------
# Threads, waiting, closing
# ---------------------------------------------------------------------------------------------


def test_producer_and_consumer_threads_deliver_every_seq_once(path: Path | None) -> None:
    total = 3_000
    rng = random.Random(7)
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(rng.randint(1, 40), total - sum(sizes)))
    delivered: Counter[tuple[str, int]] = Counter()
    with open_queue(path, max_readings=200) as queue:  # small: the producer blocks at times

        def produce() -> None:
            start = 0
            for size in sizes:
                queue.put(make(size, start=start))
                start += size

        producer = threading.Thread(target=produce)
        producer.start()
        deadline = time.monotonic() + 20
        while sum(delivered.values()) < total and time.monotonic() < deadline:
            if not queue.wait(0.5):
                continue
            lease = queue.take(rng.randint(1, 60))
            if lease is None:
                continue
            if rng.random() < 0.2:
                queue.release(lease)
                continue
            queue.ack(lease)
            delivered.update((r.device_id, r.seq) for r in lease.batch)
            assert all(r.value == float(r.seq) for r in lease.batch)
        producer.join(5)
        assert not producer.is_alive()
    assert set(delivered) == {(DEVICE, s) for s in range(total)}
    assert set(delivered.values()) == {1}


def test_wait_returns_when_something_is_pending(path: Path | None) -> None:
    with open_queue(path) as queue:
        assert queue.wait(0.01) is False
        timer = threading.Timer(0.05, queue.put, [make(1)])
        timer.start()
        assert queue.wait(5) is True
        timer.join()
        lease = take(queue, 1)
        assert queue.wait(0) is False  # only in flight
        queue.release(lease)
        assert queue.wait(0) is True


def blocked(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(0.1)
    assert thread.is_alive()
    return thread, errors


def test_close_wakes_blocked_put_and_wait(path: Path | None) -> None:
    queue = open_queue(path, max_readings=1)
    waiter, wait_errors = blocked(queue.wait)
    queue.put(make(1))
    waiter.join(5)
    assert not wait_errors
    take(queue, 1)
    waiter, wait_errors = blocked(queue.wait)
    putter, put_errors = blocked(lambda: queue.put(make(1)))
    queue.close()
    queue.close()
    for thread in (waiter, putter):
        thread.join(5)
        assert not thread.is_alive()
    assert [type(e) for e in wait_errors + put_errors] == [QueueClosedError] * 2
    assert "closed" in str(put_errors[0])


def test_a_closed_queue_refuses_work(path: Path | None) -> None:
    with open_queue(path) as queue:
        queue.put(make(2))
        lease = take(queue, 1)
    assert lease is not None
    for call in (lambda: queue.put(make(1)), lambda: queue.take(1), lambda: queue.wait(0)):
        with pytest.raises(QueueClosedError):
            call()
    queue.ack(lease)  # nothing is in flight any more: no-ops
    queue.release(lease)
    queue.release_all()
    assert queue.statistics().in_flight == 0
    if path is not None:  # the acknowledgement came too late: the reading is sent again
        with open_queue(path) as reopened:
            assert seqs(take(reopened, 10)) == [0, 1]


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"max_bytes": 0},
        {"max_bytes": 1.5},
        {"max_bytes": True},
        {"max_readings": 0},
        {"max_readings": "10"},
        {"max_age": 0},
        {"max_age": -1.0},
        {"max_age": math.nan},
        {"max_age": True},
        {"block_timeout": -0.1},
        {"block_timeout": "1"},
        {"overflow": "block"},
        {"durability": "fast"},
        {"durability": "FULL"},
        {"path": 42},
        {"path": ""},
    ],
)
def test_bad_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        QueueConfig(**config)


def test_zero_block_timeout_and_path_like_values_are_fine(tmp_path: Path) -> None:
    config = QueueConfig(path=tmp_path / "q.db", block_timeout=0, max_age=0.5, max_readings=1)
    with ReadingQueue.open(DEVICE, config) as queue:
        queue.put(make(1))
        with pytest.raises(QueueFullError):
            queue.put(make(1))
    assert os.path.exists(tmp_path / "q.db")


@pytest.mark.parametrize(
    "readings",
    [
        [("", TS0, 1.0)],
        [("bad\nname", TS0, 1.0)],
        [("temp", 1.5, 1.0)],
        [("temp", TS0, object())],
        [("temp", TS0, 2**64)],
        [("temp", TS0, "x" * 1025)],
        [("temp", TS0)],
        [("temp", TS0, 1.0, 4)],
        [("temp", TS0, 1.0), ("hum", TS0)],
        [(["temp"], TS0, 1.0)],
        ["abc"],
        [42],
        "temp",
        iter([("temp", TS0, 1.0)]),
    ],
)
def test_bad_readings_are_refused_and_nothing_is_stored(path: Path | None, readings: Any) -> None:
    with open_queue(path) as queue:
        with pytest.raises(InvalidInputError):
            queue.put(readings)
        assert queue.statistics() == QueueStats(0, 0, 0, 0, 0, 0, 0)


def test_bad_calls_are_refused(path: Path | None) -> None:
    with pytest.raises(InvalidInputError):
        open_queue(path, device="a/b")
    with pytest.raises(InvalidInputError):
        ReadingQueue.open(DEVICE, {"path": None})  # type: ignore[arg-type]
    with open_queue(path, max_readings=5) as queue:
        with pytest.raises(InvalidInputError, match="can never fit"):
            queue.put(make(6))
        for bad in (0, -1, 1.0, True, None):
            with pytest.raises(InvalidInputError):
                queue.take(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            queue.take(10, max_bytes=0)
        with pytest.raises(InvalidInputError):
            queue.ack("lease")  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            queue.release(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            queue.wait(-1)


def test_large_puts_become_several_rows_in_one_transaction(path: Path | None) -> None:
    with open_queue(path) as queue:
        assert queue.put(make(2_500)) == 0
        assert queue.put(make(1)) == 2_500
        lease = take(queue, 5_000)
        assert seqs(lease) == list(range(2_501))


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


# -- the intake journal (append) -------------------------------------------------------------


def test_append_and_put_keep_seq_order_and_values(file_path: Path) -> None:
    with open_queue(file_path) as queue:
        assert queue.append("temp", TS0, 1.5) == 0
        assert queue.put(make(3, start=1)) == 1
        assert queue.append("state", TS0 + 9, "ok") == 4
        assert queue.append("temp", TS0 + 10, float("nan")) == 5
        lease = take(queue, 100)
        assert [r.seq for r in sorted(lease.batch, key=lambda r: r.seq)] == list(range(6))
        assert lease.batch.column("state").values == ("ok",)
        queue.ack(lease)
        assert queue.statistics().queued == 0


def test_appended_readings_survive_a_reopen_without_close(file_path: Path) -> None:
    """A process that dies leaves its journal behind; the next open stores what it holds."""
    queue = open_queue(file_path)
    seqs = [queue.append("temp", TS0 + i, float(i)) for i in range(10)]
    journal = Path(f"{file_path}-intake")
    assert journal.stat().st_size > 0
    left_behind = journal.read_bytes()
    queue.close()  # absorbs; now put the unabsorbed state back, as after a SIGKILL
    conn = sqlite3.connect(file_path)
    conn.execute("DELETE FROM chunks")
    conn.commit()
    conn.close()
    journal.write_bytes(left_behind + left_behind[:7])  # and a torn record at the tail
    with open_queue(file_path) as reopened:
        lease = take(reopened, 100)
        assert [r.seq for r in sorted(lease.batch, key=lambda r: r.seq)] == seqs
        assert [r.value for r in sorted(lease.batch, key=lambda r: r.seq)] == [
            float(i) for i in range(10)
        ]
    assert not journal.exists()  # removed by a clean close


def test_append_refuses_and_normalises_like_put(path: Path | None) -> None:
    class Celsius(float):
        pass

    with open_queue(path) as queue:
        first = queue.append("temp", TS0, Celsius(2.5))
        with pytest.raises(InvalidInputError):
            queue.append("bad/name\n", TS0, 1.0)
        with pytest.raises(InvalidInputError):
            queue.append("temp", TS0, object())  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError):
            queue.append("temp", 1.5, 1.0)  # type: ignore[arg-type]
        lease = take(queue, 10)
        assert [(r.seq, type(r.value)) for r in lease.batch] == [(first, float)]


def test_append_respects_the_overflow_policy(file_path: Path) -> None:
    with open_queue(file_path, max_readings=3, overflow=Overflow.RAISE) as queue:
        for i in range(3):
            queue.append("temp", TS0 + i, float(i))
        with pytest.raises(QueueFullError):
            queue.append("temp", TS0 + 3, 3.0)
        assert queue.statistics().queued == 3
