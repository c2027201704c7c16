"""Gateway: device telemetry from MQTT into Kafka, acknowledged only once Kafka has it.

The MQTT side is a persistent session (clean start off, a session expiry) on a shared
subscription, so N gateway processes split the devices' messages and nothing published while
one restarts is lost: the broker keeps its unacknowledged messages and sends them again. Each
message is routed (:class:`~iotdata.gateway.Router`), its original bytes sent to Kafka, and its
MQTT acknowledgement released in arrival order once Kafka confirmed it and every older message
(:class:`~iotdata.gateway.OrderedAcks`). MQTT 5's receive maximum bounds the messages in flight,
so a slow or stopped Kafka stops the intake instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import threading
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from iotdata._checks import check_instance, check_int, check_text, each, optional, validated
from iotdata.codec import Dictionary, Limits
from iotdata.errors import ClosedError, InvalidInputError
from iotdata.gateway._routing import KafkaTopics, OrderedAcks, Route, Router
from iotdata.kafka import PartitionedProducer, ProducerSettings
from iotdata.mqtt import MqttSettings, Topics

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from iotdata.kafka import Delivered
    from iotdata.mqtt import MqttConnection

__all__ = ["Gateway", "GatewaySettings", "GatewayStats"]

log = logging.getLogger("iotdata.gateway")

_LATENCY_SAMPLES = 10_000
_Item = tuple[str, bytes, int, int, int, float]  # topic, payload, mid, qos, generation, arrival


class _Pending(NamedTuple):
    """A message whose record Kafka has not confirmed yet."""

    route: Route
    arrival: float
    acks: OrderedAcks
    number: int  # arrival number in ``acks``; -1 for QoS 0 (nothing to acknowledge)
    qos: int
    generation: int


def _dictionaries(value: object) -> tuple[Dictionary, ...]:
    return tuple(each("dictionaries", value, check_instance, kind=Dictionary))


def _host(instance: object, attribute: attrs.Attribute[str], value: object) -> None:
    host = check_text(attribute.name, value)
    if any(c.isspace() or c in "/?#@" for c in host):
        raise InvalidInputError(f"{attribute.name} must be a host name or address: {host!r:.60}")


@attrs.frozen(kw_only=True)
class GatewaySettings:
    """Where a gateway reads and writes, and its bounds."""

    mqtt: MqttSettings = attrs.field(
        factory=lambda: MqttSettings.from_url("mqtt://127.0.0.1:1883"),
        validator=validated(check_instance, kind=MqttSettings),
    )
    kafka: ProducerSettings = attrs.field(
        factory=ProducerSettings, validator=validated(check_instance, kind=ProducerSettings)
    )
    topics: Topics = attrs.field(factory=Topics, validator=validated(check_instance, kind=Topics))
    kafka_topics: KafkaTopics = attrs.field(
        factory=KafkaTopics, validator=validated(check_instance, kind=KafkaTopics)
    )
    #: The shared-subscription group: gateways in one group split the messages. None
    #: subscribes without a share (one gateway), which a broker restores with the session after
    #: a restart (see docs/gateway.md).
    group: str | None = attrs.field(default="iotdata-gateway", validator=optional(check_text))
    #: MQTT client id; it names the persistent session, so keep it stable across restarts and
    #: unique per gateway process. Default: ``{group}-{host name}``.
    client_id: str | None = attrs.field(default=None, validator=optional(check_text))
    #: Seconds the broker keeps the session (and queues messages) while the gateway is away.
    session_expiry: int = attrs.field(
        default=3600, validator=validated(check_int, minimum=1, maximum=2**32 - 1)
    )
    #: Messages received and not yet acknowledged (MQTT 5 receive maximum: 1 to 65535).
    max_in_flight: int = attrs.field(
        default=1000, validator=validated(check_int, minimum=1, maximum=65535)
    )
    limits: Limits = attrs.field(factory=Limits, validator=validated(check_instance, kind=Limits))
    #: Dictionaries the devices encode with (frames naming another one are dead-lettered).
    dictionaries: tuple[Dictionary, ...] = attrs.field(default=(), converter=_dictionaries)
    #: Serve Prometheus text metrics on this port (None: no endpoint; 0: any free port).
    metrics_port: int | None = attrs.field(
        default=None, validator=optional(check_int, minimum=0, maximum=65535)
    )
    #: The address the metrics endpoint listens on (an IP address or host name).
    metrics_host: str = attrs.field(default="127.0.0.1", validator=_host)

    def __attrs_post_init__(self) -> None:
        if self.mqtt.protocol != 5:
            raise InvalidInputError(
                "the gateway needs MQTT 5 (shared subscriptions, session expiry, receive maximum)"
            )
        self.topics.all_telemetry(self.group)  # validates the group name

    def session_id(self) -> str:
        return self.client_id or f"{self.group or 'iotdata-gateway'}-{socket.gethostname()}"

    def subscriptions(self) -> tuple[str, str]:
        """The telemetry and the state filters this gateway subscribes to."""
        states = self.topics.all_states()
        if self.group is None:
            return self.topics.all_telemetry(), states
        return self.topics.all_telemetry(self.group), f"$share/{self.group}/{states}"


@attrs.frozen
class GatewayStats:
    """A snapshot of a gateway."""

    received: int
    forwarded: int
    forwarded_readings: int
    presence: int
    dead_lettered: int
    dead_letter_reasons: dict[str, int]
    #: Messages received and not yet acknowledged to the broker.
    in_flight: int
    acknowledged: int
    #: Seconds from MQTT arrival to Kafka acknowledgement, over recent messages.
    latency_p50: float | None
    latency_p99: float | None
    connected: bool
    reconnects: int


@attrs.define(eq=False)
class Gateway:
    """An MQTT-to-Kafka bridge. Build it with :meth:`start`; :meth:`close` when done.

    >>> async with await Gateway.start(GatewaySettings()) as gateway:  # doctest: +SKIP
    ...     await gateway.wait()
    """

    settings: GatewaySettings
    _producer: PartitionedProducer
    _router: Router
    _loop: asyncio.AbstractEventLoop
    _connection: MqttConnection | None = None
    _inbox: asyncio.Queue[_Item] = attrs.Factory(asyncio.Queue)
    _acks: OrderedAcks = attrs.Factory(OrderedAcks)
    _acks_generation: int = -1
    _task: asyncio.Task[None] | None = None
    _metrics: asyncio.Server | None = None
    _failure: BaseException | None = None
    _stopped: asyncio.Event = attrs.Factory(asyncio.Event)
    _started: threading.Event = attrs.Factory(threading.Event)
    _closed: bool = False
    _counts: Counter[str] = attrs.Factory(Counter)
    _reasons: Counter[str] = attrs.Factory(Counter)
    _latencies: deque[float] = attrs.Factory(lambda: deque(maxlen=_LATENCY_SAMPLES))

    @classmethod
    async def start(cls, settings: GatewaySettings | None = None) -> Gateway:
        """Connect to Kafka, then subscribe on MQTT; returns once both are under way.

        Raises :class:`~iotdata.errors.ConnectError` when Kafka cannot be reached (the MQTT
        connection retries in the background, like every iotdata connection), and
        :class:`~iotdata.InvalidInputError` for ``settings`` that are no GatewaySettings.
        """
        if settings is None:
            settings = GatewaySettings()
        check_instance("settings", settings, GatewaySettings)
        producer = await PartitionedProducer.start(settings.kafka)
        router = Router(
            topics=settings.topics,
            kafka=settings.kafka_topics,
            limits=settings.limits,
            dictionaries=settings.dictionaries,
        )
        gateway = cls(settings, producer, router, asyncio.get_running_loop())
        try:
            for topic in attrs.astuple(settings.kafka_topics):
                await producer.partitions(topic)  # fail now if a topic is missing
            await gateway._open()
        except BaseException:
            await gateway.close()
            raise
        return gateway

    async def _open(self) -> None:
        from iotdata.mqtt import MqttConnection  # noqa: PLC0415

        settings = self.settings
        if settings.metrics_port is not None:
            self._metrics = await asyncio.start_server(
                self._serve_metrics, settings.metrics_host, settings.metrics_port
            )
        self._task = self._loop.create_task(self._forward(), name="iotdata-gateway")
        self._connection = MqttConnection.start(
            settings.mqtt,
            settings.session_id(),
            clean_start=False,
            session_expiry=settings.session_expiry,
            manual_ack=True,
            receive_maximum=settings.max_in_flight,
            subscriptions=dict.fromkeys(settings.subscriptions(), self._arrive),
        )
        self._started.set()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """``(host, port)`` of the Prometheus endpoint, when it runs."""
        if self._metrics is None:
            return None
        host, port = self._metrics.sockets[0].getsockname()[:2]
        return host, port

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the MQTT side is connected and subscribed, so that from now on the
        broker keeps the devices' messages for this gateway's session (raises why not)."""
        if self._connection is None:
            raise ClosedError("the gateway is closed")
        self._connection.wait_subscribed(timeout)

    async def wait(self) -> None:
        """Run until :meth:`close`; raise the Kafka error if the gateway stopped on one."""
        await self._stopped.wait()
        if self._failure is not None:
            raise self._failure

    def statistics(self) -> GatewayStats:
        counts = self._counts
        latencies = sorted(self._latencies)
        connection = self._connection
        connection_stats = None if connection is None else connection.statistics()
        return GatewayStats(
            received=counts["received"],
            forwarded=counts["forwarded"],
            forwarded_readings=counts["readings"],
            presence=counts["presence"],
            dead_lettered=counts["dead-letter"],
            dead_letter_reasons=dict(self._reasons),
            in_flight=counts["received"] - counts["acknowledged"],
            acknowledged=counts["acknowledged"],
            latency_p50=_quantile(latencies, 0.5),
            latency_p99=_quantile(latencies, 0.99),
            connected=connection is not None and connection.connected,
            reconnects=max(0, connection_stats.connects - 1) if connection_stats else 0,
        )

    async def close(self, timeout: float = 30.0) -> None:
        """Stop taking messages, let Kafka confirm those under way (their acks go out), then
        disconnect. Messages not yet forwarded stay unacknowledged: the broker keeps them in
        the session for the next start. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            with contextlib.suppress(Exception):
                await self._producer.flush(timeout)
            if self._metrics is not None:
                self._metrics.close()
        finally:
            if self._connection is not None:
                await asyncio.to_thread(self._connection.close)
            await self._producer.close(timeout=0)
            self._stopped.set()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    def _arrive(self, message: paho.MQTTMessage) -> None:
        """On the MQTT network thread: hand the message to the event loop, in order."""
        self._started.wait(10.0)  # a resumed session's messages can beat start() returning
        connection = self._connection
        generation = -1 if connection is None else connection.generation
        payload = bytes(message.payload)  # bytes already: no copy
        item = (message.topic, payload, message.mid, message.qos, generation)
        self._loop.call_soon_threadsafe(self._inbox.put_nowait, (*item, time.monotonic()))

    async def _forward(self) -> None:
        producer = self._producer
        router = self._router
        counts = self._counts
        origin = (("gateway", self.settings.session_id().encode()),)
        try:
            while True:
                topic, payload, mid, qos, generation, arrival = await self._inbox.get()
                counts["received"] += 1
                if generation != self._acks_generation:  # a new connection: fresh ack order
                    self._acks, self._acks_generation = OrderedAcks(), generation
                acks = self._acks
                number = acks.arrive(mid) if qos else -1
                route = router.route(topic, payload)
                delivery = await producer.send(
                    route.topic, route.key or b"", payload, headers=route.headers + origin
                )
                pending = _Pending(route, arrival, acks, number, qos, generation)
                delivery.add_done_callback(functools.partial(self._delivered, pending))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a closed or failed producer: stop, acking nothing more
            self._stop(exc)

    def _delivered(self, pending: _Pending, delivery: asyncio.Future[Delivered]) -> None:
        route, arrival, acks, number, qos, generation = pending
        if delivery.cancelled() or delivery.exception() is not None:
            if not self._closed:
                self._stop(delivery.exception() or ClosedError("delivery cancelled"))
            return
        self._latencies.append(time.monotonic() - arrival)
        counts = self._counts
        counts[route.kind] += 1
        if route.kind == "telemetry":
            counts["forwarded"] += 1
            counts["readings"] += route.readings
        elif route.reason is not None:
            self._reasons[route.reason] += 1
            log.warning("dead-lettered a message: %s", route.reason)
        if number < 0:
            counts["acknowledged"] += 1
            return
        connection = self._connection
        for ready in acks.complete(number):
            counts["acknowledged"] += 1
            if connection is not None:
                connection.ack(ready, qos, generation)

    def _stop(self, error: BaseException) -> None:
        if self._failure is None and not self._closed:
            log.error("gateway stopping: %s", error)
            self._failure = error
            self._stopped.set()

    async def _serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            body = prometheus_text(self.statistics()).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def prometheus_text(stats: GatewayStats) -> str:
    """The statistics in Prometheus' text exposition format."""
    check_instance("stats", stats, GatewayStats)
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        lines.append(f"# HELP iotdata_gateway_{name} {help_text}")
        lines.append(f"# TYPE iotdata_gateway_{name} {kind}")
        lines.extend(f"iotdata_gateway_{name}{labels} {value}" for labels, value in samples)

    metric("received_total", "counter", "MQTT messages received.", [("", stats.received)])
    metric("forwarded_total", "counter", "Telemetry messages in Kafka.", [("", stats.forwarded)])
    metric(
        "forwarded_readings_total",
        "counter",
        "Readings in forwarded telemetry.",
        [("", stats.forwarded_readings)],
    )
    metric("presence_total", "counter", "Presence messages forwarded.", [("", stats.presence)])
    reasons = [(f'{{reason="{r}"}}', n) for r, n in sorted(stats.dead_letter_reasons.items())]
    metric("dead_letters_total", "counter", "Messages sent to the dead-letter topic.", reasons)
    metric(
        "in_flight", "gauge", "Messages received, not yet acknowledged.", [("", stats.in_flight)]
    )
    latency = [
        ('{quantile="0.5"}', stats.latency_p50),
        ('{quantile="0.99"}', stats.latency_p99),
    ]
    metric(
        "kafka_latency_seconds",
        "summary",
        "MQTT arrival to Kafka acknowledgement, recent messages.",
        [(labels, "NaN" if value is None else f"{value:.6f}") for labels, value in latency],
    )
    metric(
        "mqtt_connected", "gauge", "1 when connected to the broker.", [("", int(stats.connected))]
    )
    metric("mqtt_reconnects_total", "counter", "MQTT reconnections.", [("", stats.reconnects)])
    return "\n".join(lines) + "\n"
