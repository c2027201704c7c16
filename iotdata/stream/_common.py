"""Shared plumbing of the operators: durations, argument checks, numeric columns, snapshots.

Durations are **integer microseconds** (the unit of every ``ts``) or a
:class:`datetime.timedelta`; floats are refused so that ``10`` never means ten seconds by
accident (write ``timedelta(seconds=10)`` or ``10_000_000``).

A snapshot is one msgpack map (see docs/stream.md)::

    {"format": "iotdata.stream", "version": 1, "kind": <operator kind>,
     "config": <what the state layout depends on>, "partitions": [[partition, state], ...]}
"""

from __future__ import annotations

import datetime as _dt
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, Union

import msgpack

from iotdata._checks import check_iterable, check_text
from iotdata.errors import InvalidInputError
from iotdata.model import Batch, Column, Value
from iotdata.stream._errors import SnapshotError

#: A duration: integer microseconds, or a :class:`datetime.timedelta`.
Duration = Union[int, _dt.timedelta]  # noqa: UP007 (a runtime alias, Python 3.10 compatible)

FAR_PAST = -(2**63)  # the smallest valid ts: nothing is below it, and msgpack can store it
SNAPSHOT_FORMAT = "iotdata.stream"
SNAPSHOT_VERSION = 1
_NUMERIC = frozenset((float, int))

T = TypeVar("T")


def micros(what: str, value: object, *, allow_zero: bool = False) -> int:
    """A duration as integer microseconds, checked to be positive (or zero when allowed)."""
    if isinstance(value, _dt.timedelta):
        number = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    elif type(value) is int:
        number = value
    else:
        raise InvalidInputError(
            f"{what} must be integer microseconds or a datetime.timedelta, not {value!r}"
        )
    if number < 0 or (number == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{what} must be {relation}: {value!r}")
    return number


def optional_micros(what: str, value: object) -> int | None:
    return None if value is None else micros(what, value)


def metric_set(metrics: Iterable[str] | None) -> frozenset[str] | None:
    """``None`` (every metric) or a non-string collection of metric names."""
    if metrics is None:
        return None
    if isinstance(metrics, str):
        raise InvalidInputError(f"metrics must be a collection of names, not the str {metrics!r}")
    names = check_iterable("metrics", metrics, what="a collection of metric names")
    if not all(type(name) is str for name in names):
        raise InvalidInputError(f"metrics must hold str only: {metrics!r:.60}")
    return frozenset(names)


def check_batch(batch: object) -> Batch:
    """What an operator's ``process`` takes: a :class:`~iotdata.Batch`."""
    if type(batch) is not Batch:
        raise InvalidInputError(f"expected an iotdata Batch, got {type(batch).__name__}")
    return batch


def check_partition(partition: object) -> int:
    """A source partition number: an int >= 0."""
    if type(partition) is not int or partition < 0:
        raise InvalidInputError(f"partition must be an int >= 0, got {partition!r:.60}")
    return partition


def check_now(now: object) -> int:
    """A time on the readings' clock: int microseconds."""
    if type(now) is not int:
        raise InvalidInputError(f"now must be an int (microseconds), got {now!r:.60}")
    return now


def partition_numbers(partitions: object) -> list[int]:
    """An iterable of partition numbers, as a list (for ``forget`` and ``snapshot``)."""
    return [check_partition(p) for p in check_iterable("partitions", partitions)]


def name_of(what: str, value: object) -> str:
    """An operator's ``name`` (or an alert's severity): a non-empty str."""
    return check_text(what, value)


def choice(what: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InvalidInputError(f"{what} must be one of {', '.join(map(repr, allowed))}: {value!r}")
    return str(value)


# --- columns --------------------------------------------------------------------------------


def numeric_sorted(column: Column) -> tuple[tuple[int, ...], tuple[Any, ...], tuple[int, ...], int]:
    """``(ts, values, seq, skipped)``: the column's int and float readings (bool, str and None
    are skipped and counted), sorted by ``(ts, seq)``. Already sorted columns are not copied."""
    ts, values, seq = column.ts, column.values, column.seq
    skipped = 0
    if not _NUMERIC.issuperset(map(type, values)):
        keep = [i for i, v in enumerate(values) if type(v) is float or type(v) is int]
        skipped = len(values) - len(keep)
        ts, values, seq = _pick(ts, keep), _pick(values, keep), _pick(seq, keep)
    if tuple(sorted(ts)) != ts:
        order = sorted(range(len(ts)), key=lambda i: (ts[i], seq[i]))
        ts, values, seq = _pick(ts, order), _pick(values, order), _pick(seq, order)
    return ts, values, seq, skipped


def _pick(items: tuple[T, ...], indexes: Iterable[int]) -> tuple[T, ...]:
    return tuple([items[i] for i in indexes])


def split_at(ts: tuple[int, ...], bound: int) -> int:
    """Index of the first ts >= bound in sorted ``ts``."""
    return 0 if not ts or ts[0] >= bound else bisect_left(ts, bound)


def trusted_column(
    metric: str, ts: tuple[int, ...], values: tuple[Value, ...], seq: tuple[int, ...]
) -> Column:
    return Column._trusted(metric, ts, values, seq)


# --- snapshots ------------------------------------------------------------------------------


def normalized(config: object) -> object:
    """``config`` as it reads back from msgpack (tuples become lists), for comparisons."""
    return msgpack.unpackb(msgpack.packb(config, use_bin_type=True), raw=False)


def pack_snapshot(kind: str, config: object, partitions: Iterable[tuple[int, object]]) -> bytes:
    body = {
        "format": SNAPSHOT_FORMAT,
        "version": SNAPSHOT_VERSION,
        "kind": kind,
        "config": config,
        "partitions": [[partition, state] for partition, state in partitions],
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def unpack_snapshot(
    data: bytes, kind: str, config: object, load: Callable[[Any], T]
) -> dict[int, T]:
    """The partitions' states in a snapshot, each rebuilt by ``load``; SnapshotError when the
    bytes are not a snapshot of this ``kind`` of operator with this ``config``."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise SnapshotError(f"not a msgpack snapshot: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != SNAPSHOT_FORMAT:
        raise SnapshotError("not an iotdata.stream snapshot")
    if body.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(f"snapshot format version {body.get('version')!r} is not supported")
    if body.get("kind") != kind:
        raise SnapshotError(f"a snapshot of a {body.get('kind')!r} cannot restore a {kind!r}")
    if body.get("config") != normalized(config):
        raise SnapshotError(
            f"the snapshot was made by a {kind!r} configured as {body.get('config')!r}, "
            f"not {normalized(config)!r}"
        )
    try:
        return {int(partition): load(state) for partition, state in body["partitions"]}
    except SnapshotError:
        raise
    except Exception as exc:  # a malformed state: wrong shapes or types anywhere inside
        raise SnapshotError(f"malformed {kind!r} state: {exc!r}") from exc


def partition_list(partitions: Iterable[int] | None, known: Iterable[int]) -> list[int]:
    """The partitions named (those held among them), or every held partition, sorted."""
    held = set(known)
    return sorted(held if partitions is None else held.intersection(partition_numbers(partitions)))
