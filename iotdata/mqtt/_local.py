"""An in-process broker: the same connection interface as :class:`MqttConnection`, no network.

The embedded default and the tests of higher layers use it to run device clients, gateways and
pipelines in one process. It keeps MQTT's semantics where they matter to iotdata: topic
filters with ``+`` and ``#``, shared subscriptions (``$share/group/...``, one member of a group
gets each message), retained messages (delivered on subscribe, cleared by an empty payload),
last wills (published when a connection is dropped without a clean close). Messages are
delivered in publish order by one dispatcher thread, so handlers may publish in turn.

It keeps the delivery contract of a real broker with persistent sessions, in a process that can
die at any moment, so it acknowledges only what is no longer its own to lose:

* a QoS 1 :class:`Delivery` completes when every subscriber that got the message has it: its
  handler returned, or, for a connection made with ``manual_ack=True`` (a gateway, a bridge),
  the subscriber called :meth:`LocalConnection.ack` once the message was safe downstream;
* with no matching subscription it fails with :class:`~iotdata.errors.NoSubscribersError`
  (MQTT 5 reason 0x10), as Mosquitto answers, except for a retained message (kept here);
* a subscriber that goes away before taking a message fails that message's delivery, so the
  publisher (the device client's durable queue) sends it again;
* at most ``max_queued`` messages are held (routed and not yet taken by all their subscribers);
  a QoS 1 publish beyond that fails with "quota exceeded" (0x97, retriable), which the device
  client answers with backoff: a slow subscriber slows the publishers, memory stays bounded;
* after :meth:`LocalBroker.close`, its connections are dropped and connecting raises
  :class:`~iotdata.ClosedError`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import attrs
import paho.mqtt.client as paho

from iotdata._checks import check_bool, check_callable, check_instance, check_int, check_text
from iotdata.errors import (
    ClosedError,
    ConnectionLostError,
    InvalidInputError,
    NoSubscribersError,
    PublishRefusedError,
)
from iotdata.mqtt._delivery import ConnectionStats, Delivery, Will
from iotdata.mqtt._topics import check_topic, split_filter

__all__ = ["LocalBroker", "LocalBrokerStats", "LocalConnection", "LocalMessage"]

log = logging.getLogger("iotdata.mqtt")

_QUOTA_EXCEEDED = 0x97


@attrs.frozen
class LocalMessage:
    """What a handler receives: the attributes of a paho ``MQTTMessage`` that iotdata reads.

    ``mid`` is what a ``manual_ack`` subscriber passes to :meth:`LocalConnection.ack`.
    """

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1
    mid: int = 0


Handler = Callable[[Any], None]


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{attribute.name} must be an int >= 1, got {value!r}")


@attrs.define(eq=False)
class _Routed:
    """One published message on its way to the subscribers that got it."""

    delivery: Delivery | None
    waiting: int
    error: BaseException | None = None


@attrs.define(eq=False)
class _Mail:
    """One message for one subscriber, in the dispatcher's queue."""

    target: LocalConnection
    handler: Handler
    message: LocalMessage
    routed: _Routed | None


@attrs.frozen
class LocalBrokerStats:
    """A snapshot of a :class:`LocalBroker`."""

    #: Messages routed and not yet taken by every subscriber that got them.
    held: int
    #: QoS 1 messages every subscriber took (the publisher's delivery completed).
    delivered: int
    #: QoS 1 messages with no matching subscription (reason 0x10), not kept.
    no_subscribers: int
    #: QoS 1 messages refused because ``max_queued`` were held (reason 0x97).
    refused: int
    #: QoS 0 messages dropped because ``max_queued`` were held.
    dropped: int
    connections: int


@attrs.define(eq=False)
class LocalBroker:
    """A broker living in this process. Connect clients with :meth:`connect`."""

    max_packet_size: int = attrs.field(default=256 * 1024 * 1024, validator=_positive_int)
    #: Most messages held at once (routed, not yet taken by all their subscribers).
    max_queued: int = attrs.field(default=10_000, validator=_positive_int)
    # Guards the routing tables and counters; never held while calling a handler or finishing
    # a delivery (their callbacks may publish, or take the device client's locks).
    _lock: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _retained: dict[str, bytes] = attrs.field(factory=dict, init=False)
    _connections: dict[str, LocalConnection] = attrs.field(factory=dict, init=False)
    _mail: queue.SimpleQueue[_Mail | None] = attrs.field(factory=queue.SimpleQueue, init=False)
    _dispatcher: threading.Thread | None = attrs.field(default=None, init=False)
    _turn: int = attrs.field(default=0, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _held: int = attrs.field(default=0, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("delivered", "no_subscribers", "refused", "dropped"), 0),
        init=False,
    )

    def connect(
        self,
        client_id: str,
        *,
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        manual_ack: bool = False,
        **_: Any,
    ) -> LocalConnection:
        """A connected client; an existing one with the same id is taken over (as in MQTT).

        With ``manual_ack``, a QoS 1 message counts as taken only once the subscriber calls
        :meth:`LocalConnection.ack` for it. Raises :class:`~iotdata.ClosedError` once closed.
        """
        check_text("client_id", client_id)
        check_instance("will", will, Will, none=True)
        check_callable("on_connect", on_connect, none=True)
        check_callable("on_disconnect", on_disconnect, none=True)
        check_bool("manual_ack", manual_ack)
        with self._lock:
            if self._closed:
                raise ClosedError("the local broker is closed")
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="iotdata-local-broker", daemon=True
                )
                self._dispatcher.start()
            previous = self._connections.get(client_id)
            connection = LocalConnection(
                self, client_id, will, on_connect, on_disconnect, manual_ack=manual_ack
            )
            self._connections[client_id] = connection
        if previous is not None:
            previous.drop()
        connection._connected = True
        # on_connect runs later, on the dispatcher, as after a real CONNACK
        self._mail.put(_Mail(connection, lambda _: connection._announce(), _NOTHING, None))
        return connection

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        """Route a message to every matching subscription (one member per shared group).

        The :class:`Delivery` completes once every subscriber took it (see the module docs).
        """
        check_topic(topic)
        if type(qos) is not int or qos not in (0, 1):
            raise InvalidInputError(f"qos must be 0 or 1, got {qos!r:.60}")
        if not isinstance(payload, (bytes, bytearray)):
            raise InvalidInputError(f"payload must be bytes, got {type(payload).__name__}")
        check_bool("retain", retain)
        if len(payload) + len(topic) + 16 > self.max_packet_size:
            raise InvalidInputError(
                f"a {len(payload)}-byte message exceeds the packet limit of {self.max_packet_size}"
            )
        delivery = Delivery(0, topic)
        routed, error = self._route(topic, bytes(payload), qos, retain, delivery)
        if not routed or qos == 0:
            delivery._finish(error)
        return delivery

    def statistics(self) -> LocalBrokerStats:
        with self._lock:
            return LocalBrokerStats(
                held=self._held, connections=len(self._connections), **self._counts
            )

    def close(self) -> None:
        """Drop every connection, fail what is not yet taken, stop the dispatcher. Connecting
        afterwards raises :class:`~iotdata.ClosedError`. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            connections = list(self._connections.values())
        for connection in connections:
            connection._lose(announce=True)
        self._mail.put(None)

    # ------------------------------------------------------------------ routing

    def _route(
        self, topic: str, payload: bytes, qos: int, retain: bool, delivery: Delivery | None
    ) -> tuple[bool, BaseException | None]:
        """Queue the message for its subscribers: ``(True, None)``; or ``(False, error)`` when
        it went to none and its delivery is settled now (``error`` None: a retained message
        kept, or a QoS 0 one)."""
        with self._lock:
            if self._closed:
                return False, ConnectionLostError("the local broker is closed")
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            targets = self._targets(topic)
            if not targets:
                if qos and not retain:
                    self._counts["no_subscribers"] += 1
                    return False, NoSubscribersError(f"no subscription matches {topic}")
                return False, None
            if self._held >= self.max_queued:
                if qos == 0:
                    self._counts["dropped"] += 1
                    return False, None
                self._counts["refused"] += 1
                return False, PublishRefusedError(
                    f"the local broker holds {self._held} messages (max_queued): quota exceeded",
                    reason_code=_QUOTA_EXCEEDED,
                    retriable=True,
                )
            routed = _Routed(delivery if qos else None, len(targets))
            self._held += 1
            for target, handler in targets:
                message = LocalMessage(topic, payload, retain, qos, target._next_mid())
                self._mail.put(_Mail(target, handler, message, routed))
        return True, None

    def _targets(self, topic: str) -> list[tuple[LocalConnection, Handler]]:
        """Who gets a message to ``topic``: every plain match, one member of each group."""
        targets: list[tuple[LocalConnection, Handler]] = []
        groups: dict[str, list[tuple[LocalConnection, Handler]]] = {}
        for connection in self._connections.values():
            for (group, pattern), handler in connection._subscriptions.items():
                if not paho.topic_matches_sub(pattern, topic):
                    continue
                if group is None:
                    targets.append((connection, handler))
                else:
                    groups.setdefault(group, []).append((connection, handler))
        for members in groups.values():
            self._turn += 1
            targets.append(members[self._turn % len(members)])
        return targets

    def _taken(self, routed: _Routed | None, error: BaseException | None) -> None:
        """One subscriber is done with a message: finish its delivery after the last one."""
        if routed is None:
            return
        with self._lock:
            routed.waiting -= 1
            routed.error = routed.error or error
            if routed.waiting:
                return
            self._held -= 1
            if routed.delivery is not None and routed.error is None:
                self._counts["delivered"] += 1
        if routed.delivery is not None:
            routed.delivery._finish(routed.error)

    def _subscribed(self, connection: LocalConnection, handler: Handler, pattern: str) -> None:
        with self._lock:
            retained = [
                (t, p) for t, p in self._retained.items() if paho.topic_matches_sub(pattern, t)
            ]
        for topic, payload in retained:
            message = LocalMessage(topic, payload, retain=True, qos=1, mid=connection._next_mid())
            self._mail.put(_Mail(connection, handler, message, None))

    def _gone(self, connection: LocalConnection, *, clean: bool) -> None:
        with self._lock:
            if self._connections.get(connection.client_id) is connection:
                del self._connections[connection.client_id]
            closed = self._closed
        if not clean and not closed and connection.will is not None:
            will = connection.will
            self._route(will.topic, will.payload, will.qos, will.retain, None)

    def _dispatch(self) -> None:
        while (mail := self._mail.get()) is not None:
            mail.target._take(mail)
        while True:  # closed: fail what was still queued
            try:
                mail = self._mail.get_nowait()
            except queue.Empty:
                return
            if mail is not None:
                self._taken(mail.routed, ConnectionLostError("the local broker is closed"))


_NOTHING = LocalMessage("$iotdata/connected", b"")


@attrs.define(eq=False)
class LocalConnection:
    """A client of a :class:`LocalBroker`, with the interface of :class:`MqttConnection`."""

    broker: LocalBroker
    client_id: str
    will: Will | None = None
    on_connect: Callable[[], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    manual_ack: bool = False
    #: ``(shared group or None, filter)`` -> handler.
    _subscriptions: dict[tuple[str | None, str], Handler] = attrs.field(factory=dict, init=False)
    _connected: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _mid: int = attrs.field(default=0, init=False)
    #: Messages handed to a manual-ack handler and not acknowledged yet: mid -> routed.
    _unacked: dict[int, _Routed | None] = attrs.field(factory=dict, init=False)
    _counts: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(("published", "acked", "refused"), 0), init=False
    )

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def generation(self) -> int:
        """Always 0: a local connection is never re-established (a new one is made)."""
        return 0

    @property
    def max_packet_size(self) -> int:
        return self.broker.max_packet_size

    def wait_connected(self, timeout: float | None = None) -> None:
        if self._closed:
            raise ClosedError("the local connection is closed")
        if not self._connected:
            raise ConnectionLostError(f"{self.client_id} was dropped by the local broker")

    def wait_subscribed(self, timeout: float | None = None) -> None:
        """Subscriptions take effect at once here; only checks the connection is up."""
        self.wait_connected(timeout)

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        if self._closed:
            raise ClosedError("the local connection is closed")
        if not self._connected:
            raise ConnectionLostError(f"{self.client_id} is not connected")
        delivery = self.broker.publish(topic, payload, qos=qos, retain=retain)
        with self._lock:
            self._counts["published"] += 1
        delivery.add_done_callback(self._count)
        return delivery

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        key = split_filter(topic_filter)
        if type(qos) is not int or qos not in (0, 1):
            raise InvalidInputError(f"qos must be 0 or 1, got {qos!r:.60}")
        if not callable(handler):
            raise InvalidInputError(f"handler must be callable, got {handler!r}")
        with self.broker._lock:
            self._subscriptions[key] = handler
        self.broker._subscribed(self, handler, key[1])

    def ack(self, mid: int, qos: int = 1, generation: int = 0) -> bool:
        """Acknowledge a message a ``manual_ack`` handler got: it counts as taken from now on.

        Returns False for a message unknown here (acknowledged already, or of a dropped
        connection).
        """
        check_int("mid", mid, minimum=0)
        with self._lock:
            if mid not in self._unacked:
                return False
            routed = self._unacked.pop(mid)
        self.broker._taken(routed, None)
        return True

    def in_flight(self) -> int:
        return 0

    def statistics(self) -> ConnectionStats:
        with self._lock:
            counts = dict(self._counts)
        return ConnectionStats(
            connected=self._connected,
            connects=1,
            disconnects=0 if self._connected else 1,
            published=counts["published"],
            acknowledged=counts["acked"],
            last_error=None,
            refused=counts["refused"],
        )

    def drop(self) -> None:
        """Vanish without a clean close: the broker publishes the last will."""
        if self._lose(announce=True):
            self.broker._gone(self, clean=False)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lose(announce=False):
            self.broker._gone(self, clean=True)

    def __enter__(self) -> LocalConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _next_mid(self) -> int:
        with self._lock:
            self._mid = self._mid % 65535 + 1
            return self._mid

    def _count(self, delivery: Delivery) -> None:
        with self._lock:
            self._counts["acked" if delivery.error() is None else "refused"] += 1

    def _announce(self) -> None:
        if self._connected and self.on_connect is not None:
            try:
                self.on_connect()
            except Exception:
                log.exception("on_connect of %s failed", self.client_id)

    def _take(self, mail: _Mail) -> None:
        """On the dispatcher: hand one message to its handler."""
        if not self._connected:
            gone = NoSubscribersError(f"the subscriber {self.client_id} went away")
            self.broker._taken(mail.routed, gone)
            return
        manual = self.manual_ack and mail.message.qos and mail.message is not _NOTHING
        if manual:
            with self._lock:
                self._unacked[mail.message.mid] = mail.routed
        try:
            mail.handler(mail.message)
        except Exception:
            log.exception("handler for %s failed", mail.message.topic)
        if not manual:
            self.broker._taken(mail.routed, None)

    def _lose(self, *, announce: bool) -> bool:
        """The connection is gone: fail what its handlers had not acknowledged."""
        with self._lock:
            if not self._connected:
                return False
            self._connected = False
            unacked, self._unacked = self._unacked, {}
        for routed in unacked.values():
            self.broker._taken(routed, NoSubscribersError(f"{self.client_id} went away"))
        if announce and self.on_disconnect is not None:
            try:
                self.on_disconnect()
            except Exception:
                log.exception("on_disconnect of %s failed", self.client_id)
        return True
