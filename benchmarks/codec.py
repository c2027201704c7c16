"""Codec benchmark: bytes per reading and encode/decode speed of iotdata against baselines.

What is measured
----------------
Each ``timestamp,value`` CSV in the data directory is one device's series: device id = file stem,
metric ``"value"``, ts = epoch microseconds (the naive timestamps are UTC), value = ``float``,
seq = 0, 1, 2, ... For each batch size B the series is cut into batches of B consecutive readings
(an incomplete tail batch is dropped); each batch is one frame of each implementation:

* ``json`` / ``msgpack``: an array of one ``{"device_id", "metric", "ts", "value", "seq"}`` map
  per reading (json with compact separators); decoding gives the dicts back.
* ``senml``: an RFC 8428 pack (``bn`` = device id + ":", ``bt`` in seconds, ``n``/``t``/``v`` per
  record); seq is an extension field on the first record and wherever it is not the previous + 1.
* ``gorilla``: a pure-Python Gorilla (VLDB 2015) reference, see ``_baselines.py``. Timestamps are
  whole seconds, as in the paper (the others carry microseconds). Gorilla has no device id or seq:
  its size is an 8-byte first seq + the bit stream rounded up to bytes + the device id's UTF-8
  length, per frame; the metric name and the point count reach its decoder for free.
* ``iotdata``: ``iotdata.codec.encode(batch)`` / ``iotdata.codec.decode(data)``.
* ``iotdata+dict``: ``Encoder(dictionary=d)`` / ``Decoder(dictionaries=[d])``, ``d`` trained
  with ``train_dictionary`` on the same-size batches of the first half of the series, and
  measured on the batches of the second half only.

First every batch is encoded and decoded once and the round trip checked: the decoded object
equals the input (``Batch`` equality for iotdata) and gives the same readings, floats bit-exact.
A failing implementation gets no number; the failure is printed and the exit status is 1. Then:

* bytes/reading: frame bytes (plus Gorilla's counted extras) over readings, on all the data;
* encode/s, decode/s: readings per second on one core, the BEST of timed passes (at least
  ``--min-repeats`` passes and ``--min-time`` seconds, garbage collector off) over the first
  ``--time-readings`` readings' worth of batches. Only the encode or decode calls are timed, not
  building their input (dicts, ``Batch`` objects).

The codec's targets are printed as PASS/FAIL and never change the exit status. ``--json PATH``
writes ``[{"case": "<stem>@<B>", "impl": ..., "metric": ..., "value": ...}, ...]`` with metrics
``bytes_per_reading``, ``encode_per_s``, ``decode_per_s``, plus impl ``"ratio"`` rows
``<base>_over_iotdata_bytes`` per case and for ``"average@<B>"`` (mean over series).

Run
---
From the repository root (the default data directory is ``../shared/data/nab``)::

    python benchmarks/codec.py                       # everything, about two minutes
    python benchmarks/codec.py --quick --json /tmp/codec.json    # smoke test, a few seconds
    python benchmarks/codec.py --series nyc_taxi --batch-sizes 100,1000
    python benchmarks/codec.py --impls json,msgpack,senml,gorilla   # baselines only
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import struct
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import msgpack
from _codec_impls import ALL_IMPLS, Case, Impl, ImplFactory, NotMeasurableError, build_factories
from _common import (
    DEFAULT_DATA_DIR,
    Progress,
    Row,
    best_rate,
    find_series,
    format_rate,
    load_series,
)

DEFAULT_BATCH_SIZES = (1, 10, 100, 1000)

# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Timing:
    """How hard to time: see the module docstring."""

    min_time: float
    min_repeats: int
    time_readings: int

    def rate(self, run: Callable[[], object], items: int) -> float:
        return best_rate(run, items, min_time=self.min_time, min_repeats=self.min_repeats)


@dataclass(frozen=True)
class Result:
    """One implementation on one case: sizes and rates when ``ok``, else why not in ``note``."""

    case: Case
    impl: str
    status: Literal["ok", "failed", "skipped"]
    note: str = ""
    bytes_per_reading: float = 0.0
    encode_per_s: float = 0.0
    decode_per_s: float = 0.0


def _value_key(value: object) -> object:
    """Floats by their bits (so -0.0 and NaN payloads count), other values as they are."""
    return struct.pack(">d", value) if type(value) is float else (type(value).__name__, value)


def _row_key(row: Row) -> tuple[object, ...]:
    return (row.device_id, row.metric, row.ts, _value_key(row.value), row.seq)


def _round_trip_problem(impl: Impl, rows: Sequence[Row], sent: Any, got: Any) -> str | None:
    """Why ``got`` (decoded) is not the same as ``sent`` (encoded from ``rows``), or None."""
    back = impl.rows(got)
    if len(back) != len(rows):
        return f"sent {len(rows)} readings, decoded {len(back)}"
    for index, (want, have) in enumerate(zip(rows, back, strict=True)):
        if _row_key(want) != _row_key(have):
            return f"reading {index}: sent {tuple(want)!r}, decoded {tuple(have)!r}"
    if got != sent:
        return "decoded object is not equal to the encoded one"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def measure(case: Case, name: str, factory: ImplFactory, timing: Timing) -> Result:
    """Round-trip every batch of ``case``, then size and time it; never raises."""
    try:
        impl = factory(case)
    except NotMeasurableError as exc:
        return Result(case, name, "skipped", str(exc))
    except Exception as exc:
        return Result(case, name, "failed", f"setup: {_describe(exc)}")
    if not impl.batches:
        return Result(case, name, "skipped", "no full batch")
    payloads: list[Any] = []
    frames: list[bytes] = []
    for index, rows in enumerate(impl.batches):
        try:
            payload = impl.prepare(rows)
            frame = impl.encode(payload)
            problem = _round_trip_problem(impl, rows, payload, impl.decode(frame))
        except Exception as exc:
            problem = _describe(exc)
        if problem is not None:
            return Result(case, name, "failed", f"batch {index}: {problem}")
        payloads.append(payload)
        frames.append(frame)
    readings = sum(len(rows) for rows in impl.batches)
    size = sum(len(frame) for frame in frames) + impl.extra_bytes_per_frame * len(frames)
    encode_rate, decode_rate = _rates(impl, payloads, frames, timing)
    return Result(case, name, "ok", "", size / readings, encode_rate, decode_rate)


def _rates(
    impl: Impl, payloads: Sequence[Any], frames: Sequence[bytes], timing: Timing
) -> tuple[float, float]:
    batch_size = len(impl.batches[0])
    count = min(len(frames), max(1, timing.time_readings // batch_size))
    payloads, frames = payloads[:count], frames[:count]
    encode, decode = impl.encode, impl.decode

    def encode_all() -> None:
        for payload in payloads:
            encode(payload)

    def decode_all() -> None:
        for frame in frames:
            decode(frame)

    items = count * batch_size
    return timing.rate(encode_all, items), timing.rate(decode_all, items)


def run_all(
    series: Mapping[str, Sequence[Row]],
    batch_sizes: Sequence[int],
    factories: Mapping[str, ImplFactory],
    timing: Timing,
) -> dict[tuple[str, str], Result]:
    """Measure every (series, batch size, implementation); keyed by (case name, impl)."""
    progress = Progress(len(series) * len(batch_sizes) * len(factories))
    results: dict[tuple[str, str], Result] = {}
    try:
        for stem, rows in series.items():
            for batch_size in batch_sizes:
                case = Case(stem, batch_size, rows)
                for name, factory in factories.items():
                    progress.step(case.name, name)
                    results[case.name, name] = measure(case, name, factory, timing)
    finally:
        progress.close()
    return results


# ---------------------------------------------------------------------------------------------
# Reporting

Results = Mapping[tuple[str, str], Result]
_RATIO_BASES = ("json", "msgpack", "senml", "gorilla")


def _ok(results: Results, case: str, impl: str) -> Result | None:
    result = results.get((case, impl))
    return result if result is not None and result.status == "ok" else None


def _bytes_ratio(results: Results, case: str, base: str) -> float | None:
    """``base`` bytes/reading over iotdata's, when both were measured."""
    other, ours = _ok(results, case, base), _ok(results, case, "iotdata")
    if other is None or ours is None:
        return None
    return other.bytes_per_reading / ours.bytes_per_reading


def _cell(result: Result | None, show: Callable[[Result], str]) -> str:
    if result is None:
        return "-"
    return {"ok": show(result), "failed": "FAIL", "skipped": "skip"}[result.status]


def _table(
    title: str,
    results: Results,
    cases: Sequence[str],
    impls: Sequence[str],
    show: Callable[[Result], str],
    ratios: Sequence[str] = (),
) -> list[str]:
    width = max(len(case) for case in cases)
    columns = [*impls, *(f"{base}/iot" for base in ratios)]
    widths = [max(len(column), 8) for column in columns]
    lines = [title, "  ".join([f"{'series@batch':<{width}}", *map(str.rjust, columns, widths)])]
    for case in cases:
        cells = [_cell(results.get((case, impl)), show) for impl in impls]
        for base in ratios:
            ratio = _bytes_ratio(results, case, base)
            cells.append("-" if ratio is None else f"{ratio:.1f}x")
        lines.append("  ".join([f"{case:<{width}}", *map(str.rjust, cells, widths)]))
    return [*lines, ""]


def format_tables(results: Results, cases: Sequence[str], impls: Sequence[str]) -> list[str]:
    ratios = [base for base in ("json", "gorilla") if base in impls and "iotdata" in impls]
    return [
        *_table("Bytes per reading", results, cases, impls, _bytes, ratios),
        *_table("Encode, readings per second", results, cases, impls, _encode_rate),
        *_table("Decode, readings per second", results, cases, impls, _decode_rate),
    ]


def _bytes(result: Result) -> str:
    return f"{result.bytes_per_reading:.2f}"


def _encode_rate(result: Result) -> str:
    return format_rate(result.encode_per_s)


def _decode_rate(result: Result) -> str:
    return format_rate(result.decode_per_s)


LEGEND = """\
Legend: one frame per batch of B consecutive readings (the incomplete tail batch is dropped).
  json, msgpack: an array of {device_id, metric, ts (int us), value, seq} objects per frame;
    json uses compact separators. senml: RFC 8428 pack (bn = device id + ":", bt in seconds,
    n/t/v per record, seq on the first record and wherever it is not the previous + 1).
  gorilla: Gorilla (VLDB 2015) timestamps in whole SECONDS (the others carry microseconds) and
    values; bytes = 8-byte first seq + bit stream rounded up to bytes per frame + the device id
    length (UTF-8). Metric name and point count are known to its decoder for free.
  iotdata+dict: dictionary trained on the first half of each series (same batch size), measured
    on the second half only; every other column is measured on the whole series.
  Rates: best of timed passes on one core. x/iot columns: x bytes over iotdata bytes.
  FAIL: round trip or codec error (see below); skip: too little data; -: not run."""


class Target(NamedTuple):
    passed: bool | None  # None: not measured in this run
    text: str


Verdict = tuple[bool, str] | None  # (passed, detail); None when a result is missing or failed


def _all_ok(results: Results, stems: Sequence[str], batch_size: int, impl: str) -> list[Result]:
    """``impl``'s result on every series at ``batch_size``; empty if any is missing or failed."""
    found = [_ok(results, f"{stem}@{batch_size}", impl) for stem in stems]
    return [] if None in found else [result for result in found if result is not None]


def _vs_gorilla(results: Results, stems: Sequence[str], batch_size: int) -> Verdict:
    ours, theirs = (_all_ok(results, stems, batch_size, impl) for impl in ("iotdata", "gorilla"))
    if not ours or not theirs:
        return None
    ratios = {
        mine.case.series: mine.bytes_per_reading / other.bytes_per_reading
        for mine, other in zip(ours, theirs, strict=True)
    }
    worst = max(ratios, key=ratios.__getitem__)
    return ratios[worst] <= 1.0, f"worst iotdata/gorilla {ratios[worst]:.2f} on {worst}"


def _vs_json(results: Results, stems: Sequence[str], batch_size: int) -> Verdict:
    ratios = [_bytes_ratio(results, f"{stem}@{batch_size}", "json") for stem in stems]
    if None in ratios:
        return None
    mean = statistics.fmean(ratio for ratio in ratios if ratio is not None)
    return mean >= 20.0, f"mean json/iotdata {mean:.1f}x"


def _dict_size(results: Results, stems: Sequence[str], batch_size: int) -> Verdict:
    found = _all_ok(results, stems, batch_size, "iotdata+dict")
    if not found:
        return None
    worst = max(found, key=lambda result: result.bytes_per_reading)
    detail = f"worst {worst.bytes_per_reading:.2f} on {worst.case.series}"
    return worst.bytes_per_reading <= 30.0, detail


def _speed(direction: str) -> Callable[[Results, Sequence[str], int], Verdict]:
    def judge(results: Results, stems: Sequence[str], batch_size: int) -> Verdict:
        found = _all_ok(results, stems, batch_size, "iotdata")
        rates = {result.case.series: getattr(result, f"{direction}_per_s") for result in found}
        if not rates:
            return None
        slowest = min(rates, key=rates.__getitem__)
        return rates[slowest] >= 1e6, f"slowest {format_rate(rates[slowest])}/s on {slowest}"

    return judge


class _Check(NamedTuple):
    batch_size: int
    needs: tuple[str, ...]
    text: str
    judge: Callable[[Results, Sequence[str], int], Verdict]


_BELOW_GORILLA = "iotdata bytes/reading <= gorilla's on every series"
_BELOW_JSON = "iotdata >= 20x smaller than json, mean over series"
_CHECKS = (
    _Check(100, ("iotdata", "gorilla"), _BELOW_GORILLA, _vs_gorilla),
    _Check(100, ("iotdata", "json"), _BELOW_JSON, _vs_json),
    _Check(1000, ("iotdata", "gorilla"), _BELOW_GORILLA, _vs_gorilla),
    _Check(1000, ("iotdata", "json"), _BELOW_JSON, _vs_json),
    _Check(1, ("iotdata+dict",), "iotdata+dict <= 30 bytes/reading on every series", _dict_size),
    _Check(1000, ("iotdata",), "iotdata encode >= 1M readings/s on every series", _speed("encode")),
    _Check(1000, ("iotdata",), "iotdata decode >= 1M readings/s on every series", _speed("decode")),
)


def evaluate_targets(
    results: Results, stems: Sequence[str], batch_sizes: Sequence[int], impls: Sequence[str]
) -> list[Target]:
    """The codec's targets; those this run did not cover are reported as not run."""
    targets: list[Target] = []
    for check in _CHECKS:
        text = f"B={check.batch_size}: {check.text}"
        if check.batch_size not in batch_sizes or not set(check.needs) <= set(impls):
            targets.append(Target(None, f"{text} (not run)"))
            continue
        verdict = check.judge(results, stems, check.batch_size)
        if verdict is None:
            targets.append(Target(False, f"{text} (no number: a result failed or is missing)"))
        else:
            targets.append(Target(verdict[0], f"{text} ({verdict[1]})"))
    return targets


def format_targets(targets: Sequence[Target]) -> list[str]:
    label = {True: "PASS", False: "FAIL", None: "N/A "}
    return ["Targets", *(f"  {label[target.passed]}  {target.text}" for target in targets)]


def format_notes(results: Results) -> list[str]:
    """The failures (round trip or exception) and the skipped cases, with their reasons."""
    lines: list[str] = []
    for status, title in (("failed", "FAILED, no numbers reported"), ("skipped", "Skipped")):
        found = [result for result in results.values() if result.status == status]
        if found:
            lines.append(f"{title}:")
            lines += [f"  {result.case.name} {result.impl}: {result.note}" for result in found]
            lines.append("")
    return lines


def _json_row(case: str, impl: str, metric: str, value: float) -> dict[str, Any]:
    return {"case": case, "impl": impl, "metric": metric, "value": value}


def json_rows(results: Results, stems: Sequence[str], batch_sizes: Sequence[int]) -> list[Any]:
    """The machine-readable results: one object per number, see the module docstring."""
    metrics = ("bytes_per_reading", "encode_per_s", "decode_per_s")
    rows = [
        _json_row(result.case.name, result.impl, metric, getattr(result, metric))
        for result in results.values()
        if result.status == "ok"
        for metric in metrics
    ]
    return [*rows, *_ratio_rows(results, stems, batch_sizes)]


def _ratio_rows(
    results: Results, stems: Sequence[str], batch_sizes: Sequence[int]
) -> Iterator[dict[str, Any]]:
    for batch_size, base in itertools.product(batch_sizes, _RATIO_BASES):
        metric = f"{base}_over_iotdata_bytes"
        found: list[float] = []
        for case in (f"{stem}@{batch_size}" for stem in stems):
            ratio = _bytes_ratio(results, case, base)
            if ratio is not None:
                found.append(ratio)
                yield _json_row(case, "ratio", metric, ratio)
        if found:
            yield _json_row(f"average@{batch_size}", "ratio", metric, statistics.fmean(found))


# ---------------------------------------------------------------------------------------------
# Command line


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("batch sizes must be positive integers")
    return values


def _impl_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(ALL_IMPLS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown implementation(s) {unknown}; choose from {ALL_IMPLS}"
        )
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA_DIR, help="directory of CSV series"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    parser.add_argument("--series", help="only series whose file stem contains this text")
    parser.add_argument("--batch-sizes", type=_int_list, default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--impls", type=_impl_list, default=list(ALL_IMPLS), help="comma-separated")
    parser.add_argument(
        "--max-readings", type=int, help="first N readings per series (default all)"
    )
    parser.add_argument("--time-readings", type=int, help="readings per timed pass (default 4000)")
    parser.add_argument("--min-time", type=float, help="seconds of timed passes (default 0.2)")
    parser.add_argument("--min-repeats", type=int, help="timed passes at least (default 3)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 series, 2400 readings each, short timing (a few seconds)",
    )
    return parser.parse_args(argv)


def _timing(args: argparse.Namespace) -> Timing:
    quick = args.quick

    def pick(value: Any, normal: Any, fast: Any) -> Any:
        return value if value is not None else (fast if quick else normal)

    return Timing(
        min_time=pick(args.min_time, 0.2, 0.01),
        min_repeats=pick(args.min_repeats, 3, 1),
        time_readings=pick(args.time_readings, 4000, 1000),
    )


def load_data(args: argparse.Namespace) -> dict[str, list[Row]]:
    paths = find_series(args.data, args.series)
    limit = args.max_readings
    if args.quick:
        paths = paths if args.series else paths[:2]
        limit = limit if limit is not None else 2400
    return {path.stem: load_series(path, limit=limit) for path in paths}


def _version(parts: Sequence[object]) -> str:
    return ".".join(map(str, parts))


def _header(series: Mapping[str, Sequence[Row]], timing: Timing, data_dir: Path) -> list[str]:
    counts = ", ".join(f"{stem} {len(rows)}" for stem, rows in series.items())
    where = getattr(sys.modules.get("iotdata.codec"), "__file__", None) or "not loaded"
    return [
        f"Codec benchmark: Python {sys.version.split()[0]}, msgpack {_version(msgpack.version)}",
        f"iotdata.codec: {where}",
        f"Data: {data_dir} ({counts} readings)",
        f"Timing: best of >= {timing.min_repeats} passes and >= {timing.min_time} s over "
        f"<= {timing.time_readings} readings per case",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    timing = _timing(args)
    try:
        factories = build_factories(args.impls)
    except ImportError as exc:
        hint = "--impls json,msgpack,senml,gorilla runs the baselines only"
        print(f"cannot import iotdata ({_describe(exc)}); {hint}", file=sys.stderr)
        return 2
    series = load_data(args)
    if not series:
        print(f"no CSV series in {args.data}", file=sys.stderr)
        return 2
    stems = list(series)
    results = run_all(series, args.batch_sizes, factories, timing)
    cases = [f"{stem}@{size}" for stem in stems for size in args.batch_sizes]
    lines = _header(series, timing, args.data)
    lines += format_tables(results, cases, list(factories))
    lines += [LEGEND, "", *format_notes(results)]
    lines += format_targets(evaluate_targets(results, stems, args.batch_sizes, list(factories)))
    print("\n".join(lines))
    if args.json is not None:
        rows = json_rows(results, stems, args.batch_sizes)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if any(result.status == "failed" for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
