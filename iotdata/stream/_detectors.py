"""Detectors: per-key state machines over readings that raise :class:`~iotdata.sinks.Alert`.

Every detector has ``process(batch, partition=0) -> list[Alert]``, ``advance(partition, now)``
(time-driven alerts; only :class:`MissingData` has any), ``snapshot``/``restore``/``forget`` and
``statistics()``. State is one small fixed-size list per key and partition, so memory grows with
the number of keys only. Common options (keyword-only):

* ``metrics``: the metric names to watch (default: all);
* ``name``: the detector's name; alerts carry ``"{name}:{metric}"`` (``"zscore:temperature"``),
  :class:`MissingData` (a per-device detector) just ``name``;
* ``severity`` of its alerts (default ``"warning"``);
* ``cooldown`` (microseconds or timedelta): after an alert, further alerts of the same key within
  this event time are suppressed (counted as ``suppressed``); 0 alerts on every reading.

Only int and float values are looked at (others are skipped). Detectors that follow a series
(all but :class:`Threshold`) need its readings in ts order: a reading not newer than the last
one of its key is skipped and counted as ``stale``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from itertools import chain
from typing import Any, ClassVar

import attrs

from iotdata.errors import InvalidInputError
from iotdata.model import Batch
from iotdata.sinks import Alert
from iotdata.stream._common import (
    check_batch,
    check_now,
    check_partition,
    metric_set,
    micros,
    name_of,
    numeric_sorted,
    optional_micros,
    pack_snapshot,
    partition_list,
    partition_numbers,
    unpack_snapshot,
)

__all__ = ["Flatline", "MissingData", "RateOfChange", "Threshold", "ZScore"]

Key = tuple[str, str]
LAST_TS, LAST_ALERT = 0, 1  # the first two slots of every per-key state
_COUNTERS = ("received", "alerts", "suppressed", "stale")


def _number(what: str, value: object, *, positive: bool = False) -> float:
    if type(value) not in (int, float) or not math.isfinite(value):  # type: ignore[arg-type]
        raise InvalidInputError(f"{what} must be a finite number: {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if positive and number <= 0:
        raise InvalidInputError(f"{what} must be > 0: {value!r}")
    return number


def _severity(value: object) -> str:
    return name_of("severity", value)


def _cooldown(value: object) -> int:
    return micros("cooldown", value, allow_zero=True)


def _duration(value: object) -> int | None:
    return optional_micros("duration", value)


def _timeout(value: object) -> int:
    return micros("timeout", value)


def _seconds(micros_: int) -> str:
    return f"{micros_ / 1e6:g} s"


@attrs.define(eq=False)
class _Partition:
    keys: dict[Any, list[Any]] = attrs.Factory(dict)
    counts: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(_COUNTERS, 0))
    next_due: int | None = None  # MissingData: no deadline passes before this


@attrs.define(eq=False, kw_only=True)
class _Detector:
    """Partitions, counters, cooldown and snapshots; subclasses implement ``_scan``."""

    _ORDERED: ClassVar[bool] = True
    _KIND: ClassVar[str] = "detector"

    metrics: frozenset[str] | None = attrs.field(default=None, converter=metric_set)
    severity: str = attrs.field(default="warning", converter=_severity)
    cooldown: int = attrs.field(default=0, converter=_cooldown)
    _parts: dict[int, _Partition] = attrs.field(init=False, factory=dict, repr=False)

    name: str

    def __attrs_post_init__(self) -> None:
        name_of("name", self.name)

    def process(self, batch: Batch, partition: int = 0) -> list[Alert]:
        """The alerts the batch's readings raise."""
        check_batch(batch)
        part = self._part(check_partition(partition))
        alerts: list[Alert] = []
        device = batch.device_id
        for column in batch.columns:
            if self.metrics is not None and column.metric not in self.metrics:
                continue
            part.counts["received"] += len(column.ts)
            ts, values, _, _ = numeric_sorted(column)
            key = (device, column.metric)
            state = part.keys.get(key)
            if state is None:
                state = part.keys[key] = [None, None, *self._initial()]
            if self._ORDERED and ts and state[LAST_TS] is not None and ts[0] <= state[LAST_TS]:
                cut = bisect_right(ts, state[LAST_TS])
                part.counts["stale"] += cut
                ts, values = ts[cut:], values[cut:]
            if ts:
                self._scan(part, state, key, ts=ts, values=values, alerts=alerts)
                state[LAST_TS] = ts[-1]
        return alerts

    def advance(self, partition: int, now: int) -> list[Alert]:
        """Time-driven alerts up to ``now`` (same clock as ts): none for this detector."""
        check_partition(partition)
        check_now(now)
        return []

    def _part(self, partition: int) -> _Partition:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        return part

    def _initial(self) -> list[Any]:
        return []

    def _scan(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        alerts: list[Alert],
    ) -> None:
        raise NotImplementedError

    def _raise(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: int,
        value: float,
        score: float,
        message: str,
        alerts: list[Alert],
    ) -> None:
        last = state[LAST_ALERT]
        if last is not None and 0 <= ts - last < self.cooldown:
            part.counts["suppressed"] += 1
            return
        state[LAST_ALERT] = ts
        part.counts["alerts"] += 1
        alerts.append(
            Alert(
                key[0],
                f"{self.name}:{key[1]}",
                ts,
                key[1],
                float(value),
                float(score),
                self.severity,
                message,
            )
        )

    # --- statistics and state ---------------------------------------------------------------

    def statistics(self) -> dict[str, int]:
        """Counters: readings ``received``, ``alerts`` raised, ``suppressed`` by the cooldown,
        ``stale`` (out of order, skipped); ``keys`` held."""
        totals = dict.fromkeys(_COUNTERS, 0)
        for part in self._parts.values():
            for counter, count in part.counts.items():
                totals[counter] += count
        totals["keys"] = sum(len(p.keys) for p in self._parts.values())
        return totals

    @property
    def partitions(self) -> list[int]:
        return sorted(self._parts)

    def _config(self) -> list[Any]:
        return [type(self).__name__, self.name]

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes:
        """Per partition: ``[[[*key, *state], ...], counters]`` in versioned msgpack."""
        states = []
        for number in partition_list(partitions, self._parts):
            part = self._parts[number]
            keys = [[*key, *state] for key, state in part.keys.items()]
            states.append((number, [keys, [part.counts[c] for c in _COUNTERS]]))
        return pack_snapshot(self._KIND, self._config(), states)

    def restore(self, data: bytes) -> None:
        """Take over the partitions of a snapshot of a detector of the same kind and name."""
        self._parts.update(unpack_snapshot(data, self._KIND, self._config(), self._load))

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partition_numbers(partitions):
            self._parts.pop(partition, None)

    def _key_width(self) -> int:
        return 2

    def _load(self, data: list[Any]) -> _Partition:
        keys, counts = data
        width = self._key_width()
        part = _Partition()
        expected = 2 + len(self._initial())
        for row in keys:
            if len(row) != width + expected:
                raise ValueError(f"a key state has {len(row) - width} slots, not {expected}")
            part.keys[tuple(row[:width])] = list(row[width:])
        part.counts = dict(zip(_COUNTERS, map(int, counts), strict=True))
        return part


@attrs.define(eq=False, kw_only=True)
class Threshold(_Detector):
    """Alert when a value is above ``above`` or below ``below`` (strictly; NaN never alerts).
    ``score``: how far beyond the limit. Readings need not be in order."""

    _ORDERED: ClassVar[bool] = False
    _KIND: ClassVar[str] = "threshold"

    above: float | None = attrs.field(default=None)
    below: float | None = attrs.field(default=None)
    name: str = "threshold"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.above is None and self.below is None:
            raise InvalidInputError("Threshold needs above=, below= or both")
        for what in ("above", "below"):
            if getattr(self, what) is not None:
                setattr(self, what, _number(what, getattr(self, what)))
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise InvalidInputError(
                f"Threshold below={self.below:g} must be less than above={self.above:g}: the "
                "normal range lies between them, so every value would alert"
            )

    def _config(self) -> list[Any]:
        return [*super()._config(), self.above, self.below]

    def _scan(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        alerts: list[Alert],
    ) -> None:
        high = math.inf if self.above is None else self.above
        low = -math.inf if self.below is None else self.below
        for i in [i for i, v in enumerate(values) if v > high or v < low]:
            value = values[i]
            excess = value - high if value > high else low - value
            side = f"above {high:g}" if value > high else f"below {low:g}"
            self._raise(
                part,
                state,
                key,
                ts=ts[i],
                value=value,
                score=excess,
                message=f"{value:g} {side}",
                alerts=alerts,
            )


@attrs.define(eq=False, kw_only=True)
class ZScore(_Detector):
    """Alert when ``|x - mean| / stddev >= threshold``, with mean and variance exponentially
    weighted (weight ``alpha`` for the newest reading) and updated after the test. Quiet for the
    first ``warmup`` readings of a key and while the stddev is 0. ``score``: the z-score."""

    _KIND: ClassVar[str] = "zscore"

    alpha: float = attrs.field(default=0.05)
    threshold: float = attrs.field(default=4.0)
    warmup: int = attrs.field(default=30)
    name: str = "zscore"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.alpha = _number("alpha", self.alpha, positive=True)
        self.threshold = _number("threshold", self.threshold, positive=True)
        if self.alpha > 1 or type(self.warmup) is not int or self.warmup < 0:
            raise InvalidInputError(f"need 0 < alpha <= 1 and warmup >= 0: {self!r}")

    def _config(self) -> list[Any]:
        return [*super()._config(), self.alpha, self.warmup]

    def _initial(self) -> list[Any]:
        return [0, 0.0, 0.0]  # readings, mean, variance

    def _scan(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        alerts: list[Alert],
    ) -> None:
        alpha, threshold, warmup = self.alpha, self.threshold, self.warmup
        count, mean, variance = state[2:5]
        for t, x in zip(ts, values, strict=True):
            if x - x != 0:  # inf or nan: neither tested nor learned
                continue
            if count >= warmup and variance > 0:
                z = (x - mean) / math.sqrt(variance)
                if abs(z) >= threshold:
                    message = f"z-score {z:.2f} (mean {mean:g})"
                    self._raise(
                        part, state, key, ts=t, value=x, score=z, message=message, alerts=alerts
                    )
            if count:
                diff = x - mean
                step = alpha * diff
                mean += step
                variance = (1 - alpha) * (variance + diff * step)
            else:
                mean = float(x)
            count += 1
        state[2:5] = [count, mean, variance]


@attrs.define(eq=False, kw_only=True)
class RateOfChange(_Detector):
    """Alert when the value changes faster than ``max_rate`` (units per second) between two
    consecutive readings of a key. ``score``: the rate, signed."""

    _KIND: ClassVar[str] = "rate"

    max_rate: float = attrs.field()
    name: str = "rate"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.max_rate = _number("max_rate", self.max_rate, positive=True)

    def _initial(self) -> list[Any]:
        return [None]  # the previous value

    def _scan(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        alerts: list[Alert],
    ) -> None:
        limit = self.max_rate
        before_ts, before = state[LAST_TS], state[2]
        for t, x in zip(ts, values, strict=True):
            if before is not None and t > before_ts:
                rate = (x - before) * 1e6 / (t - before_ts)
                if abs(rate) > limit:
                    message = f"changed {rate:+.3g}/s (limit {limit:g}/s)"
                    self._raise(
                        part, state, key, ts=t, value=x, score=rate, message=message, alerts=alerts
                    )
            before_ts, before = t, x
        state[2] = before


@attrs.define(eq=False, kw_only=True)
class Flatline(_Detector):
    """Stuck sensor: alert once per run of readings that stay within ``epsilon`` of the run's
    first value, when the run reaches ``count`` readings or lasts ``duration`` (either, when
    both are given). ``score``: the run's length in readings."""

    _KIND: ClassVar[str] = "flatline"

    epsilon: float = attrs.field(default=0.0)
    count: int | None = attrs.field(default=None)
    duration: int | None = attrs.field(default=None, converter=_duration)
    name: str = "flatline"

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.epsilon = _number("epsilon", self.epsilon)
        if self.epsilon < 0:
            raise InvalidInputError(f"epsilon must be >= 0 (a tolerance): {self.epsilon!r}")
        if self.count is None and self.duration is None:
            raise InvalidInputError("Flatline needs count=, duration= or both")
        if self.count is not None and (type(self.count) is not int or self.count < 2):
            raise InvalidInputError(f"count must be an int >= 2: {self.count!r}")

    def _config(self) -> list[Any]:
        return [*super()._config(), self.epsilon]

    def _initial(self) -> list[Any]:
        return [None, 0, 0, False]  # the run's first value, its first ts, length, alerted

    def _scan(
        self,
        part: _Partition,
        state: list[Any],
        key: Key,
        *,
        ts: tuple[int, ...],
        values: tuple[Any, ...],
        alerts: list[Alert],
    ) -> None:
        epsilon = self.epsilon
        most = math.inf if self.count is None else self.count
        longest = math.inf if self.duration is None else self.duration
        anchor, since, length, alerted = state[2:6]
        for t, x in zip(ts, values, strict=True):
            if anchor is None or not abs(x - anchor) <= epsilon:
                anchor, since, length, alerted = x, t, 1, False
                continue
            length += 1
            if not alerted and (length >= most or t - since >= longest):
                alerted = True
                message = f"stuck at {anchor:g} for {length} readings ({_seconds(t - since)})"
                self._raise(
                    part, state, key, ts=t, value=x, score=length, message=message, alerts=alerts
                )
        state[2:6] = [anchor, since, length, alerted]


@attrs.define(eq=False, kw_only=True)
class MissingData(_Detector):
    """Alert when a device sends nothing for more than ``timeout`` (microseconds or timedelta).

    Per device (any watched metric counts as a sign of life). A gap seen in the data raises an
    alert when the reading after it arrives; ``advance(partition, now)`` raises one for every
    device of the partition silent since before ``now - timeout``, without waiting for its next
    reading (``now`` on the clock of ts: the partition's watermark, or the wall clock for live
    data). Either way the alert's ts is ``last ts + timeout`` and the same silence alerts once.
    ``score``: the silence in seconds when noticed.
    """

    _KIND: ClassVar[str] = "missing"

    timeout: int = attrs.field(converter=_timeout)
    name: str = "missing"

    def _initial(self) -> list[Any]:
        return [False]  # alerted for the silence since LAST_TS

    def _key_width(self) -> int:
        return 1

    def _config(self) -> list[Any]:
        return [*super()._config(), self.timeout]

    def process(self, batch: Batch, partition: int = 0) -> list[Alert]:
        check_batch(batch)
        part = self._part(check_partition(partition))
        watched = [c for c in batch.columns if self.metrics is None or c.metric in self.metrics]
        stamps = sorted(chain.from_iterable(c.ts for c in watched))
        part.counts["received"] += len(stamps)
        if not stamps:
            return []
        device = batch.device_id
        state = part.keys.get((device,))
        if state is None:
            state = part.keys[(device,)] = [None, None, False]
        last = state[LAST_TS]
        if last is not None:
            cut = bisect_right(stamps, last)
            part.counts["stale"] += cut
            stamps = stamps[cut:]
            if not stamps:
                return []
        alerts: list[Alert] = []
        timeout = self.timeout
        before = last
        for t in stamps:
            if before is not None and t - before > timeout and not (before == last and state[2]):
                self._missing(part, device, before, t, alerts)
            before = t
        state[LAST_TS], state[2] = stamps[-1], False
        due = stamps[-1] + timeout
        if part.next_due is None or due < part.next_due:
            part.next_due = due
        return alerts

    def advance(self, partition: int, now: int) -> list[Alert]:
        """Alerts for the partition's devices silent for more than ``timeout`` before ``now``."""
        part = self._parts.get(check_partition(partition))
        check_now(now)
        if part is None or part.next_due is None or now <= part.next_due:
            return []
        alerts: list[Alert] = []
        next_due: int | None = None
        for (device,), state in part.keys.items():
            if state[2]:
                continue
            due = state[LAST_TS] + self.timeout
            if now > due:
                state[2] = True
                self._missing(part, device, state[LAST_TS], now, alerts)
            elif next_due is None or due < next_due:
                next_due = due
        part.next_due = next_due
        return alerts

    def _missing(
        self, part: _Partition, device: str, last: int, seen: int, alerts: list[Alert]
    ) -> None:
        part.counts["alerts"] += 1
        silence = seen - last
        alerts.append(
            Alert(
                device,
                self.name,
                last + self.timeout,
                None,
                None,
                silence / 1e6,
                self.severity,
                f"no reading for {_seconds(silence)} (timeout {_seconds(self.timeout)})",
            )
        )

    def _load(self, data: list[Any]) -> _Partition:
        part = super()._load(data)
        dues = [s[LAST_TS] + self.timeout for s in part.keys.values() if not s[2]]
        part.next_due = min(dues) if dues else None
        return part
