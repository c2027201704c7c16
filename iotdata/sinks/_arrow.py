"""Arrow tables for the Parquet sink, built from batch columns without per-reading objects.

pyarrow is loaded by :func:`load_arrow` when a Parquet sink opens (the ``[parquet]`` extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate, chain, repeat
from typing import Any

import attrs

from iotdata.model import Value
from iotdata.sinks._errors import MissingDependencyError
from iotdata.sinks._json import record_json
from iotdata.sinks._records import Alert, DeadLetter, ValueKind, WindowAggregate

__all__ = ["Arrow", "Piece", "load_arrow"]

_INSTALL_HINT = "pip install 'iotdata[parquet]'"
# The value columns, each with the value type it holds.
_SLOTS: tuple[tuple[str, ValueKind, type], ...] = (
    ("value", "float", float),
    ("value_int", "int", int),
    ("value_bool", "bool", bool),
    ("value_text", "str", str),
)
# Where each value column sits in the readings schema.
_SLOTS_INDEX = {kind: 4 + i for i, (_, kind, _) in enumerate(_SLOTS)}


@attrs.frozen
class Piece:
    """Readings of one device and metric bound for one file: aligned seq, ts and values."""

    device_id: str
    metric: str
    seq: Sequence[int]
    ts: Sequence[int]
    values: Sequence[Value]
    kind: ValueKind

    def __len__(self) -> int:
        return len(self.seq)


@attrs.frozen
class Arrow:
    """The pyarrow modules, and the schemas of the three datasets."""

    pa: Any
    pc: Any
    pq: Any
    fs: Any
    schemas: dict[str, Any]

    def readings(self, pieces: Sequence[Piece]) -> Any:
        """The readings table of ``pieces``."""
        pa = self.pa
        count = sum(map(len, pieces))
        return pa.Table.from_arrays(
            [
                self._strings([p.device_id for p in pieces], pieces),
                pa.array(list(chain.from_iterable(p.seq for p in pieces)), pa.int64()),
                self._timestamps(chain.from_iterable(p.ts for p in pieces)),
                self._strings([p.metric for p in pieces], pieces),
                *(self._values(pieces, kind, type_, count) for _, kind, type_ in _SLOTS),
            ],
            schema=self.schemas["readings"],
        )

    def aggregates(self, rows: Sequence[WindowAggregate]) -> Any:
        pa = self.pa
        return pa.Table.from_arrays(
            [
                pa.array([r.device_id for r in rows], pa.string()),
                pa.array([r.metric for r in rows], pa.string()),
                self._timestamps(r.window_start for r in rows),
                self._timestamps(r.window_end for r in rows),
                pa.array([r.count for r in rows], pa.int64()),
                *(self._floats(getattr(r, name) for r in rows) for name in ("min", "max", "sum")),
                pa.array([r.revision for r in rows], pa.int64()),
                pa.array([_pairs(r.extra) for r in rows], self.schemas["aggregates"][-1].type),
            ],
            schema=self.schemas["aggregates"],
        )

    def alerts(self, rows: Sequence[Alert]) -> Any:
        pa = self.pa
        return pa.Table.from_arrays(
            [
                pa.array([r.device_id for r in rows], pa.string()),
                pa.array([r.detector for r in rows], pa.string()),
                self._timestamps(r.ts for r in rows),
                pa.array([r.metric for r in rows], pa.string()),
                self._floats(r.value for r in rows),
                self._floats(r.score for r in rows),
                pa.array([r.severity for r in rows], pa.string()),
                pa.array([r.message for r in rows], pa.string()),
            ],
            schema=self.schemas["alerts"],
        )

    def dead_letters(self, rows: Sequence[DeadLetter]) -> Any:
        pa = self.pa
        at = [r.position for r in rows]
        return pa.Table.from_arrays(
            [
                pa.array([r.sink for r in rows], pa.string()),
                pa.array([r.kind for r in rows], pa.string()),
                pa.array([r.key for r in rows], pa.string()),
                pa.array([r.device_id for r in rows], pa.string()),
                pa.array([r.reason for r in rows], pa.string()),
                pa.array([r.detail for r in rows], pa.string()),
                pa.array([record_json(r) for r in rows], pa.string()),
                pa.array([None if p is None else p.topic for p in at], pa.string()),
                pa.array([None if p is None else p.partition for p in at], pa.int32()),
                pa.array([None if p is None else p.offset for p in at], pa.int64()),
            ],
            schema=self.schemas["dead_letters"],
        )

    def _strings(self, names: list[str], pieces: Sequence[Piece]) -> Any:
        """One name per piece, repeated over its rows (decoded from runs, in C)."""
        pa = self.pa
        ends = list(accumulate(map(len, pieces)))
        runs = pa.RunEndEncodedArray.from_arrays(
            pa.array(ends, pa.int64()), pa.array(names, pa.string())
        )
        return self.pc.run_end_decode(runs)

    def _timestamps(self, values: Iterable[int]) -> Any:
        pa = self.pa
        return pa.array(list(values), pa.timestamp("us", tz="UTC"))

    def _floats(self, values: Iterable[float | None]) -> Any:
        pa = self.pa
        return pa.array([None if v is None else float(v) for v in values], pa.float64())

    def _values(self, pieces: Sequence[Piece], kind: ValueKind, type_: type, count: int) -> Any:
        """The value column that holds ``kind``: the values of that type, NULL elsewhere."""
        pa = self.pa
        arrow_type = self.schemas["readings"].field(_SLOTS_INDEX[kind]).type
        if not any(p.kind in (kind, "mixed") for p in pieces):
            return pa.nulls(count, arrow_type)
        return pa.array(
            list(chain.from_iterable(_slot(p, kind, type_) for p in pieces)), arrow_type
        )


def _pairs(extra: Mapping[str, float | None]) -> list[tuple[str, float | None]]:
    return [(name, None if value is None else float(value)) for name, value in extra.items()]


def _slot(piece: Piece, kind: ValueKind, type_: type) -> Iterable[Value]:
    if piece.kind == kind:
        return piece.values
    if piece.kind == "mixed":
        return [v if type(v) is type_ else None for v in piece.values]
    return repeat(None, len(piece))


def load_arrow() -> Arrow:
    """Import pyarrow (raising :class:`MissingDependencyError` with the install hint)."""
    try:
        pa = importlib.import_module("pyarrow")
        pc = importlib.import_module("pyarrow.compute")
        pq = importlib.import_module("pyarrow.parquet")
        fs = importlib.import_module("pyarrow.fs")
    except ImportError as exc:
        raise MissingDependencyError(f"the Parquet sink needs pyarrow: {_INSTALL_HINT}") from exc
    return Arrow(pa, pc, pq, fs, _schemas(pa))


def _schemas(pa: Any) -> dict[str, Any]:
    ts = pa.timestamp("us", tz="UTC")

    def key(name: str, type_: Any) -> Any:
        return pa.field(name, type_, nullable=False)

    return {
        "readings": pa.schema(
            [
                key("device_id", pa.string()),
                key("seq", pa.int64()),
                key("ts", ts),
                key("metric", pa.string()),
                pa.field("value", pa.float64()),
                pa.field("value_int", pa.int64()),
                pa.field("value_bool", pa.bool_()),
                pa.field("value_text", pa.string()),
            ]
        ),
        "aggregates": pa.schema(
            [
                key("device_id", pa.string()),
                key("metric", pa.string()),
                key("window_start", ts),
                key("window_end", ts),
                key("count", pa.int64()),
                pa.field("min", pa.float64()),
                pa.field("max", pa.float64()),
                pa.field("sum", pa.float64()),
                key("revision", pa.int64()),
                key("extra", pa.map_(pa.string(), pa.float64())),
            ]
        ),
        "alerts": pa.schema(
            [
                key("device_id", pa.string()),
                key("detector", pa.string()),
                key("ts", ts),
                pa.field("metric", pa.string()),
                pa.field("value", pa.float64()),
                pa.field("score", pa.float64()),
                key("severity", pa.string()),
                key("message", pa.string()),
            ]
        ),
        "dead_letters": pa.schema(
            [
                key("sink", pa.string()),
                key("kind", pa.string()),
                key("key", pa.string()),
                pa.field("device_id", pa.string()),
                key("reason", pa.string()),
                key("detail", pa.string()),
                key("record", pa.string()),
                pa.field("topic", pa.string()),
                pa.field("partition", pa.int32()),
                pa.field("offset", pa.int64()),
            ]
        ),
    }


def unique_pieces(pieces: Sequence[Piece]) -> list[Piece]:
    """``pieces`` without repeated ``(device_id, seq)`` (the first one stays): a file holds each
    reading once even when a flush was handed the same batch twice."""
    by_device: dict[str, list[Piece]] = {}
    for piece in pieces:
        by_device.setdefault(piece.device_id, []).append(piece)
    result: list[Piece] = []
    for group in by_device.values():
        seen: set[int] = set()
        for piece in group:
            seen.update(piece.seq)
        if len(seen) == sum(map(len, group)):
            result += group
        else:
            result += _drop_repeats(group)
    return result


def _drop_repeats(group: Iterable[Piece]) -> Iterator[Piece]:
    seen: set[int] = set()
    for piece in group:
        keep = []
        for i, seq in enumerate(piece.seq):
            if seq not in seen:
                seen.add(seq)
                keep.append(i)
        if keep:
            yield Piece(
                piece.device_id,
                piece.metric,
                [piece.seq[i] for i in keep],
                [piece.ts[i] for i in keep],
                [piece.values[i] for i in keep],
                piece.kind,
            )
