"""Waiting without polling: one-shot waiters, woken by the append or rebalance they wait for.

A waiter is registered under keys (a :class:`TopicPartition`, or ``("group", name)``); an
append to a partition or a change of a group wakes, once, every waiter under its key. A thread
waits on a :class:`threading.Event`; a coroutine on a future of its own event loop, resolved
with ``call_soon_threadsafe`` so that a writer on any thread wakes it without blocking it.
:class:`Waiting` is the one loop both kinds of waiter run: under the log's lock, check the
condition and register; sleep outside it; unregister; again until ready, closed or late.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterable

import attrs

from iotdata._aio import wait_done

__all__ = ["AsyncWaiter", "Signals", "ThreadWaiter", "Waiter", "Waiting"]


@attrs.define(eq=False)
class ThreadWaiter:
    event: threading.Event = attrs.Factory(threading.Event)

    def wake(self) -> None:
        self.event.set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@attrs.define(eq=False)
class AsyncWaiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None] = attrs.field(init=False)
    woken: bool = False

    def __attrs_post_init__(self) -> None:
        self.future = self.loop.create_future()

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
                self.loop.call_soon_threadsafe(_resolve, self.future)


Waiter = ThreadWaiter | AsyncWaiter


@attrs.define
class Signals:
    """Who waits for what."""

    _waiting: dict[Hashable, set[Waiter]] = attrs.Factory(dict)

    def add(self, waiter: Waiter, keys: Iterable[Hashable]) -> None:
        for key in keys:
            self._waiting.setdefault(key, set()).add(waiter)

    def remove(self, waiter: Waiter, keys: Iterable[Hashable]) -> None:
        for key in keys:
            waiters = self._waiting.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiting[key]

    def notify(self, key: Hashable) -> None:
        """Wake every waiter under ``key`` (they re-register if they still need to wait)."""
        waiters = self._waiting.pop(key, None)
        if waiters:
            for waiter in waiters:
                waiter.wake()

    def notify_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiters in waiting.values():
            for waiter in waiters:
                waiter.wake()


Keys = list[Hashable]


@attrs.define(eq=False)
class Waiting:
    """Waits on the conditions of one log, whose lock ``lock`` is and whose ``check_open``
    raises once it is closed (which wakes every waiter)."""

    lock: threading.Lock
    check_open: Callable[[], None]
    signals: Signals = attrs.Factory(Signals)

    def block(self, keys: Keys, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Block this thread until ``ready()``; False after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiter = ThreadWaiter()
            done = self._arm(waiter, keys, ready, deadline)
            if done is not None:
                return done
            try:
                waiter.event.wait(None if deadline is None else deadline - time.monotonic())
            finally:
                self._disarm(waiter, keys)

    async def block_async(
        self, keys: Keys, ready: Callable[[], bool], timeout: float | None
    ) -> bool:
        """:meth:`block` for a coroutine, leaving the event loop free."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waiter = AsyncWaiter(loop)
            done = self._arm(waiter, keys, ready, deadline)
            if done is not None:
                return done
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                await wait_done(waiter.future, remaining)
            finally:
                self._disarm(waiter, keys)

    def _arm(
        self, waiter: Waiter, keys: Keys, ready: Callable[[], bool], deadline: float | None
    ) -> bool | None:
        """True when ready, False past the deadline, None once ``waiter`` is registered."""
        with self.lock:
            self.check_open()
            if ready():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self.signals.add(waiter, keys)
            return None

    def _disarm(self, waiter: Waiter, keys: Keys) -> None:
        with self.lock:
            self.signals.remove(waiter, keys)
