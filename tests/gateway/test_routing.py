"""The gateway's protocol logic, without I/O: routing with dead-letter reasons, ordered acks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata import codec
from iotdata.errors import InvalidInputError
from iotdata.gateway import CONTENT_TYPE, KafkaTopics, OrderedAcks, Router
from iotdata.model import Batch
from iotdata.mqtt import Topics

TOPICS = Topics("site")
KAFKA = KafkaTopics.with_prefix("site")


def frame(device_id: str, count: int = 10) -> bytes:
    ts = list(range(0, count * 1000, 1000))
    return codec.encode(
        Batch.from_columns(device_id, {"temp": (ts, [20.0 + i for i in range(count)], ts)})
    )


def headers(route: object) -> dict[str, bytes]:
    return dict(route.headers)  # type: ignore[attr-defined]


def test_valid_telemetry_is_forwarded_keyed_by_device() -> None:
    route = Router(TOPICS, KAFKA).route("site/pump-1/telemetry", frame("pump-1", 25))
    assert (route.kind, route.topic, route.key, route.readings) == (
        "telemetry",
        "site.telemetry",
        b"pump-1",
        25,
    )
    assert headers(route)["content-type"] == CONTENT_TYPE
    assert headers(route)["format-version"] == b"1"


def test_presence_goes_to_the_devices_topic() -> None:
    route = Router(TOPICS, KAFKA).route("site/pump-1/state", b'{"online": true}')
    assert (route.kind, route.topic, route.key) == ("presence", "site.devices", b"pump-1")


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "detail"),
    [
        ("site/pump-1/telemetry", b"not a frame", "malformed", b"bad magic"),
        ("site/pump-1/telemetry", frame("pump-1")[:-3], "malformed", b"checksum"),
        ("site/pump-1/telemetry", frame("pump-2"), "spoofed", b"'pump-2'"),
        ("site/pump-1/telemetry", frame("pump-1", 5000), "oversized", b"max_readings"),
        ("site/pump-1/telemetry", b"\x00" * 70_000, "oversized", b"max_frame_bytes"),
        ("other/pump-1/telemetry", frame("pump-1"), "bad-topic", b"not a topic"),
        ("site/pump-1/commands/reboot", b"{}", "bad-topic", b"not forwarded"),
        ("site/pump-1/state", b"x" * 5000, "bad-presence", b"5000-byte"),
    ],
)
def test_bad_messages_are_dead_lettered_with_a_reason(
    topic: str, payload: bytes, reason: str, detail: bytes
) -> None:
    limits = codec.Limits(max_frame_bytes=65_536, max_readings=1000)
    route = Router(TOPICS, KAFKA, limits=limits).route(topic, payload)
    assert (route.kind, route.topic, route.reason) == ("dead-letter", "site.dlq", reason)
    assert headers(route)["reason"] == reason.encode()
    assert detail in headers(route)["detail"]
    assert headers(route)["mqtt-topic"] == topic.encode()


def test_a_frame_with_an_unknown_dictionary_is_malformed_until_the_router_has_it() -> None:
    batches = [Batch.from_columns(f"pump-{i}", {"temp": ([i], [20.0], [i])}) for i in range(20)]
    dictionary = codec.train_dictionary(batches)
    payload = codec.encode(batches[3], dictionary=dictionary)
    assert Router(TOPICS, KAFKA).route("site/pump-3/telemetry", payload).reason == "malformed"
    known = Router(TOPICS, KAFKA, dictionaries=(dictionary,))
    assert known.route("site/pump-3/telemetry", payload).kind == "telemetry"


@given(st.integers(min_value=0, max_value=200), st.randoms(use_true_random=False))
def test_acks_come_out_in_arrival_order_whatever_order_kafka_confirms(
    count: int, shuffle: random.Random
) -> None:
    acks = OrderedAcks()
    mids = [(7 * i) % 65_535 + 1 for i in range(count)]  # message ids repeat after wrapping
    numbers = [acks.arrive(mid) for mid in mids]
    order = numbers[:]
    shuffle.shuffle(order)
    released: list[int] = []
    done: set[int] = set()
    for number in order:
        done.add(number)
        ready = acks.complete(number)
        released.extend(ready)
        # exactly the completed prefix has been released, never a message past a pending one
        prefix = 0
        while prefix < count and prefix in done:
            prefix += 1
        assert released == mids[:prefix]
    assert released == mids and acks.pending == 0


def test_acks_refuse_an_unknown_or_repeated_completion() -> None:
    acks = OrderedAcks()
    first = acks.arrive(10)
    assert acks.complete(first) == [10]
    with pytest.raises(InvalidInputError):
        acks.complete(first)
    with pytest.raises(InvalidInputError):
        acks.complete(5)
