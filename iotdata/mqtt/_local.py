"""An in-process broker: the same connection interface as :class:`MqttConnection`, no network.

The embedded default and the tests of higher layers use it to run device clients, gateways and
pipelines in one process. It keeps MQTT's semantics where they matter to iotdata: topic
filters with ``+`` and ``#``, shared subscriptions (``$share/group/...``, one member of a group
gets each message), retained messages (delivered on subscribe, cleared by an empty payload),
last wills (published when a connection is dropped without a clean close), and QoS 1
acknowledgements (a :class:`Delivery` completes once the broker has the message). Messages are
delivered in publish order by one dispatcher thread, so handlers may publish in turn.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import attrs
import paho.mqtt.client as paho

from iotdata.errors import ClosedError, ConnectionLostError
from iotdata.mqtt._delivery import ConnectionStats, Delivery, Will

__all__ = ["LocalBroker", "LocalConnection", "LocalMessage"]

log = logging.getLogger("iotdata.mqtt")


@attrs.frozen
class LocalMessage:
    """What a handler receives: the attributes of a paho ``MQTTMessage`` that iotdata reads."""

    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


Handler = Callable[[Any], None]


def _deliver(handler: Handler, message: LocalMessage) -> None:
    try:
        handler(message)
    except Exception:
        log.exception("handler for %s failed", message.topic)


def _filter_of(topic_filter: str) -> tuple[str | None, str]:
    """``(shared group or None, filter)``."""
    if topic_filter.startswith("$share/"):
        _, group, rest = topic_filter.split("/", 2)
        return group, rest
    return None, topic_filter


@attrs.define(eq=False)
class LocalBroker:
    """A broker living in this process. Connect clients with :meth:`connect`."""

    max_packet_size: int = 256 * 1024 * 1024
    _lock: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _retained: dict[str, bytes] = attrs.field(factory=dict, init=False)
    _connections: dict[str, LocalConnection] = attrs.field(factory=dict, init=False)
    _mail: queue.SimpleQueue[Callable[[], None] | None] = attrs.field(
        factory=queue.SimpleQueue, init=False
    )
    _dispatcher: threading.Thread | None = attrs.field(default=None, init=False)
    _turn: itertools.count[int] = attrs.field(factory=itertools.count, init=False)

    def connect(
        self,
        client_id: str,
        *,
        will: Will | None = None,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        **_: Any,
    ) -> LocalConnection:
        """A connected client; an existing one with the same id is taken over (as in MQTT)."""
        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="iotdata-local-broker", daemon=True
                )
                self._dispatcher.start()
            previous = self._connections.get(client_id)
            connection = LocalConnection(self, client_id, will, on_connect, on_disconnect)
            self._connections[client_id] = connection
        if previous is not None:
            previous.drop()
        connection._connected = True
        self._mail.put(connection._announce)  # on_connect runs later, as after a real CONNACK
        return connection

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Route a message to every matching subscription (one member per shared group)."""
        message = LocalMessage(topic, bytes(payload), retain)
        with self._lock:
            if retain:
                if payload:
                    self._retained[topic] = message.payload
                else:
                    self._retained.pop(topic, None)
            groups: dict[str, list[Handler]] = {}
            for connection in self._connections.values():
                for topic_filter, handler in connection._subscriptions.items():
                    group, pattern = _filter_of(topic_filter)
                    if not paho.topic_matches_sub(pattern, topic):
                        continue
                    if group is None:
                        self._mail.put(functools.partial(_deliver, handler, message))
                    else:
                        groups.setdefault(group, []).append(handler)
            for members in groups.values():
                chosen = members[next(self._turn) % len(members)]
                self._mail.put(functools.partial(_deliver, chosen, message))

    def _subscribed(self, handler: Handler, topic_filter: str) -> None:
        pattern = _filter_of(topic_filter)[1]
        with self._lock:
            for topic, payload in self._retained.items():
                if paho.topic_matches_sub(pattern, topic):
                    retained = LocalMessage(topic, payload, retain=True)
                    self._mail.put(functools.partial(_deliver, handler, retained))

    def _gone(self, connection: LocalConnection, *, clean: bool) -> None:
        with self._lock:
            if self._connections.get(connection.client_id) is connection:
                del self._connections[connection.client_id]
        if not clean and connection.will is not None:
            will = connection.will
            self.publish(will.topic, will.payload, retain=will.retain)

    def _dispatch(self) -> None:
        while (work := self._mail.get()) is not None:
            work()

    def close(self) -> None:
        """Stop the dispatcher after the messages already routed."""
        self._mail.put(None)


@attrs.define(eq=False)
class LocalConnection:
    """A client of a :class:`LocalBroker`, with the interface of :class:`MqttConnection`."""

    broker: LocalBroker
    client_id: str
    will: Will | None = None
    on_connect: Callable[[], None] | None = None
    on_disconnect: Callable[[], None] | None = None
    _subscriptions: dict[str, Handler] = attrs.field(factory=dict, init=False)
    _connected: bool = attrs.field(default=False, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _published: int = attrs.field(default=0, init=False)

    def _announce(self) -> None:
        if self._connected and self.on_connect is not None:
            try:
                self.on_connect()
            except Exception:
                log.exception("on_connect of %s failed", self.client_id)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def max_packet_size(self) -> int:
        return self.broker.max_packet_size

    def wait_connected(self, timeout: float | None = None) -> None:
        if self._closed:
            raise ClosedError("the local connection is closed")
        if not self._connected:
            raise ConnectionLostError(f"{self.client_id} was dropped by the local broker")

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        if self._closed:
            raise ClosedError("the local connection is closed")
        if not self._connected:
            raise ConnectionLostError(f"{self.client_id} is not connected")
        self.broker.publish(topic, payload, retain=retain)
        self._published += 1
        delivery = Delivery(self._published)
        delivery._finish(None)  # the broker has it: that is what QoS 1 acknowledges
        return delivery

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        self._subscriptions[topic_filter] = handler
        self.broker._subscribed(handler, topic_filter)

    def in_flight(self) -> int:
        return 0

    def statistics(self) -> ConnectionStats:
        return ConnectionStats(
            connected=self._connected,
            connects=1,
            disconnects=0 if self._connected else 1,
            published=self._published,
            acknowledged=self._published,
            last_error=None,
        )

    def drop(self) -> None:
        """Vanish without a clean close: the broker publishes the last will."""
        if self._connected:
            self._connected = False
            self.broker._gone(self, clean=False)
            if self.on_disconnect is not None:
                self.on_disconnect()

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connected:
            self._connected = False
            self.broker._gone(self, clean=True)

    def __enter__(self) -> LocalConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
