"""wait_done: waits for a future up to a timeout and never swallows a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from iotdata._aio import wait_done


def test_done_timeout_and_cancellation() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        assert await wait_done(future, 0.01) is False
        assert not future.cancelled()  # left alone on timeout
        loop.call_later(0.01, future.set_result, 1)
        assert await wait_done(future, 5) is True
        # cancelled at the very moment the future completes: the cancellation still wins
        other: asyncio.Future[int] = loop.create_future()
        waiting = asyncio.ensure_future(wait_done(other, 5))
        await asyncio.sleep(0)
        other.set_result(2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
