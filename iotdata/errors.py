"""The iotdata error tree.

Every error the library raises on purpose derives from :class:`IotDataError`. Subclasses say
what went wrong and whose fault it is; ``retriable`` tells a caller whether the same call may
succeed later without any change on its side. Third-party exceptions are translated into these
at one boundary per layer, with the original kept as ``__cause__``.

Every public entry point checks its arguments when it receives them: a wrong type, or a value
that makes no sense (a NaN or negative duration, a count that is not a whole number in range,
an empty path, a port outside 1..65535, limits that contradict each other), raises
:class:`InvalidInputError` naming the parameter, before anything is opened or sent.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ClosedError",
    "ConnectError",
    "ConnectionLostError",
    "DecodeError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "EdgeOperatorError",
    "EncodeError",
    "InvalidInputError",
    "IotDataError",
    "NoSubscribersError",
    "NotFoundError",
    "PublishRefusedError",
    "QueueClosedError",
    "QueueFullError",
    "QueueStorageError",
    "SubscribeRefusedError",
    "WaitTimeoutError",
]


class IotDataError(Exception):
    """Root of every error raised by iotdata."""

    #: True when repeating the same call later may succeed (a lost connection, a full buffer).
    retriable: bool = False


class InvalidInputError(IotDataError, ValueError):
    """The caller passed something iotdata cannot accept: a bad device id, an unsupported value.

    The fault is the caller's; repeating the call unchanged fails again.
    """


class NotFoundError(InvalidInputError, KeyError):
    """What was asked for by name is not there (a metric a batch has no column of).

    Also a ``KeyError``, so code that looked the name up in a mapping keeps working.
    """

    __str__ = BaseException.__str__  # the message as it is (KeyError would quote it)


class EncodeError(InvalidInputError):
    """A batch cannot be encoded: an unsupported value, or it exceeds the encoder's limits."""


class DecodeError(IotDataError, ValueError):
    """Bytes are not a valid iotdata frame, or exceed the decoder's limits.

    Raised for every kind of bad input to a decoder (truncation, corruption, wrong magic or
    version, unknown dictionary, decompression bombs, limits): a decoder never lets another
    exception escape for bad bytes.
    """


class ClosedError(IotDataError):
    """The object was closed (by you) and cannot be used any more."""


class ConnectError(IotDataError):
    """A server cannot be reached, or refused the connection. Retrying may succeed."""

    retriable = True


class AuthenticationError(ConnectError):
    """A server refused our credentials or certificate: retrying unchanged will not help."""

    retriable = False


class WaitTimeoutError(IotDataError, TimeoutError):
    """A wait with a timeout ended before what it waited for happened (a flush, an
    acknowledgement). Retriable; also a builtin ``TimeoutError``."""

    retriable = True


class ConnectionLostError(IotDataError):
    """The connection dropped while an operation was under way. Retrying may succeed."""

    retriable = True


class EdgeOperatorError(IotDataError):
    """An edge operator failed; the message names the step and the reading (cause in __cause__)."""


class QueueFullError(IotDataError):
    """The queue has no room for a put (``Overflow.RAISE``, or a ``BLOCK`` that timed out).

    Retriable: room comes back as the broker acknowledges readings.
    """

    retriable = True


class QueueClosedError(ClosedError):
    """The queue was closed (by its owner); blocked and later calls raise this."""


class QueueStorageError(IotDataError):
    """The queue's SQLite file cannot be used: in use by another queue, not a queue file,
    unreadable, or the disk is full. The SQLite error is the ``__cause__``."""


class DeliveryError(IotDataError):
    """Kafka did not take a record. ``retriable`` says whether sending it again may succeed;
    the Kafka client's error is the ``__cause__``."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class DeliveryTimeoutError(DeliveryError):
    """A record was not acknowledged within the producer's ``delivery_timeout``.

    Kafka may still write it later: sending it again can make a duplicate (harmless downstream,
    where ``(device_id, seq)`` is the key), never a loss.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class PublishRefusedError(IotDataError):
    """The MQTT broker answered a publish with a reason code that means it did not take the
    message on (MQTT 5 PUBACK reason codes, ``reason_code``). ``retriable`` says whether
    sending it again unchanged may succeed (a quota, no subscribers yet) or not (not authorized,
    an invalid topic): the device client keeps the readings queued either way."""

    def __init__(self, message: str, *, reason_code: int, retriable: bool) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.retriable = retriable


class NoSubscribersError(PublishRefusedError):
    """The broker accepted a message but no subscription matched it (MQTT 5 reason 0x10), so it
    dropped it: after a broker restart, shared subscriptions exist again only once their
    subscribers re-subscribed. Retriable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason_code=0x10, retriable=True)


class SubscribeRefusedError(IotDataError):
    """The broker refused a subscription (a SUBACK reason code of 0x80 or more), or granted a
    lower QoS than the one asked for: messages would not arrive, or arrive without redelivery."""

    def __init__(self, message: str, *, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code
