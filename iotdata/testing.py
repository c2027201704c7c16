"""Helpers for testing code built on iotdata.

:func:`check_sink` is the conformance check of the sink contract: run it against your own sink
(and we run it against every built-in one)::

    async def read_back() -> SinkContents:
        ...  # everything the sink stored, as Reading / WindowAggregate / Alert objects

    asyncio.run(check_sink(MySink(...).open, read_back=read_back))

It writes, flushes, replays the same records (from the same source positions, and with other
flush boundaries), abandons a writer between write and flush as a crash would and replays with
a new one, sends bad rows (and checks that ``sort_out``, when the writer has it, agrees with
``write``), writes dead letters to a writer that keeps them (and checks that one that does not
refuses them), closes twice and uses the writer as a context manager, then compares what
``read_back`` returns with what was written.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import math
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

import attrs

from iotdata._checks import check_bool, check_callable, check_int, check_iterable, check_text
from iotdata.errors import ClosedError, InvalidInputError
from iotdata.model import Batch, Reading, Value, ts_from_datetime
from iotdata.sinks import (
    ALL_KINDS,
    Alert,
    BadRowError,
    DeadLetter,
    RecordKind,
    SinkWriter,
    SourcePosition,
    WindowAggregate,
)
from iotdata.sinks._json import dead_letter_fields

__all__ = ["SinkCheckError", "SinkContents", "check_sink"]

T = TypeVar("T")

#: What ``read_back`` returns, directly or awaited.
ReadBack = Callable[[], Union[Awaitable["SinkContents"], "SinkContents"]]


class SinkCheckError(AssertionError):
    """The sink under check broke the contract; the message names the step and the record."""


@attrs.frozen
class SinkContents:
    """Everything a sink stored, as record objects (order does not matter).

    ``dead_letters`` are the dead letters it stored, each as its JSON document (the object
    :class:`~iotdata.sinks.ConsoleSink` prints: ``{"kind": "dead_letter", "sink": ...,
    "reason": ..., "detail": ..., "key": ..., "record": {...}, "topic": ..., "partition":
    ..., "offset": ...}``, the refused record inside with non-finite floats as strings); None
    when ``read_back`` does not read them back (they are then not compared).
    """

    readings: Sequence[Reading] = ()
    aggregates: Sequence[WindowAggregate] = ()
    alerts: Sequence[Alert] = ()
    dead_letters: Sequence[Mapping[str, Any]] | None = None


async def check_sink(
    open_writer: Callable[[], Awaitable[SinkWriter]],
    *,
    read_back: ReadBack | None = None,
    kinds: Collection[RecordKind] = ALL_KINDS,
    exactly_once: bool = True,
    topic: str = "check",
    partition: int = 0,
) -> None:
    """Check that the writers ``open_writer()`` returns keep the sink contract.

    ``read_back`` returns what the sink stored; it must see only what this check writes (point
    the sink at empty tables or an empty folder). Without it, only the writer's behaviour is
    checked, not the stored data. ``kinds`` are the record kinds the sink stores.
    ``exactly_once=False`` is for sinks that deliver at least once (a console, a message
    topic): a key may then be stored several times, but every one must be there, and the
    newest revision of an aggregate is read as a consumer would (the last of the highest).
    Aggregates carry ``extra`` statistics, which must come back whole. A writer whose
    ``stores_dead_letters`` is true must store :class:`~iotdata.sinks.DeadLetter` records
    (keyed on their ``identity``, whatever the refused record holds: NaN, NUL characters, a
    time no column can hold); one whose it is not must refuse them as bad rows.

    Raises :class:`SinkCheckError` (an ``AssertionError``) on the first breach found, and
    :class:`~iotdata.InvalidInputError` at once for arguments of the wrong kind.
    """
    check_callable("open_writer", open_writer)
    check_callable("read_back", read_back, none=True)
    chosen = check_iterable("kinds", kinds)
    if not chosen or not all(type(k) is str and k in ALL_KINDS for k in chosen):
        raise InvalidInputError(f"kinds must be some of {sorted(ALL_KINDS)}, not {kinds!r:.60}")
    check_bool("exactly_once", exactly_once)
    check_text("topic", topic)
    check_int("partition", partition, minimum=0)
    check = _Check(open_writer, read_back, frozenset(chosen), exactly_once, topic, partition)
    await check.run()


# ----------------------------------------------------------------------------------- the data

_BASE_TS = ts_from_datetime(_dt.datetime(2024, 2, 29, 23, 50, tzinfo=_dt.timezone.utc))
_MINUTE = 60_000_000
_DEVICES = ("check-a", "check b ü", "check-😀")
_PER_METRIC = 12


def _values(metric: str, n: int) -> list[Value]:
    """Values of every type the contract covers, none NaN (not every store keeps NaN)."""
    floats: list[Value] = [21.5, -3.25, 0.1, 1e-300, 1.7976931348623157e308, math.inf, -math.inf]
    ints: list[Value] = [0, 1, -(2**63), 2**63 - 1, 42, -7]
    texts: list[Value] = ["ok", "", "é 😀 ü", "a,b;c\t'\"\\"]
    mixed: list[Value] = [1.5, None, 3, "x", True, None, -2.0]
    pools: dict[str, list[Value]] = {
        "temperature": floats,
        "counter": ints,
        "door": [True, False],
        "status": texts,
        "gap": [None, 20.25, None, 19.0],
        "mixed": mixed,
    }
    pool = pools[metric]
    return [pool[i % len(pool)] for i in range(n)]


_METRICS = ("temperature", "counter", "door", "status", "gap", "mixed")


def _batches(part: int) -> list[Batch]:
    """One batch per device; ``part`` picks disjoint seq ranges. Times cross midnight UTC."""
    batches = []
    for d, device in enumerate(_DEVICES):
        columns = {}
        seq = part * 1000
        for metric in _METRICS:
            seqs = list(range(seq, seq + _PER_METRIC))
            seq += _PER_METRIC
            ts = [_BASE_TS + (part * 100 + s % 1000 + d) * _MINUTE for s in seqs]
            columns[metric] = (ts, _values(metric, _PER_METRIC), seqs)
        batches.append(Batch.from_columns(device, columns))
    return batches


def _extra(metric: str, revision: int) -> dict[str, float | None]:
    """Further statistics; a later revision has other names, so a sink must replace the whole
    set, not merge it. Includes None and an infinity (no NaN: not every store keeps it)."""
    if metric == "humidity":
        return {}
    extra: dict[str, float | None] = {"stddev": 0.75 + revision, "p99": 2.25, "first": None}
    if revision:
        extra = {"p99": 2.5, "p50": 0.0, "max_step": -math.inf, "último ü": 1e-300}
    return extra


def _aggregates(part: int, revision: int = 0) -> list[WindowAggregate]:
    start = _BASE_TS + part * 60 * _MINUTE
    return [
        WindowAggregate(
            device_id=device,
            metric=metric,
            window_start=start,
            window_end=start + _MINUTE,
            count=10 + revision,
            min=-1.0,
            max=2.5 + revision,
            sum=7.0,
            revision=revision,
            extra=_extra(metric, revision),
        )
        for device in _DEVICES
        for metric in ("temperature", "humidity")
    ]


def _alerts(part: int) -> list[Alert]:
    ts = _BASE_TS + part * 60 * _MINUTE + 17
    alerts = []
    for device in _DEVICES:
        alerts.append(
            Alert(device, "zscore:temperature", ts, "temperature", 99.5, 4.2, "critical", "hot")
        )
        alerts.append(Alert(device, "offline", ts + 1))
    return alerts


# ----------------------------------------------------------------------------------- the check


@attrs.define
class _Check:
    open_writer: Callable[[], Awaitable[SinkWriter]]
    read_back: ReadBack | None
    kinds: frozenset[RecordKind]
    exactly_once: bool
    topic: str
    partition: int
    expected: dict[str, dict[tuple[Any, ...], Any]] = attrs.field(
        factory=lambda: {"readings": {}, "aggregates": {}, "alerts": {}, "dead_letters": {}}
    )

    async def run(self) -> None:
        writer = await self._open("open")
        await self._step("write then flush", self._write_and_flush(writer))
        await self._step("replay", self._replay(writer))
        if "aggregates" in self.kinds:
            await self._step("newest revision wins", self._newest_wins(writer))
        writer = await self._step("crash and replay", self._crash_and_replay(writer))
        await self._step("bad rows", self._bad_rows(writer))
        if callable(getattr(writer, "sort_out", None)):
            await self._step("sort_out", self._sort_out(writer))
        if getattr(writer, "stores_dead_letters", False):
            await self._step("dead letters", self._dead_letters(writer))
        await self._step("close twice", self._close_twice(writer))
        await self._step("async with", self._context_manager())

    async def _step(self, name: str, work: Awaitable[T]) -> T:
        """Run a step; an unexpected error of the sink becomes a SinkCheckError naming it."""
        try:
            return await work
        except SinkCheckError:
            raise
        except Exception as exc:
            raise SinkCheckError(f"{name}: the sink raised {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ steps

    async def _write_and_flush(self, writer: SinkWriter) -> None:
        for offset, records in enumerate(self._part(0)):
            await writer.write(records, position=self._at(offset))
        await writer.flush()
        self._expect_part(0)
        await self._verify("write then flush")

    async def _replay(self, writer: SinkWriter) -> None:
        for offset, records in enumerate(self._part(0)):
            await writer.write(records, position=self._at(offset))
        await writer.flush()
        await self._verify("the same records written again from the same positions")
        for records in self._part(0):
            await writer.write(records, position=self._at(0))
            await writer.write(records, position=self._at(0))
        await writer.flush()
        await self._verify("the same records written twice before one flush")

    async def _newest_wins(self, writer: SinkWriter) -> None:
        await writer.write(_aggregates(0, revision=1), position=self._at(3))
        await writer.flush()
        self._expect(_aggregates(0, revision=1))
        await self._verify("aggregates written again with a higher revision")
        await writer.write(_aggregates(0, revision=0), position=self._at(4))
        await writer.flush()
        await self._verify("aggregates written again with a lower revision (must not win)")

    async def _crash_and_replay(self, writer: SinkWriter) -> SinkWriter:
        first = 5
        part1 = self._part(1)
        for offset, records in enumerate(part1, first):
            await writer.write(records, position=self._at(offset))
        await writer.flush()
        self._expect_part(1)
        after = first + len(part1)
        for offset, records in enumerate(self._part(2), after):
            await writer.write(records, position=self._at(offset))
        # The process "dies" here: the writer is neither flushed nor closed. The source was
        # committed up to `first` at most, so a new writer replays from there, flushing at
        # other boundaries than the first writer did.
        replacement = await self._open("open a second writer after the crash")
        for offset, records in enumerate(part1, first):
            await replacement.write(records, position=self._at(offset))
            await replacement.flush()
        for offset, records in enumerate(self._part(2), after):
            await replacement.write(records, position=self._at(offset))
        await replacement.flush()
        self._expect_part(2)
        await self._verify("replay after a writer died between write and flush")
        await writer.close()
        await self._verify("closing the abandoned writer (its records were never flushed)")
        return replacement

    async def _bad_rows(self, writer: SinkWriter) -> None:
        good = self._part(3)[0]
        for label, bad in self._bad_records(writer):
            try:
                await writer.write([*good, bad], position=self._at(20))  # type: ignore[list-item]
            except InvalidInputError as exc:
                if isinstance(exc, BadRowError) and exc.index != len(good):
                    raise SinkCheckError(
                        f"bad rows: {label}: BadRowError.index is {exc.index}, expected {len(good)}"
                    ) from exc
            except Exception as exc:
                raise SinkCheckError(
                    f"bad rows: {label} raised {type(exc).__name__} ({exc}), expected an "
                    "InvalidInputError such as BadRowError"
                ) from exc
            else:
                raise SinkCheckError(f"bad rows: {label} was accepted")
            await writer.flush()
            await self._verify(f"bad rows: nothing of a write with {label} may be stored")
        for offset, records in enumerate(self._part(3), 21):
            await writer.write(records, position=self._at(offset))
        await writer.flush()
        self._expect_part(3)
        await self._verify("good records after bad rows")

    async def _sort_out(self, writer: Any) -> None:
        """``sort_out`` splits records as ``write`` judges them: a bad record is refused with
        its index, a batch with a bad reading keeps its good ones, the rest passes as it is."""
        good = self._part(3)[0]
        for label, bad in self._bad_records(writer):
            kept, refused = writer.sort_out([*good, bad])
            indices = [getattr(error, "index", None) for error in refused]
            if list(kept) != good or indices != [len(good)]:
                raise SinkCheckError(
                    f"sort_out: {label}: kept {len(kept)} of {len(good)} good records, refused "
                    f"at {indices} (expected [{len(good)}])"
                )
        if "readings" not in self.kinds:
            return
        mixed = Batch.from_columns(
            "check-sort", {"counter": ([_BASE_TS] * 3, [1, 2**64 - 1, 3], [7, 8, 9])}
        )
        kept, refused = writer.sort_out([mixed])
        seqs = [[r.seq for r in batch] for batch in kept]
        named = [(e.index, getattr(e.record, "seq", None)) for e in refused]
        if seqs != [[7, 9]] or named != [(0, 8)]:
            raise SinkCheckError(
                f"sort_out: a batch with one bad reading of three: kept seqs {seqs}, refused "
                f"{named} (expected [[7, 9]] and [(0, 8)])"
            )
        await writer.write(kept, position=self._at(25))
        await writer.flush()
        self._expect(kept)
        await self._verify("sort_out: the good readings of a batch with a bad one")

    async def _dead_letters(self, writer: SinkWriter) -> None:
        letters = _dead_letters(self._at)
        await writer.write(letters, position=self._at(27))
        await writer.flush()
        for letter in letters:
            self.expected["dead_letters"][letter.identity] = dead_letter_fields(letter)
        await self._verify("dead letters written then flushed")
        await writer.write(letters, position=self._at(27))
        await writer.write(letters[:2], position=self._at(27))
        await writer.flush()
        await self._verify("the same dead letters written again (a replay)")

    async def _close_twice(self, writer: SinkWriter) -> None:
        await writer.close()
        try:
            await writer.close()
        except Exception as exc:
            raise SinkCheckError(f"close twice: the second close raised {exc!r}") from exc
        calls: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("write", lambda: writer.write(self._part(4)[0], position=self._at(30))),
            ("flush", writer.flush),
        )
        for name, call in calls:
            try:
                await call()
            except ClosedError:
                continue
            except Exception as exc:
                raise SinkCheckError(
                    f"{name} after close raised {type(exc).__name__}, expected ClosedError"
                ) from exc
            raise SinkCheckError(f"{name} after close did not raise ClosedError")
        await self._verify("close twice")

    async def _context_manager(self) -> None:
        writer = await self._open("open for async with")
        async with writer as inside:
            for offset, records in enumerate(self._part(4), 30):
                await inside.write(records, position=self._at(offset))
        self._expect_part(4)
        await self._verify("leaving `async with` normally flushes")
        writer = await self._open("open for async with and an error")
        try:
            async with writer as inside:
                await inside.write(self._part(5)[0], position=self._at(40))
                raise _BoomError
        except _BoomError:
            pass
        try:
            await writer.write(self._part(5)[0], position=self._at(40))
        except ClosedError:
            return
        raise SinkCheckError("leaving `async with` with an error did not close the writer")

    # ------------------------------------------------------------------ helpers

    async def _open(self, step: str) -> SinkWriter:
        try:
            return await self.open_writer()
        except Exception as exc:
            raise SinkCheckError(f"{step}: opening a writer failed: {exc!r}") from exc

    def _at(self, offset: int) -> SourcePosition:
        return SourcePosition(self.topic, self.partition, offset)

    def _part(self, part: int) -> list[list[Any]]:
        """The records of a part, one list per kind the sink stores (one write call each)."""
        groups: list[list[Any]] = []
        if "readings" in self.kinds:
            groups.append(list(_batches(part)))
        if "aggregates" in self.kinds:
            groups.append(list(_aggregates(part)))
        if "alerts" in self.kinds:
            groups.append(list(_alerts(part)))
        return groups

    def _bad_records(self, writer: object) -> list[tuple[str, object]]:
        bad: list[tuple[str, object]] = [("an object that is no record", object())]
        if not getattr(writer, "stores_dead_letters", False):
            letter = _dead_letters(self._at)[0]
            bad.append(("a dead letter, which this writer does not keep", letter))
        if "readings" in self.kinds:
            too_big = Batch.from_columns("check-bad", {"counter": ([_BASE_TS], [2**64 - 1], [9])})
            bad += [
                ("an int value beyond int64", too_big),
                ("a reading without a device id", Reading(None, "m", _BASE_TS, 1.0, 1)),  # type: ignore[arg-type]
                ("a reading with a str seq", Reading("check-bad", "m", _BASE_TS, 1.0, "1")),  # type: ignore[arg-type]
            ]
        if "aggregates" in self.kinds:
            agg = _aggregates(9)[0]
            bad += [
                ("an aggregate with a str count", attrs.evolve(agg, count="3")),  # type: ignore[arg-type]
                ("an aggregate without a device id", attrs.evolve(agg, device_id=None)),  # type: ignore[arg-type]
                ("an aggregate without window_start", attrs.evolve(agg, window_start=None)),  # type: ignore[arg-type]
                ("an aggregate with a str in extra", attrs.evolve(agg, extra={"p99": "high"})),  # type: ignore[dict-item]
                ("an aggregate with an empty extra name", attrs.evolve(agg, extra={"": 1.0})),
                ("an aggregate with a list for extra", attrs.evolve(agg, extra=[("p99", 1.0)])),  # type: ignore[arg-type]
            ]
        if "alerts" in self.kinds:
            alert = _alerts(9)[0]
            bad += [
                ("an alert with an empty detector", attrs.evolve(alert, detector="")),
                ("an alert with a str ts", attrs.evolve(alert, ts="now")),  # type: ignore[arg-type]
            ]
        return bad

    def _expect_part(self, part: int) -> None:
        for records in self._part(part):
            self._expect(records)

    def _expect(self, records: Iterable[Any]) -> None:
        for record in records:
            if isinstance(record, Batch):
                for reading in record:
                    self.expected["readings"][reading.device_id, reading.seq] = reading
            elif isinstance(record, WindowAggregate):
                self.expected["aggregates"][record.key] = record
            else:
                self.expected["alerts"][record.key] = record

    async def _verify(self, step: str) -> None:
        if self.read_back is None:
            return
        result = self.read_back()
        contents = await result if inspect.isawaitable(result) else result
        if not isinstance(contents, SinkContents):
            raise SinkCheckError(f"{step}: read_back returned {type(contents).__name__}")
        stored = {
            "readings": _keyed(contents.readings, lambda r: (r.device_id, r.seq)),
            "aggregates": _keyed(contents.aggregates, lambda a: a.key),
            "alerts": _keyed(contents.alerts, lambda a: a.key),
        }
        for kind in sorted(self.kinds):
            self._compare(step, kind, self.expected[kind], stored[kind])
        if contents.dead_letters is not None:
            letters = _keyed(contents.dead_letters, _dead_letter_identity)
            self._compare(step, "dead_letters", self.expected["dead_letters"], letters)

    def _compare(
        self,
        step: str,
        kind: str,
        expected: dict[tuple[Any, ...], Any],
        stored: dict[tuple[Any, ...], list[Any]],
    ) -> None:
        missing = [key for key in expected if key not in stored]
        extra = [key for key in stored if key not in expected]
        if missing or extra:
            raise SinkCheckError(
                f"{step}: {kind}: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(extra)} not written (e.g. {extra[:3]})"
            )
        for key, copies in stored.items():
            if self.exactly_once and len(copies) > 1:
                raise SinkCheckError(f"{step}: {kind} {key} stored {len(copies)} times")
            have = max(reversed(copies), key=_revision) if kind == "aggregates" else copies[-1]
            same = have == expected[key] if kind == "dead_letters" else _same(have, expected[key])
            if not same:
                raise SinkCheckError(
                    f"{step}: {kind} {key}: stored {have!r}, expected {expected[key]!r}"
                )


def _dead_letters(at: Callable[[int], SourcePosition]) -> list[DeadLetter]:
    """Dead letters of every kind, holding what some stores cannot keep as data (NaN, NUL
    characters, a time no column holds, an int beyond int64), one without a position."""
    aggregate = attrs.evolve(_aggregates(9)[0], sum=math.nan, extra={"p99": math.nan})
    alert = attrs.evolve(_alerts(9)[0], message="NUL \x00 inside")
    records: list[Any] = [
        Reading(_DEVICES[0], "temperature", _BASE_TS, math.nan, 900),
        Reading(_DEVICES[1], "status", _BASE_TS + 1, "a\x00b \udc80", 901),
        Reading(_DEVICES[2], "counter", -(2**63), 2**64 - 1, 902),
        Reading(_DEVICES[0], "status", _BASE_TS + 2, "NaN", 903),
        aggregate,
        alert,
    ]
    letters = [
        DeadLetter(record, "nan", f"check {i}: é \x00 😀", "check-sink", at(60 + i))
        for i, record in enumerate(records)
    ]
    letters.append(DeadLetter(records[0], "nan", "the same record, another sink", "check-other"))
    return letters


def _dead_letter_identity(document: Mapping[str, Any]) -> tuple[Any, ...]:
    record = document.get("record") or {}
    return (document.get("sink"), record.get("kind"), document.get("key"))


class _BoomError(Exception):
    """Raised inside ``async with`` by the check."""


def _keyed(records: Iterable[Any], key: Callable[[Any], Any]) -> dict[Any, list[Any]]:
    grouped: dict[Any, list[Any]] = {}
    for record in records:
        grouped.setdefault(key(record), []).append(record)
    return grouped


def _revision(record: Any) -> int:
    return int(record.revision)


def _same(stored: Any, expected: Any) -> bool:
    """Records equal field by field, values of the same type (1, 1.0 and True differ); mappings
    (an aggregate's ``extra``) item by item by the same rule, in any order."""
    if type(stored) is not type(expected):
        return False
    return all(
        _same_value(getattr(stored, field.name), getattr(expected, field.name))
        for field in attrs.fields(type(expected))
    )


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(b, Mapping):
        return (
            isinstance(a, Mapping)
            and set(a) == set(b)
            and all(_same_value(a[name], b[name]) for name in b)
        )
    if type(a) is not type(b):
        return False
    if type(b) is float and math.isnan(b):
        return math.isnan(a)
    return bool(a == b)
