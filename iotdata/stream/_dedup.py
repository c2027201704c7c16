"""Dedup: drop readings whose ``(device_id, seq)`` was seen before, with bounded state.

What is remembered, per device: the seqs seen, as *runs* of consecutive numbers (half-open
``[start, end)`` intervals, sorted, never touching). A device's seqs count up, so its history is
one run, plus one more per gap: a crash of the device (its queue skips ahead by about a million
seqs, so that none is ever reused), readings its queue dropped or expired, or an order of
arrival that has not filled in yet. So:

* a reading whose seq lies in a run is a duplicate and is dropped, however far back it is and
  whatever the order of arrival: a frame sent before a device crashed and delivered again after
  its newer readings (its seq a million below them) is caught;
* with more than ``max_runs`` runs, the oldest run is forgotten: seqs below the end of the
  forgotten run are *forgotten*. By default such a reading passes (``forgotten="pass"``:
  at-least-once, and the sinks, keyed on ``(device_id, seq)``, absorb a duplicate);
  ``"drop"`` drops it instead. Either way it is counted. A duplicate can pass only after its
  device opened ``max_runs`` newer gaps, or after its device was evicted;
* with ``max_devices``, at most that many devices are held per partition; the least recently
  seen one is evicted (counted) and its history forgotten.

Memory per device: about 150 bytes, and 16 to 70 more per run. Counters: ``received``,
``passed``, ``duplicates`` (dropped), ``forgotten`` (passed or dropped as configured),
``evicted``.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections.abc import Iterable
from itertools import chain, pairwise
from typing import Any

import attrs
import msgpack

from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Column
from iotdata.stream._common import (
    check_batch,
    check_partition,
    choice,
    name_of,
    pack_snapshot,
    partition_list,
    partition_numbers,
    unpack_snapshot,
)
from iotdata.stream._errors import SnapshotError

__all__ = ["Dedup"]

_COUNTERS = ("received", "passed", "duplicates", "forgotten", "evicted")
#: A device never trimmed: nothing below its runs is forgotten.
_NO_FLOOR = -1


def _max_runs(value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"max_runs must be an int >= 1: {value!r}")
    return value


def _max_devices(value: object) -> int | None:
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidInputError(f"max_devices must be None or an int >= 1: {value!r}")
    return value


def _name(value: object) -> str:
    return name_of("name", value)


def _forgotten(value: object) -> str:
    return choice("forgotten", value, ("pass", "drop"))


@attrs.define(eq=False, slots=True)
class _Seen:
    """The seqs one device has passed: ``runs`` is ``[start0, end0, start1, end1, ...]``, each
    run half-open and followed by a gap; seqs below ``floor`` are forgotten."""

    runs: list[int] = attrs.Factory(list)
    floor: int = _NO_FLOOR

    def add_run(self, low: int, high: int, max_runs: int) -> bool:
        """Record the fresh run ``low..high`` (inclusive) if it lies above every seq seen."""
        runs = self.runs
        if runs and low < runs[-1]:
            return False
        if runs and low == runs[-1]:
            runs[-1] = high + 1
        else:
            runs += (low, high + 1)
            self._trim(max_runs)
        return True

    def covers(self, low: int, high: int) -> bool:
        """Whether every seq of ``low..high`` (inclusive) was seen: they lie in one run."""
        index = bisect_right(self.runs, low)
        return index % 2 == 1 and high < self.runs[index]

    def add(self, seq: int, max_runs: int) -> bool | None:
        """Record ``seq``: True when it is new, False for a duplicate, None when forgotten."""
        if seq < self.floor:
            return None
        runs = self.runs
        index = bisect_right(runs, seq)
        if index % 2:  # start <= seq < end of a run
            return False
        joins_previous = index > 0 and runs[index - 1] == seq
        joins_next = index < len(runs) and runs[index] == seq + 1
        if joins_previous and joins_next:  # fills the gap between two runs
            del runs[index - 1 : index + 1]
        elif joins_previous:
            runs[index - 1] = seq + 1
        elif joins_next:
            runs[index] = seq
        else:
            runs[index:index] = (seq, seq + 1)
            self._trim(max_runs)
        return True

    def _trim(self, max_runs: int) -> None:
        excess = len(self.runs) // 2 - max_runs
        if excess > 0:
            self.floor = self.runs[2 * excess - 1]
            del self.runs[: 2 * excess]


@attrs.define(eq=False)
class _Partition:
    devices: dict[str, _Seen] = attrs.Factory(dict)
    counts: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(_COUNTERS, 0))


@attrs.define(eq=False)
class Dedup:
    """Drop repeated ``(device_id, seq)``, remembering up to ``max_runs`` runs of seen seqs per
    device (see the module docs).

    ``process(batch, partition)`` returns ``[batch]`` (the same object when nothing was
    dropped), ``[a smaller batch]``, or ``[]``.
    """

    max_runs: int = attrs.field(default=1024, converter=_max_runs)
    max_devices: int | None = attrs.field(default=None, kw_only=True, converter=_max_devices)
    forgotten: str = attrs.field(default="pass", kw_only=True, converter=_forgotten)
    name: str = attrs.field(default="dedup", kw_only=True, converter=_name)
    _parts: dict[int, _Partition] = attrs.field(init=False, factory=dict, repr=False)

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        check_batch(batch)
        part = self._parts.get(check_partition(partition))
        if part is None:
            part = self._parts[partition] = _Partition()
        device = batch.device_id
        seen = part.devices.get(device)
        if seen is None:
            seen = _Seen()
            self._admit(part, device, seen)
        elif self.max_devices is not None:  # keep the dict in least recently seen order
            del part.devices[device]
            part.devices[device] = seen
        columns = batch.columns
        seqs = columns[0].seq if len(columns) == 1 else tuple(chain(*(c.seq for c in columns)))
        counts = part.counts
        counts["received"] += len(seqs)
        run = _as_run(seqs)
        if run is not None and seen.add_run(*run, self.max_runs):
            counts["passed"] += len(seqs)
            return [batch]
        if run is not None and seen.covers(*run):  # a whole batch again: the common duplicate
            counts["duplicates"] += len(seqs)
            return []
        keep = self._mark(seen, seqs, counts)
        counts["passed"] += sum(keep)
        if all(keep):
            return [batch]
        kept = _filter(columns, keep)
        return [Batch._trusted(device, kept)] if kept else []

    def _admit(self, part: _Partition, device: str, seen: _Seen) -> None:
        part.devices[device] = seen
        if self.max_devices is not None and len(part.devices) > self.max_devices:
            del part.devices[next(iter(part.devices))]
            part.counts["evicted"] += 1

    def _mark(self, seen: _Seen, seqs: tuple[int, ...], counts: dict[str, int]) -> list[bool]:
        """Which readings to keep, in the batch's order; seqs are recorded in ascending order,
        so that the columns of one batch never look like gaps."""
        keep = [False] * len(seqs)
        max_runs, passing = self.max_runs, self.forgotten == "pass"
        for index in sorted(range(len(seqs)), key=seqs.__getitem__):
            new = seen.add(seqs[index], max_runs)
            if new is None:
                counts["forgotten"] += 1
                keep[index] = passing
            elif new:
                keep[index] = True
            else:
                counts["duplicates"] += 1
        return keep

    def statistics(self) -> dict[str, int]:
        totals = dict.fromkeys(_COUNTERS, 0)
        for part in self._parts.values():
            for name, count in part.counts.items():
                totals[name] += count
        totals["devices"] = sum(len(p.devices) for p in self._parts.values())
        return totals

    @property
    def partitions(self) -> list[int]:
        return sorted(self._parts)

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes:
        """Per partition: ``[[device, floor, [start0, end0, ...]], ...]`` and counters."""
        states = []
        for number in partition_list(partitions, self._parts):
            part = self._parts[number]
            devices = [[device, s.floor, s.runs] for device, s in part.devices.items()]
            states.append((number, [devices, [part.counts[name] for name in _COUNTERS]]))
        return pack_snapshot("dedup", ["runs", self.max_runs], states)

    def restore(self, data: bytes) -> None:
        """Restore a snapshot, also one of the earlier bitmap-based dedup (converted)."""
        horizon = _legacy_horizon(data)
        if horizon is None:
            parts = unpack_snapshot(data, "dedup", ["runs", self.max_runs], self._load)
        else:
            load = functools.partial(self._load_bitmaps, horizon)
            parts = unpack_snapshot(data, "dedup", [horizon], load)
        self._parts.update(parts)

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partition_numbers(partitions):
            self._parts.pop(partition, None)

    def _load(self, data: list[Any]) -> _Partition:
        devices, counts = data
        part = _Partition()
        for device, floor, runs in devices:
            bounds = [int(bound) for bound in runs]
            if len(bounds) % 2 or any(a >= b for a, b in pairwise(bounds)):
                raise SnapshotError(f"malformed dedup runs of {device!r}: {bounds[:6]}...")
            seen = _Seen(bounds, int(floor))
            seen._trim(self.max_runs)
            part.devices[str(device)] = seen
        part.counts = dict(zip(_COUNTERS, map(int, counts), strict=True))
        return part

    def _load_bitmaps(self, horizon: int, data: list[Any]) -> _Partition:
        """A partition of the earlier format: per device the highest seq and a bitmap of the
        ``horizon`` seqs up to it (bit i: ``hwm - i`` seen); below them, forgotten."""
        devices, counts = data
        part = _Partition()
        for device, hwm, raw in devices:
            top, bits = int(hwm), format(int.from_bytes(raw, "little"), "b")
            seen = _Seen(floor=top - horizon + 1 if top >= 0 else _NO_FLOOR)
            base = top - len(bits) + 1  # the seq of the first (highest) bit in the text
            for run in re.finditer("1+", bits):
                seen.runs += (base + run.start(), base + run.end())
            seen._trim(self.max_runs)
            part.devices[str(device)] = seen
        part.counts = dict(zip(_COUNTERS, map(int, counts), strict=True))  # same order
        return part


def _as_run(seqs: tuple[int, ...]) -> tuple[int, int] | None:
    """``(low, high)`` when the seqs are the consecutive numbers low..high, in any order."""
    count = len(seqs)
    if not count:
        return None
    low, high = seqs[0], seqs[-1]
    if high - low + 1 == count and (count == 1 or seqs == tuple(range(low, high + 1))):
        return low, high
    low, high = min(seqs), max(seqs)
    if high - low + 1 == count and len(set(seqs)) == count:
        return low, high
    return None


def _legacy_horizon(data: bytes) -> int | None:
    """The horizon of a snapshot of the earlier bitmap dedup (config ``[horizon]``), else None."""
    try:
        config = msgpack.unpackb(data, raw=False, strict_map_key=True).get("config")
    except Exception:  # not even msgpack: unpack_snapshot says what is wrong
        return None
    if isinstance(config, list) and len(config) == 1 and type(config[0]) is int:
        return config[0]
    return None


def _filter(columns: tuple[Column, ...], keep: list[bool]) -> tuple[Column, ...]:
    kept = []
    offset = 0
    for column in columns:
        flags = keep[offset : offset + len(column.ts)]
        offset += len(column.ts)
        if all(flags):
            kept.append(column)
            continue
        picks = [i for i, flag in enumerate(flags) if flag]
        if picks:
            ts, values, seq = column.ts, column.values, column.seq
            kept.append(
                Column._trusted(
                    column.metric,
                    tuple([ts[i] for i in picks]),
                    tuple([values[i] for i in picks]),
                    tuple([seq[i] for i in picks]),
                )
            )
    return tuple(kept)
