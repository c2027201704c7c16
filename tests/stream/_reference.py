"""A deliberately simple reference for the window operator, and NAB delivery scenarios.

The reference walks every reading one by one with plain dicts and lists: no columns, no
partial states, no heaps. It shares only the definitions with the operator (documented in
iotdata.stream): the watermark of a partition is ``max ts seen - grace`` and moves between
batches; a reading below it is late; windows are ``[start, start + size)`` (sessions
``[first, last + gap)``).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from benchmarks._common import load_series, parse_timestamp
from iotdata import Batch, Reading

MINUTE = 60_000_000
HOUR = 60 * MINUTE
EPOCH = 1_600_000_000_000_000  # every series is moved to start here

Event = tuple[int, Batch]  # (partition, batch)


class Ref(NamedTuple):
    count: int
    sum: float
    min: float
    max: float
    mean: float
    variance: float | None
    first: float
    last: float
    p50: float
    p90: float


def key_of(reading: Reading, key_by: str) -> tuple[str | None, str | None]:
    if key_by == "device_metric":
        return (reading.device_id, reading.metric)
    return (reading.device_id, None) if key_by == "device" else (None, reading.metric)


def aligned_starts(ts: int, size: int, hop: int) -> list[int]:
    """Every start s (a multiple of hop) with s <= ts < s + size, found by walking."""
    start = ts - ts % hop
    starts = []
    while start > ts - size:
        starts.append(start)
        start -= hop
    return starts


def nearest_rank(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(q * len(ordered)) - 1)])


def stats(readings: list[Reading]) -> Ref:
    values = [r.value for r in readings]
    by_order = sorted(readings, key=lambda r: (r.ts, r.seq))
    total = math.fsum(values)
    return Ref(
        count=len(values),
        sum=total,
        min=min(values),
        max=max(values),
        mean=total / len(values),
        variance=statistics.variance(values) if len(values) > 1 else None,
        first=by_order[0].value,
        last=by_order[-1].value,
        p50=nearest_rank(values, 0.5),
        p90=nearest_rank(values, 0.9),
    )


def reference(
    events: Iterable[Event],
    *,
    size: int | None = None,
    hop: int | None = None,
    gap: int | None = None,
    grace: int,
    key_by: str = "device_metric",
    dedup: bool = True,
) -> tuple[dict[tuple[str | None, str | None, int], tuple[int, Ref]], list[Reading]]:
    """``({(device, metric, start): (end, stats)}, late readings)`` for the events."""
    newest: dict[int, int] = {}
    watermark: dict[int, float] = {}
    seen: set[tuple[str, int]] = set()
    accepted: dict[tuple[str | None, str | None], list[Reading]] = defaultdict(list)
    late: list[Reading] = []
    for partition, batch in events:
        mark = watermark.get(partition, -math.inf)
        for reading in batch:
            if dedup:
                if (reading.device_id, reading.seq) in seen:
                    continue
                seen.add((reading.device_id, reading.seq))
            newest[partition] = max(newest.get(partition, reading.ts), reading.ts)
            if reading.ts < mark:
                late.append(reading)
            else:
                accepted[key_of(reading, key_by)].append(reading)
        if partition in newest:
            watermark[partition] = max(mark, newest[partition] - grace)
    windows: dict[tuple[str | None, str | None, int], tuple[int, Ref]] = {}
    for (device, metric), readings in accepted.items():
        if gap is not None:
            for session in sessions(readings, gap):
                end = session[-1].ts + gap
                windows[(device, metric, session[0].ts)] = (end, stats(session))
            continue
        assert size is not None
        members: dict[int, list[Reading]] = defaultdict(list)
        for reading in readings:
            for start in aligned_starts(reading.ts, size, hop or size):
                members[start].append(reading)
        for start, group in members.items():
            windows[(device, metric, start)] = (start + size, stats(group))
    return windows, late


def sessions(readings: list[Reading], gap: int) -> list[list[Reading]]:
    ordered = sorted(readings, key=lambda r: r.ts)
    groups = [[ordered[0]]]
    for reading in ordered[1:]:
        if reading.ts - groups[-1][-1].ts >= gap:
            groups.append([])
        groups[-1].append(reading)
    return groups


# --- NAB scenarios ---------------------------------------------------------------------------


def nab_readings(nab_dir: Path, *, limit: int | None = None) -> dict[str, list[Reading]]:
    """Each NAB series as a device with two metrics: ``value`` (the CSV) and ``scaled`` (value
    / 7, another float), moved to start at EPOCH; seq counts readings of the device."""
    devices = {}
    for path in sorted(nab_dir.glob("*.csv")):
        rows = load_series(path, limit=limit)
        shift = EPOCH - rows[0].ts
        readings = []
        for row in rows:
            ts = row.ts + shift
            readings.append(Reading(row.device_id, "value", ts, row.value, 2 * row.seq))
            readings.append(Reading(row.device_id, "scaled", ts, row.value / 7, 2 * row.seq + 1))
        devices[path.stem] = readings
    return devices


def deliver(
    devices: dict[str, list[Reading]],
    *,
    seed: int,
    partitions: int = 3,
    shuffle_span: int = 6,
    duplicate_rate: float = 0.05,
    delay_rate: float = 0.01,
    delay: int = 3 * 24 * HOUR,
) -> list[Event]:
    """Batches of 1 to 40 readings per device, readings shuffled within ``shuffle_span``
    neighbours (out of order), some batches sent twice (duplicates), some held back by
    ``delay`` (late); devices interleaved in their partition by sending time."""
    rng = random.Random(seed)
    timed: list[tuple[int, int, int, Batch]] = []
    for number, (_, readings) in enumerate(sorted(devices.items())):
        order = sorted(range(len(readings)), key=lambda i: i + rng.uniform(0, shuffle_span))
        shuffled = [readings[i] for i in order]
        start = 0
        while start < len(shuffled):
            chunk = shuffled[start : start + rng.randint(1, 40)]
            start += len(chunk)
            batch = Batch.from_readings(chunk)
            sent = max(r.ts for r in chunk)
            if rng.random() < delay_rate:
                sent += delay
            timed.append((sent, rng.random(), number % partitions, batch))
            if rng.random() < duplicate_rate:
                timed.append(
                    (sent + rng.randint(0, 6 * HOUR), rng.random(), number % partitions, batch)
                )
    timed.sort(key=lambda item: (item[0], item[1]))
    return [(partition, batch) for _, _, partition, batch in timed]


def anomaly_windows(nab_dir: Path) -> dict[str, list[tuple[int, int]]]:
    """The labelled windows per series, in the series' own (unshifted) microseconds."""
    labels = json.loads((nab_dir / "anomaly_windows.json").read_text())
    return {
        Path(name).stem: [(parse_timestamp(a[:19]), parse_timestamp(b[:19])) for a, b in spans]
        for name, spans in labels.items()
    }


def flatten(items: Iterable[Batch | Reading]) -> list[tuple[Any, ...]]:
    """Readings, given as batches or readings, as sorted tuples."""
    readings = [r for item in items for r in ([item] if isinstance(item, Reading) else item)]
    return sorted((r.device_id, r.metric, r.ts, r.seq, r.value) for r in readings)
