"""The retry policy writers apply at their edge: when a flush (or an open) fails retriably.

It is a value: a tenacity wait, a tenacity stop and the sleep to use, so a test can run it on
virtual time. Only errors with ``retriable = True`` are retried; a backpressure error's
``retry_after`` is a floor for the wait.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import tenacity

from iotdata._checks import check_callable
from iotdata.errors import IotDataError
from iotdata.sinks._errors import SinkBackpressureError

__all__ = ["RetryPolicy"]

log = logging.getLogger("iotdata.sinks")
T = TypeVar("T")


def _default_wait() -> tenacity.wait.wait_base:
    return tenacity.wait_random_exponential(multiplier=0.1, max=5.0)


def _default_stop() -> tenacity.stop.stop_base:
    return tenacity.stop_after_delay(60.0)


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, IotDataError) and exc.retriable


class _StopWhen(tenacity.stop.stop_base):
    def __init__(self, condition: Callable[[], bool]) -> None:
        self._condition = condition

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self._condition()


def _callable(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    check_callable(attribute.name, value)


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a writer retries retriable failures: full-jitter exponential waits (up to 0.1 s,
    0.2 s, 0.4 s, ... at most 5 s) for at most 60 s by default.

    ``wait`` and ``stop`` are tenacity policies (``tenacity.wait_fixed(1)``,
    ``tenacity.stop_after_attempt(5)``, ...); ``sleep`` is awaited between attempts (replace it
    to run on virtual time). When the policy gives up, the last error is raised as it is.
    """

    wait: tenacity.wait.wait_base = attrs.field(factory=_default_wait, validator=_callable)
    stop: tenacity.stop.stop_base = attrs.field(factory=_default_stop, validator=_callable)
    sleep: Callable[[float], Awaitable[None]] = attrs.field(
        default=asyncio.sleep, validator=_callable
    )

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that makes one attempt: every failure reaches the caller at once."""
        return cls(stop=tenacity.stop_after_attempt(1))

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        what: str = "operation",
        give_up: Callable[[], bool] = lambda: False,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        on_retry: Callable[[], None] = lambda: None,
    ) -> T:
        """Await ``operation()`` until it succeeds, fails for good, or the policy gives up.

        ``give_up`` is asked before each new attempt (a closing writer stops retrying);
        ``sleep`` replaces the policy's sleep (a writer's close cuts it short).
        """

        def before_sleep(state: tenacity.RetryCallState) -> None:
            on_retry()
            error = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "%s failed (attempt %d), retrying in %.2f s: %s",
                what,
                state.attempt_number,
                wait,
                error,
            )

        retrying = tenacity.AsyncRetrying(
            wait=self._wait,
            stop=tenacity.stop_any(self.stop, _StopWhen(give_up)),
            retry=tenacity.retry_if_exception(_is_retriable),
            sleep=sleep or self.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

        async def attempt() -> T:  # a coroutine function, as tenacity tells them apart
            return await operation()

        return await retrying(attempt)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = float(self.wait(state))
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, SinkBackpressureError):
            wait = max(wait, error.retry_after)
        return wait
