"""The one place where starting an aiokafka client becomes an iotdata error."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from iotdata.errors import ConnectError, InvalidInputError

__all__ = ["check_bootstrap", "start_client"]


def check_bootstrap(bootstrap: object) -> str:
    """``bootstrap`` if it is Kafka bootstrap servers, ``host[:port][,host[:port]...]`` (port
    9092 when left out, an IPv6 host in brackets); :class:`~iotdata.errors.InvalidInputError`
    saying so otherwise."""
    problem = None
    if not isinstance(bootstrap, str) or not bootstrap.strip():
        problem = "empty"
    else:
        for server in bootstrap.split(","):
            text = server.strip()
            if any(c.isspace() or c in "/@?#" for c in text):
                problem = f"{text!r} is not host:port"
                break
            if text and ":" not in text.strip("[]"):
                continue  # a host name alone: aiokafka's default port
            host, colon, port = text.rpartition(":")
            if not colon or not host.strip("[]") or not port.isdigit():
                problem = f"{server.strip()!r} is not host:port"
            elif not 0 < int(port) < 65536:
                problem = f"port {port} is out of range"
            if problem:
                break
    if problem is not None:
        raise InvalidInputError(
            f"Kafka bootstrap servers are host:port[,host:port...]: {problem} in {bootstrap!r}"
        )
    return bootstrap  # type: ignore[return-value]


async def start_client(client: Any, bootstrap: str) -> None:
    """``await client.start()``; when no bootstrap server answers, release the client and raise
    :class:`~iotdata.errors.ConnectError` naming the servers and, when aiokafka said why (a
    refused login, an unknown certificate, a closed connection), the reason. Malformed
    ``bootstrap`` is an :class:`~iotdata.errors.InvalidInputError` before any attempt."""
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    try:
        check_bootstrap(bootstrap)
    except InvalidInputError:
        with contextlib.suppress(Exception):
            await (client.close() if hasattr(client, "close") else client.stop())
        raise
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
