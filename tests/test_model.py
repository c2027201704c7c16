"""The data model: readings, columns and batches, and what they refuse."""

from __future__ import annotations

import datetime as dt
import enum
import math
import struct

import pytest

import iotdata
from iotdata.model import (
    MAX_NAME_LENGTH,
    MAX_STRING_LENGTH,
    Batch,
    Column,
    Reading,
    ts_from_datetime,
    ts_to_datetime,
    validate_device_id,
)


def test_from_readings_groups_by_metric_and_iterates_back() -> None:
    readings = [
        Reading("pump-1", "temp", 1_000, 21.5, 0),
        Reading("pump-1", "rpm", 1_000, 1200, 1),
        Reading("pump-1", "temp", 2_000, 21.75, 2),
    ]
    batch = Batch.from_readings(readings)
    assert [c.metric for c in batch.columns] == ["temp", "rpm"]
    assert batch.column("temp").values == (21.5, 21.75)
    assert batch.column("temp").seq == (0, 2)
    assert len(batch) == 3
    assert sorted(batch, key=lambda r: r.seq) == readings


def test_from_readings_refuses_two_devices_and_nothing() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="one device"):
        Batch.from_readings([Reading("a", "m", 0, 1.0, 0), Reading("b", "m", 0, 1.0, 1)])
    with pytest.raises(iotdata.InvalidInputError, match="at least one"):
        Batch.from_readings([])


@pytest.mark.parametrize(
    "device_id",
    ["", "a/b", "a+b", "a#b", "tab\there", "nul\x00", "x" * (MAX_NAME_LENGTH + 1), 7, None],
)
def test_device_ids_that_would_break_topics_are_refused(device_id: object) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        validate_device_id(device_id)
    with pytest.raises(iotdata.InvalidInputError):
        Batch(device_id, [])  # type: ignore[arg-type]


def test_good_device_ids_pass() -> None:
    for device_id in ["pump-7", "éolienne_3", "sensor.42", "x" * MAX_NAME_LENGTH]:
        assert validate_device_id(device_id) == device_id


def test_column_lengths_must_agree() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="same length"):
        Column("temp", [1, 2], [1.0], [0, 1])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([object()], "unsupported value"),
        ([b"bytes"], "unsupported value"),
        ([[1, 2]], "unsupported value"),
        ([2**64], r"\[-2\*\*63, 2\*\*64-1\]"),
        ([-(2**63) - 1], r"\[-2\*\*63, 2\*\*64-1\]"),
        (["x" * (MAX_STRING_LENGTH + 1)], "limited to"),
    ],
)
def test_unsupported_values_are_refused_at_construction(values: list[object], message: str) -> None:
    with pytest.raises(iotdata.InvalidInputError, match=message):
        Column("m", [0] * len(values), values, list(range(len(values))))  # type: ignore[arg-type]


def test_timestamps_and_seq_must_be_ints_in_range() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="timestamps must be ints"):
        Column("m", [1.5], [1.0], [0])  # type: ignore[list-item]
    with pytest.raises(iotdata.InvalidInputError, match="seq out of range"):
        Column("m", [1], [1.0], [-1])
    with pytest.raises(iotdata.InvalidInputError, match="timestamps out of range"):
        Column("m", [2**63], [1.0], [0])


def test_lookalike_values_become_plain_types() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Celsius(float):
        pass

    column = Column("m", [0, 1, 2], [Level.HIGH, Celsius(2.5), True], [0, 1, 2])
    assert [type(v) for v in column.values] == [int, float, bool]
    assert column.values == (3, 2.5, True)


def test_columns_compare_values_bit_for_bit() -> None:
    nan_a = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]
    nan_b = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000002))[0]
    assert math.isnan(nan_a) and math.isnan(nan_b)

    def col(value: float | int | bool) -> Column:
        return Column("m", [0], [value], [0])

    assert col(float("nan")) == col(float("nan"))
    assert col(nan_a) != col(nan_b)
    assert col(0.0) != col(-0.0)
    assert col(1) != col(1.0) != col(True)
    assert col(2.5) == col(2.5)


def test_duplicate_metrics_are_refused() -> None:
    with pytest.raises(iotdata.InvalidInputError, match="repeats a metric"):
        Batch("d", [Column("m", [0], [1.0], [0]), Column("m", [1], [2.0], [1])])


def test_timestamps_are_microseconds_since_the_epoch() -> None:
    moment = dt.datetime(2024, 2, 29, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
    ts = ts_from_datetime(moment)
    assert ts == 1_709_209_815_123_456
    assert ts_to_datetime(ts) == moment
    assert ts_from_datetime(moment.replace(tzinfo=None)) == ts
    berlin = dt.timezone(dt.timedelta(hours=1))
    assert ts_from_datetime(moment.astimezone(berlin)) == ts
