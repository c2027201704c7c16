"""Dedup by (device_id, seq): exact while a device has at most max_runs runs of seen seqs,
bounded beyond that, every drop counted; a duplicate from before a crash never counts twice."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata import Batch, InvalidInputError
from iotdata.device import QueueConfig, ReadingQueue
from iotdata.stream import Count, Dedup, Pipeline, Tumbling
from iotdata.stream._common import pack_snapshot


def batch(device: str, seqs: list[int], metric: str = "m") -> Batch:
    return Batch.from_columns(
        device, {metric: ([s * 10 for s in seqs], [float(s) for s in seqs], seqs)}
    )


def seqs_of(batches: list[Batch]) -> list[int]:
    return [s for b in batches for c in b.columns for s in c.seq]


@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.lists(st.integers(0, 300), min_size=1, max_size=20)),
        max_size=40,
    )
)
def test_within_the_runs_exactly_the_first_copy_passes(
    deliveries: list[tuple[str, list[int]]],
) -> None:
    dedup = Dedup(max_runs=400)  # more than any history here can have: nothing is forgotten
    seen: set[tuple[str, int]] = set()
    dropped = 0
    for device, delivered in deliveries:
        seqs = list(dict.fromkeys(delivered))  # one batch holds a reading once
        expected = [s for s in seqs if (device, s) not in seen]
        dropped += len(seqs) - len(expected)
        seen.update((device, s) for s in seqs)
        assert seqs_of(dedup.process(batch(device, seqs))) == expected
    stats = dedup.statistics()
    assert stats["duplicates"] == dropped
    assert stats["passed"] == len(seen)
    assert stats["forgotten"] == 0


@given(
    st.lists(
        st.tuples(st.integers(0, 2**40), st.integers(1, 50), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    st.randoms(use_true_random=False),
)
def test_any_seqs_far_apart_are_remembered_as_runs(
    runs: list[tuple[int, int, bool]], rng: random.Random
) -> None:
    """Runs of consecutive seqs anywhere (crash gaps of 2**20 and more), delivered in any
    order and again: each (device, seq) passes once."""
    dedup = Dedup(max_runs=64)
    deliveries = [list(range(start, start + size)) for start, size, _ in runs]
    deliveries += [d for d, (_, _, again) in zip(deliveries, runs, strict=True) if again]
    rng.shuffle(deliveries)
    passed = [s for seqs in deliveries for s in seqs_of(dedup.process(batch("d", seqs)))]
    assert sorted(passed) == sorted({s for seqs in deliveries for s in seqs})
    assert dedup.statistics()["forgotten"] == 0


def test_the_fast_path_returns_the_same_batch() -> None:
    dedup = Dedup()
    first = batch("d", list(range(100)))
    assert dedup.process(first)[0] is first
    assert dedup.process(first) == []
    second = batch("d", list(range(100, 200)))
    assert dedup.process(second)[0] is second
    assert dedup.statistics()["duplicates"] == 100


def test_duplicates_inside_one_batch_and_across_metrics() -> None:
    dedup = Dedup()
    two = Batch.from_columns(
        "d", {"a": ([1, 2], [1.0, 2.0], [0, 2]), "b": ([1, 2], [5.0, 6.0], [1, 3])}
    )
    assert dedup.process(two) == [two]
    again = Batch.from_columns(
        "d", {"a": ([3, 2], [3.0, 2.0], [4, 2]), "b": ([3, 3], [7.0, 7.0], [5, 5])}
    )
    (kept,) = dedup.process(again)
    assert [(c.metric, c.seq) for c in kept.columns] == [("a", (4,)), ("b", (5,))]
    assert dedup.statistics()["duplicates"] == 2


@pytest.mark.parametrize(("policy", "passes"), [("pass", True), ("drop", False)])
def test_beyond_max_runs_is_forgotten_counted_and_follows_the_policy(
    policy: str, passes: bool
) -> None:
    dedup = Dedup(max_runs=2, forgotten=policy)
    for start in (0, 100, 200):  # three runs: the first is forgotten
        dedup.process(batch("d", list(range(start, start + 10))))
    assert dedup.process(batch("d", [105])) == []  # in a remembered run: a known duplicate
    assert dedup.process(batch("d", [150]))  # in a remembered gap: new
    assert bool(dedup.process(batch("d", [5]))) is passes  # below the floor: unknown
    stats = dedup.statistics()
    assert (stats["duplicates"], stats["forgotten"]) == (1, 1)


def test_state_stays_bounded_whatever_the_seqs() -> None:
    dedup = Dedup(max_runs=100)
    rng = random.Random(5)
    for _ in range(300):
        dedup.process(batch("d", sorted(rng.sample(range(10**9), 30))))
    assert len(dedup._parts[0].devices["d"].runs) == 2 * 100
    assert len(dedup.snapshot()) < 100 * 2 * 9 + 200


def test_a_device_with_consecutive_seqs_is_one_run_whatever_the_batches() -> None:
    dedup = Dedup()
    two_metrics = Batch.from_columns(
        "d", {"a": ([1, 2], [1.0, 2.0], [0, 2]), "b": ([1, 2], [5.0, 6.0], [1, 3])}
    )
    assert dedup.process(two_metrics)[0] is two_metrics  # one run 0..3 across the columns
    for start in range(4, 10_000, 7):
        dedup.process(batch("d", list(range(start, start + 7))))
    assert dedup._parts[0].devices["d"].runs == [0, 10_000]


def test_max_devices_evicts_the_least_recently_seen() -> None:
    dedup = Dedup(max_devices=2)
    for device in ("a", "b", "a", "c"):  # c evicts b (a was seen again)
        dedup.process(batch(device, [0]))
    assert dedup.process(batch("a", [0])) == []  # still remembered
    assert dedup.process(batch("b", [0]))  # forgotten: passes again
    stats = dedup.statistics()
    assert (stats["evicted"], stats["devices"]) == (2, 2)


def test_arguments_are_checked() -> None:
    for bad in ({"max_runs": 0}, {"max_runs": 1.5}, {"max_devices": 0}, {"forgotten": "keep"}):
        with pytest.raises(InvalidInputError):
            Dedup(**bad)  # type: ignore[arg-type]


def test_a_snapshot_of_the_earlier_bitmap_dedup_restores() -> None:
    """Checkpoints written before the run-based dedup still restore: per device the highest
    seq and a bitmap of the horizon below it (bit i: hwm - i)."""
    bits = (1 << 40) - 1 | 1 << 50  # hwm - 0..39 and hwm - 50 seen
    devices = [["d", 1000, bits.to_bytes(7, "little")]]
    legacy = pack_snapshot("dedup", [64], [(0, [devices, [41, 41, 3, 0, 0]])])
    dedup = Dedup()
    dedup.restore(legacy)
    assert dedup.process(batch("d", [1000, 961, 950])) == []  # all seen
    assert seqs_of(dedup.process(batch("d", [960, 951, 1001]))) == [960, 951, 1001]
    assert dedup.process(batch("d", [936])) != []  # below the old horizon: forgotten, passes
    assert dedup.statistics()["forgotten"] == 1
    assert dedup.statistics()["duplicates"] == 3 + 3


def test_a_duplicate_from_before_a_crash_never_counts_twice_in_a_window(tmp_path: Path) -> None:
    """A device queue killed mid-run skips its seqs ahead by 2**20, so none is ever reused.
    A frame sent before the crash and delivered again after the newer readings (a gateway's
    redelivery, say) is a million seqs below them, yet is dropped, and every window counts
    each reading once."""
    path = tmp_path / "q.sqlite"
    crash = subprocess.run(
        [sys.executable, "-c", CRASHING_DEVICE, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    queue = ReadingQueue.open("pump-1", QueueConfig(path=path))
    before = queue.take(10_000)  # what the killed device had sent: stored, not acknowledged
    assert before is not None
    ts0 = before.batch.columns[0].ts[0]
    after_crash = queue.put([("temp", ts0 + (i + 100) * SECOND, 1.0) for i in range(100)])
    assert after_crash >= 2**20  # the seqs jumped past every one that may have been used
    newer = queue.take(10_000)
    assert newer is not None
    queue.close()
    pipeline = Pipeline().dedup().window(Tumbling(10 * SECOND), Count(), grace=10_000 * SECOND)
    processor = pipeline.processor()
    emitted = [processor.process(b, 0) for b in (before.batch, newer.batch, before.batch)]
    emitted.append(processor.flush(0))
    counts = {(a.metric, a.window_start): a.count for out in emitted for a in out.aggregates}
    readings = [r for b in (before.batch, newer.batch) for r in b]
    expected: Counter[int] = Counter(r.ts // (10 * SECOND) * (10 * SECOND) for r in readings)
    assert {start: int(n) for (_, start), n in counts.items()} == dict(expected)
    assert sum(counts.values()) == len({(r.device_id, r.seq) for r in readings}) == 200


SECOND = 1_000_000
CRASHING_DEVICE = """
import os, signal, sys
from iotdata.device import QueueConfig, ReadingQueue
queue = ReadingQueue.open("pump-1", QueueConfig(path=sys.argv[1]))
for i in range(100):
    queue.append("temp", 1_700_000_000_000_000 + i * 1_000_000, float(i))
os.kill(os.getpid(), signal.SIGKILL)
"""
