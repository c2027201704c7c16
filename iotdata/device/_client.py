"""DeviceClient: telemetry from one device that never loses an accepted reading.

``send`` validates a reading, passes it through the edge operators and puts what comes out
into the durable queue, committed to disk before ``send`` returns. A sender thread takes
batches from the queue (by size, or after ``linger`` seconds), encodes them with the codec,
splits them below the broker's packet limit and publishes them at QoS 1. A batch leaves the
queue when the broker acknowledged all of its messages; when the connection drops first it
goes back and is sent again after reconnecting. So a reading can arrive twice, never zero
times; ``(device_id, seq)`` tells the copies apart downstream.

A PUBACK is delivery only with reason 0x00. When the broker answers "no matching subscribers"
(MQTT 5 reason 0x10: it dropped the message, as Mosquitto does after a restart until the
gateways' shared subscriptions are back) or refuses the message (0x80 and above: not
authorized, quota exceeded, ...), the readings stay queued and are sent again after a
full-jitter backoff (``resend_backoff``), counted in :attr:`DeviceStats.refused`. Under MQTT
3.1.1 there are no reason codes: see docs/device.md for what that can cost.

One implementation serves plain scripts and asyncio: the blocking methods have ``a``-prefixed
twins that run them in a worker thread, so an event loop never waits on disk or network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from iotdata import codec
from iotdata._checks import check_bool, check_callable, check_instance, check_timeout
from iotdata.device._control import CommandHandler, ConfigHandler, Control, Reply
from iotdata.device._operators import EdgeOperator, EdgeReading
from iotdata.device._queue import Lease, QueueConfig, QueueStats, ReadingQueue
from iotdata.errors import (
    ClosedError,
    ConnectionLostError,
    InvalidInputError,
    NoSubscribersError,
    PublishRefusedError,
    WaitTimeoutError,
)
from iotdata.model import (
    MAX_NAME_LENGTH,
    MAX_STRING_LENGTH,
    Batch,
    Column,
    Value,
    validate_device_id,
)
from iotdata.mqtt import (
    Delivery,
    MqttSettings,
    Topics,
    Will,
    backoff_delay,
    refusal_backoff,
)

if TYPE_CHECKING:
    # The transports load paho-mqtt (or the in-process broker) when a client connects.
    import paho.mqtt.client as paho
    import tenacity

    from iotdata.mqtt import LocalBroker, LocalConnection, MqttConnection

__all__ = ["DeviceClient", "DeviceStats"]

log = logging.getLogger("iotdata.device")

_T = TypeVar("_T")


@attrs.frozen
class DeviceStats:
    """A snapshot of a device client."""

    #: Readings stored in the queue, in flight included.
    queued: int
    #: Readings published and not yet acknowledged.
    in_flight: int
    #: Readings the broker acknowledged since the client started.
    acknowledged: int
    #: Readings dropped by the queue's overflow policy or its max_age.
    dropped: int
    #: Readings the edge operators held back or dropped.
    edge_dropped: int
    #: Connections after the first one.
    reconnects: int
    connected: bool
    last_error: str | None
    #: Telemetry messages the broker acknowledged without taking them on (no matching
    #: subscribers, or a refusal such as not authorized); their readings were kept and resent.
    refused: int = 0
    #: Readings set aside because one alone is over the broker's packet limit
    #: (:meth:`~iotdata.device.ReadingQueue.quarantined` lists them).
    quarantined: int = 0
    #: The last refusal, e.g. "no matching subscribers (0x10)", if any.
    last_refusal: str | None = None


#: What DeviceClient.connect takes besides the device id, the broker and the queue.
_OPTIONS = frozenset(
    {
        "topics",
        "edge",
        "dictionary",
        "batch_size",
        "linger",
        "max_in_flight",
        "clock",
        "require_subscriber",
        "resend_backoff",
        "backoff",
    }
)


def _now_us() -> int:
    return time.time_ns() // 1000


def _check_reading(metric: str, value: object, ts: int) -> tuple[str, int, Value]:
    """Validate one reading as a batch would, at the call that receives it."""
    column = Column(metric, (ts,), (value,), (0,))
    return metric, ts, column.values[0]


@attrs.define
class _Sending:
    """One lease on its way: acked when every message of it is, released on any failure."""

    lease: Lease
    waiting: int
    failed: bool = False
    #: The first refusal among its messages (a PUBACK that is not delivery), if any.
    refusal: PublishRefusedError | None = None


def _worst_frame(device_id: str) -> int:
    """A bound on the frame of one reading: the longest metric name and string value in the
    widest characters, the device id, and room for the envelope, ts, seq and msgpack headers
    (the codec never stores a body larger than its uncompressed form)."""
    return 4 * (MAX_NAME_LENGTH + MAX_STRING_LENGTH) + len(device_id.encode()) + 128


@attrs.define
class DeviceClient:
    """The client of one device. Build it with :meth:`connect`; close it (or use ``with``).

    >>> client = DeviceClient.connect("pump-7", "mqtt://127.0.0.1:1883",
    ...                               queue=QueueConfig(path="pump-7.queue"))  # doctest: +SKIP
    >>> client.send("temp", 21.5)  # doctest: +SKIP
    """

    device_id: str
    settings: MqttSettings | LocalBroker
    queue: ReadingQueue
    topics: Topics = attrs.field(factory=Topics)
    edge: EdgeOperator | None = None
    dictionary: codec.Dictionary | None = None
    batch_size: int = 1000
    linger: float = 0.5
    max_in_flight: int = 8
    clock: Callable[[], int] = _now_us
    #: Keep telemetry acknowledged with "no matching subscribers" (0x10) queued and resend it
    #: (the default). False accepts 0x10 as delivery: only for a broker that consumes telemetry
    #: without MQTT subscriptions (a rules engine) and still answers 0x10.
    require_subscriber: bool = True
    #: A tenacity wait: how long to hold back after the broker refused telemetry.
    resend_backoff: tenacity.wait.wait_base | None = None
    _connection: MqttConnection | LocalConnection | None = attrs.field(default=None, init=False)
    _encoder: codec.Encoder = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _edge_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _wake: threading.Condition = attrs.field(init=False)
    _sending: dict[int, _Sending] = attrs.field(factory=dict, init=False)
    _acknowledged: int = attrs.field(default=0, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _flushing: int = attrs.field(default=0, init=False)
    _sender: threading.Thread | None = attrs.field(default=None, init=False)
    _started: threading.Event = attrs.field(factory=threading.Event, init=False)
    _control: Control = attrs.field(init=False)
    #: Refusals in a row (reset by a delivery), what the resend backoff grows with.
    _refusals: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _last_refusal: str | None = attrs.field(default=None, init=False)
    #: No new lease goes out before this (time.monotonic()), after a refusal.
    _hold_until: float = attrs.field(default=0.0, init=False)
    #: Payload room a single reading may need at most; a smaller limit checks each reading.
    _worst_frame: int = attrs.field(default=0, init=False)
    #: What a telemetry message takes besides its frame: the topic, and headers.
    _topic_room: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        validate_device_id(self.device_id)
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if type(self.linger) not in (int, float) or not 0 <= self.linger < math.inf:
            raise InvalidInputError(f"linger must be a finite number >= 0, got {self.linger!r}")
        if type(self.max_in_flight) is not int or self.max_in_flight < 1:
            raise InvalidInputError(
                f"max_in_flight must be an int >= 1, got {self.max_in_flight!r}"
            )
        if not callable(self.clock):
            raise InvalidInputError(f"clock must be callable, got {self.clock!r}")
        if self.dictionary is not None and not isinstance(self.dictionary, codec.Dictionary):
            raise InvalidInputError(f"dictionary must be a codec.Dictionary: {self.dictionary!r}")
        if self.edge is not None and not callable(getattr(self.edge, "process", None)):
            raise InvalidInputError(f"edge must be an edge operator, got {self.edge!r}")
        if not isinstance(self.topics, Topics):
            raise InvalidInputError(f"topics must be a Topics, got {self.topics!r}")
        _link(self.settings)
        check_instance("queue", self.queue, ReadingQueue)
        check_bool("require_subscriber", self.require_subscriber)
        check_callable("resend_backoff", self.resend_backoff, none=True)
        self._encoder = codec.Encoder(dictionary=self.dictionary)
        self._wake = threading.Condition(self._lock)
        self._control = Control(self.device_id, self.topics)
        self._worst_frame = _worst_frame(self.device_id)
        self._topic_room = len(self.topics.telemetry(self.device_id).encode()) + 32

    # ------------------------------------------------------------------ life cycle

    @classmethod
    def connect(
        cls,
        device_id: str,
        mqtt: str | MqttSettings | LocalBroker,
        *,
        queue: QueueConfig | None = None,
        **options: Any,
    ) -> DeviceClient:
        """Open the queue, start connecting (in the background) and start sending.

        ``mqtt`` is a URL (``mqtt://host:1883``, ``mqtts://...``), :class:`MqttSettings`, or
        an in-process :class:`~iotdata.mqtt.LocalBroker` (no network: the embedded default).
        ``queue`` says where the durable queue lives (memory-only when ``path`` is None).
        Other options: ``topics``, ``edge``, ``dictionary``, ``batch_size``, ``linger``,
        ``max_in_flight``, and ``backoff`` (a tenacity wait) for the reconnect loop.
        """
        settings = _link(mqtt)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise InvalidInputError(
                f"unknown DeviceClient option(s) {sorted(unknown)}; known: {sorted(_OPTIONS)}"
            )
        backoff = check_callable("backoff", options.pop("backoff", None), none=True)
        check_instance("queue", queue, QueueConfig, none=True)
        store = ReadingQueue.open(validate_device_id(device_id), queue or QueueConfig())
        try:
            client = cls(device_id, settings, store, **options)
            client._start(backoff)
        except BaseException:
            store.close()
            raise
        return client

    def _start(self, backoff: Any) -> None:
        will = Will(self.topics.state(self.device_id), _state(online=False), retain=True)
        events = {"on_connect": self._on_connect, "on_disconnect": self._on_disconnect}
        if not isinstance(self.settings, MqttSettings):
            self._connection = self.settings.connect(
                self.device_id,
                will=will,
                on_connect=self._on_connect,
                on_disconnect=self._on_disconnect,
            )
        else:
            from iotdata.mqtt._connection import MqttConnection  # noqa: PLC0415

            extra = {"backoff": backoff} if backoff is not None else {}
            self._connection = MqttConnection.start(
                self.settings, self.device_id, will=will, **events, **extra
            )
        self._started.set()
        self._connection.subscribe(self.topics.commands(self.device_id), self._on_command)
        self._connection.subscribe(self.topics.config_desired(self.device_id), self._on_config)
        self._sender = threading.Thread(
            target=self._send_loop, name=f"iotdata-device-{self.device_id}", daemon=True
        )
        self._sender.start()

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected; raises why not (``ConnectError``, ``AuthenticationError``)."""
        self._live_connection().wait_connected(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush the edge operators, send what can be sent within ``timeout`` seconds (None:
        until everything was sent), say goodbye.

        Unsent readings stay in a durable queue for the next run. Safe to call twice.
        """
        with self._lock:
            if self._closing:
                return
        check_timeout("timeout", timeout)
        try:
            self._put(self._edge_call(lambda edge: edge.flush()))
            if self.connected:
                self.flush(timeout)
        except WaitTimeoutError:
            log.warning("closing %s with readings still queued", self.device_id)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify_all()
        connection = self._connection
        if connection is not None and connection.connected:
            try:
                state = self.topics.state(self.device_id)
                connection.publish(state, _state(online=False), retain=True).wait(2)
            except Exception:  # best effort: the last will covers a missed goodbye
                log.debug("offline state not acknowledged", exc_info=True)
        if self._sender is not None:
            self._sender.join(5)
        if connection is not None:
            connection.close()
        self.queue.close()
        self._closed = True

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> DeviceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ sending

    def send(self, metric: str, value: Value, ts: int | None = None) -> int | None:
        """Accept one reading: on disk (or in memory) before this returns.

        ``ts`` is in microseconds since the epoch (now by default). Returns the seq of the first
        reading the edge operators passed on, or None when they held it back.
        """
        moment = self.clock() if ts is None else ts
        if self.edge is None:  # the fast path: the queue validates and journals one reading
            if self._closed:
                raise ClosedError(f"device client {self.device_id} is closed")
            if self._worst_frame > self._payload_room():
                self._check_fits(_check_reading(metric, value, moment))
            return self.queue.append(metric, moment, value)  # the sender polls for it
        return self._put(self._edge_process(_check_reading(metric, value, moment)))

    def send_many(
        self, readings: Iterable[tuple[str, Value] | tuple[str, Value, int]]
    ) -> int | None:
        """Accept several ``(metric, value[, ts])`` readings in one durable write."""
        now = self.clock()
        out: list[tuple[str, int, Value]] = []
        for reading in _readings(readings):
            if not isinstance(reading, (tuple, list)) or len(reading) not in (2, 3):
                raise InvalidInputError(f"a reading is (metric, value[, ts]), not {reading!r}")
            ts = reading[2] if len(reading) > 2 else now
            checked = _check_reading(reading[0], reading[1], ts)
            out.extend(self._edge_process(checked))
        return self._put(out)

    def _edge_process(self, reading: tuple[str, int, Value]) -> list[tuple[str, int, Value]]:
        if self.edge is None:
            return [reading]
        with self._edge_lock:
            return [tuple(r) for r in self.edge.process(EdgeReading(*reading))]  # type: ignore[misc]

    def _edge_call(self, call: Callable[[EdgeOperator], Any]) -> list[tuple[str, int, Value]]:
        """Run ``tick`` or ``flush`` of the edge operators, if any."""
        if self.edge is None:
            return []
        with self._edge_lock:
            return [tuple(r) for r in call(self.edge)]

    def _put(self, readings: list[tuple[str, int, Value]]) -> int | None:
        if self._closed:
            raise ClosedError(f"device client {self.device_id} is closed")
        if not readings:
            return None
        if self._worst_frame > self._payload_room():
            for reading in readings:
                self._check_fits(reading)
        first = self.queue.put(readings)
        self._notify_sender()
        return first

    def _payload_room(self) -> int:
        """Bytes a telemetry frame may take: the packet limit less the topic and headers."""
        connection = self._connection
        limit = (
            connection.max_packet_size
            if connection is not None
            else getattr(self.settings, "max_packet_size", 0)
        )
        return int(limit) - self._topic_room

    def _check_fits(self, reading: tuple[str, int, Value]) -> None:
        """Refuse a reading that alone would encode over the packet limit: it could never be
        sent (only a small ``max_packet_size`` makes this possible)."""
        metric, ts, value = reading
        frame = self._encoder.encode(Batch(self.device_id, [Column(metric, (ts,), (value,), (0,))]))
        room = self._payload_room()
        if len(frame) > room:
            raise InvalidInputError(
                f"a reading of {metric!r} encodes to {len(frame)} bytes, over the "
                f"{room} a message may carry under the packet limit"
            )

    def _notify_sender(self) -> None:
        """Wake the sender when it may have to act now (a full batch, or a flush)."""
        with self._lock:
            self._wake.notify_all()

    def tick(self, now: int | None = None) -> int | None:
        """Let time-driven edge operators emit (heartbeats, closed windows); call periodically.

        ``now`` is in microseconds since the epoch (the client's clock by default)."""
        if now is not None and type(now) is not int:
            raise InvalidInputError(f"now must be an int (microseconds) or None: {now!r:.60}")
        moment = self.clock() if now is None else now
        return self._put(self._edge_call(lambda edge: edge.tick(moment)))

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued reading was acknowledged, at most ``timeout`` seconds (None:
        for ever). Raises :class:`~iotdata.errors.WaitTimeoutError` (a ``TimeoutError``) if not
        in time."""
        wait = check_timeout("timeout", timeout)
        deadline = None if wait is None else time.monotonic() + wait
        with self._lock:
            self._flushing += 1
            self._wake.notify_all()
        try:
            while self.queue.statistics().queued:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise WaitTimeoutError(
                        f"{self.queue.statistics().queued} readings still queued"
                    )
                with self._lock:
                    if self._closed:
                        raise ClosedError(f"device client {self.device_id} is closed")
                    self._wake.wait(0.05 if left is None else min(left, 0.05))
        finally:
            with self._lock:
                self._flushing -= 1

    async def asend(self, metric: str, value: Value, ts: int | None = None) -> int | None:
        return await _in_thread(self.send, metric, value, ts)

    async def asend_many(
        self, readings: Iterable[tuple[str, Value] | tuple[str, Value, int]]
    ) -> int | None:
        return await _in_thread(self.send_many, _readings(readings))

    async def aflush(self, timeout: float | None = None) -> None:
        await _in_thread(self.flush, timeout)

    async def aclose(self, timeout: float = 10.0) -> None:
        await _in_thread(self.close, timeout)

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.connected

    def statistics(self) -> DeviceStats:
        queue: QueueStats = self.queue.statistics()
        connection = self._live_connection().statistics()
        edge = self.edge.statistics() if self.edge is not None else {}
        with self._lock:
            refused, last_refusal = self._refused, self._last_refusal
        return DeviceStats(
            queued=queue.queued,
            in_flight=queue.in_flight,
            acknowledged=self._acknowledged,
            dropped=queue.dropped + queue.expired,
            edge_dropped=int(edge.get("received", 0)) - int(edge.get("emitted", 0)),
            reconnects=max(connection.connects - 1, 0),
            connected=connection.connected,
            last_error=connection.last_error,
            refused=refused,
            quarantined=queue.quarantined,
            last_refusal=last_refusal,
        )

    def _live_connection(self) -> MqttConnection | LocalConnection:
        if self._connection is None:
            raise ClosedError(f"device client {self.device_id} is not started")
        return self._connection

    # ------------------------------------------------------------------ the sender thread

    def _send_loop(self) -> None:
        """The sender thread: it ends only when the client closes. An unexpected failure (a
        full disk under the queue, say) is logged and retried after a pause."""
        failures = 0
        while True:
            try:
                self._send_batches()
                return
            except ClosedError:  # noqa: PERF203 (the queue closed under us: only on shutdown)
                log.debug("sender of %s stopped: queue closed", self.device_id)
                return
            except Exception:
                failures += 1
                log.exception("sender of %s failed; trying again", self.device_id)
                self._pause(min(30.0, 0.1 * 2 ** min(failures, 9)))

    def _send_batches(self) -> None:
        waiting_since: float | None = None
        while True:
            with self._lock:
                if self._closing:
                    return
                busy = len(self._sending) >= self.max_in_flight or not self.connected
                held = self._hold_until - time.monotonic()
                flushing = self._flushing > 0
            if busy or held > 0:
                self._pause(0.05 if busy else min(held, 0.05))
                continue
            stats = self.queue.statistics()
            pending = stats.queued - stats.in_flight
            if pending <= 0:
                waiting_since = None
                self.queue.wait(0.1)
                continue
            now = time.monotonic()
            waiting_since = waiting_since or now
            if pending < self.batch_size and not flushing and now - waiting_since < self.linger:
                self._pause(min(0.05, self.linger))
                continue
            lease = self.queue.take(self.batch_size)
            waiting_since = None
            if lease is not None:
                self._publish(lease)

    def _pause(self, seconds: float) -> None:
        with self._lock:
            if not self._closing:
                self._wake.wait(seconds)

    def _publish(self, lease: Lease) -> None:
        connection = self._live_connection()
        topic = self.topics.telemetry(self.device_id)
        room = connection.max_packet_size - self._topic_room
        frames: list[bytes] = []
        too_large: list[Batch] = []
        self._frames(lease.batch, room, frames, too_large)
        for reading in too_large:
            self._quarantine(reading, room)
        if not frames:
            self.queue.ack(lease)
            return
        sending = _Sending(lease, len(frames))
        with self._lock:
            self._sending[lease.id] = sending
        for frame in frames:
            try:
                delivery = connection.publish(topic, frame, qos=1)
            except (ConnectionLostError, ClosedError) as exc:
                self._finish(sending, exc)
                return
            delivery.add_done_callback(self._settle(sending))

    def _settle(self, sending: _Sending) -> Callable[[Delivery], None]:
        return lambda delivery: self._finish(sending, delivery.error())

    def _frames(
        self, batch: Batch, limit: int, frames: list[bytes], too_large: list[Batch]
    ) -> None:
        """Encode ``batch`` into ``frames``, halving it until each fits ``limit`` bytes; a single
        reading that does not fit goes to ``too_large``."""
        frame = self._encoder.encode(batch)
        if len(frame) <= limit:
            frames.append(frame)
            return
        halves = _halves(batch)
        if halves is None:
            too_large.append(batch)
            return
        for half in halves:
            self._frames(half, limit, frames, too_large)

    def _quarantine(self, reading: Batch, room: int) -> None:
        """Set aside a reading the broker's packet limit (lowered since it was accepted) leaves
        no room for; it leaves the queue with its lease, so it never blocks the others."""
        [column] = reading.columns
        reason = f"over the broker's packet limit ({room} bytes of payload)"
        self.queue.quarantine(reading, reason)
        log.error(
            "%s: reading seq %s of %r quarantined: %s",
            self.device_id,
            column.seq[0],
            column.metric,
            reason,
        )

    def _finish(self, sending: _Sending, error: BaseException | None) -> None:
        """One message of a lease done: ack the lease after the last, release it on failure."""
        if isinstance(error, NoSubscribersError) and not self.require_subscriber:
            error = None
        with self._lock:
            sending.waiting -= 1
            sending.failed = sending.failed or error is not None
            if isinstance(error, PublishRefusedError) and sending.refusal is None:
                sending.refusal = error
            if sending.waiting > 0 and not sending.failed:
                return
            if self._sending.pop(sending.lease.id, None) is None:
                return  # settled already (a failure before the last ack)
        if sending.failed:
            self.queue.release(sending.lease)
            if sending.refusal is not None:
                self._hold_back(sending.refusal)
        else:
            self.queue.ack(sending.lease)
            with self._lock:
                self._acknowledged += sending.lease.readings
                self._refusals = 0
        with self._lock:
            self._wake.notify_all()

    def _hold_back(self, refusal: PublishRefusedError) -> None:
        """The broker did not take telemetry on: keep it queued and resend after a backoff."""
        wait = self.resend_backoff if self.resend_backoff is not None else refusal_backoff()
        with self._lock:
            self._refused += 1
            self._refusals += 1
            self._last_refusal = str(refusal)
            attempt = self._refusals
        delay = backoff_delay(wait, attempt)
        with self._lock:
            self._hold_until = max(self._hold_until, time.monotonic() + delay)
        level = logging.WARNING if attempt == 1 or attempt % 100 == 0 else logging.DEBUG
        log.log(
            level,
            "%s: %s; readings kept, resent in %.2f s (refusal %d in a row)",
            self.device_id,
            refusal,
            delay,
            attempt,
        )

    # ------------------------------------------------------------------ connection events

    def _on_connect(self) -> None:
        self._started.wait(5.0)  # a fast connection may call this before _start stored it
        connection = self._connection
        if connection is None:
            return
        state = self.topics.state(self.device_id)
        with contextlib.suppress(ConnectionLostError):
            connection.publish(state, _state(online=True), retain=True)
        with self._lock:
            self._wake.notify_all()

    def _on_disconnect(self) -> None:
        # Deliveries in flight fail and release their leases; make sure nothing is left lent.
        with self._lock:
            lent, self._sending = list(self._sending.values()), {}
        for sending in lent:
            self.queue.release(sending.lease)

    # ------------------------------------------------------------------ commands and config

    def command(self, name: str) -> Callable[[CommandHandler], CommandHandler]:
        """Register ``handler(args) -> result`` for the command ``name`` (a decorator).

        The cloud publishes ``{"id": ..., "args": ...}`` to ``.../commands/{name}``; the result
        (or the error) goes to ``.../commands/{name}/result`` with the same id.
        """
        self.topics.command(self.device_id, name)  # validates the name

        def register(handler: CommandHandler) -> CommandHandler:
            check_callable("handler", handler)
            self._control.command(name, handler)
            return handler

        return register

    def on_config(self, handler: ConfigHandler) -> ConfigHandler:
        """Register ``handler(config, version)`` for the desired configuration (a decorator).

        The retained desired document arrives at every connection, so a device that was
        offline during a change still applies it. After the handler returns, the applied
        version is published (retained) to ``.../config/reported``.
        """
        check_callable("handler", handler)
        self._reply(self._control.on_config(handler))
        return handler

    def _on_command(self, message: paho.MQTTMessage) -> None:
        self._reply(self._control.command_message(message.topic, message.payload))

    def _on_config(self, message: paho.MQTTMessage) -> None:
        self._reply(self._control.config_message(message.payload))

    def _reply(self, reply: Reply | None) -> None:
        if reply is None:
            return
        connection = self._live_connection()
        try:
            connection.publish(reply.topic, reply.payload(), qos=1, retain=reply.retain)
        except (ConnectionLostError, ClosedError):
            log.warning("reply to %s lost with the connection", reply.topic)


def _link(mqtt: object) -> MqttSettings | LocalBroker:
    """What ``DeviceClient.connect`` was given to connect to, checked."""
    if isinstance(mqtt, str):
        return MqttSettings.from_url(mqtt)
    if isinstance(mqtt, MqttSettings):
        return mqtt
    from iotdata.mqtt._local import LocalBroker  # noqa: PLC0415 (the embedded default only)

    if isinstance(mqtt, LocalBroker):
        return mqtt
    raise InvalidInputError(
        f"mqtt must be a broker URL, MqttSettings or a LocalBroker, not {type(mqtt).__name__}"
    )


def _readings(readings: object) -> list[Any]:
    """What ``send_many`` was given, as a list, checked to be no str, bytes or mapping."""
    if isinstance(readings, (str, bytes, bytearray, Mapping)) or not isinstance(readings, Iterable):
        raise InvalidInputError(
            f"send_many takes an iterable of (metric, value[, ts]), not {readings!r:.60}"
        )
    return list(readings)


def _state(*, online: bool) -> bytes:
    return json.dumps({"online": online}).encode()


def _halves(batch: Batch) -> tuple[Batch, Batch] | None:
    """Split a batch in two with about half the readings each; None for a single reading."""
    total = len(batch)
    if total < 2:
        return None
    first: list[Column] = []
    second: list[Column] = []
    room = total // 2
    for column in batch.columns:
        size = len(column.ts)
        take = min(size, room)
        room -= take
        if take:
            first.append(_slice(column, 0, take))
        if take < size:
            second.append(_slice(column, take, size))
    return Batch(batch.device_id, first), Batch(batch.device_id, second)


def _slice(column: Column, start: int, stop: int) -> Column:
    part = slice(start, stop)
    return Column(column.metric, column.ts[part], column.values[part], column.seq[part])


async def _in_thread(function: Callable[..., _T], *args: Any) -> _T:
    """Run a blocking method in a worker thread (asyncio is imported only by async callers)."""
    import asyncio  # noqa: PLC0415 - keeps `import iotdata.device` light on devices

    return await asyncio.to_thread(function, *args)
