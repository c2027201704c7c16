"""The in-process broker: MQTT semantics iotdata relies on, and a DeviceClient over it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

import iotdata
from iotdata import codec
from iotdata.device import DeviceClient
from iotdata.mqtt import LocalBroker, Topics, Will


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()

    def __call__(self, message: Any) -> None:
        with self._cond:
            self.messages.append((message.topic, message.payload))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5) -> list[tuple[str, bytes]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return list(self.messages)


@pytest.fixture
def broker() -> LocalBroker:
    local = LocalBroker()
    yield local
    local.close()


def test_filters_retained_messages_and_clearing(broker: LocalBroker) -> None:
    publisher = broker.connect("pub")
    publisher.publish("a/b/c", b"1").wait(1)  # nobody listens: gone
    publisher.publish("a/x/state", b"retained", retain=True).wait(1)
    inbox = Inbox()
    broker.connect("sub").subscribe("a/+/state", inbox)
    assert inbox.wait_for(1) == [("a/x/state", b"retained")]
    publisher.publish("a/x/state", b"", retain=True)  # clears the retained message
    late = Inbox()
    broker.connect("late").subscribe("a/#", late)
    publisher.publish("a/y/z", b"2")
    assert late.wait_for(1) == [("a/y/z", b"2")]


def test_shared_subscriptions_split_the_messages(broker: LocalBroker) -> None:
    first, second = Inbox(), Inbox()
    broker.connect("g1").subscribe("$share/gw/t/+", first)
    broker.connect("g2").subscribe("$share/gw/t/+", second)
    publisher = broker.connect("pub")
    for i in range(10):
        publisher.publish(f"t/{i}", b"%d" % i)
    time.sleep(0.2)
    assert len(first.messages) + len(second.messages) == 10
    assert first.messages and second.messages


def test_last_will_on_a_drop_not_on_a_close(broker: LocalBroker) -> None:
    inbox = Inbox()
    broker.connect("watch").subscribe("dev/+/state", inbox)
    will = Will("dev/a/state", b"offline", retain=False)
    broker.connect("a", will=will).drop()
    assert inbox.wait_for(1) == [("dev/a/state", b"offline")]
    broker.connect("b", will=Will("dev/b/state", b"offline", retain=False)).close()
    time.sleep(0.2)
    assert len(inbox.messages) == 1
    closed = broker.connect("c")
    closed.close()
    with pytest.raises(iotdata.ClosedError):
        closed.publish("x", b"")


def test_a_device_client_runs_on_the_local_broker(broker: LocalBroker) -> None:
    topics = Topics("plant")
    seqs: list[int] = []
    lock = threading.Lock()

    def telemetry(message: Any) -> None:
        with lock:
            seqs.extend(r.seq for r in codec.decode(message.payload))

    cloud = broker.connect("cloud")
    cloud.subscribe(topics.all_telemetry(), telemetry)
    states, results, reports = Inbox(), Inbox(), Inbox()
    cloud.subscribe(topics.state("pump-1"), states)
    cloud.subscribe(topics.command_result("pump-1", "echo"), results)
    cloud.subscribe(topics.config_reported("pump-1"), reports)
    desired = {"version": 3, "config": {"rate": 2}}
    cloud.publish(topics.config_desired("pump-1"), json.dumps(desired).encode(), retain=True)
    applied: list[int] = []
    with DeviceClient.connect("pump-1", broker, topics=topics, linger=0.01) as client:
        client.command("echo")(lambda args: args)
        client.on_config(lambda config, version: applied.append(version))
        client.wait_connected(1)
        accepted = [client.send("temp", 20 + i / 10) for i in range(500)]
        client.flush(10)
        request = {"id": "r1", "args": [1, 2]}
        cloud.publish(topics.command("pump-1", "echo"), json.dumps(request).encode())
        reply = json.loads(results.wait_for(1)[0][1])
        assert reply == {"id": "r1", "ok": True, "result": [1, 2]}
        assert json.loads(reports.wait_for(1)[0][1]) == desired
    assert sorted(seqs) == accepted and applied == [3]
    # the birth, published although the in-process broker connects before connect() returns
    assert [json.loads(p) for _, p in states.wait_for(2)] == [{"online": True}, {"online": False}]


def test_bad_input_is_refused_at_the_call_that_receives_it(broker: LocalBroker) -> None:
    for device_id in ["", "a/b", "a+b", "#", "x\n", "x" * 129]:
        with pytest.raises(iotdata.InvalidInputError):
            DeviceClient.connect(device_id, broker)
    with DeviceClient.connect("pump-9", broker) as client:
        with pytest.raises(iotdata.InvalidInputError):
            client.send("temp", object())  # type: ignore[arg-type]
        with pytest.raises(iotdata.InvalidInputError):
            client.send("bad/metric\n", 1.0)
        with pytest.raises(iotdata.InvalidInputError):
            client.send("temp", 2**64)
        with pytest.raises(iotdata.InvalidInputError):
            client.send_many([("temp", "x" * 2000)])
        assert client.statistics().queued == 0  # nothing half-accepted
    with pytest.raises(iotdata.ClosedError):
        client.send("temp", 1.0)
