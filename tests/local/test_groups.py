"""Consumer groups: the range assignor, generations, stale commits, expired sessions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdata.local import (
    CommitFailedError,
    LocalLog,
    TopicPartition,
    UnknownMemberError,
    range_assign,
)

TP = TopicPartition


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_range_assignor_gives_contiguous_runs_first_members_one_more() -> None:
    owned = range_assign({"b": ["t"], "a": ["t"], "c": ["t"]}, {"t": 7})
    assert owned == {
        "a": (TP("t", 0), TP("t", 1), TP("t", 2)),
        "b": (TP("t", 3), TP("t", 4)),
        "c": (TP("t", 5), TP("t", 6)),
    }


def test_range_assignor_co_partitions_topics_and_respects_subscriptions() -> None:
    owned = range_assign({"a": ["x", "y"], "b": ["x", "y"], "c": ["y"]}, {"x": 4, "y": 3})
    assert owned["a"] == (TP("x", 0), TP("x", 1), TP("y", 0))
    assert owned["b"] == (TP("x", 2), TP("x", 3), TP("y", 1))
    assert owned["c"] == (TP("y", 2),)
    assert range_assign({"a": ["x"], "b": ["x"]}, {"x": 1}) == {"a": (TP("x", 0),), "b": ()}


@settings(max_examples=200, deadline=None)
@given(
    members=st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.sets(st.sampled_from(["x", "y", "z"]), min_size=1),
        min_size=1,
        max_size=6,
    ),
    counts=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
)
def test_range_assignor_assigns_every_partition_once_and_balances(
    members: dict[str, set[str]], counts: tuple[int, int, int]
) -> None:
    partitions = dict(zip("xyz", counts, strict=True))
    owned = range_assign(members, partitions)
    assert range_assign(dict(reversed(members.items())), partitions) == owned  # deterministic
    for topic, count in partitions.items():
        holders = [m for m, topics in members.items() if topic in topics]
        mine = {m: [tp for tp in owned[m] if tp.topic == topic] for m in holders}
        got = sorted(tp.partition for tps in mine.values() for tp in tps)
        assert got == (list(range(count)) if holders else [])
        if holders:
            sizes = [len(tps) for tps in mine.values()]
            assert max(sizes) - min(sizes) <= 1
    for member, tps in owned.items():
        assert all(tp.topic in members[member] for tp in tps)


@pytest.fixture
def log() -> LocalLog:
    local = LocalLog()
    local.create_topic("t", 4)
    local.create_topic("u", 2)
    return local


def test_generation_bumps_on_every_membership_change(log: LocalLog) -> None:
    first = log.join("g", ["t"], "m1")
    assert (first.generation, first.partitions) == (1, tuple(TP("t", p) for p in range(4)))
    assert log.join("g", ["t"], "m1").generation == 1  # same topics: no rebalance
    second = log.join("g", ["t"], "m2")
    assert second.generation == 2
    assert second.partitions == (TP("t", 2), TP("t", 3))
    assert log.assignment("g", "m1").partitions == (TP("t", 0), TP("t", 1))
    assert log.join("g", ["t", "u"], "m2").generation == 3  # new topics
    assert log.leave("g", "m1") is True
    assert log.leave("g", "m1") is False  # twice is fine
    alone = log.assignment("g", "m2")
    assert alone.generation == 4
    assert len(alone.partitions) == 6
    assert log.statistics().rebalances == 4
    assert log.statistics().groups == 1


def test_groups_are_independent(log: LocalLog) -> None:
    log.join("a", "t", "m")
    assert log.join("b", "t", "m").generation == 1
    assert len(log.assignment("b", "m").partitions) == 4


def test_a_commit_with_a_stale_generation_is_refused(log: LocalLog) -> None:
    for _ in range(5):
        log.append("t", b"k", b"v", partition=0)
    mine = log.join("g", ["t"], "m1")
    log.commit("g", {TP("t", 0): 2}, mine.generation, member_id="m1")
    assert log.committed("g", "t", 0) == 2
    log.join("g", ["t"], "m2")  # a rebalance: m1 has not noticed yet
    with pytest.raises(CommitFailedError, match="generation 1 is stale"):
        log.commit("g", {TP("t", 0): 5}, mine.generation, member_id="m1")
    assert log.committed("g", "t", 0) == 2
    now = log.assignment("g", "m1")
    log.commit("g", {TP("t", 0): 5}, now.generation, member_id="m1")
    assert log.committed("g", "t", 0) == 5


def test_a_member_cannot_commit_partitions_it_does_not_own(log: LocalLog) -> None:
    log.join("g", ["t"], "m1")
    current = log.join("g", ["t"], "m2")
    with pytest.raises(CommitFailedError, match="does not own"):
        log.commit("g", {TP("t", 0): 0}, current.generation, member_id="m2")
    with pytest.raises(UnknownMemberError):
        log.commit("g", {TP("t", 0): 0}, current.generation, member_id="ghost")


def test_commits_outside_the_protocol_only_while_the_group_is_empty(log: LocalLog) -> None:
    log.commit("tools", {TP("t", 1): 0})
    assert log.committed("tools", "t", 1) == 0
    assert log.committed("tools", "t", 2) is None
    log.join("tools", ["t"], "m")
    with pytest.raises(CommitFailedError, match="has members"):
        log.commit("tools", {TP("t", 1): 0})
    log.leave("tools", "m")
    log.commit("tools", {TP("t", 1): 0})


def test_an_unknown_member_has_no_assignment(log: LocalLog) -> None:
    with pytest.raises(UnknownMemberError):
        log.assignment("g", "m")
    log.join("g", "t", "m")
    log.leave("g", "m")
    with pytest.raises(UnknownMemberError, match="join again"):
        log.assignment("g", "m")


def test_a_silent_member_expires_after_the_session_timeout() -> None:
    clock = FakeClock()
    log = LocalLog(session_timeout=10, monotonic=clock)
    log.create_topic("t", 2)
    log.join("g", "t", "quiet")
    log.join("g", "t", "busy")
    clock.now = 8
    log.assignment("g", "busy")  # a heartbeat
    clock.now = 12
    state = log.assignment("g", "busy")  # quiet was last seen at 0: gone
    assert (state.generation, state.partitions) == (3, (TP("t", 0), TP("t", 1)))
    with pytest.raises(UnknownMemberError):
        log.assignment("g", "quiet")
    assert log.join("g", "t", "quiet").generation == 4  # back, as a new member
