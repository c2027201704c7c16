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

if TYPE_CHECKING:
    import tenacity

__all__ = ["ConnectionStats", "Delivery", "Will", "call_safely", "default_backoff"]

log = logging.getLogger("iotdata.mqtt")


def default_backoff() -> tenacity.wait.wait_base:
    """Full-jitter exponential backoff: a random wait up to 0.5 s, 1 s, 2 s, ... at most 30 s."""
    import tenacity  # noqa: PLC0415 (loaded with the first connection, not at import)

    return tenacity.wait_random_exponential(multiplier=0.5, max=30)


@attrs.frozen
class Will:
    """A message the broker publishes for us if we vanish without saying goodbye."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Delivery:
    """The fate of one published message: acknowledged, or lost with the connection."""

    __slots__ = ("_callbacks", "_done", "_error", "mid")

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Delivery], None]] = []

    def done(self) -> bool:
        return self._done.is_set()

    def error(self) -> BaseException | None:
        """None when acknowledged; the reason otherwise (only meaningful once done)."""
        return self._error

    def wait(self, timeout: float | None = None) -> None:
        """Block until acknowledged; raise the reason if it was not; TimeoutError on timeout."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"message {self.mid} not acknowledged within {timeout} s")
        if self._error is not None:
            raise self._error

    def add_done_callback(self, callback: Callable[[Delivery], None]) -> None:
        """Call ``callback(delivery)`` when done (at once if done), on the network thread."""
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
    acknowledged: int
    last_error: str | None


def call_safely(callback: Callable[[Delivery], None], delivery: Delivery) -> None:
    try:
        callback(delivery)
    except Exception:
        log.exception("delivery callback for message %s failed", delivery.mid)
