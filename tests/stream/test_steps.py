"""Stateless steps and the chain: per reading or per batch, and errors that name the step."""

from __future__ import annotations

import pytest

from iotdata import Batch, InvalidInputError, Reading
from iotdata.stream import Chain, Dedup, Filter, FlatMap, Map, StreamOperatorError

ITEM = Batch.from_columns(
    "d", {"t": ([1, 2, 3], [1.0, 5.0, 3.0], [0, 2, 4]), "h": ([1, 2], [40.0, 41.0], [1, 3])}
)


def test_filter_per_reading_keeps_columns_and_order() -> None:
    (kept,) = Filter(lambda r: r.value < 10 and r.ts != 2).process(ITEM)
    assert [(c.metric, c.ts, c.values) for c in kept.columns] == [("t", (1, 3), (1.0, 3.0))]
    assert Filter(lambda r: True).process(ITEM)[0] is ITEM
    assert Filter(lambda r: False).process(ITEM) == []


def test_filter_per_batch() -> None:
    assert Filter(lambda b: b.device_id == "d", per="batch").process(ITEM) == [ITEM]
    assert Filter(lambda b: len(b) > 9, per="batch").process(ITEM) == []


def test_map_per_reading_regroups_by_device() -> None:
    def rename(r: Reading) -> Reading:
        return Reading("e" if r.metric == "h" else "d", r.metric, r.ts, r.value * 2, r.seq)

    out = Map(rename).process(ITEM)
    assert [(b.device_id, len(b)) for b in out] == [("d", 3), ("e", 2)]
    assert out[0].column("t").values == (2.0, 10.0, 6.0)


def test_map_and_flat_map_per_batch() -> None:
    double = FlatMap(lambda b: [b, b], per="batch")
    assert double.process(ITEM) == [ITEM, ITEM]
    assert Map(lambda b: b, per="batch").process(ITEM) == [ITEM]
    with pytest.raises(InvalidInputError):
        Map(lambda b: None, per="batch").process(ITEM)


def test_flat_map_per_reading_may_drop_or_multiply() -> None:
    def spread(r: Reading) -> list[Reading]:
        return [] if r.metric == "h" else [r, Reading(r.device_id, "t_max", r.ts, r.value, r.seq)]

    (out,) = FlatMap(spread).process(ITEM)
    assert [(c.metric, len(c)) for c in out.columns] == [("t", 3), ("t_max", 3)]
    with pytest.raises(InvalidInputError):
        FlatMap(lambda r: [1]).process(ITEM)
    with pytest.raises(InvalidInputError):
        Filter(bool, per="column")  # type: ignore[arg-type]


def test_chain_runs_steps_in_order() -> None:
    chain = Chain(
        Dedup(), Filter(lambda r: r.metric == "t"), FlatMap(lambda b: [b, b], per="batch")
    )
    assert [len(b) for b in chain.process(ITEM, 2)] == [3, 3]
    assert chain.process(ITEM, 2) == []  # all duplicates now
    assert chain.statistics()["0.dedup.duplicates"] == 5
    assert repr(chain) == "Chain(dedup, filter, flat_map)"


def test_an_error_names_the_step_the_batch_and_keeps_the_cause() -> None:
    def boom(r: Reading) -> bool:
        raise KeyError("sensor table")

    chain = Chain(Dedup(), Filter(boom, name="known_sensors"))
    with pytest.raises(StreamOperatorError) as caught:
        chain.process(ITEM, 7)
    error = caught.value
    assert error.step == "1.known_sensors"
    assert "device 'd' (partition 7)" in str(error) and "KeyError" in str(error)
    assert isinstance(error.__cause__, KeyError)


def test_nested_chains_prefix_the_step() -> None:
    inner = Chain(Map(lambda r: r), Map(lambda b: 1, per="batch", name="bad"))
    with pytest.raises(StreamOperatorError) as caught:
        Chain(Dedup(), inner).process(ITEM)
    assert caught.value.step == "1.1.bad"
    assert "a per-batch map must return a Batch" in str(caught.value)


def test_chain_accepts_only_steps() -> None:
    with pytest.raises(InvalidInputError):
        Chain(lambda b: [b])  # type: ignore[arg-type]
