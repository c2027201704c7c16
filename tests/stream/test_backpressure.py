"""Backpressure: a slow or refusing sink slows the worker down instead of filling memory, and
every reading still lands once; a fatal sink error stops the worker with that error."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import tenacity

from iotdata import Batch, codec
from iotdata.local import LocalLog
from iotdata.sinks import (
    PendingRecords,
    RetryPolicy,
    SinkBackpressureError,
    SinkFatalError,
    SinkRetriableError,
)
from iotdata.stream import LocalSource, MemoryCheckpoints, Pipeline, Route, Worker
from tests.sinks._memory import MemoryWriter, Store

DEVICES, FRAMES, FRAME = 10, 20, 50
FLUSH_ROWS, MAX_RECORDS = 200, 4
ONCE = RetryPolicy(stop=tenacity.stop_after_attempt(1))  # the writer gives up: the worker waits


class SlowWriter(MemoryWriter):
    """Takes its time, refuses now and then, and notes how far ahead the worker got."""

    def __init__(self, store: Store, worker: list[Worker], failures: list[Exception]) -> None:
        super().__init__(store, flush_rows=FLUSH_ROWS, retry=ONCE)
        self.worker = worker
        self.failures = list(failures)
        self.ahead: list[int] = []

    async def persist(self, pending: PendingRecords) -> None:
        await asyncio.sleep(0.005)
        consumed = self.worker[0].statistics().readings
        self.ahead.append(consumed - len(self.store.readings))
        await super().persist(pending)


def fill() -> LocalLog:
    log = LocalLog.memory()
    log.create_topic("t", 2)
    for f in range(FRAMES):
        for d in range(DEVICES):
            seqs = list(range(f * FRAME, (f + 1) * FRAME))
            frame = Batch.from_columns(f"d{d}", {"m": ([s * 10**6 for s in seqs], seqs, seqs)})
            log.append("t", f"d{d}".encode(), codec.encode(frame))
    return log


def run(failures: list[Exception]) -> tuple[Worker, SlowWriter]:
    holder: list[Worker] = []
    writer = SlowWriter(Store(), holder, failures)
    worker = Worker(
        LocalSource("t", log=fill(), group="g"),
        Pipeline().dedup().processor(),
        [Route(writer)],
        MemoryCheckpoints(),
        checkpoint_interval=0.05,
        max_records=MAX_RECORDS,
    )
    holder.append(worker)

    async def main() -> Any:
        return await worker.run(until=lambda s: s.records == DEVICES * FRAMES)

    asyncio.run(main())
    return worker, writer


def test_a_slow_refusing_sink_slows_the_worker_and_loses_nothing() -> None:
    refusals: list[Exception] = [
        SinkBackpressureError("busy", retry_after=0.02),
        SinkRetriableError("restarting"),
        SinkBackpressureError("busy", retry_after=0.01),
    ]
    worker, writer = run(refusals)
    stats = worker.statistics()
    assert stats.sink_retries == 3
    expected = {(f"d{d}", s) for d in range(DEVICES) for s in range(FRAMES * FRAME)}
    assert set(writer.store.readings) == expected
    # the worker never ran further ahead of the sink than its bounds allow: the writer's
    # buffer (flush_rows, plus the one write that filled it) and one poll of records
    bound = 2 * FLUSH_ROWS + MAX_RECORDS * FRAME
    assert writer.ahead and max(writer.ahead) <= bound, max(writer.ahead)


def test_a_fatal_sink_error_stops_the_worker_with_it() -> None:
    with pytest.raises(SinkFatalError, match="no such table"):
        run([SinkFatalError("no such table")])
