"""Errors of the stream operators: a step that failed, and a snapshot that cannot be restored."""

from __future__ import annotations

from iotdata.errors import IotDataError

__all__ = ["CheckpointTooLargeError", "SnapshotError", "StreamOperatorError"]


class StreamOperatorError(IotDataError):
    """A step of a stream raised: ``step`` names it (``"2.dedup"`` inside a chain), the message
    says which batch it was working on, and ``__cause__`` holds the original exception."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {message}")
        self.step = step


class SnapshotError(IotDataError, ValueError):
    """Operator state cannot be restored from these bytes: they are not a snapshot, come from a
    newer format version, were made by a different kind of operator, or by one configured
    differently (another window, key or set of aggregations). Retrying unchanged fails again."""


class CheckpointTooLargeError(IotDataError):
    """A partition's state is too large for its checkpoint store (a Kafka record has a size
    limit). Retrying unchanged fails again: spread the keys over more partitions, or bound the
    state of the operators."""
