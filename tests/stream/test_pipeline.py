"""Pipelines: the builder, the pure processor (routing, late side output, event clock, state)
and a run over the embedded log into memory sinks."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from iotdata import Batch, InvalidInputError, codec
from iotdata.local import LocalLog
from iotdata.sinks import Alert
from iotdata.stream import (
    Count,
    Emitted,
    Hopping,
    LocalSource,
    Mean,
    MissingData,
    Pipeline,
    SnapshotError,
    StreamOperatorError,
    Threshold,
    Tumbling,
    WindowOperator,
    ZScore,
)
from tests.sinks._memory import MemorySink

S = 1_000_000


def batch(device: str, seconds: list[int], values: list[float], first_seq: int = 0) -> Batch:
    ts = [s * S for s in seconds]
    seqs = list(range(first_seq, first_seq + len(ts)))
    return Batch.from_columns(device, {"t": (ts, values, seqs)})


def test_a_pipeline_is_a_value_each_method_returns_a_new_one() -> None:
    base = Pipeline()
    grown = base.dedup().filter(lambda r: True)
    assert base.steps == () and len(grown.steps) == 2
    assert grown.window(Tumbling(10 * S)) != grown


def test_arguments_are_checked_where_they_are_given() -> None:
    with pytest.raises(InvalidInputError, match="one window"):
        Pipeline().window(Tumbling(S)).window(Tumbling(2 * S))
    with pytest.raises(InvalidInputError, match="distinct names"):
        Pipeline().detect(ZScore(), ZScore())
    with pytest.raises(InvalidInputError, match="kinds"):
        Pipeline().to(MemorySink(), kinds=["readings", "bogus"])
    with pytest.raises(InvalidInputError, match="a sink needs"):
        Pipeline().to(object())
    with pytest.raises(InvalidInputError, match="step"):
        Pipeline().step(lambda batch: batch)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="not a detector"):
        Pipeline().detect("zscore")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="aggregations to the WindowOperator"):
        Pipeline().window(WindowOperator(Tumbling(S)), Count())
    with pytest.raises(InvalidInputError, match="idle_timeout"):
        Pipeline(idle_timeout=1.5)  # type: ignore[arg-type]


def test_steps_then_window_and_detectors_see_what_the_steps_let_through() -> None:
    processor = (
        Pipeline()
        .dedup()
        .filter(lambda r: r.value < 100)  # drops the 500
        .window(Tumbling(10 * S), Count(), Mean())
        .detect(Threshold(above=50))
        .processor()
    )
    first = processor.process(batch("d", [1, 2, 3], [10.0, 500.0, 60.0]), 0)
    assert [len(b) for b in first.readings] == [2]
    assert [a.ts for a in first.alerts] == [3 * S]  # the 500 was filtered before the detector
    again = processor.process(batch("d", [1, 2, 3], [10.0, 500.0, 60.0]), 0)
    assert again == Emitted()  # every reading a duplicate: nothing at all
    closing = processor.process(batch("d", [12], [1.0], first_seq=3), 0)
    (window,) = closing.aggregates
    assert (window.window_start, window.count, window.mean) == (0, 2, 35.0)


def test_late_readings_go_to_the_side_output_and_are_counted() -> None:
    processor = Pipeline().window(Tumbling(10 * S), grace=5 * S).processor()
    processor.process(batch("d", [100], [1.0]), 3)
    out = processor.process(batch("d", [90, 96, 101], [2.0, 3.0, 4.0], first_seq=1), 3)
    assert [r.ts for b in out.late for r in b] == [90 * S]  # 90 < 100 - 5
    assert [r.ts for b in out.readings for r in b] == [90 * S, 96 * S, 101 * S]  # still stored
    assert processor.statistics()["window.late"] == 1


def test_updates_are_emitted_with_growing_revisions() -> None:
    processor = Pipeline().window(Tumbling(10 * S), emit_updates=True).processor()
    first = processor.process(batch("d", [1], [1.0]), 0)
    second = processor.process(batch("d", [2], [2.0], first_seq=1), 0)
    assert [(a.count, a.revision) for a in (*first.aggregates, *second.aggregates)] == [
        (1, 0),
        (2, 1),
    ]


def test_missing_data_runs_on_the_partition_event_clock() -> None:
    processor = Pipeline().detect(MissingData(timeout=30 * S)).processor()
    processor.process(batch("quiet", [0], [1.0]), 0)
    processor.process(batch("busy", [10], [1.0]), 0)
    assert processor.process(batch("busy", [29], [1.0], first_seq=1), 0).alerts == ()
    (alert,) = processor.process(batch("busy", [31], [1.0], first_seq=2), 0).alerts
    assert (alert.device_id, alert.ts) == ("quiet", 30 * S)  # its last ts + the timeout
    assert processor.process(batch("busy", [45], [1.0], first_seq=3), 0).alerts == ()  # once


def test_an_idle_partition_runs_its_event_clock_on_wall_time() -> None:
    processor = (
        Pipeline(idle_timeout=timedelta(seconds=5))
        .window(Tumbling(10 * S))
        .detect(MissingData(timeout=60 * S))
        .processor()
    )
    processor.process(batch("d", [1, 2], [1.0, 2.0]), 0)
    wall = 1_000_000 * S
    assert not processor.tick(0, wall)  # the first tick that sees ts 2 starts the idle clock
    assert not processor.tick(0, wall + 4 * S)
    (window,) = processor.tick(0, wall + 30 * S).aggregates  # 30 s quiet: the window closes
    assert window.count == 2
    assert processor.tick(0, wall + 50 * S).alerts == ()  # 2 s + 50 s of silence: not yet
    (alert,) = processor.tick(0, wall + 70 * S).alerts  # event clock 72 s > 2 s + 60 s
    assert (alert.device_id, alert.ts) == ("d", 62 * S)


def test_without_idle_timeout_ticks_change_nothing() -> None:
    processor = Pipeline().window(Tumbling(10 * S)).detect(MissingData(timeout=S)).processor()
    processor.process(batch("d", [1], [1.0]), 0)
    for now in (0, 10**12, 10**15):
        assert processor.tick(0, now) == Emitted()


def test_flush_closes_the_open_windows_of_a_partition() -> None:
    processor = Pipeline().window(Hopping(10 * S, 5 * S), grace=20 * S).processor()
    processor.process(batch("d", [1, 7], [1.0, 2.0]), 0)
    processor.process(batch("e", [1], [1.0]), 1)
    starts = sorted(a.window_start for a in processor.flush(0).aggregates)
    assert starts == [-5 * S, 0, 5 * S]
    assert len(processor.flush(1).aggregates) == 2
    assert processor.flush(0) == Emitted()


def test_a_partition_moves_with_its_state() -> None:
    pipeline = (
        Pipeline()
        .dedup()
        .window(Tumbling(10 * S), Count())
        .detect(ZScore(warmup=3, threshold=3), MissingData(timeout=60 * S))
    )
    one, other = pipeline.processor(), pipeline.processor()
    values = [10.0, 10.5, 9.5, 10.2, 9.8]
    one.process(batch("d", [1, 2, 3, 4, 5], values), 2)
    one.process(batch("x", [1], [1.0]), 4)
    other.restore(2, one.snapshot(2))
    one.forget(2)
    # the duplicate is known, the window holds 5 readings, the z-score has its history
    assert other.process(batch("d", [5], [9.8], first_seq=4), 2) == Emitted()
    out = other.process(batch("d", [6, 12], [50.0, 10.0], first_seq=5), 2)
    assert [a.count for a in out.aggregates] == [6]
    assert [a.detector for a in out.alerts] == ["zscore:t"]
    assert one.statistics()["window.partitions"] == 1  # partition 4 stayed


def test_restore_refuses_another_pipeline_and_bad_bytes() -> None:
    snapshot = Pipeline().window(Tumbling(S)).processor().snapshot(0)
    with pytest.raises(SnapshotError):
        Pipeline().processor().restore(0, snapshot)
    with pytest.raises(SnapshotError):
        Pipeline().window(Tumbling(2 * S)).processor().restore(0, snapshot)
    with pytest.raises(SnapshotError):
        Pipeline().window(Tumbling(S)).processor().restore(0, b"\xc1garbage")


def test_an_error_names_the_operator_that_failed() -> None:
    def boom(reading: object) -> bool:
        raise ValueError("bad predicate")

    with pytest.raises(StreamOperatorError, match=r"'0\.picky'") as caught:
        Pipeline().filter(boom, name="picky").processor().process(batch("d", [1], [1.0]), 0)
    assert isinstance(caught.value.__cause__, ValueError)

    class Broken(Threshold):
        def process(self, batch: Batch, partition: int = 0) -> list[Alert]:
            raise KeyError("state")

    with pytest.raises(StreamOperatorError, match="'broken'"):
        processor = Pipeline().detect(Broken(above=1, name="broken")).processor()
        processor.process(batch("d", [1], [1.0]), 5)


def test_each_processor_has_its_own_operators() -> None:
    pipeline = Pipeline().dedup()
    one, other = pipeline.processor(), pipeline.processor()
    assert one.process(batch("d", [1], [1.0]), 0).readings
    assert other.process(batch("d", [1], [1.0]), 0).readings  # not a duplicate there


def test_run_over_the_embedded_log_routes_kinds_and_late_readings() -> None:
    log = LocalLog.memory()
    log.create_topic("t", 2)
    frames = [
        batch("a", [0, 1, 2], [1.0, 2.0, 99.0]),
        batch("a", [30], [4.0], first_seq=3),
        batch("a", [5], [5.0], first_seq=4),  # late: behind 30 s
        batch("a", [30], [4.0], first_seq=3),  # a duplicate
    ]
    for frame in frames:
        log.append("t", b"a", codec.encode(frame))
    log.append("t", b"a", b"not a frame")
    log.append("t", b"b", codec.encode(batch("a", [40], [1.0], first_seq=9)))  # misaddressed
    everything, aggregates_only, late = MemorySink(), MemorySink(), MemorySink()
    pipeline = (
        Pipeline()
        .dedup()
        .window(Tumbling(10 * 1_000_000), Count())
        .detect(Threshold(above=50))
        .to(everything)
        .to(aggregates_only, kinds=["aggregates"])
        .late_to(late)
    )
    source = LocalSource("t", log=log, group="g")
    stats = asyncio.run(pipeline.run(source, until=lambda s: s.records == 6, flush_at_end=True))
    assert (stats.records, stats.undecodable, stats.late) == (6, 2, 1)
    assert stats.operators["steps.0.dedup.duplicates"] == 1
    assert sorted(everything.store.readings) == [("a", seq) for seq in range(5)]
    windows = {k[2]: a.count for k, a in aggregates_only.store.aggregates.items()}
    assert windows == {0: 3, 30 * S: 1}  # the late reading is in no window
    assert aggregates_only.store.aggregates == everything.store.aggregates
    assert not aggregates_only.store.readings and not aggregates_only.store.alerts
    assert [a.ts for a in everything.store.alerts.values()] == [2 * S]
    assert sorted(late.store.readings) == [("a", 4)]
    # the run committed the offsets: a second run has nothing to do
    again = asyncio.run(pipeline.run(LocalSource("t", log=log, group="g"), until=lambda s: True))
    assert again.records == 0


def test_refused_readings_are_peeled_one_by_one_and_placed_by_source() -> None:
    from iotdata.sinks import BadRowError, SourcePosition, WindowAggregate  # noqa: PLC0415
    from iotdata.stream._badrows import LogQuota, Origins, peel  # noqa: PLC0415

    whole = batch("d", [0, 1, 2], [1.0, 2.0, 3.0])
    named = next(iter(whole))  # seq 0
    rest, refused = peel(whole, BadRowError("no", index=4, record=named))
    assert [r.seq for r in rest] == [1, 2] and refused[0].record is named  # type: ignore[union-attr]
    last, _ = peel(batch("d", [0], [1.0]), BadRowError("no", index=0, record=named))
    assert last is None
    # a refusal naming no reading of the batch refuses all of it
    none, all_of_it = peel(whole, BadRowError("no", index=4, problem="nan"))
    assert none is None and [e.record.seq for e in all_of_it] == [0, 1, 2]  # type: ignore[union-attr]
    assert {e.problem for e in all_of_it} == {"nan"}

    aggregate = WindowAggregate("d", "m", 0, 10, 1, 1.0, 1.0, 1.0)
    one = Emitted(readings=(whole,))
    two = Emitted(readings=(whole, whole), aggregates=(aggregate,))
    origins = Origins(
        "t", 3, [(one, 7), (two, 9), (Emitted(readings=(whole,)), None)], ("readings",)
    )
    assert [origins.position(i) for i in range(4)] == [
        SourcePosition("t", 3, 7),
        SourcePosition("t", 3, 9),
        SourcePosition("t", 3, 9),
        None,
    ]

    quota = LogQuota(burst=2, period=10.0)
    taken = [quota.take(now) for now in (0.0, 1.0, 2.0, 3.0, 10.5, 11.0)]
    assert taken == [0, 0, None, None, 2, 0]
