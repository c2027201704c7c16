"""Aggregates and alerts as JSON, the one shape every sink that writes JSON uses.

::

    {"kind": "aggregate", "device_id": "pump-7", "metric": "rpm", "window_start": 1714521600000000,
     "window_end": 1714521660000000, "count": 60, "min": 1180.0, "max": 1250.5, "sum": 72300.0,
     "revision": 0, "extra": {"p99": 1249.0, "stddev": 12.5}}
    {"kind": "alert", "device_id": "pump-7", "detector": "zscore:rpm", "ts": 1714521603000000,
     "metric": "rpm", "value": 1250.5, "score": 4.2, "severity": "critical", "message": "fast"}

Times are integer microseconds since the epoch (UTC). Strict JSON (message payloads and the
``extra`` columns) cannot hold NaN or the infinities: there they are the strings ``"NaN"``,
``"Infinity"`` and ``"-Infinity"``, as in the protobuf JSON mapping. Plain functions, no I/O.

A dead letter is one object too, its refused record inside (whatever its fields hold: a value
JSON cannot hold is written as its ``repr``), in ASCII so that any text column keeps it::

    {"kind": "dead_letter", "sink": "SqliteSink('iot.db')", "reason": "nan",
     "detail": "this sink cannot store NaN", "key": "pump-7/1200", "record": {"kind":
     "reading", "device_id": "pump-7", "metric": "rpm", "ts": 1714521603000000,
     "value": "NaN", "seq": 1200, "value_type": "float"}, "topic": "iotdata.telemetry",
     "partition": 3, "offset": 41}

(``value_type``, for a reading only, is ``float``, ``int``, ``bool``, ``str`` or ``null``.)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Union

import attrs

from iotdata.sinks._records import Alert, DeadLetter, WindowAggregate

__all__ = [
    "dead_letter_fields",
    "dead_letter_json",
    "decode_float",
    "encode_extra",
    "record_fields",
    "record_json",
    "strict_json",
    "strict_value",
]

JsonValue = Union[str, int, float, bool, None, dict[str, "JsonValue"]]  # noqa: UP007

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_VALUE_TYPES = {float: "float", int: "int", bool: "bool", str: "str", type(None): "null"}


def record_fields(record: WindowAggregate | Alert) -> dict[str, JsonValue]:
    """The fields of ``record`` with its ``kind`` first, floats as floats (NaN included)."""
    if isinstance(record, WindowAggregate):
        return {
            "kind": "aggregate",
            "device_id": record.device_id,
            "metric": record.metric,
            "window_start": record.window_start,
            "window_end": record.window_end,
            "count": record.count,
            "min": _float(record.min),
            "max": _float(record.max),
            "sum": _float(record.sum),
            "revision": record.revision,
            "extra": {name: _float(value) for name, value in record.extra.items()},
        }
    return {
        "kind": "alert",
        "device_id": record.device_id,
        "detector": record.detector,
        "ts": record.ts,
        "metric": record.metric,
        "value": _float(record.value),
        "score": _float(record.score),
        "severity": record.severity,
        "message": record.message,
    }


def strict_json(record: WindowAggregate | Alert) -> bytes:
    """``record`` as strict JSON in UTF-8 (non-finite floats as strings)."""
    return _dumps(_strict(record_fields(record))).encode("utf-8")


def dead_letter_fields(letter: DeadLetter) -> dict[str, JsonValue]:
    """``letter`` as strict JSON values: never fails, whatever the refused record holds."""
    record = letter.record
    fields: dict[str, JsonValue] = {"kind": letter.kind}
    for field in attrs.fields(type(record)):
        fields[field.name] = _any(getattr(record, field.name))
    if letter.kind == "reading":  # "NaN" the float and "NaN" the text read alike otherwise
        fields["value_type"] = _VALUE_TYPES.get(type(record.value), "other")  # type: ignore[union-attr]
    position = letter.position
    return {
        "kind": "dead_letter",
        "sink": letter.sink,
        "reason": letter.reason,
        "detail": letter.detail,
        "key": letter.key,
        "record": fields,
        "topic": None if position is None else position.topic,
        "partition": None if position is None else position.partition,
        "offset": None if position is None else position.offset,
    }


def dead_letter_json(letter: DeadLetter) -> str:
    """The dead letter's document, as ASCII strict JSON."""
    return json.dumps(dead_letter_fields(letter), allow_nan=False, separators=(",", ":"))


def record_json(letter: DeadLetter) -> str:
    """Only the refused record of ``letter``, as ASCII strict JSON (the ``record`` columns)."""
    document = dead_letter_fields(letter)["record"]
    return json.dumps(document, allow_nan=False, separators=(",", ":"))


def _any(value: object) -> JsonValue:
    """Any field value as strict JSON holds it: floats as :func:`strict_value`, mappings item by
    item, and what JSON has no type for as its ``repr``."""
    if value is None or type(value) in (str, int, bool):
        return value  # type: ignore[return-value]
    if type(value) is float:
        return _strict_float(value)
    if isinstance(value, Mapping):
        return {str(name): _any(item) for name, item in value.items()}
    return repr(value)


def encode_extra(extra: Mapping[str, float | None]) -> str:
    """The ``extra`` statistics as a strict JSON object (the SQL ``extra`` columns)."""
    return _dumps({name: _strict_float(_float(value)) for name, value in extra.items()})


def decode_float(value: object) -> float | None:
    """A float of strict JSON back: a number, None, or one of the non-finite strings."""
    if value is None:
        return None
    if isinstance(value, str):
        return _NON_FINITE[value]
    return float(value)  # type: ignore[arg-type]


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _strict_float(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def strict_value(value: object) -> object:
    """``value`` as strict JSON holds it: a non-finite float as its string, the rest as is."""
    return _strict_float(value) if type(value) is float else value


def _strict(fields: dict[str, JsonValue]) -> dict[str, JsonValue]:
    strict: dict[str, JsonValue] = {}
    for name, value in fields.items():
        if isinstance(value, dict):
            strict[name] = _strict(value)
        else:
            strict[name] = strict_value(value)  # type: ignore[assignment]
    return strict


def _dumps(document: Mapping[str, object]) -> str:
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
