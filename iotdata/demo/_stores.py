"""Reading the demo's results back from where the pipeline stored them (SQLite or PostgreSQL,
and Parquet), scoring the alerts against the injected anomalies, and drawing the chart."""

from __future__ import annotations

import importlib
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from iotdata.demo._chart import DeviceSeries, write_chart
from iotdata.device import Anomaly
from iotdata.device._signals import sim_device_id

if TYPE_CHECKING:
    from iotdata.demo._run import DemoOptions

__all__ = ["PG_PREFIX", "StoredData", "read_back"]

#: The demo's tables in PostgreSQL: ``demo_readings``, ``demo_aggregates``, ``demo_alerts``.
PG_PREFIX = "demo_"


@attrs.frozen
class StoredData:
    """Counts of what the stores hold, and which injected anomalies an alert fell on."""

    #: Rows in the warm store's readings table (its primary key is ``(device_id, seq)``).
    readings: int
    aggregates: int
    alerts: int
    alerts_by_detector: dict[str, int]
    #: Rows in the Parquet files (None without pyarrow).
    parquet_rows: int | None
    #: Distinct ``(device_id, seq)`` among them: files carry no key, so this is the check that
    #: the cold path stored no reading twice (None without pyarrow).
    parquet_keys: int | None
    #: ``(device_id, kind, start_ts)`` of each injected anomaly -> whether an alert fell on it.
    detected: dict[tuple[str, str, int], bool]
    alerts_on_anomalies: int
    chart_devices: tuple[str, ...]


Query = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def read_back(
    options: DemoOptions, out: Path, chart_devices: int, events: list[Anomaly]
) -> StoredData:
    """Query the warm store, count the Parquet rows, score, write ``out/chart.html``."""
    if options.postgres is not None:
        return _with_postgres(
            options.postgres, out, (chart_devices, options.devices), events, options.interval
        )
    with sqlite3.connect(out / "iot.sqlite") as conn:

        def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()

        return _read(query, "", "", out, (chart_devices, options.devices), events, options.interval)


def _with_postgres(
    dsn: str, out: Path, chart: tuple[int, int], events: list[Anomaly], interval: float
) -> StoredData:
    import psycopg  # noqa: PLC0415 - the [postgres] extra; the sink has checked it is there

    with psycopg.connect(dsn) as conn:

        def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
            # times are timestamptz there: back to integer microseconds
            text = sql
            for column in ("window_start", "ts"):
                text = text.replace(
                    f"@{column}", f"(extract(epoch from {column}) * 1000000)::bigint"
                )
            return conn.execute(text, params).fetchall()

        return _read(query, "@", PG_PREFIX, out, chart, events, interval)


def _read(  # noqa: PLR0917
    query: Query,
    at: str,
    p: str,
    out: Path,
    chart: tuple[int, int],
    events: list[Anomaly],
    interval: float,
) -> StoredData:
    """``at`` marks the time columns that need converting (``@ts``) for PostgreSQL; ``p`` is
    the tables' prefix; ``chart`` the devices to draw and the fleet's size."""
    chart_devices, devices = chart
    (readings,) = query(f"SELECT count(*) FROM {p}readings", ())[0]
    (aggregates,) = query(f"SELECT count(*) FROM {p}aggregates", ())[0]
    alerts = [
        (device, detector, int(ts))
        for device, detector, ts in query(f"SELECT device_id, detector, {at}ts FROM {p}alerts", ())
    ]
    by_detector: dict[str, int] = defaultdict(int)
    for _, detector, _ in alerts:
        by_detector[detector.split(":")[0]] += 1
    detected, on_anomalies = _score(events, alerts, int(interval * 1_000_000))
    chosen = _chart_devices(events, chart_devices, devices)
    series = []
    for device in chosen:
        points = query(
            f"SELECT {at}ts, value FROM {p}readings WHERE device_id = %s ORDER BY ts", (device,)
        )
        windows = query(
            f'SELECT {at}window_start, "sum" / "count" FROM {p}aggregates WHERE device_id = %s '
            "ORDER BY window_start",
            (device,),
        )
        marks = query(
            f"SELECT {at}ts, detector, value FROM {p}alerts WHERE device_id = %s ORDER BY ts",
            (device,),
        )
        series.append(
            DeviceSeries(
                device_id=device,
                readings=[(int(t), float(v)) for t, v in points if v is not None],
                window_means=[(int(t), float(v)) for t, v in windows if v is not None],
                alerts=[(int(t), str(d), None if v is None else float(v)) for t, d, v in marks],
                anomalies=[e for e in events if e.device_id == device],
            )
        )
    write_chart(out / "chart.html", series)
    parquet = _parquet_counts(out / "lake" / "readings")
    return StoredData(
        readings=int(readings),
        aggregates=int(aggregates),
        alerts=len(alerts),
        alerts_by_detector=dict(by_detector),
        parquet_rows=parquet[0],
        parquet_keys=parquet[1],
        detected=detected,
        alerts_on_anomalies=on_anomalies,
        chart_devices=tuple(chosen),
    )


def _score(
    events: list[Anomaly], alerts: list[tuple[str, str, int]], step: int
) -> tuple[dict[tuple[str, str, int], bool], int]:
    """An alert falls on an anomaly when it is about the same device and lies within the
    anomaly's span widened by two reading intervals (a dropout is reported a little after its
    first missing reading, a level shift also where it ends)."""
    spans = defaultdict(list)
    for event in events:
        spans[event.device_id].append(event)
    detected = {(e.device_id, e.kind, e.start_ts): False for e in events}
    on_anomalies = 0
    for device, _, ts in alerts:
        hit = False
        for event in spans.get(device, ()):
            if event.start_ts - 2 * step <= ts <= event.end_ts + 2 * step:
                detected[(event.device_id, event.kind, event.start_ts)] = True
                hit = True
        on_anomalies += hit
    return detected, on_anomalies


def _chart_devices(events: list[Anomaly], count: int, devices: int) -> list[str]:
    """The devices with the most kinds of anomaly (then the most anomalies)."""
    kinds: dict[str, set[str]] = defaultdict(set)
    totals: dict[str, int] = defaultdict(int)
    for event in events:
        kinds[event.device_id].add(event.kind)
        totals[event.device_id] += 1
    ranked = sorted(kinds, key=lambda d: (-len(kinds[d]), -totals[d], d))
    chosen = ranked[:count]
    for index in range(devices):  # too few with anomalies: the first devices
        if len(chosen) >= count:
            break
        if sim_device_id(index) not in chosen:
            chosen.append(sim_device_id(index))
    return chosen


def _parquet_counts(folder: Path) -> tuple[int | None, int | None]:
    """Rows and distinct ``(device_id, seq)`` in the Parquet lake."""
    try:
        ds = importlib.import_module("pyarrow.dataset")
    except ImportError:
        return None, None
    if not folder.exists():
        return 0, 0
    table = ds.dataset(folder, format="parquet", partitioning="hive").to_table(
        columns=["device_id", "seq"]
    )
    keys = table.group_by(["device_id", "seq"]).aggregate([])
    return int(table.num_rows), int(keys.num_rows)
