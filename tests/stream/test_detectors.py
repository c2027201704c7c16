"""Detectors: each one's semantics, and precision/recall on the labelled NAB anomaly windows."""

from __future__ import annotations

import itertools
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks._common import Row, load_series
from iotdata import Batch, InvalidInputError
from iotdata.sinks import Alert
from iotdata.stream import Flatline, MissingData, RateOfChange, Threshold, ZScore
from tests.stream._reference import HOUR, anomaly_windows

S = 1_000_000


def batch(
    ts: list[int], values: list[Any], device: str = "d", metric: str = "m", first_seq: int = 0
) -> Batch:
    seq = list(range(first_seq, first_seq + len(ts)))
    return Batch.from_columns(device, {metric: ([t * S for t in ts], values, seq)})


def stamps(alerts: list[Alert]) -> list[int]:
    return [a.ts // S for a in alerts]


def test_threshold_above_and_below_with_cooldown() -> None:
    detector = Threshold(above=10.0, below=0.0, cooldown=5 * S, severity="critical")
    alerts = detector.process(batch([1, 2, 3, 9, 10], [11.0, 12.0, -1.0, float("nan"), 10.0]))
    assert stamps(alerts) == [1]  # 2 and 3 fall in the cooldown; NaN and 10.0 do not alert
    assert alerts[0] == Alert("d", "threshold:m", 1 * S, "m", 11.0, 1.0, "critical", "11 above 10")
    assert detector.statistics()["suppressed"] == 2
    assert stamps(detector.process(batch([20], [-3.0], first_seq=5))) == [20]
    with pytest.raises(InvalidInputError):
        Threshold()


def test_zscore_flags_a_spike_after_warmup_only() -> None:
    detector = ZScore(alpha=0.1, threshold=4.0, warmup=20)
    quiet = [10.0 + (i % 3) * 0.1 for i in range(40)]
    assert detector.process(batch(list(range(40)), quiet)) == []
    (alert,) = detector.process(batch([40, 41], [30.0, 10.1], first_seq=40))
    assert alert.ts == 40 * S and alert.score is not None and alert.score > 4
    early = ZScore(warmup=50)
    assert early.process(batch(list(range(42)), [*quiet, 30.0, 10.0])) == []


def test_rate_of_change_per_second() -> None:
    detector = RateOfChange(max_rate=2.0)
    alerts = detector.process(batch([0, 1, 3, 4], [0.0, 1.5, 2.0, -1.0]))
    assert [(a.ts // S, a.score) for a in alerts] == [(4, -3.0)]
    assert stamps(detector.process(batch([10], [20.0], first_seq=4))) == [10]  # 21 in 6 s


def test_flatline_by_count_and_by_duration_once_per_run() -> None:
    by_count = Flatline(epsilon=0.05, count=3)
    alerts = by_count.process(batch(list(range(8)), [1.0, 1.02, 0.98, 1.0, 1.01, 2.0, 2.0, 2.0]))
    assert [(a.ts // S, a.score) for a in alerts] == [(2, 3.0), (7, 3.0)]
    by_time = Flatline(duration=10 * S)
    assert stamps(by_time.process(batch([0, 5, 9, 10, 30], [4.0] * 5))) == [10]


def test_missing_data_from_gaps_and_from_advance() -> None:
    detector = MissingData(timeout=60 * S)
    assert detector.process(batch([0, 30], [1.0, 1.0])) == []
    (gap,) = detector.process(batch([200], [1.0], first_seq=2))  # silent 30 -> 200
    assert (gap.detector, gap.ts, gap.metric, gap.score) == ("missing", 90 * S, None, 170.0)
    detector.process(batch([0], [1.0], device="other"))
    alerts = detector.advance(0, 260 * S)  # d: 60 s after 200 is not "more than" 60 s
    assert [(a.device_id, a.ts // S, a.score) for a in alerts] == [("other", 60, 260.0)]
    assert [(a.device_id, a.ts // S) for a in detector.advance(0, 261 * S)] == [("d", 260)]
    assert detector.advance(0, 999 * S) == []  # each silence alerts once
    assert detector.process(batch([500], [1.0], first_seq=3)) == []  # ...even when it ends
    assert len(detector.advance(0, 561 * S)) == 1  # a new silence
    assert detector.advance(7, 10**12) == []


def test_stale_readings_are_skipped_and_counted() -> None:
    detector = RateOfChange(max_rate=1.0)
    detector.process(batch([10, 11], [0.0, 0.5]))
    assert detector.process(batch([5, 12], [100.0, 1.0], first_seq=2)) == []
    assert detector.statistics()["stale"] == 1


def test_metrics_filter_and_alert_names() -> None:
    detector = Threshold(above=1.0, metrics=["temp"], name="hot")
    item = Batch.from_columns("d", {"temp": ([1], [5.0], [0]), "rpm": ([1], [5.0], [1])})
    assert [a.detector for a in detector.process(item)] == ["hot:temp"]


# --- NAB ------------------------------------------------------------------------------------

COOLDOWN = 6 * HOUR


def nab_detectors(rows: list[Row]) -> dict[str, Any]:
    """One of each detector, calibrated on the series' first 15 % (NAB's probationary part)."""
    probe = rows[: len(rows) * 15 // 100]
    values = [r.value for r in probe]
    spread = statistics.pstdev(values)
    rates = [
        abs(b.value - a.value) * S / (b.ts - a.ts)
        for a, b in itertools.pairwise(probe)
        if b.ts > a.ts
    ]
    gaps = sorted(b.ts - a.ts for a, b in itertools.pairwise(rows))
    return {
        "threshold": Threshold(
            above=max(values) + spread / 2, below=min(values) - spread / 2, cooldown=COOLDOWN
        ),
        "zscore": ZScore(alpha=0.01, threshold=5.0, warmup=len(probe) // 2, cooldown=COOLDOWN),
        "rate": RateOfChange(max_rate=1.5 * max(rates), cooldown=COOLDOWN),
        "flatline": Flatline(epsilon=0.01 * spread, count=6, cooldown=COOLDOWN),
        "missing": MissingData(timeout=10 * gaps[len(gaps) // 2]),
    }


def score(alerts: list[Alert], spans: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(alerts inside a labelled window, windows with an alert, windows)."""
    inside = sum(1 for a in alerts if any(start <= a.ts <= end for start, end in spans))
    found = sum(1 for start, end in spans if any(start <= a.ts <= end for a in alerts))
    return inside, found, len(spans)


def evaluate(nab_dir: Path) -> dict[str, dict[str, float]]:
    labels = anomaly_windows(nab_dir)
    totals: dict[str, list[int]] = {}
    for path in sorted(nab_dir.glob("*.csv")):
        rows = load_series(path)
        for name, detector in nab_detectors(rows).items():
            alerts = []
            for start in range(0, len(rows), 50):
                chunk = rows[start : start + 50]
                alerts += detector.process(
                    Batch.from_columns(
                        path.stem,
                        {
                            "value": (
                                [r.ts for r in chunk],
                                [r.value for r in chunk],
                                [r.seq for r in chunk],
                            )
                        },
                    )
                )
            inside, found, spans = score(alerts, labels[path.stem])
            total = totals.setdefault(name, [0, 0, 0, 0])
            for i, n in enumerate((inside, len(alerts), found, spans)):
                total[i] += n
    return {
        name: {
            "precision": inside / alerts if alerts else 0.0,
            "recall": found / spans,
            "alerts": alerts,
            "windows_found": found,
            "windows": spans,
        }
        for name, (inside, alerts, found, spans) in totals.items()
    }


def test_detectors_on_the_labelled_nab_windows(
    nab_dir: Path, capsys: pytest.CaptureFixture[str], record_property: Callable[[str, Any], None]
) -> None:
    """Precision: the share of alerts inside a labelled window of their series; recall: the
    share of labelled windows with at least one alert; over all eight series. Reported, not a
    pass/fail threshold."""
    table = evaluate(nab_dir)
    record_property("nab_precision_recall", json.dumps(table))
    with capsys.disabled():
        print("\ndetector   precision  recall  alerts  windows found")
        for name, row in table.items():
            print(
                f"{name:10s} {row['precision']:9.2f} {row['recall']:7.2f} {row['alerts']:7.0f}"
                f"  {row['windows_found']:.0f}/{row['windows']:.0f}"
            )
    assert set(table) == {"threshold", "zscore", "rate", "flatline", "missing"}
    for row in table.values():
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
        assert row["windows"] == 20
    assert max(row["recall"] for row in table.values()) > 0
