"""The log against a plain reference: random appends, reads, commits, group changes, restarts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from iotdata.errors import InvalidInputError
from iotdata.kafka import partition_for
from iotdata.local import (
    CommitFailedError,
    LocalLog,
    LogRecord,
    OffsetOutOfRangeError,
    Retention,
    TopicPartition,
    UnknownTopicError,
)
from iotdata.local._records import record_size

TOPICS = ["a", "b"]
GROUPS = ["g", "h"]
MEMBERS = ["m1", "m2", "m3"]
keys = st.binary(max_size=6)
values = st.binary(max_size=40)
headers = st.lists(st.tuples(st.text("xyz", max_size=3), st.binary(max_size=4)), max_size=2)


def retained(records: list[LogRecord], retention: Retention) -> int:
    """How many of the newest records the retention keeps: the longest suffix within both
    bounds, and never fewer than one."""
    kept = size = 0
    for record in reversed(records):
        size += record_size(record.key, record.value, record.headers)
        over_count = retention.max_records is not None and kept + 1 > retention.max_records
        over_size = retention.max_bytes is not None and size > retention.max_bytes
        if kept and (over_count or over_size):
            break
        kept += 1
    return kept


class LogModel(RuleBasedStateMachine):
    durable = False

    def __init__(self) -> None:
        super().__init__()
        self.folder: Path | None = None
        self.log: LocalLog | None = None
        self.topics: dict[str, list[list[LogRecord]]] = {}
        self.committed: dict[tuple[str, TopicPartition], int] = {}
        self.generation = dict.fromkeys(GROUPS, 0)
        self.members: dict[str, dict[str, frozenset[str]]] = {g: {} for g in GROUPS}
        #: What each member last saw: (generation, partitions).
        self.views: dict[tuple[str, str], tuple[int, tuple[TopicPartition, ...]]] = {}
        self.clock = 0
        self.appends_since_open = 0

    @initialize(
        max_records=st.none() | st.integers(1, 6),
        max_bytes=st.none() | st.integers(40, 500),
    )
    def start(self, max_records: int | None, max_bytes: int | None) -> None:
        if max_records is None and max_bytes is None:
            max_records = 4
        self.retention = Retention(max_records=max_records, max_bytes=max_bytes)
        if self.durable:
            self.folder = Path(tempfile.mkdtemp(prefix="iotdata-log-"))
        self.log = self.open()

    def open(self) -> LocalLog:
        options = {"retention": self.retention, "clock": lambda: self.clock / 1000}
        if self.folder is None:
            return LocalLog.memory(**options)
        return LocalLog.open(self.folder, segment_bytes=300, **options)

    def teardown(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    @property
    def sut(self) -> LocalLog:
        assert self.log is not None
        return self.log

    def held(self, topic: str, partition: int) -> tuple[int, list[LogRecord]]:
        records = self.topics[topic][partition]
        kept = retained(records, self.retention)
        return len(records) - kept, records[len(records) - kept :]

    # ------------------------------------------------------------------ rules

    @rule(topic=st.sampled_from(TOPICS), partitions=st.integers(1, 3))
    def create_topic(self, topic: str, partitions: int) -> None:
        existing = self.topics.get(topic)
        if existing is not None and len(existing) != partitions:
            with pytest.raises(InvalidInputError):
                self.sut.create_topic(topic, partitions)
            return
        assert self.sut.create_topic(topic, partitions) == partitions
        self.topics.setdefault(topic, [[] for _ in range(partitions)])

    @rule(
        topic=st.sampled_from(TOPICS),
        burst=st.lists(
            st.tuples(keys, values, headers, st.none() | st.integers(-5, 10**12)),
            min_size=1,
            max_size=6,
        ),
    )
    def append(
        self,
        topic: str,
        burst: list[tuple[bytes, bytes, list[tuple[str, bytes]], int | None]],
    ) -> None:
        if topic not in self.topics:
            with pytest.raises(UnknownTopicError):
                self.sut.append(topic, b"k", b"v")
            return
        parts = self.topics[topic]
        for key, value, pairs, timestamp in burst:
            self.clock += 1
            partition = partition_for(key, len(parts))
            offset = len(parts[partition])
            stamp = self.clock if timestamp is None else timestamp
            got = self.sut.append(topic, key, value, headers=pairs, timestamp_ms=timestamp)
            assert got == (partition, offset)
            record = LogRecord(topic, partition, offset, key, value, tuple(pairs), stamp)
            parts[partition].append(record)
        self.appends_since_open += len(burst)

    @precondition(lambda self: self.topics)
    @rule(data=st.data(), max_records=st.integers(1, 8))
    def read(self, data: st.DataObject, max_records: int) -> None:
        topic = data.draw(st.sampled_from(sorted(self.topics)))
        partition = data.draw(st.integers(0, len(self.topics[topic]) - 1))
        start, kept = self.held(topic, partition)
        end = start + len(kept)
        offset = data.draw(st.integers(max(0, start - 2), end + 2))
        if not start <= offset <= end:
            with pytest.raises(OffsetOutOfRangeError) as info:
                self.sut.read(topic, partition, offset, max_records)
            assert (info.value.start_offset, info.value.end_offset) == (start, end)
            return
        expected = kept[offset - start : offset - start + max_records]
        assert self.sut.read(topic, partition, offset, max_records) == expected

    @precondition(lambda self: self.topics)
    @rule(data=st.data(), group=st.sampled_from(GROUPS))
    def commit_outside_the_group(self, data: st.DataObject, group: str) -> None:
        topic = data.draw(st.sampled_from(sorted(self.topics)))
        partition = data.draw(st.integers(0, len(self.topics[topic]) - 1))
        end = len(self.topics[topic][partition])
        offset = data.draw(st.integers(0, end + 1))
        tp = TopicPartition(topic, partition)
        if offset > end:
            with pytest.raises(InvalidInputError):
                self.sut.commit(group, {tp: offset})
        elif self.members[group]:
            with pytest.raises(CommitFailedError):
                self.sut.commit(group, {tp: offset})
        else:
            self.sut.commit(group, {tp: offset})
            self.committed[group, tp] = offset

    @precondition(lambda self: self.topics)
    @rule(data=st.data(), group=st.sampled_from(GROUPS), member=st.sampled_from(MEMBERS))
    def join(self, data: st.DataObject, group: str, member: str) -> None:
        topics = frozenset(data.draw(st.sets(st.sampled_from(sorted(self.topics)), min_size=1)))
        if self.members[group].get(member) != topics:
            self.members[group][member] = topics
            self.generation[group] += 1
        state = self.sut.join(group, topics, member)
        assert state.generation == self.generation[group]
        self.views[group, member] = (state.generation, state.partitions)

    @rule(group=st.sampled_from(GROUPS), member=st.sampled_from(MEMBERS))
    def leave(self, group: str, member: str) -> None:
        was_member = self.members[group].pop(member, None) is not None
        if was_member:
            self.generation[group] += 1
        assert self.sut.leave(group, member) == was_member

    @precondition(lambda self: self.views)
    @rule(data=st.data())
    def commit_as_a_member(self, data: st.DataObject) -> None:
        """A member commits what it owned when it last looked: refused iff the group moved."""
        group, member = data.draw(st.sampled_from(sorted(self.views)))
        generation, owned = self.views[group, member]
        if not owned:
            return
        tp = data.draw(st.sampled_from(owned))
        offset = data.draw(st.integers(0, len(self.topics[tp.topic][tp.partition])))
        current = member in self.members[group] and generation == self.generation[group]
        if not current:
            with pytest.raises(CommitFailedError):
                self.sut.commit(group, {tp: offset}, generation, member_id=member)
            return
        self.sut.commit(group, {tp: offset}, generation, member_id=member)
        self.committed[group, tp] = offset

    @precondition(lambda self: self.folder is not None and self.appends_since_open >= 3)
    @rule()
    def restart(self) -> None:
        """Close and reopen the folder: records and commits stay; members must join again."""
        self.sut.close()
        self.log = self.open()
        self.appends_since_open = 0
        self.generation = dict.fromkeys(GROUPS, 0)
        self.members = {g: {} for g in GROUPS}
        self.views = {}

    # ------------------------------------------------------------------ invariants

    @invariant()
    def offsets_and_commits_match(self) -> None:
        if self.log is None:
            return
        assert self.sut.topics() == {t: len(parts) for t, parts in self.topics.items()}
        total = 0
        for topic, parts in self.topics.items():
            for partition in range(len(parts)):
                start, kept = self.held(topic, partition)
                assert self.sut.start_offset(topic, partition) == start
                assert self.sut.end_offset(topic, partition) == start + len(kept)
                total += len(kept)
                for group in GROUPS:
                    tp = TopicPartition(topic, partition)
                    assert self.sut.committed(group, topic, partition) == self.committed.get(
                        (group, tp)
                    )
        assert self.sut.statistics().records == total

    @invariant()
    def members_own_disjoint_partitions_of_their_topics(self) -> None:
        if self.log is None:
            return
        for group, members in self.members.items():
            seen: list[TopicPartition] = []
            for member, topics in members.items():
                state = self.sut.assignment(group, member)
                assert state.generation == self.generation[group]
                assert all(tp.topic in topics for tp in state.partitions)
                seen.extend(state.partitions)
            assert len(seen) == len(set(seen))
            wanted = {t for topics in members.values() for t in topics}
            assert len(seen) == sum(len(self.topics[t]) for t in wanted)


class DurableLogModel(LogModel):
    durable = True


TestMemoryLog = LogModel.TestCase
TestMemoryLog.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDurableLog = DurableLogModel.TestCase
TestDurableLog.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
