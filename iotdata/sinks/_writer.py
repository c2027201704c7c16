"""The sink contract, and the buffered writer every built-in sink is made of.

A **sink** is a configuration (a frozen value) whose ``open()`` connects and returns a
**writer**. A writer takes records with ``write``, makes them durable with ``flush`` and lets
go of its resources with ``close``. The stream runtime flushes its sinks before it commits
source offsets, so a record whose flush did not return is replayed later: writes must be
idempotent, which is what each sink's key is for.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator, Iterable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar, Union

import attrs

from iotdata._checks import check_instance, check_int, check_text
from iotdata.model import Batch, Reading
from iotdata.sinks._errors import BadRowError, SinkClosedError, SinkError
from iotdata.sinks._records import (
    ALL_KINDS,
    Alert,
    Chunk,
    DeadLetter,
    PendingRecords,
    RecordKind,
    SourcePosition,
    WindowAggregate,
)
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._validate import RowLimits, make_chunk, sort_out

__all__ = ["BufferedWriter", "Opening", "Record", "Records", "Sink", "SinkStats", "SinkWriter"]

log = logging.getLogger("iotdata.sinks")

#: One record a sink stores (a :class:`DeadLetter` only where the sink keeps dead letters).
Record = Union[Batch, Reading, WindowAggregate, Alert, DeadLetter]  # noqa: UP007 (runtime alias)
#: What ``write`` takes: one record or an iterable of them (kinds may be mixed).
Records = Union[Record, Iterable[Record]]  # noqa: UP007

W = TypeVar("W", bound="BufferedWriter")
W_co = TypeVar("W_co", bound="SinkWriter", covariant=True)
Self = TypeVar("Self", bound="BufferedWriter")


class SinkWriter(Protocol):
    """What the stream runtime and :func:`iotdata.testing.check_sink` need from a writer."""

    async def write(self, records: Records, *, position: SourcePosition | None = None) -> None:
        """Take ``records``: all of them, or (raising) none."""

    async def flush(self) -> None:
        """Make every record taken so far durable; raise if that failed."""

    async def close(self) -> None:
        """Release the writer's resources. Records not flushed are dropped. Safe to repeat."""

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None: ...


class Sink(Protocol[W_co]):
    """A sink's configuration: ``open()`` returns something to await for a writer."""

    def open(self) -> Awaitable[W_co]: ...


@attrs.frozen
class SinkStats:
    """A snapshot of a writer's counters, in rows (readings, aggregates and alerts alike)."""

    #: Rows accepted by ``write``.
    written: int
    #: Rows accepted and not flushed yet.
    buffered: int
    #: Rows made durable by a flush.
    flushed: int
    #: Successful flushes that had rows to write.
    flushes: int
    #: Attempts that failed retriably and were tried again.
    retries: int
    #: Rows dropped because the writer was closed before they were flushed.
    discarded: int


class Opening(Generic[W]):
    """What a built-in sink's ``open()`` returns: await it for the writer, or use it with
    ``async with`` (which flushes and closes the writer when the block ends)."""

    __slots__ = ("_opener", "_writer")

    def __init__(self, opener: Callable[[], Awaitable[W]]) -> None:
        self._opener = opener
        self._writer: W | None = None

    def __await__(self) -> Generator[Any, None, W]:
        return self._opener().__await__()

    async def __aenter__(self) -> W:
        self._writer = await self._opener()
        return self._writer

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if self._writer is not None:
            await self._writer.__aexit__(exc_type, exc, tb)


class BufferedWriter(abc.ABC):
    """A writer that checks records at ``write``, holds them, and persists them at ``flush``.

    Subclass it to write your own sink: implement :meth:`persist` (write a
    :class:`PendingRecords` durably and idempotently; it is retried under the retry policy when
    it raises a retriable :class:`SinkError`) and, when there is something to let go of,
    :meth:`release`. Set ``kinds`` to the record kinds you store and pass the
    :class:`RowLimits` of your columns.

    A writer holds at most ``flush_rows`` rows (one ``write`` more when a single call is
    larger): a ``write`` that would go past it flushes first. ``write`` either takes all its
    records or raises and takes none. Leaving ``async with`` normally flushes, then closes;
    leaving it with an exception only closes.
    """

    #: The record kinds this writer stores; others are refused as bad rows. Set it on the class,
    #: or on the instance when the configuration decides (the Kafka sink's topics).
    kinds: frozenset[RecordKind] = ALL_KINDS
    #: Whether ``write`` takes :class:`DeadLetter` records (which :meth:`persist` then stores,
    #: from ``pending.dead_letters()``, keyed on their ``identity``). A writer that does not is
    #: given none: the stream runtime sends the records it refuses elsewhere.
    stores_dead_letters: bool = False

    def __init__(
        self,
        *,
        name: str,
        flush_rows: int = 100_000,
        retry: RetryPolicy | None = None,
        limits: RowLimits | None = None,
    ) -> None:
        check_int("flush_rows", flush_rows, minimum=1)
        check_instance("retry", retry, RetryPolicy, none=True)
        check_instance("limits", limits, RowLimits, none=True)
        self.name = check_text("name", name)
        self._flush_rows = flush_rows
        self._retry = retry if retry is not None else RetryPolicy()
        self._limits = limits if limits is not None else RowLimits()
        self._chunks: list[Chunk] = []
        self._buffered = 0
        self._lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._closed = False
        self._counts = dict.fromkeys(("written", "flushed", "flushes", "retries", "discarded"), 0)

    # ---------------------------------------------------------------- the contract

    async def write(self, records: Records, *, position: SourcePosition | None = None) -> None:
        """Check and buffer ``records`` (one record or an iterable of them).

        ``position`` says where they came from (see :class:`SourcePosition`). Raises
        :class:`BadRowError` naming the first bad record (nothing of the call is kept), or the
        error of the flush this call needed first (nothing kept either).
        """
        self._check_open()
        chunk = make_chunk(
            records, position, self._limits, self.kinds, dead_letters=self.stores_dead_letters
        )
        rows = chunk.rows
        if self._buffered and self._buffered + rows > self._flush_rows:
            await self.flush()
        self._check_open()
        self._chunks.append(chunk)
        self._buffered += rows
        self._counts["written"] += rows

    def sort_out(self, records: Records) -> tuple[list[Record], list[BadRowError]]:
        """``records`` split into those ``write`` takes and a :class:`BadRowError` for each it
        refuses (a batch with bad readings split into a batch of its good ones and an error per
        bad reading, whose ``record`` is that reading; ``index`` is the place in ``records``).

        No I/O, nothing buffered: the stream runtime calls it after a ``write`` refused, to
        write the good records and dead-letter the others.
        """
        good, bad = sort_out(
            records, self._limits, self.kinds, dead_letters=self.stores_dead_letters
        )
        return good, bad  # type: ignore[return-value]

    async def flush(self) -> None:
        """Persist everything written so far, retrying retriable failures under the policy.

        On failure the records stay buffered (the next flush tries them again) and the error
        is raised: :class:`SinkRetriableError` once the policy gives up, :class:`SinkFatalError`
        at once, :class:`SinkClosedError` when the writer was closed meanwhile.
        """
        self._check_open()
        async with self._lock:
            self._check_open()
            count = len(self._chunks)
            if count == 0:
                return
            pending = PendingRecords(tuple(self._chunks[:count]))
            try:
                await self._retry.call(
                    lambda: self.persist(pending),
                    what=f"{self.name} flush",
                    give_up=self._closing.is_set,
                    sleep=self._pause,
                    on_retry=self._count_retry,
                )
            except SinkError as exc:
                if self._closing.is_set() and exc.retriable:
                    raise SinkClosedError(f"{self.name} was closed during a flush") from exc
                raise
            del self._chunks[:count]
            self._buffered -= pending.rows
            self._counts["flushed"] += pending.rows
            self._counts["flushes"] += 1

    async def close(self) -> None:
        """Stop retrying, wait for a flush attempt under way, drop unflushed records and release
        the resources. Calling it again does nothing; a cancelled close still releases."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        try:
            async with self._lock:
                if self._buffered:
                    log.warning(
                        "%s closed with %d rows not flushed; they were dropped",
                        self.name,
                        self._buffered,
                    )
                self._counts["discarded"] += self._buffered
                self._chunks.clear()
                self._buffered = 0
        finally:
            await self.release()

    def statistics(self) -> SinkStats:
        """A snapshot of the counters."""
        return SinkStats(buffered=self._buffered, **self._counts)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | object | None,
    ) -> None:
        try:
            if exc_type is None and not self._closed:
                await self.flush()
        finally:
            await self.close()

    # ---------------------------------------------------------------- for subclasses

    @abc.abstractmethod
    async def persist(self, pending: PendingRecords) -> None:
        """Write ``pending`` durably and idempotently, or raise a :class:`SinkError`.

        Called under the lock, once per attempt: after a retriable error it is called again
        with the same records, which must then land once.
        """

    async def release(self) -> None:  # noqa: B027 (optional hook, nothing to release by default)
        """Let go of connections, files and threads. Called once, by :meth:`close`."""

    # ---------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise SinkClosedError(f"{self.name} is closed")

    def _count_retry(self) -> None:
        self._counts["retries"] += 1

    async def _pause(self, seconds: float) -> None:
        """The policy's sleep between attempts, cut short by :meth:`close`."""
        if self._closing.is_set():
            return
        sleeper = asyncio.ensure_future(self._retry.sleep(seconds))
        closer = asyncio.ensure_future(self._closing.wait())
        try:
            await asyncio.wait({sleeper, closer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            closer.cancel()
