"""Data and checks shared by the stream runtime tests: a fleet's frames, the plain reference
of what the runtime pipeline must store, and what a SQLite sink holds."""

from __future__ import annotations

import math
import sqlite3
from datetime import timedelta
from pathlib import Path

from iotdata import codec
from iotdata.model import Batch
from iotdata.sinks import SqliteSink
from iotdata.stream import Pipeline, Threshold, Tumbling

DEVICES = 12
READINGS = 1200  # per device, one a second: 20 one-minute windows each
FRAME = 40
BASE = 1_700_000_000_000_000 - 1_700_000_000_000_000 % 60_000_000
WINDOW = 60_000_000
HIGH = 24.0  # the threshold detector's limit


def value(device: int, i: int) -> float:
    return round(20 + 5 * math.sin((i + 7 * device) / 30), 3)


def frames() -> list[tuple[str, bytes]]:
    """Every device's readings as frames of FRAME, interleaved across devices."""
    out = []
    for start in range(0, READINGS, FRAME):
        for d in range(DEVICES):
            index = range(start, start + FRAME)
            ts = [BASE + i * 1_000_000 for i in index]
            batch = Batch.from_columns(
                f"dev-{d}", {"temp": (ts, [value(d, i) for i in index], list(index))}
            )
            out.append((batch.device_id, codec.encode(batch)))
    return out


def pipeline(path: Path) -> Pipeline:
    """What the runtime tests run: dedup, one-minute windows (grace of a frame, so that the
    devices' interleaved frames are never late), a threshold detector, everything to SQLite."""
    return (
        Pipeline()
        .dedup()
        .window(Tumbling(timedelta(minutes=1)), grace=timedelta(seconds=FRAME))
        .detect(Threshold(above=HIGH))
        .to(SqliteSink(path=path))
    )


Window = tuple[str, str, int, int, float, float, float]


def reference() -> set[Window]:
    """(device, metric, window_start, count, min, max, sum) of every window that closed (each
    device's last window stays open: the watermark, the newest ts less the grace, stays in it)."""
    rows = set()
    for d in range(DEVICES):
        for w in range(READINGS // 60 - 1):
            values = [value(d, i) for i in range(w * 60, w * 60 + 60)]
            rows.add(
                (
                    f"dev-{d}",
                    "temp",
                    BASE + w * WINDOW,
                    60,
                    min(values),
                    max(values),
                    math.fsum(values),
                )
            )
    return rows


def reference_alerts() -> set[tuple[str, str, int]]:
    return {
        (f"dev-{d}", "threshold:temp", BASE + i * 1_000_000)
        for d in range(DEVICES)
        for i in range(READINGS)
        if value(d, i) > HIGH
    }


def _query(path: Path, sql: str) -> list[tuple[object, ...]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        try:
            return db.execute(sql).fetchall()
        except sqlite3.OperationalError:  # the sink has not created its tables yet
            return []


def stored(path: Path) -> list[Window]:
    return _query(  # type: ignore[return-value]
        path, "SELECT device_id, metric, window_start, count, min, max, sum FROM aggregates"
    )


def check(path: Path) -> None:
    """The sink holds exactly the reference: every reading once, every closed window once with
    the reference's statistics (a reading counted twice would change its count and sum), and
    every alert once."""
    readings = _query(path, "SELECT device_id, seq FROM readings")
    assert sorted(readings) == sorted(
        (f"dev-{d}", i) for d in range(DEVICES) for i in range(READINGS)
    )
    rows = stored(path)
    keys = [row[:3] for row in rows]
    assert len(keys) == len(set(keys))  # each window once (the table's key)
    expected = reference()
    missing, extra = expected - set(rows), set(rows) - expected
    assert not missing and not extra, (sorted(missing)[:3], sorted(extra)[:3])
    alerts = _query(path, "SELECT device_id, detector, ts FROM alerts")
    assert len(alerts) == len(set(alerts))
    assert set(alerts) == reference_alerts()
