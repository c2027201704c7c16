"""The implementations the codec benchmark compares, behind one small interface.

A :class:`Case` is one series at one batch size; a factory turns it into an :class:`Impl`: the
batches to measure and the four functions that build an input object from plain rows, encode it,
decode the frame, and read the decoded object back as plain rows for the round-trip check. The
baseline formats themselves live in ``_baselines.py``; iotdata is imported only when asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from _baselines import (
    GorillaFrame,
    Readings,
    gorilla_frame_decode,
    gorilla_frame_encode,
    json_decode,
    json_encode,
    msgpack_decode,
    msgpack_encode,
    senml_decode,
    senml_encode,
)
from _common import Row, chunk, ensure_repo_importable

__all__ = [
    "ALL_IMPLS",
    "BASELINES",
    "IOTDATA_IMPLS",
    "Case",
    "Impl",
    "ImplFactory",
    "NotMeasurableError",
    "build_factories",
]

BASELINES = ("json", "msgpack", "senml", "gorilla")
IOTDATA_IMPLS = ("iotdata", "iotdata+dict")
ALL_IMPLS = BASELINES + IOTDATA_IMPLS


@dataclass(frozen=True)
class Case:
    """One series at one batch size."""

    series: str
    batch_size: int
    rows: Sequence[Row]

    @property
    def name(self) -> str:
        return f"{self.series}@{self.batch_size}"

    def batches(self) -> list[Sequence[Row]]:
        return chunk(self.rows, self.batch_size)

    def halves(self) -> tuple[list[Sequence[Row]], list[Sequence[Row]]]:
        """Batches of the first half of the series, and of the second half."""
        middle = len(self.rows) // 2
        first, second = self.rows[:middle], self.rows[middle:]
        return chunk(first, self.batch_size), chunk(second, self.batch_size)


@dataclass(frozen=True)
class Impl:
    """How one implementation turns one case's batches into frames and back.

    ``prepare`` builds the input object from plain rows (not timed); ``rows`` reads the decoded
    object back as plain rows for the round-trip check.
    """

    name: str
    batches: Sequence[Sequence[Row]]
    prepare: Callable[[Sequence[Row]], Any]
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    rows: Callable[[Any], list[Row]]
    extra_bytes_per_frame: int = 0


class NotMeasurableError(Exception):
    """The case has too little data for this implementation; it is skipped, not failed."""


ImplFactory = Callable[[Case], Impl]


def _reading_dicts(rows: Sequence[Row]) -> Readings:
    return [
        {"device_id": r.device_id, "metric": r.metric, "ts": r.ts, "value": r.value, "seq": r.seq}
        for r in rows
    ]


def _rows_from_dicts(readings: Readings) -> list[Row]:
    return [Row(d["device_id"], d["metric"], d["ts"], d["value"], d["seq"]) for d in readings]


def _dict_based(
    name: str, encode: Callable[[Readings], bytes], decode: Callable[[bytes], Readings]
) -> ImplFactory:
    def make(case: Case) -> Impl:
        return Impl(name, case.batches(), _reading_dicts, encode, decode, _rows_from_dicts)

    return make


def _gorilla_frame(rows: Sequence[Row]) -> GorillaFrame:
    seconds = [divmod(row.ts, 1_000_000) for row in rows]
    if any(fraction for _, fraction in seconds):
        raise ValueError("Gorilla stores whole seconds; this series has sub-second timestamps")
    return GorillaFrame(rows[0].seq, [whole for whole, _ in seconds], [r.value for r in rows])


def _gorilla(case: Case) -> Impl:
    device_id, metric, count = case.rows[0].device_id, case.rows[0].metric, case.batch_size

    def decode(data: bytes) -> GorillaFrame:
        return gorilla_frame_decode(data, count)

    def rows(frame: GorillaFrame) -> list[Row]:
        pairs = enumerate(zip(frame.times, frame.values, strict=True))
        return [
            Row(device_id, metric, time * 1_000_000, value, frame.first_seq + index)
            for index, (time, value) in pairs
        ]

    extra = len(device_id.encode())
    return Impl(
        "gorilla", case.batches(), _gorilla_frame, gorilla_frame_encode, decode, rows, extra
    )


def _load_iotdata() -> tuple[ModuleType, ModuleType, type[Exception]]:
    """``iotdata.model``, ``iotdata.codec`` and the root error, from this checkout."""
    ensure_repo_importable()
    errors = importlib.import_module("iotdata.errors")
    model, codec = (importlib.import_module(f"iotdata.{name}") for name in ("model", "codec"))
    return model, codec, errors.IotDataError


def _iotdata_factories(
    model: ModuleType, codec: ModuleType, refused: type[Exception]
) -> dict[str, ImplFactory]:
    def to_batch(rows: Sequence[Row]) -> Any:
        first = rows[0]
        columns = {
            first.metric: ([r.ts for r in rows], [r.value for r in rows], [r.seq for r in rows])
        }
        return model.Batch.from_columns(first.device_id, columns)

    def batch_rows(batch: Any) -> list[Row]:
        return [Row(r.device_id, r.metric, r.ts, r.value, r.seq) for r in batch]

    def plain(case: Case) -> Impl:
        return Impl("iotdata", case.batches(), to_batch, codec.encode, codec.decode, batch_rows)

    def with_dictionary(case: Case) -> Impl:
        training, held_out = case.halves()
        if not training or not held_out:
            raise NotMeasurableError("needs a full batch in each half of the series")
        try:
            dictionary = codec.train_dictionary([to_batch(rows) for rows in training])
        except refused as exc:  # too little data, said the codec: no number, but no failure
            raise NotMeasurableError(f"no dictionary from {len(training)} batches: {exc}") from exc
        encoder = codec.Encoder(dictionary=dictionary)
        decoder = codec.Decoder(dictionaries=[dictionary])
        return Impl("iotdata+dict", held_out, to_batch, encoder.encode, decoder.decode, batch_rows)

    return {"iotdata": plain, "iotdata+dict": with_dictionary}


def build_factories(names: Sequence[str]) -> dict[str, ImplFactory]:
    """The factories for ``names``, in ``ALL_IMPLS`` order; imports iotdata only when asked."""
    factories: dict[str, ImplFactory] = {
        "json": _dict_based("json", json_encode, json_decode),
        "msgpack": _dict_based("msgpack", msgpack_encode, msgpack_decode),
        "senml": _dict_based("senml", senml_encode, senml_decode),
        "gorilla": _gorilla,
    }
    if any(name in IOTDATA_IMPLS for name in names):
        factories.update(_iotdata_factories(*_load_iotdata()))
    return {name: factories[name] for name in ALL_IMPLS if name in names}
