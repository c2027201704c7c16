"""The gateway's protocol logic, without I/O: where each MQTT message goes, and when to ack it.

:class:`Router` decides for one message: telemetry that passes validation goes to the
telemetry topic as the original bytes, presence (birth and last will) to the devices topic, and
everything else to the dead-letter topic with a reason. :class:`OrderedAcks` releases MQTT
acknowledgements in arrival order while Kafka confirms records in any order.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import attrs

from iotdata._checks import check_instance, check_int, each, validated
from iotdata.codec import Decoder, Dictionary, Limits
from iotdata.errors import DecodeError, InvalidInputError
from iotdata.model import validate_device_id
from iotdata.mqtt import Topics

__all__ = [
    "CONTENT_TYPE",
    "REASONS",
    "KafkaTopics",
    "OrderedAcks",
    "Route",
    "Router",
]

#: The ``content-type`` header of forwarded telemetry records.
CONTENT_TYPE = b"application/vnd.iotdata.batch"
#: Dead-letter reasons, as the ``reason`` header says them.
REASONS = ("malformed", "oversized", "spoofed", "bad-topic", "bad-presence")

Kind = Literal["telemetry", "presence", "dead-letter"]


def _kafka_topic(_: object, attribute: attrs.Attribute[str], value: object) -> None:
    from iotdata.kafka import TopicSpec  # noqa: PLC0415 (checks the name as Kafka does)

    TopicSpec(name=value)  # type: ignore[arg-type]


@attrs.frozen(kw_only=True)
class KafkaTopics:
    """The Kafka topics a gateway writes: ``{prefix}.telemetry``, ``.devices`` and ``.dlq``
    (names as Kafka allows them: 1 to 249 of ``[a-zA-Z0-9._-]``)."""

    telemetry: str = attrs.field(default="iotdata.telemetry", validator=_kafka_topic)
    devices: str = attrs.field(default="iotdata.devices", validator=_kafka_topic)
    dead_letters: str = attrs.field(default="iotdata.dlq", validator=_kafka_topic)

    @classmethod
    def with_prefix(cls, prefix: str) -> KafkaTopics:
        if type(prefix) is not str:
            raise InvalidInputError(f"prefix must be a str, got {prefix!r:.60}")
        return cls(
            telemetry=f"{prefix}.telemetry",
            devices=f"{prefix}.devices",
            dead_letters=f"{prefix}.dlq",
        )


@attrs.frozen
class Route:
    """Where one MQTT message goes."""

    kind: Kind
    topic: str
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    #: Readings in a telemetry batch (0 otherwise).
    readings: int = 0
    #: Why a message is dead-lettered (one of :data:`REASONS`), else None.
    reason: str | None = None


def _dictionaries(value: object) -> tuple[Dictionary, ...]:
    return tuple(each("dictionaries", value, check_instance, kind=Dictionary))


@attrs.define
class Router:
    """Validates and routes MQTT messages. Not thread-safe: one per gateway task."""

    topics: Topics = attrs.field(factory=Topics, validator=validated(check_instance, kind=Topics))
    kafka: KafkaTopics = attrs.field(
        factory=KafkaTopics, validator=validated(check_instance, kind=KafkaTopics)
    )
    limits: Limits = attrs.field(factory=Limits, validator=validated(check_instance, kind=Limits))
    dictionaries: tuple[Dictionary, ...] = attrs.field(default=(), converter=_dictionaries)
    _decoder: Decoder = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._decoder = Decoder(limits=self.limits)
        for dictionary in self.dictionaries:
            self._decoder.add_dictionary(dictionary)

    def route(self, mqtt_topic: str, payload: bytes) -> Route:
        """Where the message ``payload`` (bytes) received on ``mqtt_topic`` goes.

        Raises:
            InvalidInputError: ``mqtt_topic`` is not a str or ``payload`` not bytes.
        """
        if not isinstance(payload, (bytes, bytearray)):
            raise InvalidInputError(f"payload must be bytes, got {type(payload).__name__}")
        parsed = self.topics.parse(mqtt_topic)
        if parsed is None:
            return self._dead("bad-topic", None, mqtt_topic, "not a topic of this scheme")
        device_id, kind, _ = parsed
        try:
            validate_device_id(device_id)
        except InvalidInputError as exc:
            return self._dead("bad-topic", None, mqtt_topic, str(exc))
        key = device_id.encode()
        if kind == "state":
            return self._presence(device_id, key, mqtt_topic, payload)
        if kind != "telemetry":
            return self._dead("bad-topic", key, mqtt_topic, f"{kind} messages are not forwarded")
        if len(payload) > self.limits.max_frame_bytes:
            detail = f"{len(payload)} bytes > max_frame_bytes={self.limits.max_frame_bytes}"
            return self._dead("oversized", key, mqtt_topic, detail)
        try:
            batch = self._decoder.decode(payload)
        except DecodeError as exc:
            reason = "oversized" if "exceed" in str(exc) else "malformed"
            return self._dead(reason, key, mqtt_topic, str(exc))
        if batch.device_id != device_id:
            detail = f"batch of device {batch.device_id!r} published on {mqtt_topic!r}"
            return self._dead("spoofed", key, mqtt_topic, detail)
        headers = (
            ("content-type", CONTENT_TYPE),
            ("format-version", b"%d" % (payload[2] >> 4)),
            ("mqtt-topic", mqtt_topic.encode()),
        )
        return Route("telemetry", self.kafka.telemetry, key, headers, readings=len(batch))

    def _presence(self, device_id: str, key: bytes, mqtt_topic: str, payload: bytes) -> Route:
        if len(payload) > 4096:
            return self._dead("bad-presence", key, mqtt_topic, f"{len(payload)}-byte state")
        headers = (
            ("content-type", b"application/json"),
            ("mqtt-topic", mqtt_topic.encode()),
        )
        return Route("presence", self.kafka.devices, key, headers)

    def _dead(self, reason: str, key: bytes | None, mqtt_topic: str, detail: str) -> Route:
        headers = (
            ("reason", reason.encode()),
            ("detail", detail.encode("utf-8", "replace")[:1024]),
            ("mqtt-topic", mqtt_topic.encode("utf-8", "replace")),
        )
        return Route("dead-letter", self.kafka.dead_letters, key, headers, reason=reason)


@attrs.define
class OrderedAcks:
    """MQTT acks in arrival order (MQTT requires it) for records Kafka confirms in any order.

    ``arrive`` numbers each message; ``complete`` marks one done and returns the message ids
    that may now be acknowledged, oldest first: a done message waits for every older one.
    """

    _entries: deque[list[int]] = attrs.Factory(deque)  # [message id, done flag]
    _first: int = 0  # arrival number of _entries[0]

    def arrive(self, mid: int) -> int:
        """Register the next message; returns its arrival number for :meth:`complete`."""
        check_int("mid", mid, minimum=0)
        self._entries.append([mid, 0])
        return self._first + len(self._entries) - 1

    def complete(self, number: int) -> list[int]:
        """Mark message ``number`` done; return the ids to acknowledge now, in order."""
        check_int("number", number)
        index = number - self._first
        if not 0 <= index < len(self._entries):
            raise InvalidInputError(f"message {number} is not pending")
        self._entries[index][1] = 1
        ready = []
        entries = self._entries
        while entries and entries[0][1]:
            ready.append(entries.popleft()[0])
            self._first += 1
        return ready

    @property
    def pending(self) -> int:
        """Messages arrived and not yet acknowledged."""
        return len(self._entries)
