"""Stateless steps and the chain that composes steps.

A *batch step* has a ``name`` and ``process(batch, partition=0) -> Sequence[Batch]``: zero, one
or more batches out for each batch in. :class:`Filter`, :class:`Map` and :class:`FlatMap` work
``per="batch"`` (the function sees whole :class:`~iotdata.Batch` objects: the fast way) or
``per="reading"`` (the function sees :class:`~iotdata.Reading` objects, made one by one only for
it). Readings a per-reading :class:`Map`/:class:`FlatMap` returns are checked and regrouped into
one batch per device, in order of first appearance. :class:`~iotdata.stream.Dedup` is a batch
step too.

:class:`Chain` runs batch steps one after the other and is itself a batch step. When a step
raises, the chain raises :class:`~iotdata.stream.StreamOperatorError` whose ``step`` is
``"{index}.{name}"`` (nested chains add their own prefix), with the device and partition of the
batch in the message and the original exception as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from iotdata._checks import check_callable
from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Reading
from iotdata.stream._common import (
    check_batch,
    check_partition,
    choice,
    name_of,
    pack_snapshot,
    partition_numbers,
    trusted_column,
    unpack_snapshot,
)
from iotdata.stream._errors import SnapshotError, StreamOperatorError

__all__ = ["BatchStep", "Chain", "Filter", "FlatMap", "Map", "Stateful"]

_PER = ("reading", "batch")


@runtime_checkable
class BatchStep(Protocol):
    """What :class:`Chain` composes."""

    name: str

    def process(self, batch: Batch, partition: int = 0) -> Sequence[Batch]: ...


@runtime_checkable
class Stateful(Protocol):
    """What the runtime checkpoints: every stateful operator (windows, dedup, detectors)."""

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes: ...

    def restore(self, data: bytes) -> None: ...

    def forget(self, partitions: Iterable[int]) -> None: ...

    def statistics(self) -> dict[str, int]: ...


def _per(value: object) -> str:
    return choice("per", value, _PER)


def _name(value: object) -> str:
    return name_of("name", value)


def _function(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_callable(attribute.name, value)


def _readings(batch: Batch) -> Iterable[Reading]:
    return iter(batch)


def _regroup(readings: Iterable[object]) -> list[Batch]:
    """Readings grouped into one checked batch per device, in order of first appearance."""
    groups: dict[str, list[Reading]] = {}
    for reading in readings:
        if type(reading) is not Reading:
            raise InvalidInputError(f"expected a Reading, got {type(reading).__name__}")
        groups.setdefault(reading.device_id, []).append(reading)
    return [Batch.from_readings(group) for group in groups.values()]


@attrs.define(eq=False)
class Filter:
    """Keep the batches (``per="batch"``) or readings (``per="reading"``) for which
    ``predicate`` is true. Kept readings stay in their columns, in order."""

    predicate: Callable[[Any], object] = attrs.field(validator=_function)
    per: str = attrs.field(default="reading", kw_only=True, converter=_per)
    name: str = attrs.field(default="filter", kw_only=True, converter=_name)

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        check_batch(batch)
        if self.per == "batch":
            return [batch] if self.predicate(batch) else []
        predicate = self.predicate
        device = batch.device_id
        columns = []
        for column in batch.columns:
            metric, ts, values, seq = column.metric, column.ts, column.values, column.seq
            keep = [
                i
                for i in range(len(ts))
                if predicate(Reading(device, metric, ts[i], values[i], seq[i]))
            ]
            if len(keep) == len(ts):
                columns.append(column)
            elif keep:
                columns.append(
                    trusted_column(
                        metric,
                        tuple([ts[i] for i in keep]),
                        tuple([values[i] for i in keep]),
                        tuple([seq[i] for i in keep]),
                    )
                )
        if len(columns) == len(batch.columns) and all(
            a is b for a, b in zip(columns, batch.columns, strict=True)
        ):
            return [batch]
        return [Batch._trusted(device, tuple(columns))] if columns else []


@attrs.define(eq=False)
class Map:
    """Replace each batch by ``function(batch)`` (a Batch), or each reading by
    ``function(reading)`` (a Reading, possibly of another device or metric)."""

    function: Callable[[Any], Any] = attrs.field(validator=_function)
    per: str = attrs.field(default="reading", kw_only=True, converter=_per)
    name: str = attrs.field(default="map", kw_only=True, converter=_name)

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        check_batch(batch)
        if self.per == "reading":
            return _regroup(map(self.function, _readings(batch)))
        out = self.function(batch)
        if type(out) is not Batch:
            raise InvalidInputError(f"a per-batch map must return a Batch, not {out!r:.80}")
        return [out]


@attrs.define(eq=False)
class FlatMap:
    """Replace each batch by the batches ``function(batch)`` returns, or each reading by the
    readings ``function(reading)`` returns (any number, none included)."""

    function: Callable[[Any], Iterable[Any]] = attrs.field(validator=_function)
    per: str = attrs.field(default="reading", kw_only=True, converter=_per)
    name: str = attrs.field(default="flat_map", kw_only=True, converter=_name)

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        check_batch(batch)
        if self.per == "reading":
            return _regroup(r for reading in _readings(batch) for r in self.function(reading))
        out = list(self.function(batch))
        if not all(type(b) is Batch for b in out):
            raise InvalidInputError("a per-batch flat_map must return Batch objects")
        return out


class Chain:
    """Run batch steps in order; a failure names the step (see the module docstring).

    ``snapshot()``/``restore()`` cover the steps that have state (e.g. :class:`Dedup`): the
    snapshot's entries are ``[step index, that step's snapshot]``.
    """

    def __init__(self, *steps: BatchStep, name: str = "chain") -> None:
        for step in steps:
            if not isinstance(step, BatchStep):
                raise InvalidInputError(f"a chain step needs name and process(): {step!r:.60}")
        self.steps = steps
        self.name = _name(name)

    def __repr__(self) -> str:
        return f"Chain({', '.join(step.name for step in self.steps)})"

    def process(self, batch: Batch, partition: int = 0) -> list[Batch]:
        check_batch(batch)
        check_partition(partition)
        batches = [batch]
        for index, step in enumerate(self.steps):
            out: list[Batch] = []
            item = batch
            try:
                for item in batches:
                    out.extend(step.process(item, partition))
            except StreamOperatorError as exc:
                raise StreamOperatorError(f"{index}.{exc.step}", _cause(exc)) from exc
            except Exception as exc:
                where = f"on a batch of device {item.device_id!r} (partition {partition})"
                raise StreamOperatorError(
                    f"{index}.{step.name}", f"{where}: {type(exc).__name__}: {exc}"
                ) from exc
            batches = out
            if not batches:
                break
        return batches

    def _stateful(self) -> list[tuple[int, Stateful]]:
        return [(i, s) for i, s in enumerate(self.steps) if isinstance(s, Stateful)]

    def _config(self) -> list[str]:
        return [step.name for step in self.steps]

    def snapshot(self, partitions: Iterable[int] | None = None) -> bytes:
        chosen = None if partitions is None else partition_numbers(partitions)
        entries = [(i, step.snapshot(chosen)) for i, step in self._stateful()]
        return pack_snapshot("chain", self._config(), entries)

    def restore(self, data: bytes) -> None:
        entries = unpack_snapshot(data, "chain", self._config(), bytes)
        steps = dict(self._stateful())
        if set(entries) != set(steps):
            raise SnapshotError("the snapshot's stateful steps differ from this chain's")
        for index, entry in entries.items():
            steps[index].restore(entry)

    def forget(self, partitions: Iterable[int]) -> None:
        chosen = partition_numbers(partitions)
        for _, step in self._stateful():
            step.forget(chosen)

    def statistics(self) -> dict[str, int]:
        """The stateful steps' counters, prefixed ``"{index}.{name}."``."""
        return {
            f"{i}.{self.steps[i].name}.{counter}": count
            for i, step in self._stateful()
            for counter, count in step.statistics().items()
        }


def _cause(exc: StreamOperatorError) -> str:
    message = str(exc)
    prefix = f"step {exc.step!r} failed: "
    return message[len(prefix) :] if message.startswith(prefix) else message
