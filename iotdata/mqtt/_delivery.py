"""The light half of the MQTT layer: values shared by the real and the in-process transport.

Nothing here imports paho-mqtt or tenacity, so ``import iotdata.device`` stays fast; the
connection modules load them when a connection starts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from iotdata._checks import check_bool, check_callable, check_int, check_timeout, validated
from iotdata.errors import InvalidInputError, WaitTimeoutError
from iotdata.mqtt._topics import check_topic

if TYPE_CHECKING:
    import tenacity

__all__ = [
    "ConnectionStats",
    "Delivery",
    "Will",
    "backoff_delay",
    "call_safely",
    "default_backoff",
    "refusal_backoff",
]

log = logging.getLogger("iotdata.mqtt")


def default_backoff() -> tenacity.wait.wait_base:
    """Full-jitter exponential backoff: a random wait up to 0.5 s, 1 s, 2 s, ... at most 30 s."""
    import tenacity  # noqa: PLC0415 (loaded with the first connection, not at import)

    return tenacity.wait_random_exponential(multiplier=0.5, max=30)


def refusal_backoff() -> tenacity.wait.wait_base:
    """Full-jitter exponential waits before publishing again what the broker did not take on
    (no matching subscribers, a quota): up to 0.1 s, 0.2 s, 0.4 s, ... at most 10 s."""
    import tenacity  # noqa: PLC0415

    return tenacity.wait_random_exponential(multiplier=0.1, max=10)


def backoff_delay(wait: tenacity.wait.wait_base, attempt: int) -> float:
    """The seconds a tenacity wait policy gives before attempt ``attempt + 1``.

    Raises:
        InvalidInputError: ``wait`` is not callable, or ``attempt`` is not an int >= 1.
    """
    import tenacity  # noqa: PLC0415

    check_callable("wait", wait)
    check_int("attempt", attempt, minimum=1)
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state))


def _will_topic(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    check_topic(value)


def _payload(_: object, attribute: attrs.Attribute[bytes], value: object) -> None:
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidInputError(f"payload must be bytes, got {type(value).__name__}")


def _qos(_: object, attribute: attrs.Attribute[int], value: object) -> None:
    if type(value) is not int or value not in (0, 1):
        raise InvalidInputError(f"qos must be 0 or 1, got {value!r:.60}")


@attrs.frozen
class Will:
    """A message the broker publishes for us if we vanish without saying goodbye.

    ``topic`` is a topic to publish to (no wildcards), ``payload`` bytes, ``qos`` 0 or 1.
    """

    topic: str = attrs.field(validator=_will_topic)
    payload: bytes = attrs.field(validator=_payload)
    qos: int = attrs.field(default=1, validator=_qos)
    retain: bool = attrs.field(default=True, validator=validated(check_bool))


class Delivery:
    """The fate of one published message: acknowledged, or lost with the connection."""

    __slots__ = ("_callbacks", "_done", "_error", "mid", "retain", "topic")

    def __init__(self, mid: int, topic: str = "", *, retain: bool = False) -> None:
        self.mid = mid
        self.topic = topic
        self.retain = retain
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Delivery], None]] = []

    def done(self) -> bool:
        return self._done.is_set()

    def error(self) -> BaseException | None:
        """None when delivered; the reason otherwise (only meaningful once done):
        :class:`~iotdata.ConnectionLostError`, or a
        :class:`~iotdata.errors.PublishRefusedError` (such as
        :class:`~iotdata.errors.NoSubscribersError`) for a PUBACK that is not delivery."""
        return self._error

    def wait(self, timeout: float | None = None) -> None:
        """Block until delivered; raise the reason if it was not;
        :class:`~iotdata.errors.WaitTimeoutError` (a ``TimeoutError``) on timeout."""
        if not self._done.wait(check_timeout("timeout", timeout)):
            raise WaitTimeoutError(f"message {self.mid} not acknowledged within {timeout} s")
        if self._error is not None:
            raise self._error

    def add_done_callback(self, callback: Callable[[Delivery], None]) -> None:
        """Call ``callback(delivery)`` when done (at once if done), on the network thread."""
        check_callable("callback", callback)
        if self._done.is_set():
            callback(self)
        else:
            self._callbacks.append(callback)
            if self._done.is_set() and callback in self._callbacks:  # finished meanwhile
                self._callbacks.remove(callback)
                callback(self)

    def _finish(self, error: BaseException | None) -> None:
        self._error = error
        self._done.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            call_safely(callback, self)


@attrs.frozen
class ConnectionStats:
    """A snapshot of a connection's life."""

    connected: bool
    connects: int
    disconnects: int
    published: int
    #: Messages the broker took on (PUBACK 0x00; written, at QoS 0).
    acknowledged: int
    last_error: str | None
    #: Messages the broker acknowledged without taking them on: no matching subscribers
    #: (0x10) or a refusal (0x80 and above).
    refused: int = 0


def call_safely(callback: Callable[[Delivery], None], delivery: Delivery) -> None:
    try:
        callback(delivery)
    except Exception:
        log.exception("delivery callback for message %s failed", delivery.mid)
