"""What the stream runtime does with the records a sink refuses: the pure parts.

A sink's ``write`` refuses a whole call with :class:`~iotdata.sinks.BadRowError` naming the
first bad record (for a batch, the bad reading). The runtime then takes the bad records out,
writes the good ones, and follows the route's ``bad_rows`` policy for the bad ones:

* ``"dead-letter"`` (the default): each becomes a :class:`~iotdata.sinks.DeadLetter` (the
  record, the problem, the message, the sink's name, the source position that carried it),
  written to the route's dead-letter destination and flushed with the sinks before offsets
  are committed;
* ``"skip"``: counted and logged, stored nowhere;
* ``"stop"``: the worker stops with the error (the behaviour before dead letters).

Here: the routes over open writers, :class:`Refusals` (what a worker does when a write is
refused), and its pure parts: the policy's check, taking one refused reading out of a batch,
where each record of a write came from, and the quota that keeps one bad device from flooding
the log.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Column, Reading
from iotdata.sinks import (
    ALL_KINDS,
    Alert,
    BadRowError,
    ConsoleSink,
    DeadLetter,
    RecordKind,
    SourcePosition,
    WindowAggregate,
)

if TYPE_CHECKING:
    from iotdata.stream._pipeline import Route

__all__ = [
    "BAD_ROWS",
    "BadRows",
    "LogQuota",
    "OpenRoute",
    "Origins",
    "Refusals",
    "Writer",
    "check_bad_rows",
    "open_routes",
    "peel",
    "refused_record",
]

log = logging.getLogger("iotdata.stream")

BadRows = Literal["dead-letter", "skip", "stop"]
#: The policies of a route for the records its sink refuses.
BAD_ROWS: tuple[BadRows, ...] = ("dead-letter", "skip", "stop")


def check_bad_rows(value: object) -> BadRows:
    """``value`` if it is one of :data:`BAD_ROWS`, else :class:`InvalidInputError`."""
    if not isinstance(value, str) or value not in BAD_ROWS:
        choices = ", ".join(map(repr, BAD_ROWS))
        raise InvalidInputError(f"bad_rows must be one of {choices}, not {value!r}")
    return value


def peel(item: object, error: BadRowError) -> tuple[object | None, list[BadRowError]]:
    """What is left of ``item`` once the refusal ``error`` is taken out (None: nothing), and
    the refusals taken out, each naming its record.

    A batch loses the reading the error names; when it names none of the batch's readings,
    every reading of the batch is refused with the error's reason. Any other record is
    refused whole.
    """
    if not isinstance(item, Batch):
        return None, [_naming(error, item if error.record is None else error.record)]
    bad = error.record
    if isinstance(bad, Reading):
        rest = _without(item, bad)
        if rest is not item:
            return rest, [error]
    return None, [_naming(error, reading) for reading in item]


def _without(batch: Batch, reading: Reading) -> Batch | None:
    """``batch`` without ``reading`` (by metric and seq); ``batch`` itself when it is not in it."""
    columns = []
    found = False
    for column in batch.columns:
        if column.metric != reading.metric or reading.seq not in column.seq:
            columns.append(column)
            continue
        found = True
        keep = [i for i, seq in enumerate(column.seq) if seq != reading.seq]
        if keep:
            parts = (column.ts, column.values, column.seq)
            ts, values, seq = ([part[i] for i in keep] for part in parts)
            columns.append(Column(column.metric, ts, values, seq))
    if not found:
        return batch
    return Batch(batch.device_id, columns) if columns else None


def _naming(error: BadRowError, record: object) -> BadRowError:
    """``error`` about ``record``."""
    if error.record is record:
        return error
    return BadRowError(
        str(error), index=error.index, record=record, problem=error.problem, reason=error.reason
    )


def refused_record(error: BadRowError) -> Reading | WindowAggregate | Alert:
    """The record ``error`` refused; raises ``error`` itself when that is not a record (a step
    or detector of the pipeline emitted something else: a bug, which dead letters cannot
    help)."""
    record = error.record
    if not isinstance(record, (Reading, WindowAggregate, Alert)):
        raise error
    return record


@attrs.frozen
class Origins:
    """Where each record of one write came from: the offsets of the source records whose
    outputs the write holds (``outputs`` pairs each output with its record's offset, None for
    outputs of the clock), read for the kinds of the route, in the order of the write."""

    topic: str
    partition: int
    outputs: Sequence[tuple[object, int | None]]
    kinds: Sequence[str]

    def position(self, index: int) -> SourcePosition | None:
        """The source position of record ``index`` of the write (None: made by the clock)."""
        for kind in self.kinds:
            for output, offset in self.outputs:
                count = len(getattr(output, kind))
                if index < count:
                    return (
                        None
                        if offset is None
                        else SourcePosition(self.topic, self.partition, offset)
                    )
                index -= count
        return None


@attrs.define
class LogQuota:
    """At most ``burst`` log lines every ``period`` seconds; the lines beyond are counted and
    the count given with the next line that may be logged. Pure: the caller gives the time."""

    burst: int = 10
    period: float = 60.0
    _start: float = attrs.field(default=-math.inf, init=False)
    _used: int = attrs.field(default=0, init=False)
    _quiet: int = attrs.field(default=0, init=False)

    def take(self, now: float) -> int | None:
        """None: keep this line quiet (it is counted). Else log it, with the number of lines
        kept quiet since the last one logged."""
        if now - self._start >= self.period:
            self._start, self._used = now, 0
        if self._used >= self.burst:
            self._quiet += 1
            return None
        self._used += 1
        quiet, self._quiet = self._quiet, 0
        return quiet


class Writer(Protocol):
    async def write(self, records: Any, *, position: SourcePosition | None = None) -> None: ...

    async def flush(self) -> None: ...


@attrs.frozen
class OpenRoute:
    """A route over open writers, as a worker runs it."""

    writer: Writer
    kinds: frozenset[RecordKind]
    bad_rows: BadRows
    #: Where dead letters go; None: standard error (the worker's own console writer).
    dead: Writer | None
    #: The sink's name, in dead letters and the log.
    name: str


def open_routes(routes: Iterable[Route]) -> tuple[OpenRoute, ...]:
    """Routes over open writers, each with its kinds (those of the writer by default) and its
    dead letters' writer: the one given, else the route's own when it keeps dead letters."""
    out = []
    for route in routes:
        kinds = route.kinds if route.kinds is not None else getattr(route.sink, "kinds", ALL_KINDS)
        dead = route.dead_letters
        if dead is not None and not callable(getattr(dead, "write", None)):
            raise InvalidInputError(
                f"a Worker takes open writers: open dead_letters={dead!r} first (Pipeline.run "
                "opens sink configurations for you)"
            )
        if dead is None and getattr(route.sink, "stores_dead_letters", False):
            dead = route.sink
        name = str(getattr(route.sink, "name", type(route.sink).__name__))
        out.append(OpenRoute(route.sink, frozenset(kinds), route.bad_rows, dead, name))
    return tuple(out)


#: How a worker retries a sink operation: ``retrying(operation, what)``.
Retrying = Callable[[Callable[[], Awaitable[None]], str], Awaitable[None]]


@attrs.define(eq=False)
class Refusals:
    """What one worker does with the records its sinks refuse, and its counters.

    ``write`` writes records to a route; when the sink refuses some, it writes the others and
    counts, logs and dead-letters (or skips, or raises) the refused ones as the route says.
    """

    retrying: Retrying
    #: Refused records by problem, whatever their route did with them.
    problems: Counter[str] = attrs.field(factory=Counter)
    dead_lettered: int = 0
    skipped: int = 0
    quota: LogQuota = attrs.field(factory=LogQuota)
    #: The console writer of dead letters that have nowhere else to go (made when needed).
    stderr: Any = None

    async def write(
        self,
        route: OpenRoute,
        records: list[Any],
        position: SourcePosition | None,
        origins: Origins,
    ) -> None:
        """Write ``records`` to ``route``; what its sink refuses goes by the route's policy."""
        try:
            await self._write(route.writer, records, position)
        except BadRowError as exc:
            if route.bad_rows == "stop" or exc.index is None:
                self.problems[exc.problem] += 1
                raise
        else:
            return
        refused = await self._isolate(route.writer, records, position)
        await self._refused(route, refused, position, origins)

    async def close(self) -> None:
        if self.stderr is not None:
            await self.stderr.close()

    async def _write(
        self, writer: Writer, records: list[Any], position: SourcePosition | None
    ) -> None:
        await self.retrying(lambda: writer.write(records, position=position), "write")

    async def _isolate(
        self, writer: Writer, records: list[Any], position: SourcePosition | None
    ) -> list[tuple[int, BadRowError]]:
        """Write the records of ``records`` the writer takes; the refused ones, with their
        index. One pass with the writer's ``sort_out`` when it has one (the built-in sinks),
        else (or when ``sort_out`` and ``write`` disagree) one record at a time, taking each
        refused reading out of its batch until the rest is taken."""
        sort_out = getattr(writer, "sort_out", None)
        if callable(sort_out):
            good, bad = sort_out(records)
            try:
                if good:
                    await self._write(writer, good, position)
            except BadRowError:
                log.warning("%s refused records its sort_out let through", writer)
            else:
                return [(e.index if e.index is not None else 0, e) for e in bad]
        refused: list[tuple[int, BadRowError]] = []
        for index, item in enumerate(records):
            left: Any = item
            while left is not None:
                try:
                    await self._write(writer, [left], position)
                except BadRowError as exc:  # noqa: PERF203 (the slow path of a refusal)
                    left, bad = peel(left, exc)
                    refused += [(index, e) for e in bad]
                else:
                    left = None
        return refused

    async def _refused(
        self,
        route: OpenRoute,
        refused: list[tuple[int, BadRowError]],
        position: SourcePosition | None,
        origins: Origins,
    ) -> None:
        """Count, log and dead-letter (or skip) what ``route``'s sink refused."""
        letters = [
            DeadLetter(
                refused_record(error),
                error.problem,
                error.reason,
                route.name,
                origins.position(index),
            )
            for index, error in refused
        ]
        self.problems.update(letter.reason for letter in letters)
        skip = route.bad_rows == "skip"
        if skip:
            self.skipped += len(letters)
        else:
            self.dead_lettered += len(letters)
        for letter in letters:
            self._log(letter, "skipped" if skip else "dead-lettered")
        if letters and not skip:
            dead = route.dead if route.dead is not None else await self._stderr_writer()
            await self._write(dead, letters, position)

    def _log(self, letter: DeadLetter, action: str) -> None:
        quiet = self.quota.take(time.monotonic())
        if quiet is None:
            return
        more = f" ({quiet} more refusals not logged)" if quiet else ""
        log.warning(
            "%s refused %s %s (%s: %s): %s%s",
            letter.sink,
            letter.kind,
            letter.key,
            letter.reason,
            letter.detail,
            action,
            more,
        )

    async def _stderr_writer(self) -> Writer:
        if self.stderr is None:
            self.stderr = await ConsoleSink(stream=sys.stderr, format="json").open()
        return self.stderr  # type: ignore[no-any-return]
