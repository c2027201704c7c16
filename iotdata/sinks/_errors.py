"""The errors a sink raises, each saying whose fault it is and whether retrying may help.

They derive from :class:`iotdata.IotDataError` and sit beside the library's error tree: a
caller that catches :class:`SinkError` sees every failure of a sink, and a retry policy looks
only at ``retriable`` (and at ``retry_after`` for backpressure).
"""

from __future__ import annotations

from iotdata.errors import ClosedError, InvalidInputError, IotDataError

__all__ = [
    "BadRowError",
    "MissingDependencyError",
    "SinkBackpressureError",
    "SinkClosedError",
    "SinkError",
    "SinkFatalError",
    "SinkRetriableError",
]


class SinkError(IotDataError):
    """Root of the errors raised by sinks and their writers."""


class SinkRetriableError(SinkError):
    """The storage failed for a reason that may go away: a lost connection, a restarting
    server, a locked database file, a network file system hiccup.

    The records of the failed flush stay buffered; flushing again writes them again.
    """

    retriable = True


class SinkBackpressureError(SinkRetriableError):
    """The storage asks us to slow down (too many connections, out of resources, busy).

    ``retry_after`` is the number of seconds to wait at least before the next attempt; retry
    policies honour it.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkFatalError(SinkError):
    """The storage refused the records for a reason retrying will not fix: bad credentials, a
    missing table, a schema that does not match, no permission. Someone must change something.

    The records of the failed flush stay buffered, so a flush after the fix still writes them.
    """


class MissingDependencyError(SinkFatalError, ImportError):
    """An optional driver is not installed; the message names the ``pip install`` to run."""


class SinkClosedError(SinkError, ClosedError):
    """The writer was closed (by you): ``write`` and ``flush`` are refused."""


class BadRowError(SinkError, InvalidInputError):
    """A record cannot be stored: wrong type, missing key, or a value its column cannot hold.

    The message names the record (its index in the ``write`` call and its key). Nothing from
    that ``write`` call was buffered, so nothing of it is ever written; the writer stays usable.
    The stream runtime takes the bad record out and hands it to the route's dead letters (see
    docs/stream.md).
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        record: object = None,
        problem: str = "invalid",
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        #: Position of the bad record in the records given to ``write`` (None: the argument).
        self.index = index
        #: The bad record, or a :class:`~iotdata.Reading` made for the bad value of a batch.
        self.record = record
        #: What is wrong, in one word: ``nan``, ``nul``, ``unicode``, ``time-range``,
        #: ``int-range``, ``kind`` (a kind of record the sink does not store) or ``invalid``.
        self.problem = problem
        #: Why, without naming the record (the message does both).
        self.reason = message if reason is None else reason
