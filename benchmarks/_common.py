"""Helpers shared by the iotdata benchmarks: sample data, timing, progress and number formatting.

Nothing here knows about a codec or a transport; a benchmark script imports this module (it sits
next to the scripts, so ``import _common`` works when a script is run as
``python benchmarks/NAME.py``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter
from typing import NamedTuple, TextIO

__all__ = [
    "DEFAULT_DATA_DIR",
    "REPO_ROOT",
    "Progress",
    "Row",
    "best_rate",
    "chunk",
    "ensure_repo_importable",
    "find_series",
    "format_rate",
    "load_series",
    "parse_timestamp",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The shared NAB sample series; shared/ sits beside the repository checkout.
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "nab"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_MICROSECOND = _dt.timedelta(microseconds=1)
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


class Row(NamedTuple):
    """One reading as plain values, independent of any codec's own types."""

    device_id: str
    metric: str
    ts: int  # microseconds since the Unix epoch, UTC
    value: float
    seq: int


def ensure_repo_importable() -> None:
    """Let ``import iotdata`` find this checkout's package, ahead of any installed copy."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(1, root)


def parse_timestamp(text: str) -> int:
    """Turn a naive UTC ``YYYY-MM-DD HH:MM:SS`` into microseconds since the epoch."""
    moment = _dt.datetime.strptime(text, _TIMESTAMP_FORMAT).replace(tzinfo=_dt.timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def load_series(path: Path, *, metric: str = "value", limit: int | None = None) -> list[Row]:
    """Read a ``timestamp,value`` CSV as one device's readings, seq numbered from 0.

    The device id is the file stem. ``limit`` keeps only the first ``limit`` readings.
    """
    rows: list[Row] = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            if limit is not None and len(rows) >= limit:
                break
            ts = parse_timestamp(record["timestamp"])
            rows.append(Row(path.stem, metric, ts, float(record["value"]), len(rows)))
    return rows


def find_series(data_dir: Path, name_filter: str | None = None) -> list[Path]:
    """The CSV files in ``data_dir``, sorted; with a filter, those whose stem contains it."""
    paths = sorted(data_dir.glob("*.csv"))
    if name_filter is not None:
        paths = [path for path in paths if name_filter in path.stem]
    return paths


def chunk(rows: Sequence[Row], size: int) -> list[Sequence[Row]]:
    """Consecutive slices of exactly ``size`` rows; an incomplete tail is dropped."""
    return [rows[start : start + size] for start in range(0, len(rows) - size + 1, size)]


def best_rate(run: Callable[[], object], items: int, *, min_time: float, min_repeats: int) -> float:
    """Items per second of the fastest call of ``run``.

    ``run`` is called at least ``min_repeats`` times and until the calls add up to ``min_time``
    seconds. The garbage collector is off while timing, as in ``timeit``.
    """
    best = math.inf
    spent = 0.0
    repeats = 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while repeats < min_repeats or spent < min_time:
            start = perf_counter()
            run()
            elapsed = perf_counter() - start
            best = min(best, elapsed)
            spent += elapsed
            repeats += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return items / max(best, 1e-9)


def format_rate(per_second: float) -> str:
    """A rate in a short human form: ``950``, ``12.3k``, ``1.25M``."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f}M"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.1f}k"
    return f"{per_second:.0f}"


class Progress:
    """A progress counter on stderr.

    On a terminal one line is rewritten at every step; otherwise a line is printed each time the
    group (for example the benchmark case) changes, so CI logs stay short.
    """

    def __init__(self, total: int, *, stream: TextIO | None = None) -> None:
        self._total = total
        self._done = 0
        self._group: str | None = None
        self._stream = stream if stream is not None else sys.stderr
        self._live = self._stream.isatty()

    def step(self, group: str, detail: str = "") -> None:
        """Announce the next unit of work, in ``group``."""
        self._done += 1
        if self._live:
            line = f"[{self._done}/{self._total}] {group} {detail}"
            self._stream.write(f"\r{line:<100.100}")
            self._stream.flush()
        elif group != self._group:
            self._stream.write(f"[{self._done}/{self._total}] {group}\n")
            self._stream.flush()
        self._group = group

    def close(self) -> None:
        """Clear the live line, if any."""
        if self._live:
            self._stream.write("\r" + " " * 100 + "\r")
            self._stream.flush()
