"""The MQTT sink: alerts (and, if asked, aggregates) back to the devices, at least once.

Each record is one QoS 1 message, JSON (see :mod:`iotdata.sinks._json`), on a topic of its
device under the topic scheme's prefix::

    {prefix}/{device_id}/alerts        an Alert
    {prefix}/{device_id}/aggregates    a WindowAggregate (with aggregates=True)

A flush returns once the broker acknowledged every message (PUBACK). When the connection drops
first, the flush fails retriably and the retry publishes every message of it again, so a device
may see one twice: it deduplicates by the record's key (``detector`` and ``ts`` of an alert;
``metric``, ``window_start`` and the highest ``revision`` of an aggregate).

paho-mqtt is loaded when a sink opens, with :class:`iotdata.mqtt.MqttConnection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import attrs

from iotdata._checks import check_instance
from iotdata.errors import (
    ClosedError,
    ConnectError,
    InvalidInputError,
    IotDataError,
    NoSubscribersError,
)
from iotdata.model import validate_device_id
from iotdata.sinks import _settings as valid
from iotdata.sinks._errors import SinkError, SinkFatalError, SinkRetriableError
from iotdata.sinks._json import strict_json
from iotdata.sinks._records import Alert, PendingRecords, RecordKind, WindowAggregate
from iotdata.sinks._retry import RetryPolicy
from iotdata.sinks._writer import BufferedWriter, Opening

if TYPE_CHECKING:
    from iotdata.mqtt import Delivery, MqttConnection, MqttSettings, Topics

__all__ = ["MqttSink", "MqttWriter", "mqtt_messages"]

log = logging.getLogger("iotdata.sinks")

#: How often a flush looks whether a lost connection is back.
_CONNECTED_POLL = 0.05


def _mqtt(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    from iotdata.mqtt import MqttSettings  # noqa: PLC0415 (loaded with the sink's settings)

    if not isinstance(value, (str, MqttSettings)):
        raise InvalidInputError(f"mqtt must be a broker URL or MqttSettings, not {value!r:.60}")
    if isinstance(value, str):
        MqttSettings.from_url(value)  # refuses what is no MQTT URL now, not at open


def _topics(_self: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    from iotdata.mqtt import Topics  # noqa: PLC0415

    check_instance("topics", value, Topics, none=True)


@attrs.frozen(kw_only=True)
class MqttSink:
    """Alerts, and with ``aggregates=True`` window aggregates, to the devices over MQTT.

    ``mqtt`` is a broker URL (``mqtt://user:pw@host:1883``, ``mqtts://...``) or
    :class:`~iotdata.mqtt.MqttSettings`; ``topics`` the topic scheme (its prefix; default
    ``iotdata``). ``client_id`` defaults to a fresh ``iotdata-sink-...`` per writer (two
    connections with one id push each other off the broker). A flush waits ``connect_timeout``
    seconds at most for a lost connection to come back and ``ack_timeout`` seconds for the
    acknowledgements, then fails retriably; ``retry`` decides what happens next.

    A PUBACK "no matching subscribers" (0x10) means no device listens on that topic now (one
    offline without a persistent session): by default the message counts as delivered, as MQTT
    intends for such a device. ``require_subscriber=True`` makes such a flush fail retriably
    until someone subscribes. Other refusals (not authorized, ...) fail the flush, retriably or
    not as the broker's reason code says.
    """

    mqtt: str | MqttSettings = attrs.field(default="mqtt://127.0.0.1:1883", validator=_mqtt)
    topics: Topics | None = attrs.field(default=None, validator=_topics)
    aggregates: bool = attrs.field(default=False, validator=valid.flag)
    client_id: str | None = attrs.field(default=None, validator=valid.text)
    connect_timeout: float = attrs.field(default=10.0, validator=valid.seconds)
    ack_timeout: float = attrs.field(default=30.0, validator=valid.seconds)
    flush_rows: int = attrs.field(default=10_000, validator=valid.flush_rows)
    retry: RetryPolicy = attrs.field(factory=RetryPolicy, validator=valid.retry)
    require_subscriber: bool = attrs.field(default=False, validator=valid.flag)

    @property
    def prefix(self) -> str:
        """The topic prefix (``iotdata`` unless ``topics`` says otherwise)."""
        return "iotdata" if self.topics is None else self.topics.prefix

    def alerts_topic(self, device_id: str) -> str:
        """``{prefix}/{device_id}/alerts``: where a device listens for its alerts."""
        return f"{self.prefix}/{validate_device_id(device_id)}/alerts"

    def aggregates_topic(self, device_id: str) -> str:
        """``{prefix}/{device_id}/aggregates``."""
        return f"{self.prefix}/{validate_device_id(device_id)}/aggregates"

    def settings(self) -> MqttSettings:
        """The connection settings (``mqtt`` as settings, or the URL made into them)."""
        from iotdata.mqtt import MqttSettings  # noqa: PLC0415 (loaded when a sink opens)

        return MqttSettings.from_url(self.mqtt) if isinstance(self.mqtt, str) else self.mqtt

    def open(self) -> Opening[MqttWriter]:
        """Connect; await the result, or use it with ``async with``."""
        return Opening(self._open)

    async def _open(self) -> MqttWriter:
        from iotdata.mqtt import MqttConnection  # noqa: PLC0415 (paho-mqtt with it)

        settings = self.settings()
        client_id = self.client_id or f"iotdata-sink-{uuid.uuid4().hex[:12]}"
        writer = MqttWriter(self, MqttConnection.start(settings, client_id))
        try:
            await self.retry.call(writer.setup, what=f"connecting to {settings.url}")
        except BaseException:
            await writer.close()
            raise
        return writer


class MqttWriter(BufferedWriter):
    """The writer of an :class:`MqttSink`; made by ``MqttSink.open()``."""

    def __init__(self, sink: MqttSink, connection: MqttConnection) -> None:
        super().__init__(
            name=f"MqttSink({connection.settings.url})",
            flush_rows=sink.flush_rows,
            retry=sink.retry,
        )
        kinds: set[RecordKind] = {"alerts", "aggregates"} if sink.aggregates else {"alerts"}
        self.kinds = frozenset(kinds)
        self._sink = sink
        self._connection = connection

    async def setup(self) -> None:
        """Wait until connected (one attempt of ``connect_timeout`` seconds)."""
        await self._connected()

    async def persist(self, pending: PendingRecords) -> None:
        await self._connected()
        loop = asyncio.get_running_loop()
        acks: list[asyncio.Future[None]] = []
        try:
            for topic, payload in mqtt_messages(pending, self._sink):
                delivery = self._connection.publish(topic, payload, qos=1)
                acks.append(_acknowledgement(delivery, loop))
            if acks:
                await self._acknowledged(acks)
        except SinkError:
            raise
        except IotDataError as exc:
            raise _sink_error(exc) from exc
        finally:
            _forget(acks)

    async def _acknowledged(self, acks: list[asyncio.Future[None]]) -> None:
        """Wait for every PUBACK; raise the first failure, or a timeout."""
        done, waiting = await asyncio.wait(acks, timeout=self._sink.ack_timeout)
        if waiting:
            raise SinkRetriableError(
                f"{len(waiting)} of {len(acks)} messages not acknowledged by "
                f"{self._connection.settings.url} within {self._sink.ack_timeout} s"
            )
        errors = [error for future in done if (error := future.exception()) is not None]
        if not self._sink.require_subscriber:
            errors = [error for error in errors if not isinstance(error, NoSubscribersError)]
        if errors:
            log.warning("%s: %d of %d messages failed", self.name, len(errors), len(acks))
            error = errors[0]
            raise (error if isinstance(error, SinkError) else _sink_error(error)) from error

    async def release(self) -> None:
        await asyncio.to_thread(self._connection.close)

    async def _connected(self) -> None:
        """Return once connected; after ``connect_timeout`` seconds (or when the writer is
        closing) raise why not."""
        connection = self._connection
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._sink.connect_timeout
        while not connection.connected:
            if loop.time() >= deadline or self._closing.is_set():
                last = connection.statistics().last_error
                try:
                    connection.wait_connected(0)
                except ConnectError as exc:
                    if not exc.retriable:  # credentials, certificates
                        raise SinkFatalError(f"the MQTT broker refused us: {exc}") from exc
                    raise SinkRetriableError(
                        f"not connected to {connection.settings.url} within "
                        f"{self._sink.connect_timeout} s" + (f": {last}" if last else "")
                    ) from exc
                except IotDataError as exc:
                    raise _sink_error(exc) from exc
                return
            await asyncio.sleep(_CONNECTED_POLL)


def _acknowledgement(delivery: Delivery, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """A future of the loop that completes with ``delivery`` (which completes on paho's
    network thread)."""
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def done(finished: Delivery) -> None:
        with contextlib.suppress(RuntimeError):  # the loop was closed meanwhile
            loop.call_soon_threadsafe(settle, finished.error())

    delivery.add_done_callback(done)
    return future


def _forget(futures: list[asyncio.Future[None]]) -> None:
    """Retrieve the outcome of acknowledgements no one will await."""
    for future in futures:
        future.add_done_callback(lambda done: done.cancelled() or done.exception())


def _sink_error(exc: BaseException) -> SinkError:
    if isinstance(exc, InvalidInputError):  # larger than the broker's packet limit
        return SinkFatalError(f"the MQTT broker cannot take a message: {exc}")
    if isinstance(exc, ClosedError):
        return SinkRetriableError(f"the MQTT connection is closed: {exc}")
    kind = SinkRetriableError if getattr(exc, "retriable", False) else SinkFatalError
    return kind(f"MQTT: {exc}")


def mqtt_messages(pending: PendingRecords, sink: MqttSink) -> Iterator[tuple[str, bytes]]:
    """``(topic, payload)`` of each record of ``pending`` (no I/O)."""
    records: list[WindowAggregate | Alert] = []
    if sink.aggregates:
        records += pending.aggregates()
    records += pending.alerts()
    for record in records:
        if isinstance(record, WindowAggregate):
            yield sink.aggregates_topic(record.device_id), strict_json(record)
        else:
            yield sink.alerts_topic(record.device_id), strict_json(record)
