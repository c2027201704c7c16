"""The in-process broker: MQTT semantics iotdata relies on, and a DeviceClient over it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import iotdata
from iotdata import codec
from iotdata.device import DeviceClient
from iotdata.errors import NoSubscribersError, PublishRefusedError
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
    with pytest.raises(NoSubscribersError):  # nobody listens: gone, and the publisher hears so
        publisher.publish("a/b/c", b"1").wait(1)
    publisher.publish("a/x/state", b"retained", retain=True).wait(1)  # kept: delivered
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
    for delivery in [publisher.publish(f"t/{i}", b"%d" % i) for i in range(10)]:
        delivery.wait(5)  # complete once the member it went to has taken it
    assert len(first.messages) + len(second.messages) == 10
    assert first.messages and second.messages


def test_last_will_on_a_drop_not_on_a_close(broker: LocalBroker) -> None:
    inbox = Inbox()
    broker.connect("watch").subscribe("dev/+/state", inbox)
    will = Will("dev/a/state", b"offline", retain=False)
    broker.connect("a", will=will).drop()
    assert inbox.wait_for(1) == [("dev/a/state", b"offline")]
    broker.connect("b", will=Will("dev/b/state", b"offline", retain=False)).close()
    broker.connect("c2").publish("dev/c2/state", b"marker").wait(5)  # in order, behind a will
    assert [p for _, p in inbox.wait_for(2)] == [b"offline", b"marker"]
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


class Gate:
    """A handler that holds every message until opened: a subscriber as slow as we like."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)
        self.taken: list[bytes] = []

    def __call__(self, message: Any) -> None:
        self.entered.release()
        assert self.opened.wait(10)
        self.taken.append(message.payload)


def test_a_delivery_completes_only_once_the_subscriber_took_the_message(
    broker: LocalBroker,
) -> None:
    gate = Gate()
    broker.connect("slow").subscribe("t/#", gate)
    delivery = broker.connect("pub").publish("t/1", b"x")
    assert gate.entered.acquire(timeout=5)  # the handler has it, and has not returned
    assert not delivery.done()
    gate.opened.set()
    delivery.wait(5)
    assert gate.taken == [b"x"]


def test_a_manual_ack_subscriber_takes_a_message_when_it_acknowledges(
    broker: LocalBroker,
) -> None:
    arrived: list[Any] = []
    got = threading.Event()

    def keep(message: Any) -> None:
        arrived.append(message)
        got.set()

    bridge = broker.connect("bridge", manual_ack=True)
    bridge.subscribe("t/#", keep)
    delivery = broker.connect("pub").publish("t/1", b"x")
    assert got.wait(5)
    assert not delivery.done()  # handled, but not yet safe downstream
    assert bridge.ack(arrived[0].mid, 1, bridge.generation)
    delivery.wait(5)
    assert not bridge.ack(arrived[0].mid, 1, bridge.generation)  # once only


def test_a_subscriber_that_goes_away_fails_what_it_had_not_taken(broker: LocalBroker) -> None:
    got = threading.Event()
    bridge = broker.connect("bridge", manual_ack=True)
    bridge.subscribe("t/#", lambda message: got.set())
    delivery = broker.connect("pub").publish("t/1", b"x")
    assert got.wait(5)
    bridge.drop()
    with pytest.raises(NoSubscribersError):
        delivery.wait(5)  # the publisher keeps it and sends it again


def test_the_broker_holds_at_most_max_queued_messages() -> None:
    broker = LocalBroker(max_queued=3)
    gate = Gate()
    try:
        broker.connect("slow").subscribe("t/#", gate)
        publisher = broker.connect("pub")
        held = [publisher.publish("t/1", b"%d" % i) for i in range(3)]
        refused = publisher.publish("t/1", b"over")
        with pytest.raises(PublishRefusedError) as caught:
            refused.wait(5)
        assert caught.value.reason_code == 0x97 and caught.value.retriable
        assert broker.statistics().held == 3 and broker.statistics().refused == 1
        gate.opened.set()
        for delivery in held:
            delivery.wait(5)
        assert gate.taken == [b"0", b"1", b"2"]
        publisher.publish("t/1", b"room again").wait(5)
    finally:
        gate.opened.set()
        broker.close()


def test_a_closed_broker_refuses_connections_and_fails_what_it_held() -> None:
    broker = LocalBroker()
    gate = Gate()
    broker.connect("slow").subscribe("t/#", gate)
    publisher = broker.connect("pub")
    first = publisher.publish("t/1", b"taken by the handler")
    second = publisher.publish("t/1", b"still queued")
    assert gate.entered.acquire(timeout=5)
    broker.close()
    gate.opened.set()
    first.wait(5)  # its handler finished it: taken
    with pytest.raises(iotdata.IotDataError) as caught:
        second.wait(5)  # never reached a handler: the publisher keeps it, to send again
    assert caught.value.retriable
    with pytest.raises(iotdata.ConnectionLostError):
        publisher.publish("t/1", b"after")
    with pytest.raises(iotdata.ClosedError):
        broker.connect("late")
    broker.close()  # twice is fine


@pytest.mark.parametrize(
    "topic_filter", ["$share/onlygroup", "$share//t/#", "a/#/b", "a+/b", "", "bad\x00"]
)
def test_a_malformed_subscription_is_refused_and_leaves_the_broker_working(
    broker: LocalBroker, topic_filter: str
) -> None:
    subscriber = broker.connect("sub")
    with pytest.raises(iotdata.InvalidInputError):
        subscriber.subscribe(topic_filter, lambda message: None)
    inbox = Inbox()
    subscriber.subscribe("ok/+", inbox)
    broker.connect("pub").publish("ok/1", b"fine").wait(5)
    assert inbox.wait_for(1) == [("ok/1", b"fine")]


@pytest.mark.parametrize("topic", ["a/+", "a/#", "", "x\x00"])
def test_publishing_to_a_bad_topic_is_refused(broker: LocalBroker, topic: str) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        broker.connect("pub").publish(topic, b"x")


@pytest.mark.parametrize("bad", [{"max_packet_size": -5}, {"max_queued": 0}, {"max_queued": 1.5}])
def test_broker_bounds_are_checked(bad: dict[str, Any]) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        LocalBroker(**bad)


CHILD = """
import os, sys, time
from iotdata import codec
from iotdata.device import DeviceClient, QueueConfig
from iotdata.mqtt import LocalBroker, Topics
queue_path, out_path, mode = sys.argv[1:4]
broker = LocalBroker()
out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
def slow_cloud(message):
    batch = codec.decode(message.payload)
    time.sleep(0.005)  # a subscriber slower than the device
    os.write(out, "".join(f"{r.seq}\\n" for r in batch).encode())
broker.connect("cloud").subscribe(Topics().all_telemetry(), slow_cloud)
client = DeviceClient.connect(
    "pump-1", broker, queue=QueueConfig(path=queue_path), batch_size=50, linger=0.01
)
if mode == "drain":
    client.flush(120)
    client.close()
    print("drained", flush=True)
    sys.exit(0)
while True:
    print(client.send("temp", 1.0), flush=True)
"""


def test_sigkill_with_a_slow_subscriber_loses_no_accepted_reading(tmp_path: Path) -> None:
    """The in-process broker acknowledges only what its subscriber took, so the device queue
    keeps everything else across a SIGKILL (the old broker acknowledged on entering its queue:
    about 40% of the accepted readings were lost this way)."""
    queue_path, out_path = tmp_path / "q.sqlite", tmp_path / "arrived.txt"
    argv = [sys.executable, "-c", CHILD, str(queue_path), str(out_path)]
    child = subprocess.Popen([*argv, "run"], stdout=subprocess.PIPE, text=True)
    accepted: list[int] = []
    try:
        assert child.stdout is not None
        while len(accepted) < 5000:
            line = child.stdout.readline()
            assert line, "the device process died early"
            accepted.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    arrived_before = len(out_path.read_text().split())
    assert arrived_before < len(accepted)  # the kill came while readings were still queued
    drained = subprocess.run(
        [*argv, "drain"], check=False, capture_output=True, text=True, timeout=180
    )
    assert drained.stdout.strip() == "drained", drained.stderr
    arrived = Counter(int(seq) for seq in out_path.read_text().split())
    missing = [seq for seq in accepted if seq not in arrived]
    assert not missing, f"{len(missing)} accepted readings lost, e.g. {missing[:5]}"
