"""Round trips: decode(encode(batch)) == batch, bit for bit, for every kind of value."""

from __future__ import annotations

import csv
import datetime as dt
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import iotdata
from iotdata import codec
from iotdata.model import MAX_STRING_LENGTH, Batch, Column, ts_from_datetime

INT64 = st.integers(-(2**63), 2**63 - 1)
TS = st.integers(-(2**62), 2**62)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
# NaNs with arbitrary payloads and signs: bit patterns with an all-ones exponent.
NAN_BITS = st.integers(0, 2**52 - 1).map(lambda m: m | 0x7FF0000000000001)
NANS = st.tuples(NAN_BITS, st.booleans()).map(
    lambda t: struct.unpack("<d", struct.pack("<Q", t[0] | (t[1] << 63)))[0]
)
DECIMALS = st.builds(lambda i, k: i / 10**k, st.integers(-(10**9), 10**9), st.integers(0, 6))
SCALARS = st.one_of(
    FLOATS,
    NANS,
    DECIMALS,
    st.integers(-(2**63), 2**64 - 1),
    st.booleans(),
    st.text(max_size=20),
    st.none(),
)


def column_values(size: int) -> st.SearchStrategy[list[object]]:
    """Homogeneous columns (the common case), mixed ones, and columns with gaps."""
    homogeneous = st.one_of(
        *[
            st.lists(kind, min_size=size, max_size=size)
            for kind in (
                FLOATS,
                DECIMALS,
                INT64,
                st.booleans(),
                st.sampled_from(["ok", "warn", "fail"]),
                st.text(max_size=MAX_STRING_LENGTH // 64),
            )
        ]
    )
    mixed = st.lists(SCALARS, min_size=size, max_size=size)
    gappy = homogeneous.flatmap(
        lambda values: st.lists(st.booleans(), min_size=size, max_size=size).map(
            lambda holes: [None if h else v for v, h in zip(values, holes, strict=True)]
        )
    )
    return st.one_of(homogeneous, mixed, gappy)


@st.composite
def columns(draw: st.DrawFn, metric: str) -> Column:
    size = draw(st.sampled_from([0, 1, 2, 3, 15, 16, 17, 64, 300]))
    start = draw(TS)
    regular = draw(st.booleans())
    step = draw(st.integers(-(10**9), 10**9))
    if regular:
        ts = [start + step * i for i in range(size)]
        ts = [min(max(t, -(2**63)), 2**63 - 1) for t in ts]
    else:
        ts = draw(st.lists(TS, min_size=size, max_size=size))
    first_seq = draw(st.integers(0, 2**62))
    seq = [first_seq + i * draw(st.integers(1, 3)) for i in range(size)]
    values = draw(column_values(size))
    return Column(metric, ts, values, seq)


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    count = draw(st.integers(0, 3))
    device_id = draw(st.sampled_from(["pump-7", "é-device", "x" * 128, "a b"]))
    return Batch(device_id, [draw(columns(f"m{i}")) for i in range(count)])


@settings(max_examples=400, deadline=None)
@given(batches())
def test_round_trip_is_exact(batch: Batch) -> None:
    frame = codec.encode(batch)
    assert codec.decode(frame) == batch


@settings(max_examples=200, deadline=None)
@given(st.lists(NANS, min_size=1, max_size=40))
def test_nan_payloads_and_signs_survive(nans: list[float]) -> None:
    batch = Batch.from_columns("d", {"m": (list(range(len(nans))), nans, list(range(len(nans))))})
    decoded = codec.decode(codec.encode(batch)).column("m").values
    assert [struct.pack("<d", v) for v in decoded] == [struct.pack("<d", v) for v in nans]


def test_edge_values_survive() -> None:
    values = [
        -0.0,
        0.0,
        math.inf,
        -math.inf,
        5e-324,
        1.7976931348623157e308,
        2**64 - 1,
        -(2**63),
        True,
        False,
        "",
        "ünïcödé ✓",
        None,
    ]
    for value in values:
        batch = Batch.from_columns("d", {"m": ([1], [value], [0])})
        assert codec.decode(codec.encode(batch)) == batch, value
    batch = Batch.from_columns("d", {"m": (list(range(13)), values, list(range(13)))})
    assert codec.decode(codec.encode(batch)) == batch


def test_columns_are_encoded_compactly() -> None:
    """Regular timestamps, consecutive seq and decimal values cost next to nothing."""
    size = 1000
    ts = [1_700_000_000_000_000 + 60_000_000 * i for i in range(size)]
    temps = [round(20 + (i % 50) * 0.1, 1) for i in range(size)]
    batch = Batch.from_columns("boiler-1", {"temp": (ts, temps, list(range(size)))})
    frame = codec.encode(batch)
    assert codec.decode(frame) == batch
    assert len(frame) < size  # under one byte a reading


def test_dictionary_round_trip_and_small_frames() -> None:
    def single(i: int) -> Batch:
        return Batch.from_columns(
            "greenhouse-sensor-0042",
            {"temperature": ([1_700_000_000_000_000 + i * 10_000_000], [20 + i % 7 * 0.25], [i])},
        )

    dictionary = codec.train_dictionary([single(i) for i in range(500)], size=2048)
    restored = codec.Dictionary.from_bytes(dictionary.to_bytes())
    assert restored == dictionary
    encoder = codec.Encoder(dictionary=dictionary)
    decoder = codec.Decoder(dictionaries=[restored])
    plain = codec.Encoder()
    for i in range(500, 520):
        frame = encoder.encode(single(i))
        assert decoder.decode(frame) == single(i)
        assert len(frame) < len(plain.encode(single(i)))


def test_a_dictionary_from_few_samples_still_shortens_frames() -> None:
    """Too few samples for zstd: the dictionary keeps names and the timestamp grid only."""
    batch = Batch.from_columns("boiler-1", {"temp": ([60_000_000], [21.5], [0])})
    dictionary = codec.train_dictionary([batch])
    assert dictionary.data == b""
    assert dictionary.strings == ("boiler-1", "temp")
    later = Batch.from_columns("boiler-1", {"temp": ([60_000_000 * 50], [22.0], [1])})
    off_grid = Batch.from_columns("boiler-1", {"temp": ([60_000_001], [22.0], [2])})
    stranger = Batch.from_columns("pump-2", {"rpm": ([7], [1200], [0])})
    encoder = codec.Encoder(dictionary=dictionary)
    decoder = codec.Decoder(dictionaries=[dictionary])
    for each in (batch, later, off_grid, stranger):
        assert decoder.decode(encoder.encode(each)) == each
    assert len(encoder.encode(later)) < len(codec.encode(later)) - 10
    with pytest.raises(codec.DecodeError, match=f"unknown dictionary id {dictionary.id}"):
        codec.decode(encoder.encode(later))


def test_train_dictionary_needs_batches() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="at least one Batch"):
        codec.train_dictionary([])


def load_series(path: Path) -> tuple[list[int], list[float]]:
    ts, values = [], []
    with path.open() as handle:
        for row in csv.DictReader(handle):
            moment = dt.datetime.strptime(row["timestamp"], "%Y-%m-%d %H:%M:%S")
            ts.append(ts_from_datetime(moment))
            values.append(float(row["value"]))
    return ts, values


def test_every_nab_series_round_trips(nab_dir: Path) -> None:
    series = sorted(nab_dir.glob("*.csv"))
    assert len(series) >= 8
    encoder, decoder = codec.Encoder(), codec.Decoder()
    for path in series:
        ts, values = load_series(path)
        for size in (1, 10, 100, 1000):
            frames = 0
            for start in range(0, min(len(ts), 20 * size), size):
                chunk = slice(start, start + size)
                seq = list(range(start, start + len(ts[chunk])))
                batch = Batch.from_columns(path.stem, {"value": (ts[chunk], values[chunk], seq)})
                assert decoder.decode(encoder.encode(batch)) == batch, (path.stem, size, start)
                frames += 1
            assert frames
        whole = Batch.from_columns(path.stem, {"value": (ts, values, list(range(len(ts))))})
        assert decoder.decode(encoder.encode(whole)) == whole
