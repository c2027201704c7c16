"""The one place where starting an aiokafka client becomes an iotdata error."""

from __future__ import annotations

import contextlib
from typing import Any

from iotdata.errors import ConnectError

__all__ = ["start_client"]


async def start_client(client: Any, bootstrap: str) -> None:
    """``await client.start()``; when no bootstrap server answers, release the client and raise
    :class:`~iotdata.errors.ConnectError` naming the servers."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        await client.start()
    except KafkaError as exc:
        with contextlib.suppress(Exception):
            await (client.close() if hasattr(client, "close") else client.stop())
        raise ConnectError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
