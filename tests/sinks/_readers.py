"""Read back what a built-in sink stored, as record objects, for ``check_sink``."""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from iotdata.model import Reading, Value, ts_from_datetime
from iotdata.sinks import Alert, WindowAggregate
from iotdata.sinks._json import decode_float
from iotdata.sinks._sql import DEAD_LETTER_COLUMNS
from iotdata.testing import SinkContents


def reading_value(value: Any, value_int: Any, value_bool: Any, value_text: Any) -> Value:
    """The one non-NULL value column (SQLite gives bools back as 0/1)."""
    if value is not None:
        return float(value)
    if value_int is not None:
        return int(value_int)
    if value_bool is not None:
        return bool(value_bool)
    if value_text is not None:
        return str(value_text)
    return None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def extra_from_json(document: Any) -> dict[str, float | None]:
    """An ``extra`` column back: JSON text (SQLite) or an object (PostgreSQL's jsonb)."""
    if isinstance(document, str):
        document = json.loads(document)
    return {name: decode_float(value) for name, value in document.items()}


def dead_letter_document(row: Iterable[Any]) -> dict[str, Any]:
    """A dead-letter row of the SQL tables (or the Parquet files), in the order of
    DEAD_LETTER_COLUMNS, as its JSON document."""
    fields = dict(zip(DEAD_LETTER_COLUMNS, row, strict=True))
    return {
        "kind": "dead_letter",
        "sink": fields["sink"],
        "reason": fields["reason"],
        "detail": fields["detail"],
        "key": fields["key"],
        "record": json.loads(fields["record"]),
        "topic": fields["topic"],
        "partition": fields["partition"],
        "offset": fields["offset"],
    }


def _sql_contents(
    readings: Iterable[tuple[Any, ...]],
    aggregates: Iterable[tuple[Any, ...]],
    alerts: Iterable[tuple[Any, ...]],
    ts: Any,
    dead_letters: Iterable[tuple[Any, ...]] = (),
) -> SinkContents:
    return SinkContents(
        dead_letters=[dead_letter_document(row) for row in dead_letters],
        readings=[
            Reading(d, m, ts(t), reading_value(v, vi, vb, vt), s)
            for d, s, t, m, v, vi, vb, vt in readings
        ],
        aggregates=[
            WindowAggregate(
                d,
                m,
                ts(ws),
                ts(we),
                c,
                _opt_float(lo),
                _opt_float(hi),
                _opt_float(total),
                r,
                extra_from_json(extra),
            )
            for d, m, ws, we, c, lo, hi, total, r, extra in aggregates
        ],
        alerts=[
            Alert(d, det, ts(t), m, _opt_float(v), _opt_float(sc), sev, msg)
            for d, det, t, m, v, sc, sev, msg in alerts
        ],
    )


def sqlite_contents(path: Path, prefix: str = "") -> SinkContents:
    with sqlite3.connect(path) as conn:
        rows = {
            kind: conn.execute(f'SELECT * FROM "{prefix}{kind}"').fetchall()
            for kind in ("readings", "aggregates", "alerts", "dead_letters")
        }
    conn.close()
    return _sql_contents(
        rows["readings"], rows["aggregates"], rows["alerts"], int, rows["dead_letters"]
    )


async def postgres_contents(dsn: str, prefix: str) -> SinkContents:
    import psycopg  # noqa: PLC0415

    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        rows = {}
        for kind in ("readings", "aggregates", "alerts", "dead_letters"):
            cursor = await conn.execute(f'SELECT * FROM "{prefix}{kind}"')
            rows[kind] = await cursor.fetchall()
    return _sql_contents(
        rows["readings"],
        rows["aggregates"],
        rows["alerts"],
        ts_from_datetime,
        rows["dead_letters"],
    )


def parquet_contents(root: Path) -> SinkContents:
    """Every row of every file; aggregates keep the highest revision, then the latest file."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    def rows(kind: str) -> list[dict[str, Any]]:
        found = []
        for path in sorted((root / kind).glob("date=*/bucket=*/*.parquet"), key=lambda p: p.name):
            found += pq.read_table(path).to_pylist()
        return found

    def us(moment: _dt.datetime) -> int:
        return ts_from_datetime(moment)

    letters = []
    for path in sorted((root / "dead_letters").glob("*.parquet")):
        letters += [dead_letter_document(r.values()) for r in pq.read_table(path).to_pylist()]
    return SinkContents(
        dead_letters=letters,
        readings=[
            Reading(
                r["device_id"],
                r["metric"],
                us(r["ts"]),
                reading_value(r["value"], r["value_int"], r["value_bool"], r["value_text"]),
                r["seq"],
            )
            for r in rows("readings")
        ],
        aggregates=[
            WindowAggregate(
                r["device_id"],
                r["metric"],
                us(r["window_start"]),
                us(r["window_end"]),
                r["count"],
                r["min"],
                r["max"],
                r["sum"],
                r["revision"],
                dict(r["extra"]),
            )
            for r in newest(rows("aggregates"))
        ],
        alerts=[
            Alert(
                r["device_id"],
                r["detector"],
                us(r["ts"]),
                r["metric"],
                r["value"],
                r["score"],
                r["severity"],
                r["message"],
            )
            for r in rows("alerts")
        ],
    )


def newest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Parquet reader rule for aggregates: per key, the highest revision, and of those the
    row of the latest file (``rows`` come in file order)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["device_id"], row["metric"], row["window_start"])
        held = best.get(key)
        if held is None or row["revision"] >= held["revision"]:
            best[key] = row
    return list(best.values())


def console_contents(text: str, dead_letters: str | None = None) -> SinkContents:
    """The JSON lines of a ConsoleSink(format="json") (and of its dead letters' stream)."""
    readings, aggregates, alerts = [], [], []
    letters = None if dead_letters is None else list(map(json.loads, dead_letters.splitlines()))
    for line in text.splitlines():
        record = json.loads(line)
        kind = record.pop("kind")
        if kind == "reading":
            readings.append(Reading(**record))
        elif kind == "aggregate":
            aggregates.append(WindowAggregate(**record))
        else:
            alerts.append(Alert(**record))
    return SinkContents(readings, aggregates, alerts, letters)


def json_record(payload: bytes) -> WindowAggregate | Alert:
    """An aggregate or alert of the Kafka and MQTT sinks (strict JSON) back as a record."""
    fields = json.loads(payload)
    kind = fields.pop("kind")
    if kind == "aggregate":
        for name in ("min", "max", "sum"):
            fields[name] = decode_float(fields[name])
        fields["extra"] = extra_from_json(fields["extra"])
        return WindowAggregate(**fields)
    assert kind == "alert", kind
    for name in ("value", "score"):
        fields[name] = decode_float(fields[name])
    return Alert(**fields)


def contents_of(
    readings: Iterable[Reading], records: Iterable[WindowAggregate | Alert]
) -> SinkContents:
    """Readings and JSON records, in the order they were read, as SinkContents."""
    records = list(records)
    return SinkContents(
        list(readings),
        [r for r in records if isinstance(r, WindowAggregate)],
        [r for r in records if isinstance(r, Alert)],
    )
