"""The stream runtime on the embedded log: a worker abandoned mid-run (no final checkpoint, as
if killed) and a fresh one on the same checkpoints end with exactly the reference."""

from __future__ import annotations

import asyncio
from pathlib import Path

from iotdata.local import LocalLog
from iotdata.stream import FileCheckpoints, LocalSource, WorkerStats
from tests.stream._support import check, frames, pipeline, reference, stored


def fill(log: LocalLog, topic: str) -> int:
    log.create_topic(topic, 4)
    data = frames()
    for device, frame in data:
        log.append(topic, device.encode(), frame)
    return len(data)


async def run_worker(log: LocalLog, path: Path, state: Path, stop_after: int) -> WorkerStats:
    """A worker until it consumed ``stop_after`` records (then cancelled: its final checkpoint
    never happens, as with a kill)."""
    source = LocalSource("telemetry", log=log, group="workers")
    stats: list[WorkerStats] = []

    def watch(s: WorkerStats) -> bool:
        stats.append(s)
        return False  # never stops by itself: it is cancelled

    task = asyncio.create_task(
        pipeline(path).run(
            source,
            checkpoints=FileCheckpoints(state),
            checkpoint_interval=0.0,
            until=watch,
            max_records=20,
        )
    )
    while not stats or stats[-1].records < stop_after:
        await asyncio.sleep(0.01)
        if task.done():
            return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return stats[-1]


async def run_to_end(log: LocalLog, path: Path, state: Path, total: int) -> WorkerStats:
    source = LocalSource("telemetry", log=log, group="workers")
    ends = {p: log.end_offset("telemetry", p) for p in range(4)}
    done = False

    def consumed(s: WorkerStats) -> bool:
        nonlocal done
        done = done or (len(s.partitions) == 4 and log_caught_up(log, ends))
        return done

    return await pipeline(path).run(
        source, checkpoints=FileCheckpoints(state), checkpoint_interval=1.0, until=consumed
    )


def log_caught_up(log: LocalLog, ends: dict[int, int]) -> bool:
    return all((log.committed("workers", "telemetry", p) or 0) >= end for p, end in ends.items())


def test_abandoned_worker_and_its_successor_give_the_reference(tmp_path: Path) -> None:
    log = LocalLog.memory()
    total = fill(log, "telemetry")
    path, state = tmp_path / "out.sqlite", tmp_path / "state"
    first = asyncio.run(run_worker(log, path, state, stop_after=total // 2))
    assert first.records >= total // 2 and 0 < len(stored(path)) < len(reference())
    second = asyncio.run(run_to_end(log, path, state, total))
    assert second.records < total  # resumed from the checkpoints, not from the start
    check(path)
