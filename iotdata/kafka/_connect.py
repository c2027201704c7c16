"""The one place where starting an aiokafka client becomes an iotdata error."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from iotdata.errors import ConnectError

__all__ = ["start_client"]


async def start_client(client: Any, bootstrap: str) -> None:
    """``await client.start()``; when no bootstrap server answers, release the client and raise
    :class:`~iotdata.errors.ConnectError` naming the servers and, when aiokafka said why (a
    refused login, an unknown certificate, a closed connection), the reason."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    with _reasons() as reasons:
        try:
            await client.start()
        except KafkaError as exc:
            with contextlib.suppress(Exception):
                await (client.close() if hasattr(client, "close") else client.stop())
            why = f" ({'; '.join(list(dict.fromkeys(reasons))[:4])})" if reasons else ""
            raise ConnectError(f"cannot reach Kafka at {bootstrap}: {exc}{why}") from exc


class _Collect(logging.Handler):
    """aiokafka logs why a bootstrap server failed and raises only "Unable to bootstrap"."""

    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        message = record.msg
        if isinstance(message, str) and message.startswith("Unable connect to"):
            args = record.args
            if isinstance(args, tuple) and len(args) == 3:  # host, port, error
                self.into.append(f"{args[0]}:{args[1]}: {args[2]}")
            else:
                self.into.append(record.getMessage())


@contextlib.contextmanager
def _reasons() -> Iterator[list[str]]:
    found: list[str] = []
    handler = _Collect(found)
    logger = logging.getLogger("aiokafka")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
