"""Mosquitto round trip: QoS 1 messages reach a subscriber once, in order, byte for byte."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

COUNT = 500
WAIT = 20.0  # seconds for any one thing the broker should do


def payload(i: int) -> bytes:
    """Distinct binary payloads of varying length, some with NUL and non-UTF-8 bytes."""
    return b"%06d|" % i + bytes([i % 256]) * (i % 64)


class Recorder:
    """Collects what a paho client's callbacks report, with events to wait on."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.all_received = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.granted: list[ReasonCode] = []
        self.messages: list[tuple[str, int, bytes]] = []

    def on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.connect_reason = reason
        self.connected.set()

    def on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any
    ) -> None:
        self.granted = list(reasons)
        self.subscribed.set()

    def on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        # Called on the client's network thread; the test reads the list after loop_stop().
        self.messages.append((message.topic, message.qos, message.payload))
        if len(self.messages) >= self.expected:
            self.all_received.set()


@contextmanager
def running_client(
    url: str, protocol: int, client_id: str, recorder: Recorder
) -> Iterator[mqtt.Client]:
    """A connected paho client with its network loop on a thread, disconnected on exit."""
    parts = urlsplit(url)
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTProtocolVersion(protocol),
    )
    client.on_connect = recorder.on_connect
    client.on_subscribe = recorder.on_subscribe
    client.on_message = recorder.on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
    client.loop_start()
    try:
        assert recorder.connected.wait(WAIT), f"{client_id}: no CONNACK within {WAIT} s"
        assert recorder.connect_reason is not None
        assert not recorder.connect_reason.is_failure, f"{client_id}: {recorder.connect_reason}"
        yield client
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv311, mqtt.MQTTv5], ids=["mqtt311", "mqtt5"])
def test_qos1_messages_arrive_once_in_order(mqtt_url: str, unique_name: str, protocol: int) -> None:
    sent = [(f"{unique_name}/dev-{i % 3}/telemetry", payload(i)) for i in range(COUNT)]
    subscriber_events = Recorder(expected=COUNT)

    with (
        running_client(mqtt_url, protocol, f"{unique_name}-sub", subscriber_events) as subscriber,
        running_client(mqtt_url, protocol, f"{unique_name}-pub", Recorder()) as publisher,
    ):
        subscriber.subscribe(f"{unique_name}/#", qos=1)
        assert subscriber_events.subscribed.wait(WAIT), "no SUBACK"
        assert [reason.value for reason in subscriber_events.granted] == [1], "QoS 1 not granted"

        infos = [publisher.publish(topic, data, qos=1) for topic, data in sent]
        for info in infos:
            info.wait_for_publish(WAIT)  # raises if the message could not be sent
            assert info.is_published(), f"no PUBACK for message id {info.mid}"

        received = subscriber_events.all_received.wait(WAIT)
        assert received, f"{len(subscriber_events.messages)} of {COUNT} messages arrived"

    # After loop_stop(): every message exactly once, in publish order, unchanged.
    assert subscriber_events.messages == [(topic, 1, data) for topic, data in sent]
