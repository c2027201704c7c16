"""The window operator: event-time windows per key, watermarks per partition, late output.

``WindowOperator(window, aggregations=(), key_by="device_metric", grace=0, idle_timeout=None,
emit_updates=False)`` takes whole batches: ``process(batch, partition)``.

**Watermark.** Each source partition has its own: ``watermark = (largest ts seen in the
partition) - grace``, never moving back. It moves between batches: the readings of one batch
are judged against the watermark before that batch.

**Late readings.** A reading whose ts is below its partition's watermark (more than ``grace``
behind the newest reading of the partition) is *late*: it is not aggregated, it is returned in
:attr:`WindowOutput.late` and counted (``statistics()["late"]``, per key in
:meth:`WindowOperator.late_counts`). Every other reading lands in all its windows, and those are
still open: a window closes only once the watermark reaches its end.

**Closing.** A window ``[start, end)`` of a key closes when the watermark of the key's partition
reaches ``end`` (for a session, ``end = last ts + gap``); it is emitted then in
:attr:`WindowOutput.results` (as a :class:`~iotdata.sinks.WindowAggregate`) and its state
dropped. Quiet keys close by their partition's progress; a whole
quiet partition closes by **idle advance**: the runtime calls ``advance(partition, now)`` with
a wall clock (microseconds) now and then; once ``idle_timeout`` has passed since the first call
that saw the partition's newest reading, its event time is taken to run with the wall clock:
``watermark = max ts - grace + (now - that call's now)``. ``flush()`` closes everything (end of
a bounded input).

**Updates.** With ``emit_updates=True``, each batch also emits every window it changed that is
still open, in :attr:`WindowOutput.updates`; a window's ``revision`` counts its emissions from
0, so the one at close has the highest.

**Keys.** ``key_by="device_metric"`` (one window per device and metric), ``"device"`` (the
metrics of a device together; ``metric`` is ``"*"`` in results) or ``"metric"`` (every device of
a partition together; ``device_id`` is ``"*"``). State is kept per partition, so a key spread over
several partitions gets one result per partition.

Only ``int`` and ``float`` values are aggregated; others (None, bool, str) are skipped and
counted (``skipped``), yet move the watermark like any reading.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from heapq import heapify, heappop, heappush
from math import fsum
from typing import Any

import attrs

from iotdata._checks import check_iterable
from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Column
from iotdata.sinks import WindowAggregate
from iotdata.stream._aggregations import (
    Aggregation,
    _SummaryView,
    new_summary,
    summary_add,
    summary_merge,
    summary_sum,
)
from iotdata.stream._common import (
    FAR_PAST,
    check_batch,
    check_now,
    check_partition,
    choice,
    micros,
    name_of,
    numeric_sorted,
    optional_micros,
    pack_snapshot,
    partition_list,
    partition_numbers,
    split_at,
    trusted_column,
    unpack_snapshot,
)
from iotdata.stream._errors import StreamOperatorError
from iotdata.stream._results import ANY, WindowOutput
from iotdata.stream._windows import (
    Hopping,
    Session,
    Tumbling,
    Window,
    aligned_segments,
    session_runs,
)

__all__ = ["WindowOperator"]

Key = tuple[str | None, str | None]
WindowKey = tuple[str | None, str | None, int]  # (device_id, metric, start)

KEY_BY = ("device_metric", "device", "metric")
REVISION = 5  # a window's state: the summary's five slots, the revision, then the extras
EXTRAS = 6
_EMPTY = WindowOutput()
# WindowAggregate fields (and property) that show these summary views under these names
_SHOWN = {"Count": "count", "Sum": "sum", "Min": "min", "Max": "max", "Mean": "mean"}


@attrs.define(eq=False)
class _Partition:
    watermark: int = FAR_PAST
    max_ts: int | None = None
    seen_max: int | None = None  # max_ts at the last advance()
    progress_at: int | None = None  # the now of the first advance() that saw seen_max
    received: int = 0
    late: int = 0
    skipped: int = 0
    closed: int = 0
    late_by_key: dict[Key, int] = attrs.Factory(dict)
    # tumbling and hopping: a state list, or (a new tumbling window) its one slice of values
    windows: dict[WindowKey, Any] = attrs.Factory(dict)
    sessions: dict[Key, list[list[Any]]] = attrs.Factory(dict)  # key: [[start, last, state]]
    ends: list[int] = attrs.Factory(list)  # heap of the keys of `closing`
    closing: dict[int, list[WindowKey]] = attrs.Factory(dict)  # end: windows ending then

    def schedule(self, end: int, window: WindowKey) -> None:
        pending = self.closing.get(end)
        if pending is None:
            self.closing[end] = [window]
            heappush(self.ends, end)
        else:
            pending.append(window)


def _finite(values: Sequence[Any]) -> bool:
    """Whether every value is finite (not NaN, not ±inf) and their sum fits a float."""
    try:
        total = fsum(values)
    except (OverflowError, ValueError):
        return False
    return total - total == 0.0


def _listed(state: Any) -> list[Any]:
    """A window state as a list (the tumbling fast path keeps a new window as its slice)."""
    listed: list[Any] = _summary_of(state) if type(state) is tuple else state
    return listed


def _summary_of(values: tuple[Any, ...]) -> list[Any]:
    """A window state (summary and revision 0) for one slice of values."""
    state: list[Any] = [0, None, None, 0.0, [], 0]
    summary_add(state, values)
    return state


def _fast_sum(count: int, low: Any, high: Any, special: float, partials: list[Any]) -> Any:
    if special != 0.0 or not count:
        return summary_sum([count, low, high, special, partials])
    try:
        return fsum(partials)
    except OverflowError:
        return summary_sum([count, low, high, special, partials])


def _aggregation_tuple(aggregations: Iterable[Aggregation]) -> tuple[Aggregation, ...]:
    items = tuple(check_iterable("aggregations", aggregations))
    names = [getattr(a, "name", None) for a in items]
    if not all(type(n) is str and n for n in names) or len(set(names)) != len(names):
        raise InvalidInputError(f"aggregations need distinct, non-empty names: {names}")
    return items


def _key_by(value: object) -> str:
    return choice("key_by", value, KEY_BY)


def _grace(value: object) -> int:
    return micros("grace", value, allow_zero=True)


def _idle(value: object) -> int | None:
    return optional_micros("idle_timeout", value)


def _name(value: object) -> str:
    return name_of("name", value)


def _flag(value: object) -> bool:
    if type(value) is not bool:
        raise InvalidInputError(f"emit_updates must be a bool: {value!r}")
    return value


@attrs.define(eq=False)
class WindowOperator:
    """Event-time windows over batches, per key and partition (see the module docstring)."""

    window: Window
    aggregations: tuple[Aggregation, ...] = attrs.field(default=(), converter=_aggregation_tuple)
    key_by: str = attrs.field(default="device_metric", kw_only=True, converter=_key_by)
    grace: int = attrs.field(default=0, kw_only=True, converter=_grace)
    idle_timeout: int | None = attrs.field(default=None, kw_only=True, converter=_idle)
    emit_updates: bool = attrs.field(default=False, kw_only=True, converter=_flag)
    name: str = attrs.field(default="window", kw_only=True, converter=_name)
    _parts: dict[int, _Partition] = attrs.field(init=False, factory=dict, repr=False)
    _extras: tuple[Aggregation, ...] = attrs.field(init=False, repr=False)
    _views: tuple[_SummaryView, ...] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.window, (Tumbling, Hopping, Session)):
            raise InvalidInputError(f"window must be Tumbling, Hopping or Session: {self.window!r}")
        self._extras = tuple(a for a in self.aggregations if not isinstance(a, _SummaryView))
        # summary views that WindowAggregate does not already show (renamed ones, e.g.)
        self._views = tuple(
            a
            for a in self.aggregations
            if isinstance(a, _SummaryView) and a.name != _SHOWN.get(type(a).__name__)
        )

    # --- feeding -----------------------------------------------------------------------------

    def process(self, batch: Batch, partition: int = 0) -> WindowOutput:
        """Aggregate one batch from ``partition``; return the windows this closed (and updated)
        and the batch's late readings."""
        check_batch(batch)
        part = self._parts.get(check_partition(partition))
        if part is None:
            part = self._parts[partition] = _Partition()
        watermark = part.watermark
        device = batch.device_id
        newest = part.max_ts
        late: list[Column] = []
        touched: dict[WindowKey, None] | None = {} if self.emit_updates else None
        for column in batch.columns:
            if not column.ts:
                continue
            part.received += len(column.ts)
            ts, values, seq, skipped = numeric_sorted(column)
            top = ts[-1] if ts and not skipped else max(column.ts)
            if newest is None or top > newest:
                newest = top
            if skipped:
                part.skipped += skipped
            if not ts:
                continue
            key = self._key(device, column.metric)
            if ts[0] < watermark:
                cut = split_at(ts, watermark)
                late.append(trusted_column(column.metric, ts[:cut], values[:cut], seq[:cut]))
                part.late += cut
                part.late_by_key[key] = part.late_by_key.get(key, 0) + cut
                ts, values, seq = ts[cut:], values[cut:], seq[cut:]
                if not ts:
                    continue
            try:
                if type(self.window) is Session:
                    self._add_sessions(part, key, ts=ts, values=values, seq=seq, touched=touched)
                else:
                    self._add_aligned(part, key, ts=ts, values=values, seq=seq, touched=touched)
            except Exception as exc:
                raise self._failure(exc, f"aggregating device {device!r}", partition) from exc
        if newest is not None:
            part.max_ts = newest
            if newest - self.grace > watermark:
                part.watermark = newest - self.grace
        results = self._close(part, partition, part.watermark)
        updates = self._updates(part, partition, touched) if touched else ()
        if not results and not updates and not late:
            return _EMPTY
        return WindowOutput(
            tuple(results), tuple(updates), (Batch._trusted(device, tuple(late)),) if late else ()
        )

    def advance(self, partition: int, now: int) -> WindowOutput:
        """Idle advance: ``now`` is wall-clock microseconds. Closes the partition's windows
        once it has shown no new readings for ``idle_timeout`` (see the module docstring)."""
        part = self._parts.get(check_partition(partition))
        check_now(now)
        if part is None or part.max_ts is None:
            return _EMPTY
        if part.max_ts != part.seen_max or part.progress_at is None:
            part.seen_max, part.progress_at = part.max_ts, now
            return _EMPTY
        idle = now - part.progress_at
        if self.idle_timeout is None or idle < self.idle_timeout:
            return _EMPTY
        target = part.max_ts - self.grace + idle
        part.watermark = max(part.watermark, target)
        results = self._close(part, partition, part.watermark)
        return WindowOutput(tuple(results)) if results else _EMPTY

    def flush(self, partitions: Iterable[int] | None = None) -> WindowOutput:
        """Close every open window (of the given partitions) now: the end of a bounded input.
        Watermarks stay where they are."""
        results: list[WindowAggregate] = []
        for partition in partition_list(partitions, self._parts):
            results.extend(self._close(self._parts[partition], partition, None))
        return WindowOutput(tuple(results))

    # --- inspecting ------------------------------------------------------------------------

    def watermark(self, partition: int) -> int | None:
        """The partition's watermark, or None before its first reading."""
        part = self._parts.get(check_partition(partition))
        return None if part is None or part.watermark == FAR_PAST else part.watermark

    def late_counts(self, partition: int | None = None) -> dict[Key, int]:
        """Late readings per ``(device_id, metric)`` key (parts not in the key are None)."""
        if partition is not None:
            check_partition(partition)
        counts: dict[Key, int] = {}
        for number, part in self._parts.items():
            if partition is None or number == partition:
                for key, late in part.late_by_key.items():
                    counts[key] = counts.get(key, 0) + late
        return counts

    def statistics(self) -> dict[str, int]:
        """Counters: readings ``received``, ``late``, ``skipped`` (not numbers); windows
        ``open`` and ``closed``; ``partitions`` held."""
        parts = self._parts.values()
        return {
            "received": sum(p.received for p in parts),
            "late": sum(p.late for p in parts),
            "skipped": sum(p.skipped for p in parts),
            "open": sum(len(p.windows) + sum(map(len, p.sessions.values())) for p in parts),
            "closed": sum(p.closed for p in parts),
            "partitions": len(self._parts),
        }

    @property
    def partitions(self) -> list[int]:
        """The partitions this operator holds state for."""
        return sorted(self._parts)

    # --- state ---------------------------------------------------------------------------

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes:
        """The state of every (or the given) partition, as versioned msgpack bytes."""
        chosen = partition_list(partitions, self._parts)
        return pack_snapshot(
            "window", self._config(), ((p, self._dump(self._parts[p])) for p in chosen)
        )

    def restore(self, data: bytes) -> None:
        """Take over the partitions of a snapshot (replacing their state here, if any). The
        operator must be configured like the one that made it (window, key, aggregations)."""
        self._parts.update(unpack_snapshot(data, "window", self._config(), self._load))

    def forget(self, partitions: Iterable[int]) -> None:
        """Drop the state of partitions (revoked in a rebalance)."""
        for partition in partition_numbers(partitions):
            self._parts.pop(partition, None)

    # --- internals -----------------------------------------------------------------------

    def _key(self, device: str, metric: str) -> Key:
        if self.key_by == "device_metric":
            return (device, metric)
        return (device, None) if self.key_by == "device" else (None, metric)

    def _new_state(self) -> list[Any]:
        if not self._extras:
            return [0, None, None, 0.0, [], 0]  # new_summary() and the revision, inlined
        return [*new_summary(), 0, *[a.create() for a in self._extras]]

    def _add(
        self, state: list[Any], values: Sequence[Any], ts: Sequence[int], seq: Sequence[int]
    ) -> None:
        summary_add(state, values)
        for slot, aggregation in enumerate(self._extras, EXTRAS):
            state[slot] = aggregation.add(state[slot], values, ts, seq)

    def _merge(self, state: list[Any], other: list[Any]) -> None:
        summary_merge(state, other)
        state[REVISION] = max(state[REVISION], other[REVISION])
        for slot, aggregation in enumerate(self._extras, EXTRAS):
            state[slot] = aggregation.merge(state[slot], other[slot])

    def _add_aligned(
        self,
        part: _Partition,
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        seq: tuple[int, ...],
        touched: dict[WindowKey, None] | None,
    ) -> None:
        window = self.window
        if type(window) is Tumbling and not self._extras and touched is None:
            self._add_tumbling(part, key, ts, values)
            return
        size = window.size  # type: ignore[union-attr]
        windows = part.windows
        device, metric = key
        whole = len(ts)
        extras = self._extras
        for start, i, j in aligned_segments(ts, size, window.hop, window.offset):  # type: ignore[union-attr]
            wkey = (device, metric, start)
            state = windows.get(wkey)
            chunk = values if i == 0 and j == whole else values[i:j]
            if state is None:
                if not extras and _finite(chunk):  # the common case, inlined: a new window
                    windows[wkey] = [len(chunk), min(chunk), max(chunk), 0.0, list(chunk), 0]
                    part.schedule(start + size, wkey)
                    if touched is not None:
                        touched[wkey] = None
                    continue
                state = windows[wkey] = self._new_state()
                part.schedule(start + size, wkey)
            if extras:
                self._add(state, chunk, ts[i:j], seq[i:j])
            else:
                summary_add(state, chunk)
            if touched is not None:
                touched[wkey] = None

    def _add_tumbling(
        self, part: _Partition, key: Key, ts: tuple[int, ...], values: tuple[Any, ...]
    ) -> None:
        """:meth:`_add_aligned` for tumbling windows that only keep the summary: the hot path
        of the common pipeline, with the segments and the new windows' states inlined."""
        window: Tumbling = self.window  # type: ignore[assignment]
        size, offset = window.size, window.offset
        windows, closing, ends = part.windows, part.closing, part.ends
        device, metric = key
        count = len(ts)
        last = ts[-1]
        i = 0
        while i < count:
            first = ts[i]
            start = first - (first - offset) % size
            end = start + size
            j = count if last < end else bisect_left(ts, end, i + 1)
            chunk = values if i == 0 and j == count else values[i:j]
            i = j
            wkey = (device, metric, start)
            state = windows.get(wkey)
            if state is not None:
                if type(state) is tuple:  # a second slice: make the summary now
                    state = windows[wkey] = _summary_of(state)
                summary_add(state, chunk)
                continue
            windows[wkey] = chunk  # a new window keeps its one slice until it closes
            pending = closing.get(end)
            if pending is None:
                closing[end] = [wkey]
                heappush(ends, end)
            else:
                pending.append(wkey)

    def _add_sessions(
        self,
        part: _Partition,
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        seq: tuple[int, ...],
        touched: dict[WindowKey, None] | None,
    ) -> None:
        gap = self.window.gap  # type: ignore[union-attr]
        sessions = part.sessions.setdefault(key, [])
        for i, j in session_runs(ts, gap):
            first, last = ts[i], ts[j - 1]
            joined = [s for s in sessions if first - s[1] < gap and s[0] - last < gap]
            if joined:
                session = joined[0]
                for other in joined[1:]:
                    self._merge(session[2], other[2])
                    session[1] = max(session[1], other[1])
                    sessions.remove(other)
                session[0] = min(session[0], first)
                session[1] = max(session[1], last)
            else:
                session = [first, last, self._new_state()]
                sessions.append(session)
                sessions.sort(key=lambda s: s[0])
            self._add(session[2], values[i:j], ts[i:j], seq[i:j])
            wkey = (key[0], key[1], session[0])
            part.schedule(session[1] + gap, wkey)
            if touched is not None:
                touched[wkey] = None

    def _find_session(self, part: _Partition, wkey: WindowKey) -> list[Any] | None:
        for session in part.sessions.get((wkey[0], wkey[1]), ()):
            if session[0] == wkey[2]:
                return session
        return None

    def _close(self, part: _Partition, partition: int, upto: int | None) -> list[WindowAggregate]:
        """Emit and drop the windows ending at or before ``upto`` (None: all of them)."""
        results: list[WindowAggregate] = []
        ends, closing = part.ends, part.closing
        is_session = type(self.window) is Session
        if not is_session and not self._extras and not self._views:
            return self._close_summaries(part, upto)
        while ends and (upto is None or ends[0] <= upto):
            end = heappop(ends)
            keys = closing.pop(end)
            # aligned windows close in the order they opened (a snapshot keeps it); sessions
            # are rescheduled as they grow, so they close in key order, the same after a restore
            for wkey in sorted(set(keys)) if is_session else keys:
                if is_session:
                    session = self._find_session(part, wkey)
                    if session is None or session[1] + self.window.gap != end:  # type: ignore[union-attr]
                        continue  # merged or grown since it was scheduled
                    part.sessions[(wkey[0], wkey[1])].remove(session)
                    if not part.sessions[(wkey[0], wkey[1])]:
                        del part.sessions[(wkey[0], wkey[1])]
                    state = session[2]
                else:
                    state = part.windows.pop(wkey)
                part.closed += 1
                results.append(self._result(partition, wkey, end, state))
        return results

    def _close_summaries(self, part: _Partition, upto: int | None) -> list[WindowAggregate]:
        """:meth:`_close` for aligned windows that only keep the summary: the hot path of the
        common pipeline, with :meth:`_result` inlined."""
        results: list[WindowAggregate] = []
        append = results.append
        ends, closing, windows = part.ends, part.closing, part.windows
        trusted = WindowAggregate
        while ends and (upto is None or ends[0] <= upto):
            end = heappop(ends)
            keys = closing.pop(end)
            part.closed += len(keys)
            for wkey in keys:
                state = windows.pop(wkey)
                device, metric, start = wkey
                total: float | None
                if type(state) is tuple:  # one slice (see _add_tumbling): summarized here
                    count, low, high, revision = len(state), min(state), max(state), 0
                    try:
                        total = fsum(state)
                    except (OverflowError, ValueError):
                        total = math.nan
                    if total - total != 0.0:  # not all finite: the careful way
                        count, low, high, special, partials, revision = _summary_of(state)
                        total = summary_sum([count, low, high, special, partials])
                else:
                    count, low, high, special, partials, revision = state
                    total = _fast_sum(count, low, high, special, partials)
                append(
                    trusted(
                        ANY if device is None else device,
                        ANY if metric is None else metric,
                        start,
                        end,
                        count,
                        None if low is None else float(low),
                        None if high is None else float(high),
                        total,
                        revision,
                    )
                )
        return results

    def _updates(
        self, part: _Partition, partition: int, touched: dict[WindowKey, None]
    ) -> list[WindowAggregate]:
        results = []
        for wkey in touched:
            if type(self.window) is Session:
                session = self._find_session(part, wkey)
                if session is None:
                    continue
                state, end = session[2], session[1] + self.window.gap
            else:
                found = part.windows.get(wkey)
                if found is None:
                    continue
                state, end = found, wkey[2] + self.window.size  # type: ignore[union-attr]
            results.append(self._result(partition, wkey, end, state))
            state[REVISION] += 1
        return results

    def _result(
        self, partition: int, wkey: WindowKey, end: int, state: list[Any]
    ) -> WindowAggregate:
        low, high = state[1], state[2]
        if not self._extras and not self._views:  # count, min, max, sum only: the fast way
            return WindowAggregate(
                ANY if wkey[0] is None else wkey[0],
                ANY if wkey[1] is None else wkey[1],
                wkey[2],
                end,
                state[0],
                None if low is None else float(low),
                None if high is None else float(high),
                summary_sum(state),
                state[REVISION],
            )
        extra: dict[str, float | None] = {}
        if self._extras:
            self._extra_results(state, extra, partition)
        for aggregation in self._views:
            value = aggregation.pick(state)
            extra[aggregation.name] = None if value is None else float(value)
        return WindowAggregate(
            ANY if wkey[0] is None else wkey[0],
            ANY if wkey[1] is None else wkey[1],
            wkey[2],
            end,
            state[0],
            None if low is None else float(low),
            None if high is None else float(high),
            summary_sum(state),
            state[REVISION],
            extra,
        )

    def _extra_results(
        self, state: list[Any], extra: dict[str, float | None], partition: int
    ) -> None:
        name = ""
        try:
            for slot, aggregation in enumerate(self._extras, EXTRAS):
                name = aggregation.name
                output = aggregation.result(state[slot])
                if isinstance(output, Mapping):
                    extra.update((k, None if v is None else float(v)) for k, v in output.items())
                else:
                    extra[name] = None if output is None else float(output)
        except Exception as exc:
            raise self._failure(exc, f"result of {name!r}", partition) from exc

    def _failure(self, exc: Exception, doing: str, partition: int) -> StreamOperatorError:
        return StreamOperatorError(
            self.name, f"{doing} (partition {partition}): {type(exc).__name__}: {exc}"
        )

    # --- snapshots -------------------------------------------------------------------------

    def _config(self) -> list[Any]:
        names = [[type(a).__qualname__, a.name] for a in self.aggregations]
        return [self.window.config(), self.key_by, names]

    def _encode(self, state: list[Any]) -> list[Any]:
        extras = (a.encode(s) for a, s in zip(self._extras, state[EXTRAS:], strict=True))
        return [*state[:EXTRAS], *extras]

    def _decode(self, data: list[Any]) -> list[Any]:
        if len(data) != EXTRAS + len(self._extras):
            raise ValueError(f"a window state has {len(data)} slots")
        extras = (a.decode(s) for a, s in zip(self._extras, data[EXTRAS:], strict=True))
        return [*data[:EXTRAS], *extras]

    def _dump(self, part: _Partition) -> list[Any]:
        return [
            [part.watermark, part.max_ts, part.seen_max, part.progress_at],
            [part.received, part.late, part.skipped, part.closed],
            [[d, m, n] for (d, m), n in part.late_by_key.items()],
            [[d, m, s, self._encode(_listed(st))] for (d, m, s), st in part.windows.items()],
            [
                [d, m, [[s[0], s[1], self._encode(s[2])] for s in found]]
                for (d, m), found in part.sessions.items()
            ],
        ]

    def _load(self, data: list[Any]) -> _Partition:
        clocks, counters, late, windows, sessions = data
        part = _Partition(*clocks, *counters)
        part.late_by_key = {(d, m): int(n) for d, m, n in late}
        for d, m, start, state in windows:
            wkey = (d, m, start)
            part.windows[wkey] = self._decode(state)
            part.schedule(start + self.window.size, wkey)  # type: ignore[union-attr]
        for d, m, found in sessions:
            held = part.sessions[(d, m)] = [[s, last, self._decode(st)] for s, last, st in found]
            for start, last, _ in held:
                part.schedule(last + self.window.gap, (d, m, start))  # type: ignore[union-attr]
        heapify(part.ends)
        return part
