"""Nonsense the public entry points used to accept in silence: each case raises
``InvalidInputError`` naming the parameter, when the value enters (not at open, at the first
flush, or never).

The property test (tests/test_api_boundary.py) only asks for an ``IotDataError`` or a normal
return; these cases are values of the right type that make no sense: durations that are NaN,
negative or infinite, counts that are not whole or out of range, limits that contradict each
other, paths that would silently mean "a temporary database" or "the current folder", ports
outside 1..65535.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from iotdata import codec
from iotdata.demo import DemoOptions, run_demo
from iotdata.device import (
    Anomaly,
    DeviceClient,
    Downsample,
    FleetSimulator,
    QueueConfig,
    ReadingQueue,
    SyntheticSignal,
    save_anomalies,
)
from iotdata.errors import InvalidInputError, NotFoundError, WaitTimeoutError
from iotdata.gateway import GatewaySettings, KafkaTopics
from iotdata.kafka import KafkaSecurity, ProducerSettings, TopicSpec, ensure_topics
from iotdata.local import LocalLog
from iotdata.model import Batch, ts_to_datetime
from iotdata.mqtt import Delivery, LocalBroker, MqttConnection, MqttSettings, Topics, Will
from iotdata.sinks import (
    ConsoleSink,
    KafkaSink,
    MqttSink,
    ParquetSink,
    PostgresSink,
    RetryPolicy,
    RowLimits,
    SqliteSink,
)
from iotdata.stream import (
    FileCheckpoints,
    Flatline,
    MemorySource,
    Pipeline,
    QuantileSketch,
    Threshold,
    WindowOperator,
    Worker,
)
from iotdata.stream import MemoryCheckpoints as Memory

US = 1_000_000
BATCH = Batch.from_columns("dev-1", {"temp": ([US, 2 * US], [1.0, 2.0], [0, 1])})


def _client(**options: Any) -> Callable[[], object]:
    def connect() -> object:
        broker = LocalBroker()
        try:
            client = DeviceClient.connect("dev-1", broker, **options)
        finally:
            broker.close()
        client.close(timeout=0)
        return client

    return connect


def _run(**options: Any) -> Callable[[], object]:
    return lambda: asyncio.run(Pipeline().run(MemorySource([BATCH]), **options))


def _queue(**config: Any) -> Callable[[], object]:
    def open_queue() -> object:
        ReadingQueue.open("dev-1", QueueConfig(**config)).close()
        return None

    return open_queue


#: (the parameter named in the error, a call that must raise InvalidInputError).
CASES: list[tuple[str, str, Callable[[], object]]] = [
    # the examples
    ("DeviceClient linger NaN", "linger", _client(linger=math.nan)),
    ("DeviceClient max_in_flight 1.5", "max_in_flight", _client(max_in_flight=1.5)),
    ("SqliteSink empty path", "path", lambda: SqliteSink(path="")),
    ("LocalBroker max_packet_size -5", "max_packet_size", lambda: LocalBroker(max_packet_size=-5)),
    ("Threshold above 1 below 5", "below", lambda: Threshold(above=1.0, below=5.0)),
    ("Pipeline.run checkpoint_interval -1", "checkpoint_interval", _run(checkpoint_interval=-1)),
    ("QueueConfig first_seq -1", "first_seq", lambda: QueueConfig(first_seq=-1)),
    ("QueueConfig first_seq 2**64", "first_seq", lambda: QueueConfig(first_seq=2**64)),
    # paths that would silently mean a temporary or in-memory database, or the current folder
    ("SqliteSink :memory:", "path", lambda: SqliteSink(path=":memory:")),
    ("QueueConfig :memory:", "path", lambda: QueueConfig(path=":memory:")),
    ("QueueConfig empty path", "path", lambda: QueueConfig(path="")),
    ("ParquetSink empty root", "root", lambda: ParquetSink(root="")),
    ("FileCheckpoints empty folder", "folder", lambda: FileCheckpoints("")),
    ("LocalLog.open empty path", "path", lambda: LocalLog.open("")),
    ("save_anomalies empty path", "path", lambda: save_anomalies("", [])),  # type: ignore[arg-type]
    ("DemoOptions empty out", "out", lambda: DemoOptions(out="")),
    ("TlsSettings path of bytes", "ca_file", lambda: _tls(ca_file=b"ca.pem")),
    # durations that are NaN, infinite or not above 0
    (
        "MqttSettings connect_timeout NaN",
        "connect_timeout",
        lambda: MqttSettings(connect_timeout=math.nan),
    ),
    (
        "MqttSettings connect_timeout inf",
        "connect_timeout",
        lambda: MqttSettings(connect_timeout=math.inf),
    ),
    ("MqttSettings keepalive 1.5", "keepalive", lambda: MqttSettings(keepalive=1.5)),
    ("MqttSettings keepalive 70000", "keepalive", lambda: MqttSettings(keepalive=70_000)),
    (
        "ProducerSettings request_timeout inf",
        "request_timeout",
        lambda: ProducerSettings(request_timeout=math.inf),
    ),
    ("ProducerSettings linger inf", "linger", lambda: ProducerSettings(linger=math.inf)),
    ("MqttSink ack_timeout inf", "ack_timeout", lambda: MqttSink(ack_timeout=math.inf)),
    (
        "PostgresSink connect_timeout NaN",
        "connect_timeout",
        lambda: PostgresSink(dsn="x=y", connect_timeout=math.nan),
    ),
    ("DeviceClient.flush timeout NaN", "timeout", lambda: _flush(math.nan)),
    ("DeviceClient.flush timeout -1", "timeout", lambda: _flush(-1)),
    ("ReadingQueue.wait timeout NaN", "timeout", lambda: _wait(math.nan)),
    ("Delivery.wait timeout NaN", "timeout", lambda: Delivery(1).wait(math.nan)),
    ("MemorySource.poll timeout NaN", "timeout", lambda: _poll(math.nan, 10)),
    ("FleetSimulator.run progress_every 0", "progress_every", lambda: _simulate(progress_every=0)),
    ("FleetSimulator.run duration inf", "duration", lambda: _simulate(duration=math.inf)),
    (
        "ensure_topics timeout NaN",
        "timeout",
        lambda: asyncio.run(ensure_topics("127.0.0.1:1", timeout=math.nan)),
    ),
    ("Downsample grace NaN", "grace", lambda: Downsample(10.0, grace=math.nan)),
    (
        "Worker tick_interval NaN",
        "tick_interval",
        lambda: Worker(
            MemorySource([]), Pipeline().processor(), [], Memory(), tick_interval=math.nan
        ),
    ),
    # counts that must be whole, and in range
    (
        "MqttSettings max_packet_size 1.5",
        "max_packet_size",
        lambda: MqttSettings(max_packet_size=1.5),
    ),
    ("ProducerSettings batch_bytes 1.5", "batch_bytes", lambda: ProducerSettings(batch_bytes=1.5)),
    (
        "GatewaySettings max_in_flight 70000",
        "max_in_flight",
        lambda: GatewaySettings(max_in_flight=70_000),
    ),
    (
        "MqttConnection receive_maximum 0",
        "receive_maximum",
        lambda: MqttConnection(MqttSettings(), "c", receive_maximum=0),
    ),
    ("ConsoleSink flush_rows 0", "flush_rows", lambda: ConsoleSink(flush_rows=0)),
    ("ConsoleSink flush_rows 1.5", "flush_rows", lambda: ConsoleSink(flush_rows=1.5)),
    ("KafkaSink flush_rows 0", "flush_rows", lambda: KafkaSink(readings_topic="t", flush_rows=0)),
    (
        "ParquetSink compression_level 1.5",
        "compression_level",
        lambda: ParquetSink(root="pq", compression_level=1.5),
    ),
    ("train_dictionary dict_id 0", "dict_id", lambda: codec.train_dictionary([BATCH], dict_id=0)),
    ("Encoder level 23", "level", lambda: codec.Encoder(level=23)),
    ("TopicSpec retention_ms -5", "retention_ms", lambda: TopicSpec(name="t", retention_ms=-5)),
    ("SyntheticSignal index -1", "index", lambda: SyntheticSignal.for_device(-1)),
    ("QuantileSketch.worst_case_error k 0", "k", lambda: QuantileSketch.worst_case_error(10, 0)),
    ("DemoOptions anomaly_rate NaN", "anomaly_rate", lambda: DemoOptions(anomaly_rate=math.nan)),
    # counts that would allocate without bound
    (
        "LocalLog.create_topic partitions 2**64",
        "partitions",
        lambda: LocalLog().create_topic("t", 2**64),
    ),
    ("MemorySource partitions 2**64", "partitions", lambda: MemorySource([], partitions=2**64)),
    ("TopicSpec partitions 2**31", "partitions", lambda: TopicSpec(name="t", partitions=2**31)),
    (
        "FleetSimulator devices 2**64",
        "devices",
        lambda: FleetSimulator(mqtt="mqtt://h", devices=2**64, rate=1.0),
    ),
    (
        "FleetSimulator connections 2**64",
        "connections",
        lambda: FleetSimulator(mqtt="mqtt://h", devices=1, rate=1.0, connections=2**64),
    ),
    ("DemoOptions devices 2**64", "devices", lambda: DemoOptions(devices=2**64)),
    ("train_dictionary size 2**31", "size", lambda: codec.train_dictionary([BATCH], size=2**31)),
    # limits that contradict each other, or can never be met
    ("Threshold below equal to above", "below", lambda: Threshold(above=3.0, below=3.0)),
    ("Flatline negative epsilon", "epsilon", lambda: Flatline(count=3, epsilon=-1.0)),
    ("RowLimits ts_min above ts_max", "ts_min", lambda: RowLimits(ts_min=10, ts_max=0)),
    ("Anomaly ending before it starts", "ends before", lambda: Anomaly("d", "spike", 5, 1)),
    # ports outside 1..65535, and URLs that silently fell back to defaults
    ("MqttSettings port 0", "port", lambda: MqttSettings(port=0)),
    ("MqttSettings.from_url port 0", "port", lambda: MqttSettings.from_url("mqtt://127.0.0.1:0")),
    (
        "MqttSettings.from_url unknown field",
        "unknown",
        lambda: MqttSettings.from_url("mqtt://h", colour=1),
    ),
    (
        "GatewaySettings metrics_port 70000",
        "metrics_port",
        lambda: GatewaySettings(metrics_port=70_000),
    ),
    ("MqttSettings empty host", "host", lambda: MqttSettings(host="")),
    ("MqttSettings host with a path", "host", lambda: MqttSettings(host="broker/x")),
    # choices and flags that were coerced or ignored
    ("ConsoleSink format xml", "format", lambda: ConsoleSink(format="xml")),  # type: ignore[arg-type]
    (
        "LocalBroker.connect manual_ack 'yes'",
        "manual_ack",
        lambda: LocalBroker().connect("c", manual_ack="yes"),
    ),
    (
        "SqliteSink create_tables 'no'",
        "create_tables",
        lambda: SqliteSink(path="s.db", create_tables="no"),
    ),  # type: ignore[arg-type]
    ("run_demo options {}", "options", lambda: run_demo({})),  # type: ignore[arg-type]
    ("Will topic with a wildcard", "topic", lambda: Will("a/+", b"bye")),
    ("Topics prefix with a lone surrogate", "prefix", lambda: Topics(prefix="\ud800")),
    ("KafkaTopics telemetry with a slash", "Kafka topic", lambda: KafkaTopics(telemetry="a/b")),
    (
        "KafkaSecurity username 5",
        "username",
        lambda: KafkaSecurity(sasl_mechanism="PLAIN", username=5, password="p"),
    ),  # type: ignore[arg-type]
    ("RetryPolicy wait 5", "wait", lambda: RetryPolicy(wait=5)),  # type: ignore[arg-type]
    ("WindowOperator name ''", "name", lambda: WindowOperator(_tumbling(), name="")),
    (
        "Pipeline.to kinds 'reading'",
        "kinds",
        lambda: Pipeline().to(ConsoleSink(stream=io.StringIO()), kinds="reading"),
    ),
]


def _tls(**files: Any) -> object:
    from iotdata.mqtt import TlsSettings  # noqa: PLC0415

    return TlsSettings(**files)


def _tumbling() -> Any:
    from iotdata.stream import Tumbling  # noqa: PLC0415

    return Tumbling(60 * US)


def _flush(timeout: float) -> None:
    broker = LocalBroker()
    client = DeviceClient.connect("dev-1", broker)
    try:
        client.flush(timeout)
    finally:
        client.close(timeout=0)
        broker.close()


def _wait(timeout: float) -> None:
    with ReadingQueue.open("dev-1") as queue:
        queue.wait(timeout)


def _poll(timeout: float, max_records: int) -> None:
    asyncio.run(MemorySource([BATCH]).poll(timeout, max_records))


def _simulate(**options: Any) -> None:
    FleetSimulator(mqtt="mqtt://127.0.0.1:1", devices=1, rate=1.0).run(**options)


@pytest.mark.parametrize(
    ("name", "call"), [(n, c) for _, n, c in CASES], ids=[i for i, _, _ in CASES]
)
def test_nonsense_is_refused_naming_the_parameter(
    name: str, call: Callable[[], object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidInputError, match=name):
        call()


def test_a_flush_that_times_out_raises_an_iotdata_timeout_error() -> None:
    """The timeout is an IotDataError (WaitTimeoutError), and still a builtin TimeoutError."""
    broker = LocalBroker()  # nobody subscribes: the reading stays queued
    client = DeviceClient.connect("dev-1", broker)
    try:
        client.send("temp", 1.0)
        with pytest.raises(WaitTimeoutError) as caught:
            client.flush(0.05)
        assert isinstance(caught.value, TimeoutError)
        assert client.statistics().queued == 1
    finally:
        client.close(timeout=0)
        broker.close()


def test_an_infinite_wait_is_a_wait_for_ever_not_an_overflow() -> None:
    """``timeout=math.inf`` (or one beyond what the platform can wait) means "no timeout": the
    wait blocks until a reading arrives (threading raised OverflowError for it)."""
    with ReadingQueue.open("dev-1") as queue:
        outcome: list[object] = []

        def wait() -> None:
            try:
                outcome.append(queue.wait(math.inf))
            except Exception as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=wait, daemon=True)
        waiter.start()
        deadline = time.monotonic() + 10
        while not queue._cond._waiters and waiter.is_alive():  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the waiter never blocked"
            time.sleep(0.001)  # polling for the waiter to block, with a deadline
        queue.append("temp", 1, 1.0)
        waiter.join(10)
        assert outcome == [True]
        queue.append("temp", 2, 2.0)
        assert queue.wait(2.0**64) is True


def test_a_missing_metric_is_a_not_found_error_and_a_key_error() -> None:
    with pytest.raises(NotFoundError, match="humidity") as caught:
        BATCH.column("humidity")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "batch of 'dev-1' has no metric 'humidity'"


def test_timestamps_outside_the_years_of_a_datetime_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="years"):
        ts_to_datetime(2**63 - 1)
    with pytest.raises(InvalidInputError, match="int"):
        ts_to_datetime(1.5)  # type: ignore[arg-type]
    assert ts_to_datetime(0) == dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
