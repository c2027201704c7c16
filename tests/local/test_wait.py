"""Waiting for records from threads and from asyncio: woken by the append, no polling."""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest

from iotdata.errors import ClosedError
from iotdata.local import LocalLog


@pytest.fixture
def log() -> LocalLog:
    local = LocalLog()
    local.create_topic("t", 2)
    return local


def append_later(log: LocalLog, delay: float, partition: int = 0) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        log.append("t", b"k", b"v", partition=partition)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_returns_at_once_when_the_record_is_there(log: LocalLog) -> None:
    log.append("t", b"k", b"v", partition=0)
    assert log.wait("t", 0, 0, timeout=0)
    assert not log.wait("t", 0, 1, timeout=0)


def test_a_waiting_thread_wakes_on_the_append_without_spinning(log: LocalLog) -> None:
    cpu = time.process_time()
    started = time.monotonic()
    writer = append_later(log, 0.3)
    assert log.wait("t", 0, 0, timeout=10)
    woke = time.monotonic() - started
    writer.join()
    assert 0.25 <= woke < 5
    assert time.process_time() - cpu < 0.15  # blocked, not polling


def test_an_append_to_another_partition_does_not_satisfy_the_wait(log: LocalLog) -> None:
    writer = append_later(log, 0.05, partition=1)
    assert not log.wait("t", 0, 0, timeout=0.3)
    writer.join()


def test_wait_times_out(log: LocalLog) -> None:
    started = time.monotonic()
    assert not log.wait("t", 0, 0, timeout=0.2)
    assert time.monotonic() - started >= 0.2


def test_closing_the_log_wakes_waiters_with_closed_error(log: LocalLog) -> None:
    threading.Timer(0.1, log.close).start()
    with pytest.raises(ClosedError):
        log.wait("t", 0, 0, timeout=10)


def test_wait_async_leaves_the_loop_free_and_wakes_on_a_thread_append(log: LocalLog) -> None:
    async def scenario() -> tuple[bool, int, float]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        writer = append_later(log, 0.3)
        cpu = time.thread_time()
        got = await log.wait_async("t", 0, 0, timeout=10)
        used = time.thread_time() - cpu
        task.cancel()
        writer.join()
        return got, ticks, used

    got, ticks, used = asyncio.run(scenario())
    assert got
    assert ticks >= 5  # the loop ran other tasks while waiting
    assert used < 0.15  # and did not spin


def test_wait_async_times_out_and_is_woken_by_an_append_on_the_loop(log: LocalLog) -> None:
    async def scenario() -> tuple[bool, bool]:
        late = await log.wait_async("t", 1, 0, timeout=0.05)
        append = functools.partial(log.append, "t", b"k", b"v", partition=0)
        asyncio.get_running_loop().call_later(0.05, append)
        return late, await log.wait_async("t", 0, 0, timeout=5)

    late, woken = asyncio.run(scenario())
    assert not late
    assert woken


def test_many_waiters_on_threads_and_loops_all_wake(log: LocalLog) -> None:
    results: list[bool] = []
    lock = threading.Lock()

    def thread_waiter() -> None:
        got = log.wait("t", 1, 0, timeout=10)
        with lock:
            results.append(got)

    def loop_waiter() -> None:
        got = asyncio.run(log.wait_async("t", 1, 0, timeout=10))
        with lock:
            results.append(got)

    threads = [threading.Thread(target=thread_waiter) for _ in range(4)]
    threads += [threading.Thread(target=loop_waiter) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    log.append("t", b"k", b"v", partition=1)
    for thread in threads:
        thread.join(10)
    assert results == [True] * 8


def test_a_cancelled_async_waiter_leaves_nothing_behind(log: LocalLog) -> None:
    async def scenario() -> None:
        waiter = asyncio.ensure_future(log.wait_async("t", 0, 0))
        await asyncio.sleep(0.05)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(scenario())
    assert not log._waiting.signals._waiting  # unregistered
    log.append("t", b"k", b"v", partition=0)  # waking nobody, after the loop is gone
