"""Dedup: drop readings whose ``(device_id, seq)`` was seen before, with bounded state.

What is remembered, per device: the highest ``seq`` seen (``hwm``) and a bitmap of which of the
``horizon`` sequence numbers ``hwm - horizon + 1 .. hwm`` were seen. So:

* a reading with ``seq > hwm`` is new; one within the horizon is new exactly when its bit is
  clear: duplicates there are always caught, whatever the order of arrival;
* a reading with ``seq <= hwm - horizon`` is *beyond the horizon*: whether it was seen is no
  longer known. By default it passes (``beyond_horizon="pass"``: at-least-once, and the sinks,
  keyed on ``(device_id, seq)``, absorb a duplicate); ``"drop"`` drops it instead. Either way it
  is counted. So a duplicate can pass only when it arrives after its device has moved more
  than ``horizon`` sequence numbers beyond it, or after its device was evicted.
* with ``max_devices``, at most that many devices are held per partition; the least recently
  seen one is evicted (counted) and its history forgotten.

Memory per device: about ``horizon / 8`` bytes plus ~150 bytes of overhead. Counters:
``received``, ``passed``, ``duplicates`` (dropped), ``beyond_horizon`` (passed or dropped
as configured), ``evicted``.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import attrs

from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Column
from iotdata.stream._common import choice, pack_snapshot, partition_list, unpack_snapshot

__all__ = ["Dedup"]

_COUNTERS = ("received", "passed", "duplicates", "beyond_horizon", "evicted")


def _horizon(value: object) -> int:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"horizon must be an int >= 1: {value!r}")
    return value


def _max_devices(value: object) -> int | None:
    if value is not None and (type(value) is not int or value < 1):
        raise InvalidInputError(f"max_devices must be None or an int >= 1: {value!r}")
    return value


def _beyond(value: object) -> str:
    return choice("beyond_horizon", value, ("pass", "drop"))


@attrs.define(eq=False)
class _Partition:
    devices: dict[str, list[int]] = attrs.Factory(dict)  # device: [hwm, bitmap]
    counts: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(_COUNTERS, 0))


@attrs.define(eq=False)
class Dedup:
    """Drop repeated ``(device_id, seq)`` within a horizon of sequence numbers (see module).

    ``process(batch, partition)`` returns ``[batch]`` (the same object when nothing was
    dropped), ``[a smaller batch]``, or ``[]``.
    """

    horizon: int = attrs.field(default=4096, converter=_horizon)
    max_devices: int | None = attrs.field(default=None, kw_only=True, converter=_max_devices)
    beyond_horizon: str = attrs.field(default="pass", kw_only=True, converter=_beyond)
    name: str = attrs.field(default="dedup", kw_only=True)
    _parts: dict[int, _Partition] = attrs.field(init=False, factory=dict, repr=False)

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        device = batch.device_id
        state = part.devices.get(device)
        if state is None:
            state = [-1, 0]
            self._admit(part, device, state)
        elif self.max_devices is not None:  # keep the dict in least recently seen order
            del part.devices[device]
            part.devices[device] = state
        columns = batch.columns
        seqs = columns[0].seq if len(columns) == 1 else tuple(chain(*(c.seq for c in columns)))
        counts = part.counts
        counts["received"] += len(seqs)
        if self._take_fresh_run(state, seqs):
            counts["passed"] += len(seqs)
            return [batch]
        keep = self._mark(state, seqs, counts)
        counts["passed"] += sum(keep)
        if all(keep):
            return [batch]
        kept = _filter(columns, keep)
        return [Batch._trusted(device, kept)] if kept else []

    def _admit(self, part: _Partition, device: str, state: list[int]) -> None:
        part.devices[device] = state
        if self.max_devices is not None and len(part.devices) > self.max_devices:
            del part.devices[next(iter(part.devices))]
            part.counts["evicted"] += 1

    def _take_fresh_run(self, state: list[int], seqs: tuple[int, ...]) -> bool:
        """The common case: consecutive ascending seqs all above the high-water mark."""
        count = len(seqs)
        if not count:
            return True
        low, high = seqs[0], seqs[-1]
        if low <= state[0] or high - low + 1 != count or seqs != tuple(range(low, high + 1)):
            return False
        mask = (1 << self.horizon) - 1
        block = ((1 << min(count, self.horizon)) - 1) & mask
        state[1] = (_shifted(state[1], high - state[0], self.horizon) | block) & mask
        state[0] = high
        return True

    def _mark(self, state: list[int], seqs: Iterable[int], counts: dict[str, int]) -> list[bool]:
        horizon = self.horizon
        mask = (1 << horizon) - 1
        hwm, bits = state
        keep = []
        for seq in seqs:
            if seq > hwm:
                bits = (_shifted(bits, seq - hwm, horizon) | 1) & mask
                hwm = seq
                keep.append(True)
            elif seq > hwm - horizon:
                bit = 1 << (hwm - seq)
                if bits & bit:
                    counts["duplicates"] += 1
                    keep.append(False)
                else:
                    bits |= bit
                    keep.append(True)
            else:
                counts["beyond_horizon"] += 1
                keep.append(self.beyond_horizon == "pass")
        state[0], state[1] = hwm, bits
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
        """Per partition: ``[[device, hwm, bitmap bytes (little-endian)], ...]`` and counters."""
        states = []
        for number in partition_list(partitions, self._parts):
            part = self._parts[number]
            devices = [
                [device, hwm, bits.to_bytes((bits.bit_length() + 7) // 8, "little")]
                for device, (hwm, bits) in part.devices.items()
            ]
            states.append((number, [devices, [part.counts[name] for name in _COUNTERS]]))
        return pack_snapshot("dedup", [self.horizon], states)

    def restore(self, data: bytes) -> None:
        self._parts.update(unpack_snapshot(data, "dedup", [self.horizon], _load))

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self._parts.pop(partition, None)


def _shifted(bits: int, shift: int, horizon: int) -> int:
    """``bits << shift``, without building a huge int when the shift leaves the horizon."""
    return 0 if shift >= horizon else bits << shift


def _load(data: list[Any]) -> _Partition:
    devices, counts = data
    part = _Partition()
    part.devices = {
        str(device): [int(hwm), int.from_bytes(bits, "little")] for device, hwm, bits in devices
    }
    part.counts = dict(zip(_COUNTERS, map(int, counts), strict=True))
    return part


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
