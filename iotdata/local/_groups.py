"""Consumer groups: members, generations, the range assignor, committed offsets.

Plain code, no I/O and no locking (the log calls it under its lock). Time comes in as ``now``
(seconds on a monotonic clock), so session expiry is tested on virtual time.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import attrs

from iotdata._checks import check_int, check_iterable, check_mapping, check_text
from iotdata.errors import InvalidInputError
from iotdata.local._errors import CommitFailedError, UnknownMemberError
from iotdata.local._records import GroupAssignment, TopicPartition

__all__ = ["Groups", "range_assign"]


def range_assign(
    subscriptions: Mapping[str, Collection[str]], partitions: Mapping[str, int]
) -> dict[str, tuple[TopicPartition, ...]]:
    """Kafka's range assignor: for each topic, its subscribers in sorted order get contiguous
    runs of its partitions, the first ones one more when the count does not divide evenly.

    So partition ``p`` of topics with the same partition count goes to the same member
    (co-partitioning), and the result depends only on who subscribes to what.

    Raises :class:`~iotdata.InvalidInputError` unless ``subscriptions`` maps member ids (str)
    to collections of topic names and ``partitions`` topic names to counts (ints >= 0).
    """
    _check_assignable(subscriptions, partitions)
    owned: dict[str, list[TopicPartition]] = {member: [] for member in subscriptions}
    for topic in sorted({t for topics in subscriptions.values() for t in topics}):
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        share, extra = divmod(partitions.get(topic, 0), len(members))
        first = 0
        for index, member in enumerate(members):
            length = share + (index < extra)
            owned[member].extend(TopicPartition(topic, p) for p in range(first, first + length))
            first += length
    return {member: tuple(sorted(tps)) for member, tps in owned.items()}


def _check_assignable(subscriptions: object, partitions: object) -> None:
    for member, topics in check_mapping("subscriptions", subscriptions).items():
        check_text("a member id", member)
        if isinstance(topics, str) or not all(
            type(t) is str for t in check_iterable(member, topics)
        ):
            raise InvalidInputError(f"the topics of {member!r:.60} must be a collection of str")
    for topic, count in check_mapping("partitions", partitions).items():
        check_text("a topic", topic)
        check_int(f"partitions[{topic!r:.60}]", count, minimum=0)


@attrs.define
class _Group:
    generation: int = 0
    members: dict[str, frozenset[str]] = attrs.Factory(dict)
    seen: dict[str, float] = attrs.Factory(dict)
    owned: dict[str, tuple[TopicPartition, ...]] = attrs.Factory(dict)
    committed: dict[TopicPartition, int] = attrs.Factory(dict)


@attrs.define
class Groups:
    """Every consumer group of one log."""

    #: Seconds without a call from a member before it is dropped; None keeps members until
    #: they leave.
    session_timeout: float | None = None
    rebalances: int = 0
    _groups: dict[str, _Group] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self._groups)

    def generation(self, group: str) -> int:
        state = self._groups.get(group)
        return 0 if state is None else state.generation

    def join(
        self,
        group: str,
        member: str,
        topics: frozenset[str],
        partitions: Mapping[str, int],
        now: float,
    ) -> GroupAssignment:
        """Add ``member`` (or change its topics); a rejoin with the same topics changes nothing."""
        state = self._groups.setdefault(group, _Group())
        changed = self._expire(state, now)
        if state.members.get(member) != topics:
            state.members[member] = topics
            changed = True
        state.seen[member] = now
        if changed:
            self._rebalance(state, partitions)
        return self._assignment(group, state, member)

    def leave(self, group: str, member: str, partitions: Mapping[str, int], now: float) -> bool:
        """Remove ``member``; False when it was not in the group."""
        state = self._groups.get(group)
        if state is None:
            return False
        changed = self._expire(state, now)
        gone = state.members.pop(member, None) is not None
        state.seen.pop(member, None)
        if gone or changed:
            self._rebalance(state, partitions)
        return gone

    def assignment(
        self, group: str, member: str, partitions: Mapping[str, int], now: float
    ) -> GroupAssignment:
        """The member's current assignment (and a heartbeat)."""
        state = self._member(group, member, partitions, now)
        return self._assignment(group, state, member)

    def commit(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        *,
        generation: int | None,
        member: str | None,
        partitions: Mapping[str, int],
        now: float,
    ) -> None:
        """Record ``offsets`` (next offset to read per partition), or raise CommitFailedError.

        With ``generation=None`` (a consumer outside the group protocol) the group must have no
        members. Otherwise ``generation`` must be current and, when ``member`` is given, the
        member must own every partition committed.
        """
        if member is not None:
            state = self._member(group, member, partitions, now)
        else:
            state = self._groups.setdefault(group, _Group())
            if self._expire(state, now):
                self._rebalance(state, partitions)
        if generation is None:
            if state.members:
                raise CommitFailedError(
                    f"group {group!r} has members: commit as a member, with its generation"
                )
        elif generation != state.generation:
            raise CommitFailedError(
                f"group {group!r} rebalanced: generation {generation} is stale (now "
                f"{state.generation}); fetch the new assignment and resume from its commits"
            )
        elif member is not None:
            foreign = sorted(set(offsets) - set(state.owned.get(member, ())))
            if foreign:
                raise CommitFailedError(f"{member!r} of group {group!r} does not own {foreign}")
        state.committed.update(offsets)

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        state = self._groups.get(group)
        return None if state is None else state.committed.get(tp)

    def snapshot(self) -> dict[str, list[list[object]]]:
        """Committed offsets as JSON-ready data: ``{group: [[topic, partition, offset], ...]}``."""
        return {
            group: [
                [tp.topic, tp.partition, offset] for tp, offset in sorted(state.committed.items())
            ]
            for group, state in sorted(self._groups.items())
            if state.committed
        }

    def restore(self, group: str, committed: Iterable[tuple[TopicPartition, int]]) -> None:
        self._groups.setdefault(group, _Group()).committed.update(committed)

    # ------------------------------------------------------------------ internals

    def _member(self, group: str, member: str, partitions: Mapping[str, int], now: float) -> _Group:
        state = self._groups.get(group)
        if state is not None and self._expire(state, now):
            self._rebalance(state, partitions)
        if state is None or member not in state.members:
            raise UnknownMemberError(
                f"{member!r} is not a member of group {group!r} (never joined, left, or its "
                "session expired): join again"
            )
        state.seen[member] = now
        return state

    def _expire(self, state: _Group, now: float) -> bool:
        timeout = self.session_timeout
        if timeout is None:
            return False
        gone = [member for member, seen in state.seen.items() if now - seen > timeout]
        for member in gone:
            del state.members[member], state.seen[member]
        return bool(gone)

    def _rebalance(self, state: _Group, partitions: Mapping[str, int]) -> None:
        state.generation += 1
        state.owned = range_assign(state.members, partitions)
        self.rebalances += 1

    @staticmethod
    def _assignment(group: str, state: _Group, member: str) -> GroupAssignment:
        return GroupAssignment(group, member, state.generation, state.owned.get(member, ()))
