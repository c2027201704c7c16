"""The signals of the fleet simulator: what each virtual device measures.

:class:`SyntheticSignal` is a device's temperature: base, slow trend, daily cycle and Gaussian
noise, deterministic for a seed and device index, with injected anomalies and dropouts that it
records as :class:`Anomaly` (:func:`save_anomalies` writes them for the cloud side to check
against). :class:`ReplaySignal` replays a recorded ``timestamp,value`` CSV series such as the
NAB corpus (:func:`read_series`). Both are plain code, no I/O but reading the CSV files: the
scheduling, batching and publishing are in ``_simulator.py``.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import attrs

from iotdata._checks import (
    INT64_MAX,
    INT64_MIN,
    check_instance,
    check_int,
    check_iterable,
    check_number,
    check_path,
    check_text,
    each,
    validated,
)
from iotdata.errors import InvalidInputError
from iotdata.model import ts_from_datetime

__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_ANOMALY_RATE",
    "DROPOUT",
    "Anomaly",
    "ReplaySignal",
    "Series",
    "Source",
    "SyntheticSignal",
    "load_anomalies",
    "read_series",
    "replay_files",
    "save_anomalies",
    "sim_device_id",
]

SPIKE, LEVEL_SHIFT, STUCK, DROPOUT = "spike", "level_shift", "stuck", "dropout"
#: What :class:`SyntheticSignal` injects. A dropout is a stretch with no readings at all.
ANOMALY_KINDS = (SPIKE, LEVEL_SHIFT, STUCK, DROPOUT)
#: Chance that a reading starts an anomaly or dropout: a fleet run of a few minutes has some.
DEFAULT_ANOMALY_RATE = 0.002
_KIND_WEIGHTS = (0.35, 0.25, 0.2, 0.2)
#: Length of each kind of episode, in readings (dropouts: in skipped ticks).
_LENGTHS = {SPIKE: (1, 3), LEVEL_SHIFT: (10, 40), STUCK: (10, 40), DROPOUT: (5, 20)}
_DAY_US = 86_400 * 1_000_000
#: ``(timestamps, values)`` of a recorded series.
Series = tuple[tuple[int, ...], tuple[float, ...]]


def sim_device_id(index: int) -> str:
    """The id of the fleet's device ``index``: ``sim-00000``, ``sim-00001``, ..."""
    return f"sim-{index:05d}"


_TS = validated(check_int, minimum=INT64_MIN, maximum=INT64_MAX)


def _tupled(values: object) -> tuple[Any, ...]:
    return tuple(check_iterable("a series", values))


def _kind(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    if value not in ANOMALY_KINDS:
        raise InvalidInputError(f"kind must be one of {ANOMALY_KINDS}, got {value!r:.60}")


@attrs.frozen
class Anomaly:
    """An injected episode on ``device_id``, from ``start_ts`` to ``end_ts`` (microseconds, both
    included). ``kind`` is one of :data:`ANOMALY_KINDS`; for a dropout these are the times of
    the readings that were never sent."""

    device_id: str = attrs.field(validator=validated(check_text))
    kind: str = attrs.field(validator=_kind)
    start_ts: int = attrs.field(
        validator=validated(check_int, minimum=INT64_MIN, maximum=INT64_MAX)
    )
    end_ts: int = attrs.field(validator=validated(check_int, minimum=INT64_MIN, maximum=INT64_MAX))

    def __attrs_post_init__(self) -> None:
        if self.end_ts < self.start_ts:
            raise InvalidInputError(f"an anomaly ends before it starts: {self!r}")


def save_anomalies(path: Path, events: Iterable[Anomaly]) -> None:
    """Write ``events`` as a JSON list of ``{"device_id", "kind", "start_ts", "end_ts"}``.

    Raises :class:`InvalidInputError` for a bad path or events, or when the file cannot be
    written."""
    target = Path(check_path("path", path))
    documents = [attrs.asdict(e) for e in each("events", events, check_instance, kind=Anomaly)]
    try:
        target.write_text(json.dumps(documents, indent=1) + "\n")
    except OSError as exc:
        raise InvalidInputError(f"cannot write {target}: {exc}") from exc


def load_anomalies(path: Path) -> list[Anomaly]:
    """Read what :func:`save_anomalies` wrote. Raises :class:`InvalidInputError`."""
    source = Path(check_path("path", path))
    try:
        return [Anomaly(**document) for document in json.loads(source.read_text())]
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{source} is not an anomalies file: {exc}") from exc


@attrs.define
class _Episode:
    kind: str
    start_ts: int
    end_ts: int
    remaining: int
    offset: float  # added to the value (spike, level shift) or held (stuck)


@attrs.define
class SyntheticSignal:
    """One device's temperature: base + slow trend + daily cycle + Gaussian noise, plus anomalies.

    ``value(ts) = base + trend * days since start_ts + amplitude * sin(2 pi * time of day + phase)
    + N(0, sigma)``, rounded to 2 decimals (the cycle follows the reading's own UTC time).
    Each reading starts an episode with probability ``anomaly_rate`` when none is under way:

    * ``spike``: 1 to 3 readings off by 20 to 40 sigma;
    * ``level_shift``: 10 to 40 readings shifted by 4 to 8 sigma;
    * ``stuck``: 10 to 40 readings repeating the last value sent;
    * ``dropout``: 5 to 20 readings never sent (:meth:`reading` returns None).

    Noise and anomalies draw from separate random streams, so with ``anomaly_rate=0`` the same
    seed gives exactly the clean series the anomalies were added to.
    """

    device_id: str
    start_ts: int
    base: float
    trend: float  # units per day
    amplitude: float
    phase: float  # radians
    sigma: float
    anomaly_rate: float
    _noise: random.Random
    _chance: random.Random
    _episode: _Episode | None = attrs.field(default=None, init=False)
    _episodes: list[_Episode] = attrs.field(factory=list, init=False)
    _last: float | None = attrs.field(default=None, init=False)

    @classmethod
    def for_device(
        cls,
        index: int,
        *,
        seed: int = 0,
        start_ts: int = 0,
        anomaly_rate: float = DEFAULT_ANOMALY_RATE,
    ) -> SyntheticSignal:
        """The signal of device ``index`` (an int >= 0), deterministic for ``seed`` (an int);
        the trend starts at ``start_ts`` (microseconds). ``anomaly_rate`` lies in [0, 1]."""
        check_int("index", index, minimum=0)
        check_int("seed", seed)
        check_int("start_ts", start_ts, minimum=INT64_MIN, maximum=INT64_MAX)
        check_number("anomaly_rate", anomaly_rate, minimum=0.0, maximum=1.0)
        shape = random.Random(f"iotdata-sim/{seed}/{index}/shape")
        return cls(
            sim_device_id(index),
            start_ts,
            base=round(shape.uniform(15, 25), 2),
            trend=shape.uniform(-0.5, 0.5),
            amplitude=shape.uniform(2, 5),
            phase=shape.uniform(0, 2 * math.pi),
            sigma=shape.uniform(0.1, 0.3),
            anomaly_rate=anomaly_rate,
            noise=random.Random(f"iotdata-sim/{seed}/{index}/noise"),
            chance=random.Random(f"iotdata-sim/{seed}/{index}/anomalies"),
        )

    def expected(self, ts: int) -> float:
        """The noiseless value at ``ts`` (microseconds): base, trend and daily cycle."""
        check_int("ts", ts)
        days = (ts - self.start_ts) / _DAY_US
        cycle = math.sin(2 * math.pi * (ts % _DAY_US) / _DAY_US + self.phase)
        return self.base + self.trend * days + self.amplitude * cycle

    def reading(self, ts: int) -> tuple[int, float] | None:
        """``(ts, value)`` of the next reading, or None in a dropout. Call with increasing ts."""
        value = self.expected(ts) + self._noise.gauss(0, self.sigma)
        episode = self._episode or self._maybe_start(ts)
        if episode is not None:
            episode.end_ts = ts
            episode.remaining -= 1
            if episode.remaining == 0:
                self._episode = None
            if episode.kind == DROPOUT:
                return None
            value = episode.offset if episode.kind == STUCK else value + episode.offset
        self._last = round(value, 2)
        return ts, self._last

    def events(self) -> list[Anomaly]:
        """The episodes injected so far (the one under way ends at its latest reading)."""
        return [Anomaly(self.device_id, e.kind, e.start_ts, e.end_ts) for e in self._episodes]

    def _maybe_start(self, ts: int) -> _Episode | None:
        chance = self._chance
        if chance.random() >= self.anomaly_rate:
            return None
        kind = chance.choices(ANOMALY_KINDS, _KIND_WEIGHTS)[0]
        length = chance.randint(*_LENGTHS[kind])
        sign = chance.choice((-1, 1))
        if kind == SPIKE:
            offset = sign * chance.uniform(20, 40) * self.sigma
        elif kind == LEVEL_SHIFT:
            offset = sign * chance.uniform(4, 8) * self.sigma
        else:
            offset = self._last if self._last is not None else round(self.expected(ts), 2)
        self._episode = _Episode(kind, ts, ts, length, offset)
        self._episodes.append(self._episode)
        return self._episode


@attrs.define
class ReplaySignal:
    """Replays a recorded series in order, its timestamps moved by ``shift`` microseconds.

    At the end it starts over, moved on by the series' span plus one step, so time keeps going
    forward. It injects nothing: a replayed corpus brings its own anomalies.
    """

    device_id: str = attrs.field(validator=validated(check_text))
    ts: tuple[int, ...] = attrs.field(converter=_tupled)
    values: tuple[float, ...] = attrs.field(converter=_tupled)
    shift: int = attrs.field(default=0, validator=validated(check_int))
    _position: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not self.ts or len(self.ts) != len(self.values):
            raise InvalidInputError("a replayed series needs as many values as timestamps (>= 1)")
        each("ts", self.ts, check_int)
        each("values", self.values, check_number)

    def reading(self, ts: int) -> tuple[int, float]:
        """The next recorded ``(ts, value)``; the scheduled ``ts`` is ignored."""
        if self._position == len(self.ts):
            self._position = 0
            self.shift += self._span()
        position = self._position
        self._position += 1
        return self.ts[position] + self.shift, self.values[position]

    def events(self) -> list[Anomaly]:
        return []

    def _span(self) -> int:
        step = self.ts[-1] - self.ts[-2] if len(self.ts) > 1 else 1_000_000
        return self.ts[-1] - self.ts[0] + step


def read_series(path: Path) -> Series:
    """``(timestamps, values)`` of a CSV file with a ``timestamp,value`` header and naive UTC
    ``YYYY-MM-DD HH:MM:SS`` times (the NAB layout). Raises :class:`InvalidInputError`."""
    path = Path(check_path("path", path))
    ts: list[int] = []
    values: list[float] = []
    try:
        with path.open(newline="") as handle:
            for line, row in enumerate(csv.DictReader(handle), 2):
                moment, value = _row(path, line, row)
                ts.append(moment)
                values.append(value)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    if not ts:
        raise InvalidInputError(f"{path} has no readings")
    return tuple(ts), tuple(values)


def _row(path: Path, line: int, row: dict[str, Any]) -> tuple[int, float]:
    try:
        return ts_from_datetime(dt.datetime.fromisoformat(row["timestamp"])), float(row["value"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{path}, line {line}: expected timestamp,value: {exc}") from exc


def replay_files(replay: Path) -> list[Path]:
    """The CSV files of ``replay``: the file itself, or the ``*.csv`` of a folder."""
    files = [replay] if replay.is_file() else sorted(replay.glob("*.csv"))
    if not files:
        raise InvalidInputError(f"no CSV files in {replay}")
    return files


class Source(Protocol):
    """What the simulator reads a device's readings from."""

    def reading(self, ts: int) -> tuple[int, float] | None: ...

    def events(self) -> list[Anomaly]: ...
