"""An MQTT connection that stays up: paho-mqtt 2 inside our own reconnect loop.

One background thread owns the network. It connects, runs paho's loop, and when the
connection drops it waits a full-jitter exponential backoff (a tenacity wait policy you can
replace) before trying again, never in a tight loop. Each attempt uses a fresh paho client, so
nothing half-sent survives into the next connection: whatever needs to be sent again is the
caller's to resend (the device client's durable queue does exactly that).

Publishing returns a :class:`Delivery` that completes on the broker's acknowledgement (PUBACK
for QoS 1) or fails with :class:`~iotdata.ConnectionLostError` if the connection drops first.
A PUBACK is delivery only with reason 0x00: 0x10 ("no matching subscribers": the broker dropped
the message) and every refusal fail the delivery (see :mod:`iotdata.mqtt._reasons`). A
subscription is in place only when its SUBACK grants the QoS asked for; otherwise
:meth:`MqttConnection.wait_subscribed` raises :class:`~iotdata.errors.SubscribeRefusedError`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import paho.mqtt.client as paho
import tenacity
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotdata._checks import (
    check_bool,
    check_callable,
    check_instance,
    check_int,
    check_mapping,
    check_text,
    check_timeout,
    optional,
    validated,
)
from iotdata.errors import (
    AuthenticationError,
    ClosedError,
    ConnectError,
    ConnectionLostError,
    InvalidInputError,
    SubscribeRefusedError,
)
from iotdata.mqtt._delivery import (
    ConnectionStats,
    Delivery,
    Will,
    default_backoff,
)
from iotdata.mqtt._reasons import publish_outcome, subscribe_outcome
from iotdata.mqtt._settings import MqttSettings
from iotdata.mqtt._topics import check_topic, split_filter

__all__ = ["MqttConnection"]

log = logging.getLogger("iotdata.mqtt")

#: CONNACK reason codes that mean "your credentials or certificate": retrying will not help.
_AUTH_REFUSED = {4, 5, 134, 135, 138, 140}
_LOOP_TIMEOUT = 0.05


Handler = Callable[[paho.MQTTMessage], None]
#: What MqttConnection.start takes besides settings, client_id and subscriptions.
_OPTIONS = frozenset(
    {
        "will",
        "clean_start",
        "session_expiry",
        "max_inflight",
        "manual_ack",
        "receive_maximum",
        "on_connect",
        "on_disconnect",
        "backoff",
    }
)


def _client_id(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    """MQTT client ids are UTF-8 strings of at most 65535 bytes, without NUL."""
    text = check_text("client_id", value)
    if "\0" in text or len(text.encode()) > 65535:
        raise InvalidInputError(f"client_id has no NUL and at most 65535 bytes: {text!r:.60}")


@attrs.define
class MqttConnection:
    """A connection to one broker, kept up by a background thread until :meth:`close`.

    Build it with :meth:`start`. ``on_connect`` and ``on_disconnect`` run on the network thread
    after each (re)connection and loss; keep them short.
    """

    settings: MqttSettings = attrs.field(validator=validated(check_instance, kind=MqttSettings))
    client_id: str = attrs.field(validator=_client_id)
    will: Will | None = attrs.field(default=None, validator=optional(check_instance, kind=Will))
    clean_start: bool = attrs.field(default=True, validator=validated(check_bool))
    #: MQTT 5: seconds the broker keeps the session after a disconnection (0 to 2**32-1).
    session_expiry: int = attrs.field(
        default=0, validator=validated(check_int, minimum=0, maximum=2**32 - 1)
    )
    #: Outgoing QoS 1 messages awaiting their PUBACK at once (0: no limit of paho's).
    max_inflight: int = attrs.field(default=64, validator=validated(check_int, minimum=0))
    #: Incoming QoS 1 messages are acknowledged only by :meth:`ack` (paho's manual acks).
    manual_ack: bool = attrs.field(default=False, validator=validated(check_bool))
    #: MQTT 5: unacknowledged incoming messages the broker may send us at once (1 to 65535).
    receive_maximum: int | None = attrs.field(
        default=None, validator=optional(check_int, minimum=1, maximum=65535)
    )
    on_connect: Callable[[], None] | None = attrs.field(
        default=None, validator=validated(check_callable, none=True)
    )
    on_disconnect: Callable[[], None] | None = attrs.field(
        default=None, validator=validated(check_callable, none=True)
    )
    backoff: tenacity.wait.wait_base = attrs.field(
        factory=default_backoff, validator=validated(check_callable)
    )
    _client: paho.Client | None = attrs.field(default=None, init=False)
    _connected: threading.Event = attrs.field(factory=threading.Event, init=False)
    _closing: threading.Event = attrs.field(factory=threading.Event, init=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _pending: dict[int, Delivery] = attrs.field(factory=dict, init=False)
    #: PUBACKs (or, at QoS 0, paho's "sent") that beat publish() registering the delivery:
    #: message id -> reason code.
    _early_acks: dict[int, int] = attrs.field(factory=dict, init=False)
    _subscriptions: dict[str, tuple[int, Handler]] = attrs.field(factory=dict, init=False)
    _connack: threading.Event = attrs.field(factory=threading.Event, init=False)
    _refusal: BaseException | None = attrs.field(default=None, init=False)
    _socket_error: str | None = attrs.field(default=None, init=False)
    #: Bumped when a connection is lost: a publish that straddles it fails instead of hanging.
    _generation: int = attrs.field(default=0, init=False)
    _last_error: BaseException | None = attrs.field(default=None, init=False)
    #: SUBSCRIBE packets awaiting their SUBACK: message id -> (filter, qos).
    _subscribing: dict[int, tuple[str, int]] = attrs.field(factory=dict, init=False)
    #: SUBACKs that beat the bookkeeping of their SUBSCRIBE: message id -> reason codes.
    _early_subacks: dict[int, list[int]] = attrs.field(factory=dict, init=False)
    _subscribed: threading.Event = attrs.field(factory=threading.Event, init=False)
    #: Why the broker refused a subscription of this connection, if it did.
    _subscribe_error: SubscribeRefusedError | None = attrs.field(default=None, init=False)
    _packet_limit: int = attrs.field(default=0, init=False)
    _stats: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(
            ("connects", "disconnects", "published", "acked", "refused"), 0
        ),
        init=False,
    )

    @classmethod
    def start(cls, settings: MqttSettings, client_id: str, **options: Any) -> MqttConnection:
        """Create the connection and start its network thread (it connects in the background).

        ``subscriptions`` (``{topic filter: handler}``, QoS 1) are in place from the first
        connection on: with a resumed persistent session, messages the broker kept arrive right
        after connecting, possibly before a later :meth:`subscribe` call could register them.
        """
        subscriptions: Mapping[str, Handler] = options.pop("subscriptions", None) or {}
        check_mapping("subscriptions", subscriptions)
        for topic_filter, handler in subscriptions.items():
            split_filter(topic_filter)
            check_callable(f"the handler of {topic_filter!r}", handler)
        unknown = set(options) - _OPTIONS
        if unknown:
            raise InvalidInputError(f"unknown MqttConnection option(s) {sorted(unknown)}")
        connection = cls(settings, client_id, **options)
        for topic_filter, handler in subscriptions.items():
            connection._subscriptions[topic_filter] = (1, handler)
        connection._packet_limit = settings.max_packet_size
        connection._thread = threading.Thread(
            target=connection._run, name=f"iotdata-mqtt-{client_id}", daemon=True
        )
        connection._thread.start()
        return connection

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def max_packet_size(self) -> int:
        """Largest packet to send: ours, or the broker's if it announced a smaller one."""
        return self._packet_limit

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected. On timeout raise the last reason it failed, if any."""
        if self._connected.wait(check_timeout("timeout", timeout)):
            return
        if self._closing.is_set():
            raise ClosedError("the MQTT connection is closed")
        error = self._last_error
        if isinstance(error, ConnectError):
            raise type(error)(str(error))
        reason = f": {error}" if error else ""
        raise ConnectError(f"not connected to {self.settings.url} within {timeout} s{reason}")

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> Delivery:
        """Send a message now; the returned :class:`Delivery` completes on the broker's ack.

        Raises :class:`ConnectionLostError` when not connected: resend after reconnecting.
        """
        check_topic(topic)
        if qos not in (0, 1):
            raise InvalidInputError(f"qos must be 0 or 1, got {qos!r}")
        if not isinstance(payload, (bytes, bytearray)):
            raise InvalidInputError(f"payload must be bytes, got {type(payload).__name__}")
        check_bool("retain", retain)
        if self._closing.is_set():
            raise ClosedError("the MQTT connection is closed")
        client = self._client
        generation = self._generation
        if client is None or not self._connected.is_set():
            raise ConnectionLostError(f"not connected to {self.settings.url}")
        if len(payload) + len(topic) + 16 > self._packet_limit:
            raise InvalidInputError(
                f"a {len(payload)}-byte message exceeds the packet limit of {self._packet_limit}"
            )
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionLostError(f"publish failed: {paho.error_string(info.rc)}")
        delivery = Delivery(info.mid, topic, retain=retain)
        early: int | None = None
        straddled = False
        replaced: Delivery | None = None
        with self._lock:  # never held while calling into paho (see _on_publish)
            self._stats["published"] += 1
            if generation != self._generation:  # the connection dropped during the call
                straddled = True
            else:  # QoS 0 too: paho reports it once written, and only then is its id free
                early = self._early_acks.pop(info.mid, None)
                if early is None:
                    replaced = self._pending.get(info.mid)  # never on one connection; never hang
                    self._pending[info.mid] = delivery
        if straddled:
            delivery._finish(ConnectionLostError("connection lost while publishing"))
        elif early is not None:
            self._settle(delivery, early)
        if replaced is not None:
            replaced._finish(ConnectionLostError(f"message id {info.mid} was reused"))
        return delivery

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (on the network thread).

        Subscriptions are renewed after every reconnection.
        """
        split_filter(topic_filter)
        if qos not in (0, 1):
            raise InvalidInputError(f"qos must be 0 or 1, got {qos!r}")
        self._subscriptions[topic_filter] = (qos, handler)
        client = self._client
        if client is not None and self._connected.is_set():
            self._send_subscribe(client, topic_filter, qos)

    def wait_subscribed(self, timeout: float | None = None) -> None:
        """Block until connected and every subscription is acknowledged by the broker (from
        then on, messages published to them reach us, or our persistent session).

        Raises :class:`~iotdata.errors.SubscribeRefusedError` when the broker refused one, or
        granted less than the QoS asked for.
        """
        timeout = check_timeout("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait_connected(timeout)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        subscribed = self._subscribed.wait(remaining)
        error = self._subscribe_error
        if error is not None:
            raise SubscribeRefusedError(str(error), reason_code=error.reason_code)
        if not subscribed:
            raise ConnectError(f"{self.settings.url} did not acknowledge our subscriptions")

    @property
    def generation(self) -> int:
        """Which connection this is; read it when a message arrives, pass it to :meth:`ack`."""
        return self._generation

    def ack(self, mid: int, qos: int, generation: int) -> bool:
        """Acknowledge an incoming message (with ``manual_ack``), in the order they arrived.

        Returns False, sending nothing, when the message came on an earlier connection: the
        broker sends it again on this one (with a persistent session).
        """
        check_int("mid", mid, minimum=0)
        client = self._client
        if client is None or generation != self._generation or not self._connected.is_set():
            return False
        return bool(client.ack(mid, qos) == paho.MQTT_ERR_SUCCESS)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def statistics(self) -> ConnectionStats:
        stats = self._stats
        error = self._last_error
        return ConnectionStats(
            connected=self.connected,
            connects=stats["connects"],
            disconnects=stats["disconnects"],
            published=stats["published"],
            acknowledged=stats["acked"],
            last_error=None if error is None else str(error),
            refused=stats["refused"],
        )

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly (no last will) and stop the network thread. Safe to call twice."""
        if self._closing.is_set():
            return
        wait = check_timeout("timeout", timeout)
        self._closing.set()
        client = self._client
        if client is not None and self._connected.is_set():
            client.disconnect()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def __enter__(self) -> MqttConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ network thread

    def _run(self) -> None:
        retrying = tenacity.Retrying(
            wait=self.backoff,
            retry=tenacity.retry_if_exception_type(ConnectError),
            stop=lambda state: self._closing.is_set(),
            sleep=self._pause,
            reraise=True,
        )
        while not self._closing.is_set():
            try:
                retrying(self._connect_once)
            except ConnectError:
                break  # only when closing
            self._serve()
        self._drop_client()

    def _pause(self, seconds: float) -> None:
        """Wait between attempts, cut short by :meth:`close`."""
        self._closing.wait(seconds)

    def _connect_once(self) -> None:
        settings = self.settings
        client = self._new_client()
        self._connack.clear()
        self._refusal = None
        self._socket_error = None
        try:
            client.connect(
                settings.host,
                settings.port,
                keepalive=settings.keepalive,
                clean_start=self.clean_start if settings.protocol == 5 else 3,
                properties=self._connect_properties(),
            )
            deadline = settings.connect_timeout
            while not self._connack.is_set() and deadline > 0 and not self._closing.is_set():
                rc = client.loop(_LOOP_TIMEOUT)
                if self._connack.is_set():  # a refusal is followed by the broker hanging up
                    break
                if rc != paho.MQTT_ERR_SUCCESS:
                    self._fail(client, self._hang_up_error(rc))
                deadline -= _LOOP_TIMEOUT
        except ssl.SSLError as exc:
            self._fail(client, AuthenticationError(f"TLS handshake with {settings.url}: {exc}"))
        except OSError as exc:
            self._fail(client, ConnectError(f"cannot reach {settings.url}: {exc}"))
        if self._refusal is not None:
            self._fail(client, self._refusal)
        if not self._connack.is_set():
            self._fail(client, ConnectError(f"{settings.url} did not answer in time"))
        self._client = client
        self._last_error = None
        self._stats["connects"] += 1
        with self._lock:
            self._subscribing.clear()
            self._early_subacks.clear()
            self._subscribe_error = None
        self._subscribed.set()
        for topic_filter, (qos, _) in list(self._subscriptions.items()):
            self._send_subscribe(client, topic_filter, qos)
        self._connected.set()
        log.info("connected to %s as %s", settings.url, self.client_id)
        self._notify(self.on_connect)

    def _send_subscribe(self, client: paho.Client, topic_filter: str, qos: int) -> None:
        rc, mid = client.subscribe(topic_filter, qos)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            return  # not connected any more: renewed after reconnecting
        with self._lock:
            codes = self._early_subacks.pop(mid, None)  # the SUBACK may beat us here
            if codes is None:
                self._subscribing[mid] = (topic_filter, qos)
                self._subscribed.clear()
        if codes is not None:
            self._judge_suback(topic_filter, qos, codes)

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        codes = [int(getattr(reason, "value", reason)) for reason in reasons]
        with self._lock:
            asked = self._subscribing.pop(mid, None)
            if asked is None:
                self._early_subacks[mid] = codes
                return
        # judged before waking wait_subscribed, which would otherwise miss a refusal
        self._judge_suback(*asked, codes)
        with self._lock:
            if not self._subscribing:
                self._subscribed.set()

    def _judge_suback(self, topic_filter: str, qos: int, codes: list[int]) -> None:
        """Record a refused (or downgraded) subscription: :meth:`wait_subscribed` raises it."""
        for code in codes:
            error = subscribe_outcome(code, topic_filter, qos)
            if error is not None:
                log.error("%s", error)
                self._subscribe_error = error
                self._subscribed.set()  # nothing more to wait for: wait_subscribed raises

    def _hang_up_error(self, rc: int) -> ConnectError:
        """Why the broker hung up before accepting us: a TLS alert means our certificate."""
        detail = self._socket_error or paho.error_string(rc)
        tls_alert = rc == paho.MQTT_ERR_TLS or "SSL" in detail or "_ssl.c" in detail
        kind = AuthenticationError if tls_alert else ConnectError
        return kind(f"{self.settings.url} closed the connection before accepting us: {detail}")

    def _fail(self, client: paho.Client, error: ConnectError) -> None:
        self._last_error = error
        if isinstance(error, AuthenticationError):
            log.error("%s", error)
        else:
            log.warning("%s; retrying", error)
        _release(client)
        raise error

    def _serve(self) -> None:
        """Run paho's loop until the connection drops or we close."""
        client = self._client
        assert client is not None
        while not self._closing.is_set():
            rc = client.loop(_LOOP_TIMEOUT)
            if rc != paho.MQTT_ERR_SUCCESS or not self._connected.is_set():
                break
        if self._closing.is_set():
            for _ in range(20):  # let the DISCONNECT go out
                if client.loop(_LOOP_TIMEOUT) != paho.MQTT_ERR_SUCCESS:
                    break
        self._lost(ConnectionLostError(f"connection to {self.settings.url} lost"), notify=True)

    def _lost(self, error: ConnectionLostError, *, notify: bool) -> None:
        """Fail what awaited an ack; after a connection that was up, count and announce it."""
        self._connected.clear()
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
            self._generation += 1
        for delivery in pending.values():
            delivery._finish(error)
        if notify:
            self._stats["disconnects"] += 1
            if not self._closing.is_set():
                self._last_error = error
                log.warning("%s; reconnecting", error)
            self._notify(self.on_disconnect)

    def _drop_client(self) -> None:
        self._lost(ConnectionLostError("the MQTT connection is closed"), notify=False)
        client, self._client = self._client, None
        if client is not None:
            _release(client)

    def _notify(self, callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("connection callback %r failed", callback)

    # ------------------------------------------------------------------ paho plumbing

    def _new_client(self) -> paho.Client:
        settings = self.settings
        version5 = settings.protocol == 5
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if version5 else self.clean_start,
            protocol=MQTTProtocolVersion.MQTTv5 if version5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=self.manual_ack,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls is not None:
            client.tls_set_context(settings.tls.context())
        if self.will is not None:
            will = self.will
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_disconnect = self._on_disconnect
        client.on_log = self._on_log
        # One dispatcher over the current subscriptions, set before connecting: a resumed
        # session's queued messages may come with the CONNACK.
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def _connect_properties(self) -> Properties | None:
        if self.settings.protocol != 5:
            return None
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self.session_expiry
        properties.MaximumPacketSize = 256 * 1024 * 1024 - 1
        if self.receive_maximum is not None:
            properties.ReceiveMaximum = self.receive_maximum
        return properties

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        code = int(getattr(reason, "value", reason))
        if code != 0:
            kind = AuthenticationError if code in _AUTH_REFUSED else ConnectError
            self._refusal = kind(f"{self.settings.url} refused the connection: {reason}")
        elif properties is not None and hasattr(properties, "MaximumPacketSize"):
            self._packet_limit = min(self.settings.max_packet_size, properties.MaximumPacketSize)
        self._connack.set()

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        # paho calls this holding its outgoing-message mutex: take only our small lock.
        code = int(getattr(reason, "value", reason) or 0)
        with self._lock:
            delivery = self._pending.pop(mid, None)
            if delivery is None:
                self._early_acks[mid] = code
        if delivery is not None:
            self._settle(delivery, code)

    def _settle(self, delivery: Delivery, code: int) -> None:
        """Finish a delivery by its PUBACK reason code: only 0x00 is delivery."""
        error = publish_outcome(code, delivery.topic, retained=delivery.retain)
        with self._lock:
            self._stats["acked" if error is None else "refused"] += 1
        if error is not None:
            log.debug("%s", error)
        delivery._finish(error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        handled = False
        for topic_filter, (_, handler) in list(self._subscriptions.items()):
            if paho.topic_matches_sub(_matching(topic_filter), message.topic):
                handled = True
                try:
                    handler(message)
                except Exception:
                    log.exception("handler for %s failed", message.topic)
        if not handled and self.manual_ack and message.qos:
            log.warning("no handler for %s: acknowledged unread", message.topic)
            client.ack(message.mid, message.qos)  # never leave the broker's window stuck

    def _on_log(self, client: paho.Client, userdata: Any, level: int, message: str) -> None:
        if level == paho.MQTT_LOG_ERR and self._socket_error is None:
            # paho reports socket and TLS errors only this way; the first is the cause
            self._socket_error = message
            log.debug("paho: %s", message)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected.clear()


def _release(client: paho.Client) -> None:
    """Close a client's socket, whatever state it is in."""
    try:
        client.disconnect()
        if client.socket() is not None:
            client.loop(0)
    except Exception:  # a half-open socket is dropped either way
        log.debug("releasing an MQTT client", exc_info=True)


def _matching(topic_filter: str) -> str:
    """The filter a shared subscription (``$share/group/filter``) matches topics with."""
    return split_filter(topic_filter)[1]
