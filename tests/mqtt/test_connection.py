"""MqttConnection against real Mosquitto brokers: acks, outages, last will, TLS."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import tenacity

import iotdata
from iotdata import codec
from iotdata.errors import NoSubscribersError, PublishRefusedError, SubscribeRefusedError
from iotdata.model import Batch
from iotdata.mqtt import MqttConnection, MqttSettings, TlsSettings, Will
from tests._brokers import PrivateBroker, make_certificates, tls_config
from tests._helpers import run_cli

pytestmark = pytest.mark.mqtt
FAST = tenacity.wait_fixed(0.1)


class Inbox:
    """Messages a subscription received, waitable."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()

    def __call__(self, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10) -> list[tuple[str, bytes]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.messages) >= count, timeout), self.messages
            return list(self.messages)


def connect(url: str, client_id: str, **options: object) -> MqttConnection:
    options.setdefault("backoff", FAST)
    return MqttConnection.start(MqttSettings.from_url(url), client_id, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_publish_is_acknowledged_and_received(
    mqtt_url: str, unique_name: str, protocol: str
) -> None:
    url = f"{mqtt_url}?protocol={protocol}"
    inbox = Inbox()
    with connect(url, f"{unique_name}-sub") as subscriber, connect(url, unique_name) as publisher:
        subscriber.wait_connected(10)
        subscriber.subscribe(f"{unique_name}/#", inbox)
        publisher.wait_connected(10)
        subscriber.wait_subscribed(10)  # the SUBACK came: from now on messages reach it
        deliveries = [publisher.publish(f"{unique_name}/t", f"m{i}".encode()) for i in range(50)]
        for delivery in deliveries:
            delivery.wait(10)
        received = inbox.wait_for(50)
        assert [payload for _, payload in received] == [f"m{i}".encode() for i in range(50)]
        stats = publisher.statistics()
        assert (stats.published, stats.acknowledged, stats.connects) == (50, 50, 1)


def test_reconnects_after_an_outage_and_renews_subscriptions(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    events: list[str] = []
    inbox = Inbox()
    connection = connect(
        private_broker.url,
        unique_name,
        on_connect=lambda: events.append("up"),
        on_disconnect=lambda: events.append("down"),
    )
    with connection:
        connection.wait_connected(10)
        connection.subscribe(f"{unique_name}/#", inbox)
        private_broker.stop()
        deadline = time.monotonic() + 10
        while connection.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(iotdata.ConnectionLostError):
            connection.publish(f"{unique_name}/x", b"lost")
        with pytest.raises(iotdata.ConnectError, match="cannot reach"):
            connection.wait_connected(0.5)
        private_broker.start()
        connection.wait_subscribed(15)  # renewed after the reconnection
        connection.publish(f"{unique_name}/x", b"after").wait(10)
        assert inbox.wait_for(1) == [(f"{unique_name}/x", b"after")]
        assert events == ["up", "down", "up"]
        assert connection.statistics().connects == 2


def test_unacknowledged_deliveries_fail_when_the_connection_drops(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    process = private_broker.process
    assert process is not None
    with connect(private_broker.url, unique_name) as connection:
        connection.wait_connected(10)
        process.send_signal(signal.SIGSTOP)  # frozen: the socket stays open, no PUBACK comes
        deliveries = [connection.publish(f"{unique_name}/x", b"%d" % i) for i in range(10)]
        time.sleep(0.3)
        assert not any(d.done() for d in deliveries)
        assert connection.in_flight() == 10
        process.kill()
        process.wait()
        for delivery in deliveries:
            with pytest.raises(iotdata.ConnectionLostError):
                delivery.wait(10)
        assert connection.in_flight() == 0


def test_close_is_idempotent_and_final(mqtt_url: str, unique_name: str) -> None:
    connection = connect(mqtt_url, unique_name)
    connection.wait_connected(10)
    connection.close()
    connection.close()
    assert not connection.connected
    with pytest.raises(iotdata.ClosedError):
        connection.publish("x/y", b"")
    with pytest.raises(iotdata.ClosedError):
        connection.wait_connected(0.1)


def test_unreachable_broker_is_a_clear_error_and_close_interrupts_backoff(
    unique_name: str,
) -> None:
    slow = tenacity.wait_fixed(60)
    connection = connect("mqtt://127.0.0.1:1", unique_name, backoff=slow)
    with pytest.raises(iotdata.ConnectError, match=r"cannot reach mqtt://127.0.0.1:1"):
        connection.wait_connected(2)
    started = time.monotonic()
    connection.close()
    assert time.monotonic() - started < 5  # not stuck in the 60 s wait


def test_last_will_marks_a_vanished_client_offline(mqtt_url: str, unique_name: str) -> None:
    state_topic = f"{unique_name}/state"
    inbox = Inbox()
    child = f"""
import time
from iotdata.mqtt import MqttConnection, MqttSettings, Will
will = Will("{state_topic}", b"offline", retain=False)
c = MqttConnection.start(MqttSettings.from_url("{mqtt_url}", keepalive=1), "{unique_name}-dev",
                         will=will)
c.wait_connected(10)
print("connected", flush=True)
time.sleep(60)
"""
    with connect(mqtt_url, f"{unique_name}-watch") as watcher:
        watcher.wait_connected(10)
        watcher.subscribe(state_topic, inbox)
        process = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE)
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == b"connected\n"
            process.kill()  # no DISCONNECT: the broker must publish the will
        finally:
            process.wait()
        assert inbox.wait_for(1, timeout=15) == [(state_topic, b"offline")]


def test_a_clean_close_sends_no_will(mqtt_url: str, unique_name: str) -> None:
    inbox = Inbox()
    with connect(mqtt_url, f"{unique_name}-watch") as watcher:
        watcher.wait_connected(10)
        watcher.subscribe(f"{unique_name}/state", inbox)
        watcher.wait_subscribed(10)
        will = Will(f"{unique_name}/state", b"offline", retain=False)
        with connect(mqtt_url, unique_name, will=will) as device:
            device.wait_connected(10)
        # a will would be published as the device went; a marker after it comes behind it
        watcher.publish(f"{unique_name}/state", b"marker").wait(10)
        assert inbox.wait_for(1) == [(f"{unique_name}/state", b"marker")]


@pytest.fixture
def tls_broker(tmp_path: Path) -> tuple[PrivateBroker, Path]:
    certs = make_certificates(tmp_path / "pki")
    broker = PrivateBroker(tmp_path / "tls-broker", scheme="mqtts")
    broker.folder.mkdir()
    broker.extra_config = tls_config(certs, require_client_certificate=True)
    broker.start()
    yield broker, tmp_path / "pki"
    broker.stop()


def tls_settings(broker: PrivateBroker, pki: Path, prefix: str = "") -> MqttSettings:
    tls = TlsSettings(
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / f"{prefix}client.pem"),
        key_file=str(pki / f"{prefix}client.key"),
    )
    return MqttSettings.from_url(broker.url, tls=tls)


def test_mutual_tls_connects_with_a_certificate_the_broker_trusts(
    tls_broker: tuple[PrivateBroker, Path], unique_name: str
) -> None:
    broker, pki = tls_broker
    inbox = Inbox()
    subscriptions = {f"{unique_name}/x": inbox}
    with MqttConnection.start(
        tls_settings(broker, pki), unique_name, backoff=FAST, subscriptions=subscriptions
    ) as connection:
        connection.wait_subscribed(10)
        connection.publish(f"{unique_name}/x", b"secure").wait(10)
        assert inbox.wait_for(1) == [(f"{unique_name}/x", b"secure")]


def test_a_certificate_from_another_ca_is_refused_clearly(
    tls_broker: tuple[PrivateBroker, Path], unique_name: str
) -> None:
    broker, pki = tls_broker
    make_certificates(pki, prefix="rogue-")  # same names, signed by a CA the broker ignores
    settings = tls_settings(broker, pki, prefix="rogue-")
    with MqttConnection.start(settings, unique_name, backoff=FAST) as connection:
        with pytest.raises(iotdata.AuthenticationError):
            connection.wait_connected(5)
        assert not connection.connected


def test_tls_without_the_right_ca_is_refused(
    tls_broker: tuple[PrivateBroker, Path], unique_name: str
) -> None:
    broker = tls_broker[0]
    settings = MqttSettings.from_url(broker.url)  # system trust store: our CA is unknown
    with (
        MqttConnection.start(settings, unique_name, backoff=FAST) as connection,
        pytest.raises(iotdata.AuthenticationError, match="certificate verify failed"),
    ):
        connection.wait_connected(5)


def test_a_resumed_session_delivers_what_was_queued_while_away(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    """Messages queued for a persistent session arrive with the CONNACK: none may be lost."""
    inbox = Inbox()
    session = {"clean_start": False, "session_expiry": 600}
    with connect(private_broker.url, f"{unique_name}-cloud", **session) as cloud:
        cloud.wait_connected(10)
        cloud.subscribe(f"{unique_name}/#", inbox)
        cloud.wait_subscribed(10)  # in the session before the cloud side goes away
    with connect(private_broker.url, unique_name) as device:  # the cloud side is away
        device.wait_connected(10)
        for i in range(20):
            device.publish(f"{unique_name}/t", b"%d" % i).wait(10)
    with connect(private_broker.url, f"{unique_name}-cloud", **session) as cloud:
        cloud.subscribe(f"{unique_name}/#", inbox)  # registered before connecting
        cloud.wait_connected(10)
        received = inbox.wait_for(20)
    assert sorted(int(p) for _, p in received) == list(range(20))


def test_inspect_listens_over_mutual_tls_with_the_files_it_is_given(
    tls_broker: tuple[PrivateBroker, Path], unique_name: str
) -> None:
    """``--mqtt-ca/--mqtt-cert/--mqtt-key`` reach the connection: with them ``iotdata inspect``
    connects and receives a frame; without the client certificate the broker refuses it."""
    broker, pki = tls_broker
    frame = codec.encode(Batch.from_columns("dev-1", {"t": ([1_000_000], [1.5], [0])}))
    ca = ["--mqtt-ca", str(pki / "ca.pem")]
    mine = ["--mqtt-cert", str(pki / "client.pem"), "--mqtt-key", str(pki / "client.key")]
    listen = ["inspect", "--mqtt", broker.url, "--topic", f"{unique_name}/#", "--max", "1"]
    with subprocess.Popen(
        [sys.executable, "-m", "iotdata.cli", *listen, "--seconds", "60", *ca, *mine],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as inspect:
        with MqttConnection.start(tls_settings(broker, pki), unique_name, backoff=FAST) as device:
            device.wait_connected(10)
            deadline = time.monotonic() + 60
            while inspect.poll() is None and time.monotonic() < deadline:
                delivery = device.publish(f"{unique_name}/dev-1/telemetry", frame, qos=1)
                with contextlib.suppress(NoSubscribersError):  # until inspect subscribed
                    delivery.wait(10)
                time.sleep(0.5)
        out, err = inspect.communicate(timeout=30)
    assert inspect.returncode == 0, err
    assert out.splitlines()[-1] == "1 frames, 1 readings, 0 bad"
    refused = run_cli(*listen, "--seconds", "1", *ca)
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    plain = run_cli("inspect", "--mqtt", "mqtt://127.0.0.1:1883", "--topic", "x", *ca)
    assert plain.returncode == 1
    assert "need an mqtts:// URL" in plain.stderr


def test_a_puback_is_delivery_only_with_reason_0(private_broker: PrivateBroker) -> None:
    """0x10 (no matching subscribers: dropped) and 0x87 (not authorized) fail the delivery with
    the reason; a retained message with no subscriber is kept by the broker: delivered."""
    acl = private_broker.folder / "acl"
    acl.write_text("topic readwrite ok/#\n")
    private_broker.stop()
    private_broker.extra_config = f"acl_file {acl}\n"
    private_broker.start()
    with connect(private_broker.url, "pub") as publisher:
        publisher.wait_connected(10)
        with pytest.raises(NoSubscribersError) as nobody:
            publisher.publish("ok/nobody-listens", b"x").wait(10)
        assert (nobody.value.reason_code, nobody.value.retriable) == (0x10, True)
        with pytest.raises(PublishRefusedError) as denied:
            publisher.publish("denied/x", b"x").wait(10)
        assert (denied.value.reason_code, denied.value.retriable) == (0x87, False)
        publisher.publish("ok/state", b"kept", retain=True).wait(10)
        inbox = Inbox()
        with connect(private_broker.url, "sub", subscriptions={"ok/#": inbox}) as subscriber:
            subscriber.wait_subscribed(10)
            assert inbox.wait_for(1) == [("ok/state", b"kept")]
            publisher.publish("ok/heard", b"y").wait(10)
            assert inbox.wait_for(2)[1] == ("ok/heard", b"y")
        stats = publisher.statistics()
        assert (stats.acknowledged, stats.refused) == (2, 2)


def test_a_downgraded_subscription_is_an_error(private_broker: PrivateBroker) -> None:
    """A broker that grants QoS 0 for a QoS 1 subscription would deliver without redelivery:
    wait_subscribed says so instead of returning."""
    private_broker.stop()
    private_broker.extra_config = "max_qos 0\n"
    private_broker.start()
    with (
        connect(private_broker.url, "sub", subscriptions={"a/#": Inbox()}) as subscriber,
        pytest.raises(SubscribeRefusedError, match="granted QoS 0"),
    ):
        subscriber.wait_subscribed(10)


@pytest.mark.parametrize("topic_filter", ["$share/onlygroup", "a/#/b", "a+", ""])
def test_a_malformed_filter_is_refused_at_the_call(mqtt_url: str, topic_filter: str) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        connect(mqtt_url, "x", subscriptions={topic_filter: Inbox()})
    with connect(mqtt_url, "bad-filter") as connection:
        with pytest.raises(iotdata.InvalidInputError):
            connection.subscribe(topic_filter, Inbox())
        with pytest.raises(iotdata.InvalidInputError):
            connection.publish("a/+", b"x")


def test_a_device_keeps_refused_readings_until_the_broker_takes_them(
    private_broker: PrivateBroker, unique_name: str, tmp_path: Path
) -> None:
    """Not authorized (0x87): nothing is deleted from the queue; once the broker's ACL is fixed
    (and reloaded), the readings go through."""
    from iotdata.device import DeviceClient, QueueConfig  # noqa: PLC0415
    from iotdata.mqtt import Topics  # noqa: PLC0415

    acl = private_broker.folder / "acl"
    acl.write_text("topic readwrite other/#\n")
    private_broker.stop()
    private_broker.extra_config = f"acl_file {acl}\n"
    private_broker.start()
    topics = Topics(unique_name)
    inbox = Inbox()
    client = DeviceClient.connect(
        "pump-1", private_broker.url, queue=QueueConfig(path=tmp_path / "q.sqlite"),
        topics=topics, linger=0.01, backoff=FAST, resend_backoff=tenacity.wait_fixed(0.2),
    )  # fmt: skip
    try:
        accepted = [client.send("temp", float(i)) for i in range(50)]
        with pytest.raises(TimeoutError):
            client.flush(2)
        stats = client.statistics()
        assert stats.refused >= 1 and stats.queued == 50
        assert stats.last_refusal is not None and "not authorized (0x87)" in stats.last_refusal
        acl.write_text(f"topic readwrite {unique_name}/#\n")
        assert private_broker.process is not None
        private_broker.process.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL file
        with connect(
            private_broker.url, "cloud", subscriptions={topics.all_telemetry(): inbox}
        ) as cloud:
            cloud.wait_subscribed(10)
            client.flush(30)
            seqs = sorted(s for _, p in inbox.wait_for(1) for s in codec.decode(p).columns[0].seq)
            assert seqs == accepted
    finally:
        client.close()
