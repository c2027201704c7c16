"""Pure parts of the sinks: record checks, pending records, binary COPY rows."""

from __future__ import annotations

import json
import math
import re
import struct

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata.model import Batch, Column, Reading
from iotdata.sinks import (
    Alert,
    BadRowError,
    PendingRecords,
    ReadingColumn,
    RowLimits,
    SourcePosition,
    WindowAggregate,
)
from iotdata.sinks._json import encode_extra, strict_json
from iotdata.sinks._pgcopy import encode_column
from iotdata.sinks._postgres import POSTGRES_LIMITS
from iotdata.sinks._records import Chunk
from iotdata.sinks._sqlite import SQLITE_LIMITS
from iotdata.sinks._validate import make_chunk
from tests.sinks._readers import json_record

ALL = frozenset({"readings", "aggregates", "alerts"})
AGG = WindowAggregate("d", "t", 0, 60, 3, 1.0, 2.0, 4.5)
ALERT = Alert("d", "zscore", 10)


DEFAULT_LIMITS = RowLimits()


def chunk(records: object, limits: RowLimits = DEFAULT_LIMITS, position: object = None) -> Chunk:
    return make_chunk(records, position, limits, ALL)  # type: ignore[arg-type]


# ------------------------------------------------------------------ checks


def test_columns_get_their_value_kind() -> None:
    batch = Batch.from_columns(
        "d",
        {
            "f": ([1, 2], [1.0, 2.0], [0, 1]),
            "i": ([1], [5], [2]),
            "b": ([1], [True], [3]),
            "s": ([1], ["x"], [4]),
            "n": ([1], [None], [5]),
            "m": ([1, 2], [1.0, None], [6, 7]),
        },
    )
    kinds = {c.column.metric: c.kind for c in chunk(batch).columns}
    assert kinds == {"f": "float", "i": "int", "b": "bool", "s": "str", "n": "null", "m": "mixed"}


@pytest.mark.parametrize(
    ("records", "limits", "message"),
    [
        ("text", RowLimits(), "not str"),
        ({"device_id": "d"}, RowLimits(), "not dict"),
        ([object()], RowLimits(), "record #0: expected a Batch"),
        (
            [AGG, Batch.from_columns("dev", {"n": ([1, 2], [1, 2**63], [3, 4])})],
            RowLimits(),
            "record #1, reading device_id='dev' metric='n' seq=4 ts=2: int value",
        ),
        (
            Batch.from_columns("dev", {"x": ([1, 2], [1.0, math.nan], [3, 4])}),
            SQLITE_LIMITS,
            "seq=4 ts=2: this sink cannot store NaN",
        ),
        (
            Batch.from_columns("dev", {"x": ([1], ["a\x00b"], [3])}),
            POSTGRES_LIMITS,
            "NUL character",
        ),
        (
            # the model refuses one; a batch built around its checks still meets the sink's
            Batch._trusted("dev", (Column._trusted("x", (1,), ("\ud800",), (3,)),)),
            RowLimits(),
            "lone surrogate",
        ),
        (
            Batch.from_columns("dev", {"x": ([-(2**62)], [1.0], [3])}),
            POSTGRES_LIMITS,
            "ts outside",
        ),
        ([ALERT, attrs.evolve(AGG, count=-1)], RowLimits(), "record #1, aggregate"),
        ([attrs.evolve(AGG, metric="")], RowLimits(), "metric must have 1 to"),
        ([attrs.evolve(AGG, window_end=-5)], RowLimits(), "window_end=-5 outside"),
        ([attrs.evolve(AGG, min="1")], RowLimits(), "min must be a float"),
        ([attrs.evolve(AGG, sum=math.nan)], SQLITE_LIMITS, "sum is NaN"),
        ([attrs.evolve(AGG, extra={"p99": "x"})], RowLimits(), "extra['p99'] must be a float"),
        ([attrs.evolve(AGG, extra={"p\n": 1.0})], RowLimits(), "an extra name must have 1 to"),
        ([attrs.evolve(AGG, extra={3: 1.0})], RowLimits(), "an extra name must be a str"),
        ([attrs.evolve(AGG, extra={"p": math.nan})], SQLITE_LIMITS, "extra['p'] is NaN"),
        ([attrs.evolve(AGG, extra=[("p", 1.0)])], RowLimits(), "extra must be a mapping"),
        (
            [attrs.evolve(AGG, extra={f"p{i}": 1.0 for i in range(257)})],
            RowLimits(),
            "extra has 257 statistics, more than 256",
        ),
        ([attrs.evolve(ALERT, device_id="a/b")], RowLimits(), "must not contain"),
        ([attrs.evolve(ALERT, message=1)], RowLimits(), "message must be a str"),
        ([attrs.evolve(ALERT, severity="")], RowLimits(), "severity must have"),
        (
            [Reading("d", "m", 1, 1.0, 1), Reading("d", "m", 2, 2**64 - 1, 2)],
            RowLimits(),
            "record #1, reading device_id='d' metric='m' seq=2",
        ),
        ([Reading("d", "m", 1, 1.0, -1)], RowLimits(), "record #0"),
    ],
)
def test_bad_records_are_named(records: object, limits: RowLimits, message: str) -> None:
    with pytest.raises(BadRowError, match=_escape(message)):
        chunk(records, limits)


def _escape(text: str) -> str:
    return re.escape(text)


def test_nan_is_kept_where_the_sink_can_hold_it() -> None:
    batch = Batch.from_columns("dev", {"x": ([1, 2], [math.nan, math.inf], [3, 4])})
    assert chunk(batch).rows == 2
    # inf - inf is NaN too: the quick sum test must not take it for a NaN value
    batch = Batch.from_columns("dev", {"x": ([1, 2], [math.inf, -math.inf], [3, 4])})
    assert chunk(batch, SQLITE_LIMITS).rows == 2


def test_position_must_be_a_source_position() -> None:
    with pytest.raises(BadRowError, match="SourcePosition"):
        chunk([AGG], position=("t", 0, 1))


def test_a_sink_refuses_kinds_it_does_not_store() -> None:
    with pytest.raises(BadRowError, match="does not store alerts"):
        make_chunk([AGG, ALERT], None, RowLimits(), frozenset({"aggregates"}))


def test_loose_readings_are_grouped_per_device() -> None:
    readings = [
        Reading("a", "t", 1, 1.0, 1),
        Reading("b", "t", 1, 2, 1),
        Reading("a", "u", 2, 3.0, 2),
    ]
    columns = chunk(readings).columns
    assert [(c.device_id, c.column.metric, c.kind) for c in columns] == [
        ("a", "t", "float"),
        ("a", "u", "float"),
        ("b", "t", "int"),
    ]


def test_extra_is_a_frozen_hashable_mapping_equal_to_its_dict() -> None:
    given = {"p99": 2.5, "first": None}
    aggregate = attrs.evolve(AGG, extra=given)
    given["p99"] = 0.0  # the aggregate kept its own copy
    assert aggregate.extra == {"p99": 2.5, "first": None}
    assert aggregate.extra["p99"] == 2.5 and list(aggregate.extra) == ["p99", "first"]
    assert aggregate == attrs.evolve(AGG, extra={"first": None, "p99": 2.5})
    assert hash(aggregate) == hash(attrs.evolve(AGG, extra={"first": None, "p99": 2.5}))
    assert aggregate != attrs.evolve(AGG, extra={"p99": 2.5})
    assert AGG.extra == {} and hash(AGG)
    with pytest.raises(TypeError):
        aggregate.extra["p99"] = 1.0  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        aggregate.extra = {}  # type: ignore[misc]
    assert repr(aggregate).endswith("extra={'p99': 2.5, 'first': None})")
    assert chunk([aggregate, attrs.evolve(AGG, extra={"n": 3})]).rows == 2  # ints are floats


# ------------------------------------------------------------------ pending records


def test_pending_aggregates_keep_the_newest_revision_and_the_later_on_ties() -> None:
    a0, a1 = AGG, attrs.evolve(AGG, revision=1, count=4)
    a1_again = attrs.evolve(a1, count=5)
    pending = PendingRecords((chunk([a1]), chunk([a0]), chunk([a1_again])))
    assert pending.aggregates() == [a1_again]


def test_a_newer_revision_replaces_the_extra_statistics_whole() -> None:
    old = attrs.evolve(AGG, extra={"p99": 1.0, "p50": 0.5})
    new = attrs.evolve(AGG, revision=1, extra={"p99": 2.0})
    pending = PendingRecords((chunk([old]), chunk([new]), chunk([old])))
    assert [a.extra for a in pending.aggregates()] == [{"p99": 2.0}]


def test_pending_keeps_the_batches_as_written() -> None:
    batch = Batch.from_columns("a", {"t": ([1], [1.0], [1]), "u": ([1], [2.0], [2])})
    loose = [Reading("b", "t", 1, 1.0, 5), Reading("b", "u", 2, 2.0, 6)]
    pending = PendingRecords((chunk([batch, *loose, AGG]), chunk([batch])))
    batches = list(pending.batches())
    assert batches == [batch, Batch.from_readings(loose), batch]
    assert sum(map(len, batches)) == sum(len(c.column) for c in pending.columns())


def test_pending_alerts_keep_the_first() -> None:
    first, second = ALERT, attrs.evolve(ALERT, message="again")
    pending = PendingRecords((chunk([first, second]),))
    assert pending.alerts() == [first]


def test_pending_records_by_source_start_at_the_smallest_offset() -> None:
    chunks = (
        chunk([AGG], position=SourcePosition("t", 1, 30)),
        chunk([AGG], position=SourcePosition("t", 0, 12)),
        chunk([AGG]),
        chunk([AGG], position=SourcePosition("t", 1, 20)),
    )
    groups = PendingRecords(chunks).by_source()  # type: ignore[arg-type]
    assert [(position, len(group.chunks)) for position, group in groups] == [
        (SourcePosition("t", 1, 20), 2),
        (SourcePosition("t", 0, 12), 1),
        (None, 1),
    ]


# ------------------------------------------------------------------ binary COPY rows

values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=5),
    st.none(),
)


@given(
    st.sampled_from(
        [st.floats(), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none()]
    ).flatmap(lambda s: st.lists(s, min_size=1, max_size=20))
)
def test_fixed_width_copy_rows_equal_the_row_by_row_encoding(column_values: list[object]) -> None:
    n = len(column_values)
    column = Column("m", [10**15 + i for i in range(n)], column_values, list(range(n)))
    fast = chunk(Batch("dev-ü", [column])).columns[0]
    slow = ReadingColumn(fast.device_id, fast.column, "mixed")
    assert encode_column(fast) == encode_column(slow)


@given(st.lists(values, min_size=1, max_size=10))
def test_row_by_row_copy_rows_have_one_row_per_reading(column_values: list[object]) -> None:
    n = len(column_values)
    column = Column("m", list(range(n)), column_values, list(range(n)))
    data = encode_column(ReadingColumn("d", column, "mixed"))
    rows, at = 0, 0
    while at < len(data):
        assert struct.unpack_from(">h", data, at) == (8,)
        at += 2
        for _ in range(8):
            (size,) = struct.unpack_from(">i", data, at)
            at += 4 + max(size, 0)
        rows += 1
    assert (rows, at) == (n, len(data))


# ------------------------------------------------------------------ JSON


floats = st.one_of(st.none(), st.floats())
names = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=8)


@given(st.dictionaries(names, floats, max_size=5), floats, st.integers(-(2**63), 2**63 - 1))
def test_strict_json_round_trips_aggregates_with_any_floats(
    extra: dict[str, float | None], low: float | None, revision: int
) -> None:
    aggregate = attrs.evolve(AGG, min=low, revision=revision, extra=extra)
    payload = strict_json(aggregate)
    json.loads(payload, parse_constant=_refuse)  # strict: no NaN or Infinity literals
    back = json_record(payload)
    assert back.key == aggregate.key and back.revision == revision
    assert _same_floats([back.min, *back.extra.values()], [low, *extra.values()])  # type: ignore[union-attr]
    assert list(back.extra) == list(extra)  # type: ignore[union-attr]


def test_non_finite_floats_are_strings_in_strict_json() -> None:
    extra = {"a": math.inf, "b": -math.inf, "c": math.nan, "d": None, "e": 1}
    assert encode_extra(extra) == '{"a":"Infinity","b":"-Infinity","c":"NaN","d":null,"e":1.0}'
    alert = attrs.evolve(ALERT, value=math.nan, message="ü")
    document = json.loads(strict_json(alert))
    assert document["value"] == "NaN" and document["message"] == "ü"


def _refuse(constant: str) -> None:
    raise AssertionError(f"{constant} is not strict JSON")


def _same_floats(a: list[float | None], b: list[float | None]) -> bool:
    return len(a) == len(b) and all(map(_same_float, a, b))


def _same_float(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (math.isnan(x) and math.isnan(y))


# ------------------------------------------------------------------ refusals and dead letters


@pytest.mark.parametrize(
    ("records", "limits", "problem"),
    [
        (Batch.from_columns("d", {"x": ([1], [math.nan], [3])}), SQLITE_LIMITS, "nan"),
        ([attrs.evolve(AGG, extra={"p": math.nan})], SQLITE_LIMITS, "nan"),
        (Batch.from_columns("d", {"x": ([1], ["a\x00"], [3])}), POSTGRES_LIMITS, "nul"),
        ([attrs.evolve(ALERT, message="a\x00")], POSTGRES_LIMITS, "nul"),
        (  # the model refuses one; a batch built around its checks still meets the sink's
            Batch._trusted("d", (Column._trusted("x", (1,), ("\ud800",), (3,)),)),
            RowLimits(),
            "unicode",
        ),
        (Batch.from_columns("d", {"x": ([-(2**62)], [1.0], [3])}), POSTGRES_LIMITS, "time-range"),
        ([attrs.evolve(ALERT, ts=-(2**62))], POSTGRES_LIMITS, "time-range"),
        (Batch.from_columns("d", {"x": ([1], [2**63], [3])}), RowLimits(), "int-range"),
        ([attrs.evolve(AGG, count="3")], RowLimits(), "invalid"),
        ([object()], RowLimits(), "invalid"),
    ],
)
def test_a_refusal_says_its_problem_in_one_word(
    records: object, limits: RowLimits, problem: str
) -> None:
    with pytest.raises(BadRowError) as caught:
        chunk(records, limits)
    assert caught.value.problem == problem
    assert "record #" not in caught.value.reason  # the reason does not name the record
    with pytest.raises(BadRowError, match="does not store alerts") as kind:
        make_chunk([ALERT], None, RowLimits(), frozenset({"aggregates"}))
    assert kind.value.problem == "kind"


def test_sort_out_keeps_the_good_readings_of_a_batch_and_names_each_bad_one() -> None:
    from iotdata.sinks._validate import sort_out  # noqa: PLC0415

    good = Batch.from_columns("g", {"x": ([1], [1.0], [0])})
    mixed = Batch.from_columns(
        "d",
        {
            "x": ([1, 2, 3, 4], [1.0, math.nan, 3.0, math.nan], [10, 11, 12, 13]),
            "s": ([5], ["ok"], [14]),
            "n": ([6], [math.nan], [15]),
        },
    )
    kept, refused = sort_out(
        [good, mixed, attrs.evolve(AGG, sum=math.nan), ALERT], SQLITE_LIMITS, ALL
    )
    assert kept[0] is good and kept[2] is ALERT
    assert [(c.metric, c.seq) for c in kept[1].columns] == [("x", (10, 12)), ("s", (14,))]
    assert [(e.index, e.problem, getattr(e.record, "seq", None)) for e in refused] == [
        (1, "nan", 11),
        (1, "nan", 13),
        (1, "nan", 15),
        (2, "nan", None),
    ]
    assert refused[0].reason == "this sink cannot store NaN"
    assert make_chunk(kept, None, SQLITE_LIMITS, ALL).rows == 5  # what is kept is taken


def test_a_dead_letter_is_keyed_and_written_as_ascii_strict_json() -> None:
    from iotdata.sinks import DeadLetter  # noqa: PLC0415
    from iotdata.sinks._json import dead_letter_json  # noqa: PLC0415

    reading = Reading("pump%7", "rpm/s", 5, "a\x00b\udc80", 9)
    letter = DeadLetter(
        reading, "nul", "NUL \x00 and \udc80 in the detail", "S", SourcePosition("t", 2, 40)
    )
    assert letter.identity == ("S", "reading", "pump%257/9")
    assert "\x00" not in letter.detail and "\udc80" not in letter.detail
    text = dead_letter_json(letter)
    assert text.isascii()
    document = json.loads(text)
    assert document["record"] == {
        "kind": "reading",
        "device_id": "pump%7",
        "metric": "rpm/s",
        "ts": 5,
        "value": "a\x00b\udc80",
        "seq": 9,
        "value_type": "str",
    }
    assert (document["topic"], document["partition"], document["offset"]) == ("t", 2, 40)
    # a refused aggregate keeps its revision in the key, and any garbage it holds is written
    odd = attrs.evolve(AGG, revision=3, extra={"p": object()}, sum=math.inf)
    fields = json.loads(dead_letter_json(DeadLetter(odd, "invalid", "x", "S")))
    assert fields["key"] == "d/t/0/3" and fields["record"]["sum"] == "Infinity"
    assert fields["record"]["extra"]["p"].startswith("<object")
    assert fields["topic"] is None
