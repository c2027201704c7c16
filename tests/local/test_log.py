"""LocalLog: topics, appends partitioned as Kafka would, reads, retention, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdata.errors import ClosedError, InvalidInputError
from iotdata.kafka import partition_for
from iotdata.local import (
    LocalLog,
    LogRecord,
    OffsetOutOfRangeError,
    Retention,
    UnknownTopicError,
)
from iotdata.local._records import RECORD_OVERHEAD


def test_create_topic_is_idempotent_and_refuses_another_partition_count() -> None:
    log = LocalLog()
    assert log.create_topic("iot.telemetry", 4) == 4
    assert log.create_topic("iot.telemetry", 4) == 4
    with pytest.raises(InvalidInputError, match="exists with 4 partitions"):
        log.create_topic("iot.telemetry", 8)
    assert log.topics() == {"iot.telemetry": 4}
    assert log.partitions("iot.telemetry") == 4


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.binary(max_size=40), min_size=1, max_size=30), count=st.integers(1, 16))
def test_records_land_in_the_partition_kafka_would_pick(keys: list[bytes], count: int) -> None:
    log = LocalLog()
    log.create_topic("t", count)
    expected_offsets = [0] * count
    for key in keys:
        partition, offset = log.append("t", key, b"v")
        assert partition == partition_for(key, count)
        assert offset == expected_offsets[partition]
        expected_offsets[partition] += 1
    assert [log.end_offset("t", p) for p in range(count)] == expected_offsets


def test_read_returns_records_with_their_metadata_in_order() -> None:
    log = LocalLog(clock=lambda: 1_700_000_000.5)
    log.create_topic("t", 1)
    log.append("t", b"a", b"1", headers=[("h", b"x")])
    log.append("t", b"b", b"2", timestamp_ms=42)
    log.append("t", b"c", b"3", partition=0)
    first, second, third = log.read("t", 0, 0)
    assert first == LogRecord("t", 0, 0, b"a", b"1", (("h", b"x"),), 1_700_000_000_500)
    assert second.timestamp_ms == second.timestamp == 42
    assert third.offset == 2
    assert log.read("t", 0, 1, max_records=1) == [second]
    assert log.read("t", 0, 3) == []  # at the end: nothing yet
    with pytest.raises(OffsetOutOfRangeError) as info:
        log.read("t", 0, 4)
    assert (info.value.start_offset, info.value.end_offset) == (0, 3)


def test_explicit_partition_is_honoured() -> None:
    log = LocalLog()
    log.create_topic("t", 3)
    assert log.append("t", b"k", b"v", partition=2) == (2, 0)
    with pytest.raises(UnknownTopicError):
        log.append("t", b"k", b"v", partition=3)


def test_retention_by_records_is_bounded_and_counted() -> None:
    log = LocalLog(retention=Retention(max_records=3))
    log.create_topic("t", 1)
    for i in range(10):
        log.append("t", b"k", b"%d" % i)
    assert (log.start_offset("t", 0), log.end_offset("t", 0)) == (7, 10)
    assert [r.value for r in log.read("t", 0, 7)] == [b"7", b"8", b"9"]
    stats = log.statistics()
    assert (stats.appended, stats.records, stats.dropped_records) == (10, 3, 7)
    assert stats.dropped_bytes == 7 * (1 + 1 + RECORD_OVERHEAD)
    with pytest.raises(OffsetOutOfRangeError, match=r"holds offsets 7 to 9") as info:
        log.read("t", 0, 6)
    assert (info.value.offset, info.value.start_offset) == (6, 7)


def test_retention_by_bytes_keeps_the_newest_record_even_when_it_alone_is_too_big() -> None:
    log = LocalLog(retention=Retention(max_bytes=3 * (RECORD_OVERHEAD + 10)))
    log.create_topic("t", 1)
    for _ in range(5):
        log.append("t", b"", b"x" * 10)
    assert log.statistics().records == 3
    assert log.statistics().bytes <= 3 * (RECORD_OVERHEAD + 10)
    log.append("t", b"", b"y" * 1000)
    assert [r.offset for r in log.read("t", 0, log.start_offset("t", 0))] == [5]
    assert log.statistics().dropped_records == 5


def test_topic_retention_overrides_the_default_and_can_be_changed() -> None:
    log = LocalLog(retention=Retention(max_records=100))
    log.create_topic("small", 1, retention=Retention(max_records=2))
    log.create_topic("big", 1)
    for _ in range(5):
        log.append("small", b"", b"")
        log.append("big", b"", b"")
    assert log.start_offset("small", 0) == 3
    assert log.start_offset("big", 0) == 0
    log.create_topic("big", 1, retention=Retention(max_records=1))  # shrinks it now
    assert log.start_offset("big", 0) == 4
    assert log.statistics().dropped_records == 3 + 4


def test_many_drops_keep_reads_right_across_compaction() -> None:
    log = LocalLog(retention=Retention(max_records=10))
    log.create_topic("t", 1)
    for i in range(5000):
        log.append("t", b"", i.to_bytes(2, "big"))
    records = log.read("t", 0, 4990)
    assert [int.from_bytes(r.value, "big") for r in records] == list(range(4990, 5000))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda log: log.create_topic("bad topic", 1), "topic name"),
        (lambda log: log.create_topic("t2", 0), "partitions"),
        (lambda log: log.create_topic("t2", 1, retention=5), "Retention"),
        (lambda log: log.append("t", "str key", b"v"), "bytes"),
        (lambda log: log.append("t", b"k", bytearray(b"v")), "bytes"),
        (lambda log: log.append("t", b"k", b"v", headers=[("h", "str")]), "header"),
        (lambda log: log.append("t", b"k", b"v", headers=[b"xy"]), "header"),
        (lambda log: log.append("t", b"k", b"v", timestamp_ms=1.5), "timestamp_ms"),
        (lambda log: log.append("t", b"k", b"v", timestamp_ms=2**63), "timestamp_ms"),
        (lambda log: log.append("t", b"k", b"v" * 2000), "exceeds"),
        (lambda log: log.append("nope", b"k", b"v"), "no topic"),
        (lambda log: log.read("t", 0, -1), "offset"),
        (lambda log: log.read("t", 0, 0, max_records=0), "max_records"),
        (lambda log: log.read("t", 2, 0), "no partition"),
        (lambda log: log.read("t", True, 0), "no partition"),
        (lambda log: log.wait("t", 0, 0, timeout=-1), "timeout"),
        (lambda log: log.join("g", [], "m"), "at least one topic"),
        (lambda log: log.join("", ["t"], "m"), "group"),
        (lambda log: log.join("g", ["t"], ""), "member_id"),
        (lambda log: log.join("g", ["nope"], "m"), "no topic"),
        (lambda log: log.commit("g", {("t", 0): -1}), "cannot commit"),
        (lambda log: log.commit("g", {("t", 0): 5}), "cannot commit"),
        (lambda log: log.commit("g", {"t": 0}), "not a \\(topic, partition\\)"),
        (lambda log: log.commit("g", [("t", 0, 0)]), "map"),
        (lambda log: log.commit("g", {("t", 0): 0}, generation="1"), "generation"),
    ],
)
def test_bad_input_raises_invalid_input(call: object, match: str) -> None:
    log = LocalLog(max_record_bytes=1024)
    log.create_topic("t", 2)
    with pytest.raises(InvalidInputError, match=match):
        call(log)  # type: ignore[operator]


@pytest.mark.parametrize(
    "options",
    [
        {"retention": None},
        {"session_timeout": 0},
        {"max_record_bytes": 0},
    ],
)
def test_bad_settings_raise_invalid_input(options: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        LocalLog(**options)  # type: ignore[arg-type]


def test_retention_needs_a_bound() -> None:
    with pytest.raises(InvalidInputError):
        Retention(max_records=None, max_bytes=None)
    with pytest.raises(InvalidInputError):
        Retention(max_records=0)


def test_a_closed_log_refuses_use_and_closes_twice() -> None:
    log = LocalLog.memory()
    log.create_topic("t", 1)
    log.close()
    log.close()
    assert log.closed
    for call in (
        lambda: log.append("t", b"k", b"v"),
        lambda: log.read("t", 0, 0),
        lambda: log.create_topic("u", 1),
        lambda: log.end_offset("t", 0),
        lambda: log.join("g", "t", "m"),
    ):
        with pytest.raises(ClosedError):
            call()
    assert log.statistics().partitions == 1
