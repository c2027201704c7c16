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
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Union

from iotdata.sinks._records import Alert, WindowAggregate

__all__ = ["decode_float", "encode_extra", "record_fields", "strict_json", "strict_value"]

JsonValue = Union[str, int, float, bool, None, dict[str, "JsonValue"]]  # noqa: UP007

_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


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
