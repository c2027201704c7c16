"""Running and stopping: nonsense settings are refused at the call, an idle worker waits on
something real, and a cancelled run ends promptly with its sinks and source closed."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from typing import Any

import pytest

from iotdata.errors import InvalidInputError
from iotdata.model import Batch
from iotdata.stream import (
    MemoryCheckpoints,
    MemorySource,
    Pipeline,
    Route,
    SourceRecord,
    Worker,
)
from tests.sinks._memory import MemorySink, MemoryWriter, Store

pytestmark = pytest.mark.timeout(60)


def batches(count: int) -> list[Batch]:
    return [Batch.from_columns(f"d{i % 4}", {"m": ([i], [float(i)], [i])}) for i in range(count)]


NONSENSE: list[tuple[str, object]] = [
    ("max_records", 0),
    ("max_records", -1),
    ("max_records", 2.5),
    ("max_records", True),
    ("max_records", "500"),
    ("checkpoint_interval", math.nan),
    ("checkpoint_interval", -1),
    ("checkpoint_interval", "5"),
    ("checkpoint_interval", None),
]


@pytest.mark.parametrize(("name", "value"), NONSENSE)
def test_pipeline_run_refuses_nonsense_before_opening_anything(name: str, value: object) -> None:
    sink = MemorySink()
    options: dict[str, Any] = {name: value}
    with pytest.raises(InvalidInputError, match=name):
        asyncio.run(Pipeline().to(sink).run(MemorySource(batches(3)), **options))
    assert sink.store.log == []


@pytest.mark.parametrize(
    ("name", "value"),
    [*NONSENSE, ("tick_interval", math.nan), ("tick_interval", -0.5), ("flush_at_end", "yes")],
)
def test_a_worker_refuses_nonsense_when_it_is_made(name: str, value: object) -> None:
    options: dict[str, Any] = {name: value}
    with pytest.raises(InvalidInputError, match=name):
        Worker(MemorySource([]), Pipeline().processor(), [], MemoryCheckpoints(), **options)


def test_pipeline_run_refuses_an_until_that_is_not_callable() -> None:
    with pytest.raises(InvalidInputError, match="until"):
        asyncio.run(Pipeline().run(MemorySource(batches(1)), until=5))  # type: ignore[arg-type]


class EagerSource:
    """A source whose poll returns nothing at once, however long it was asked to wait."""

    topic = "eager"

    def __init__(self) -> None:
        self.polls: list[float] = []
        self.timeouts: list[float] = []
        self.closed = 0

    async def start(self, listener: Any) -> None:
        await listener.assigned({0})

    async def poll(self, timeout: float, max_records: int) -> list[SourceRecord]:
        self.polls.append(time.monotonic())
        self.timeouts.append(timeout)
        return []

    def seek(self, partition: int, offset: int) -> None:
        pass

    async def commit(self, offsets: Mapping[int, int]) -> None:
        pass

    async def close(self) -> None:
        self.closed += 1


def test_an_empty_poll_that_returns_at_once_does_not_make_the_worker_spin() -> None:
    source = EagerSource()

    async def scenario() -> None:
        worker = Worker(source, Pipeline().processor(), [], MemoryCheckpoints())
        await worker.run(until=lambda stats: len(source.polls) >= 4)

    asyncio.run(scenario())
    gaps = [b - a for a, b in zip(source.polls, source.polls[1:], strict=False)]
    # each empty poll is followed by a wait of the poll's timeout (on the stop event) before the
    # next: a lower bound, which a slow machine only makes larger
    assert all(gap >= 0.9 * source.timeouts[0] for gap in gaps), gaps


class RecordingSink:
    """A sink configuration that keeps the writers it opened."""

    def __init__(self) -> None:
        self.store = Store()
        self.writers: list[MemoryWriter] = []

    def open(self) -> Any:
        async def opener() -> MemoryWriter:
            writer = MemoryWriter(self.store)
            self.writers.append(writer)
            return writer

        return opener()


def test_a_cancelled_run_ends_promptly_and_closes_its_sinks_and_source() -> None:
    source = EagerSource()
    sink = RecordingSink()

    async def scenario() -> None:
        polled = asyncio.Event()

        def until(stats: Any) -> bool:
            polled.set()
            return False

        task = asyncio.create_task(Pipeline().to(sink).run(source, until=until))
        await asyncio.wait_for(polled.wait(), 10)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the cancelled run did not end"
        assert task.cancelled()

    asyncio.run(scenario())
    assert source.closed == 1
    assert [w.released for w in sink.writers] == [1]


def test_a_busy_run_on_a_source_that_never_waits_can_be_cancelled() -> None:
    """MemorySource polls return at once; writes to a memory writer too: the worker must still
    yield to the event loop between polls, or nothing else (a cancel) could ever run."""
    store = Store()
    writer = MemoryWriter(store)

    async def scenario() -> None:
        worker = Worker(
            MemorySource(batches(50_000)),
            Pipeline().processor(),
            [Route(writer)],
            MemoryCheckpoints(),
            max_records=10,
        )
        task = asyncio.create_task(worker.run())
        while worker.statistics().records < 100:
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        assert task.cancelled()

    asyncio.run(scenario())
    assert len(store.readings) < 50_000
