"""asyncio helpers shared by the layers.

:func:`wait_done` exists because ``asyncio.wait_for`` in Python 3.10 and 3.11 can swallow the
cancellation of its caller when the awaited future completes at the same moment (CPython issue
gh-86296): a cancelled worker would then go on running. Waiting on a future of our own never
loses a cancellation.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["wait_done"]


async def wait_done(future: asyncio.Future[Any], timeout: float | None) -> bool:
    """Wait until ``future`` is done or ``timeout`` seconds passed; whether it is done.

    ``future`` is left alone on timeout (not cancelled); a cancellation of the caller is
    raised, always.
    """
    if future.done():
        return True
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not woken.done():
            woken.set_result(None)

    handle = None if timeout is None else loop.call_later(max(0.0, timeout), wake)
    future.add_done_callback(wake)
    try:
        await woken
    finally:
        if handle is not None:
            handle.cancel()
        future.remove_done_callback(wake)
    return future.done()
