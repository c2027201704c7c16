"""The writer contract on an in-memory sink, and check_sink catching broken sinks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import tenacity

from iotdata.errors import ClosedError
from iotdata.model import Batch
from iotdata.sinks import (
    BadRowError,
    RetryPolicy,
    SinkBackpressureError,
    SinkClosedError,
    SinkFatalError,
    SinkRetriableError,
    SourcePosition,
)
from iotdata.testing import SinkCheckError, check_sink
from tests.sinks._memory import (
    DeadLetterDroppingWriter,
    DeadLetterWriter,
    DuplicatingWriter,
    ForgetfulWriter,
    LastWriteWinsWriter,
    LaxSortOutWriter,
    MemorySink,
    MemoryWriter,
)


def run(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def batch(device: str, first_seq: int, count: int = 10) -> Batch:
    seqs = list(range(first_seq, first_seq + count))
    return Batch.from_columns(
        device, {"t": ([1_000 + s for s in seqs], [float(s) for s in seqs], seqs)}
    )


class VirtualSleep:
    """A retry sleep that records the waits instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def policy(sleep: Callable[[float], Awaitable[None]], attempts: int = 5) -> RetryPolicy:
    return RetryPolicy(
        wait=tenacity.wait_fixed(0.5), stop=tenacity.stop_after_attempt(attempts), sleep=sleep
    )


# ------------------------------------------------------------------ check_sink itself


def test_a_correct_memory_sink_passes_the_check() -> None:
    sink = MemorySink()
    run(check_sink(sink.open, read_back=sink.store.contents))
    assert sink.store.dead_letters == {}  # it keeps none, so it refused them


def test_a_sink_that_keeps_dead_letters_is_checked_for_them() -> None:
    sink = MemorySink(writer_class=DeadLetterWriter)
    run(check_sink(sink.open, read_back=sink.store.contents))
    kinds = sorted({letter.kind for letter in sink.store.dead_letters.values()})
    assert kinds == ["aggregate", "alert", "reading"]


def test_the_check_works_without_read_back_and_for_some_kinds() -> None:
    run(check_sink(MemorySink().open))

    class AlertsOnly(MemoryWriter):
        kinds = frozenset({"alerts"})  # type: ignore[assignment]

    sink = MemorySink(writer_class=AlertsOnly)
    run(check_sink(sink.open, read_back=sink.store.contents, kinds={"alerts"}))
    assert sink.store.readings == {} and sink.store.aggregates == {}
    with pytest.raises(SinkCheckError, match=r"write then flush: .*does not store readings"):
        run(check_sink(MemorySink(writer_class=AlertsOnly).open))


@pytest.mark.parametrize(
    ("writer_class", "complaint"),
    [
        (DuplicatingWriter, "stored 2 times"),
        (LastWriteWinsWriter, "lower revision"),
        (ForgetfulWriter, "alerts: 6 missing"),
        (DeadLetterDroppingWriter, "dead letters written then flushed: dead_letters: 7 missing"),
        (LaxSortOutWriter, "sort_out: an object that is no record: kept"),
    ],
)
def test_the_check_catches_broken_sinks(writer_class: Any, complaint: str) -> None:
    sink = MemorySink(writer_class=writer_class)
    with pytest.raises(SinkCheckError, match=complaint):
        run(check_sink(sink.open, read_back=sink.store.contents))


def test_the_check_catches_a_partial_write_of_bad_rows() -> None:
    class Partial(MemoryWriter):
        async def write(self, records: Any, *, position: Any = None) -> None:
            good = [r for r in records if isinstance(r, Batch)]
            await super().write(good, position=position)
            await super().write(records, position=position)

    sink = MemorySink(writer_class=Partial)
    with pytest.raises(SinkCheckError, match="bad rows"):
        run(check_sink(sink.open, read_back=sink.store.contents))


def test_the_check_catches_a_close_that_cannot_be_repeated() -> None:
    class CloseOnce(MemoryWriter):
        async def release(self) -> None:
            if self.released:
                raise RuntimeError("closed twice")
            self.released += 1

        async def close(self) -> None:
            await self.release()

    with pytest.raises(SinkCheckError, match="second close raised"):
        run(check_sink(MemorySink(writer_class=CloseOnce).open))


# ------------------------------------------------------------------ the buffered writer


def test_flush_retries_retriable_errors_and_writes_the_batch_once() -> None:
    sleep = VirtualSleep()
    sink = MemorySink(retry=policy(sleep))

    async def scenario() -> MemoryWriter:
        writer = await sink.open()
        writer.failures += [SinkRetriableError("lost"), SinkRetriableError("lost again")]
        await writer.write(batch("d", 0))
        await writer.flush()
        await writer.close()
        return writer

    writer = run(scenario())
    assert sleep.waits == [0.5, 0.5]
    assert sorted(sink.store.readings) == [("d", s) for s in range(10)]
    stats = writer.statistics()
    assert (stats.flushed, stats.flushes, stats.retries, stats.buffered) == (10, 1, 2, 0)


def test_backpressure_waits_at_least_retry_after() -> None:
    sleep = VirtualSleep()
    sink = MemorySink(retry=policy(sleep))

    async def scenario() -> None:
        async with sink.open() as writer:
            writer.failures.append(SinkBackpressureError("slow down", retry_after=7.0))
            await writer.write(batch("d", 0))

    run(scenario())
    assert sleep.waits == [7.0]
    assert len(sink.store.readings) == 10


def test_a_fatal_error_is_raised_at_once_and_the_records_stay_buffered() -> None:
    sleep = VirtualSleep()
    sink = MemorySink(retry=policy(sleep))

    async def scenario() -> None:
        writer = await sink.open()
        writer.failures.append(SinkFatalError("no table"))
        await writer.write(batch("d", 0))
        with pytest.raises(SinkFatalError):
            await writer.flush()
        assert writer.statistics().buffered == 10
        await writer.flush()  # the operator fixed it
        await writer.close()

    run(scenario())
    assert sleep.waits == []
    assert len(sink.store.readings) == 10


def test_the_policy_gives_up_with_the_last_retriable_error() -> None:
    sink = MemorySink(retry=policy(VirtualSleep(), attempts=2))

    async def scenario() -> None:
        writer = await sink.open()
        writer.failures += [SinkRetriableError("one"), SinkRetriableError("two")]
        await writer.write(batch("d", 0))
        with pytest.raises(SinkRetriableError, match="two"):
            await writer.flush()
        assert writer.statistics().buffered == 10
        await writer.close()

    run(scenario())
    assert sink.store.readings == {}


def test_close_cuts_a_retrying_flush_short() -> None:
    async def forever(seconds: float) -> None:
        await asyncio.sleep(3600)

    sink = MemorySink(retry=policy(forever, attempts=100))

    async def scenario() -> MemoryWriter:
        writer = await sink.open()
        writer.failures += [SinkRetriableError("down")] * 50
        await writer.write(batch("d", 0))
        flushing = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0.05)
        await asyncio.wait_for(writer.close(), 5)
        with pytest.raises(SinkClosedError):
            await flushing
        return writer

    writer = run(scenario())
    assert writer.released == 1
    assert writer.statistics().discarded == 10


def test_writes_flush_first_when_the_buffer_would_overflow() -> None:
    sink = MemorySink(flush_rows=25)

    async def scenario() -> MemoryWriter:
        writer = await sink.open()
        for first in range(0, 60, 10):
            await writer.write(batch("d", first))
            assert writer.statistics().buffered <= 25
        await writer.close()
        return writer

    writer = run(scenario())
    assert [p.rows for p in sink.store.log] == [20, 20]
    assert writer.statistics().discarded == 20


def test_a_single_write_larger_than_the_bound_is_taken_whole() -> None:
    sink = MemorySink(flush_rows=5)

    async def scenario() -> None:
        async with sink.open() as writer:
            await writer.write(batch("d", 0, count=12))

    run(scenario())
    assert [p.rows for p in sink.store.log] == [12]


def test_closed_writers_refuse_work_and_close_again_quietly() -> None:
    async def scenario() -> MemoryWriter:
        writer = await MemorySink().open()
        await writer.close()
        await writer.close()
        with pytest.raises(SinkClosedError):
            await writer.write(batch("d", 0))
        with pytest.raises(ClosedError):
            await writer.flush()
        return writer

    assert run(scenario()).released == 1


def test_async_with_flushes_on_success_and_only_closes_on_error() -> None:
    sink = MemorySink()

    async def scenario() -> None:
        async with sink.open() as writer:
            await writer.write(batch("d", 0))
        with pytest.raises(KeyError):
            async with sink.open() as writer:
                await writer.write(batch("d", 100))
                raise KeyError("boom")
        assert writer.closed and writer.statistics().discarded == 10

    run(scenario())
    assert sorted(s for _, s in sink.store.readings) == list(range(10))


def test_a_cancelled_close_still_releases() -> None:
    async def scenario() -> MemoryWriter:
        writer = await MemorySink().open()
        await writer.write(batch("d", 0))
        closing = asyncio.ensure_future(writer.close())
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        await writer.close()
        return writer

    writer = run(scenario())
    assert writer.closed


def test_a_bad_row_keeps_nothing_of_its_write_and_names_the_record() -> None:
    too_big = Batch.from_columns("dev-x", {"n": ([1], [2**64 - 1], [7])})

    async def scenario() -> MemoryWriter:
        writer = await MemorySink().open()
        with pytest.raises(BadRowError) as caught:
            await writer.write([batch("d", 0), too_big], position=SourcePosition("t", 0, 5))
        assert caught.value.index == 1
        assert "record #1" in str(caught.value)
        assert "'dev-x'" in str(caught.value) and "seq=7" in str(caught.value)
        assert writer.statistics().buffered == 0
        await writer.close()
        return writer

    run(scenario())
