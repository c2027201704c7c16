"""The public surface of iotdata as entry points for tests/test_api_boundary.py.

Every public class and function of every public module is either here (its constructor, its
``from_*``/``open``/``connect``/``start`` classmethods, its main methods) or in :data:`EXEMPT`
with the reason. Entry points that take a host or URL get 127.0.0.1 with a closed port (or the
local test services) and are fuzzed in their other parameters only.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from iotdata import codec, demo, device, gateway, kafka, local, model, mqtt, sinks, stream, testing
from iotdata.model import Batch, Reading
from tests._boundary import WRONG_VALUES, Entry, closed_port, entry

PORT = closed_port()
CLOSED_MQTT = f"mqtt://127.0.0.1:{PORT}"
CLOSED_KAFKA = f"127.0.0.1:{PORT}"
MQTT_URL = os.environ.get("IOTDATA_MQTT_URL") or "mqtt://127.0.0.1:1883"
KAFKA_BOOTSTRAP = os.environ.get("IOTDATA_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
POSTGRES_DSN = (
    os.environ.get("IOTDATA_POSTGRES_DSN")
    or "postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test"
)

#: The topic the producer's methods are fuzzed on (made with one partition).
PRODUCER_TOPIC = "api-boundary-producer"
DEVICE = "dev-1"
TS = 1_700_000_000_000_000
BATCH = Batch.from_columns(DEVICE, {"temp": ([TS, TS + 1_000_000], [21.5, 22.0], [0, 1])})
READING = Reading(DEVICE, "temp", TS, 21.5, 0)
AGGREGATE = sinks.WindowAggregate(DEVICE, "temp", TS, TS + 60_000_000, 2, 21.5, 22.0, 43.5)
ALERT = sinks.Alert(DEVICE, "threshold:temp", TS, "temp", 99.0, 1.0)


def without(*values: Any) -> st.SearchStrategy[Any]:
    """The wrong values but these (e.g. None where it means "for ever" or "the defaults")."""
    return WRONG_VALUES.filter(lambda v: not any(v is x or v == x for x in values))


NO_NONE = without(None)
#: Wrong values for a timeout that may legitimately wait: None and huge ones wait for ever.
FINITE_WAIT = without(None, 2**64, float("inf"))


# ------------------------------------------------------------------------------- subjects


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="iotdata-api-") as folder:
        yield Path(folder)


@contextlib.contextmanager
def memory_queue() -> Iterator[device.ReadingQueue]:
    with device.ReadingQueue.open(DEVICE) as queue:
        queue.append("temp", TS, 1.0)
        yield queue


@contextlib.contextmanager
def file_queue() -> Iterator[device.ReadingQueue]:
    with workdir() as folder:
        config = device.QueueConfig(path=folder / "q.sqlite")
        with device.ReadingQueue.open(DEVICE, config) as queue:
            queue.append("temp", TS, 1.0)
            yield queue


@contextlib.contextmanager
def broker() -> Iterator[mqtt.LocalBroker]:
    local_broker = mqtt.LocalBroker()
    try:
        yield local_broker
    finally:
        local_broker.close()


@contextlib.contextmanager
def connection() -> Iterator[mqtt.LocalConnection]:
    with broker() as local_broker:
        client = local_broker.connect("c1", manual_ack=True)
        client.subscribe("t/#", lambda message: None)
        try:
            yield client
        finally:
            client.close()


def _client(edge: Any = None) -> Any:
    @contextlib.contextmanager
    def make() -> Iterator[device.DeviceClient]:
        with broker() as local_broker:
            cloud = local_broker.connect("cloud")
            cloud.subscribe("iotdata/+/telemetry", lambda message: None)
            client = device.DeviceClient.connect(DEVICE, local_broker, edge=edge, linger=0.0)
            try:
                client.send("temp", 1.0, TS)
                yield client
            finally:
                client.close(timeout=0)
                cloud.close()

    return make


@contextlib.contextmanager
def value(make: Any) -> Iterator[Any]:
    yield make()


def subject(make: Any) -> Any:
    """A subject that needs no closing: a fresh ``make()`` per call."""
    return lambda: value(make)


@contextlib.contextmanager
def local_log() -> Iterator[local.LocalLog]:
    log = local.LocalLog.memory()
    log.create_topic("t", 2)
    log.append("t", b"k", b"v", partition=0)
    try:
        yield log
    finally:
        log.close()


@contextlib.asynccontextmanager
async def consumer() -> AsyncIterator[local.LocalConsumer]:
    with local_log() as log:
        member = local.LocalConsumer(log, "g", "t")
        await member.start()
        try:
            yield member
        finally:
            await member.close()


@contextlib.asynccontextmanager
async def producer() -> AsyncIterator[local.LocalProducer]:
    with local_log() as log:
        member = local.LocalProducer(log)
        try:
            yield member
        finally:
            await member.close()


@contextlib.asynccontextmanager
async def opened(make: Any) -> AsyncIterator[Any]:
    """An open writer of the sink ``make(folder)`` builds (in a fresh temporary folder)."""
    with workdir() as folder:
        writer = await make(folder).open()
        try:
            yield writer
        finally:
            await writer.close()


@contextlib.asynccontextmanager
async def file_checkpoints() -> AsyncIterator[stream.FileCheckpoints]:
    with workdir() as folder:
        store = stream.FileCheckpoints(folder)
        try:
            yield store
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def amemory(make: Any) -> AsyncIterator[Any]:
    yield make()


class Listener:
    async def revoked(self, partitions: set[int]) -> None:
        return None

    async def assigned(self, partitions: set[int]) -> None:
        return None


class _Started:
    """A source started with a listener that ignores everything, closed afterwards."""

    def __init__(self, make: Any) -> None:
        self.make = make

    async def __aenter__(self) -> Any:
        self.source = self.make()
        await self.source.start(Listener())
        return self.source

    async def __aexit__(self, *exc_info: object) -> None:
        await self.source.close()


def started(make: Any) -> Any:
    return lambda: _Started(make)


@contextlib.contextmanager
def fleet() -> Iterator[device.FleetSimulator]:
    """A simulator of one device on the test broker, with a subscriber taking its telemetry."""
    topics = mqtt.Topics(prefix=f"api-{uuid.uuid4().hex[:8]}")
    cloud = mqtt.MqttConnection.start(mqtt.MqttSettings.from_url(MQTT_URL), topics.prefix)
    try:
        cloud.wait_connected(10)
        cloud.subscribe(topics.all_telemetry(), lambda message: None)
        cloud.wait_subscribed(10)
        yield device.FleetSimulator(mqtt=MQTT_URL, devices=1, rate=1000.0, topics=topics)
    finally:
        cloud.close()


@contextlib.asynccontextmanager
async def kafka_producer() -> AsyncIterator[kafka.PartitionedProducer]:
    """A producer on the test Kafka, with the topic it sends to."""
    await kafka.ensure_topics(KAFKA_BOOTSTRAP, kafka.TopicSpec(name=PRODUCER_TOPIC, partitions=1))
    started = await kafka.PartitionedProducer.start(bootstrap=KAFKA_BOOTSTRAP)
    try:
        yield started
    finally:
        await started.close()


@contextlib.contextmanager
def mqtt_connection() -> Iterator[mqtt.MqttConnection]:
    """A connection to the test broker, subscribed under a prefix of its own."""
    prefix = f"api-{uuid.uuid4().hex[:8]}"
    client = mqtt.MqttConnection.start(mqtt.MqttSettings.from_url(MQTT_URL), prefix)
    try:
        client.wait_connected(10)
        client.subscribe(f"{prefix}/#", lambda message: None)
        client.wait_subscribed(10)
        yield client
    finally:
        client.close()


def window() -> stream.WindowOperator:
    return stream.WindowOperator(stream.Tumbling(60_000_000), (stream.Count(), stream.Mean()))


def processor() -> stream.PipelineProcessor:
    pipeline = stream.Pipeline().dedup().window(stream.Tumbling(60_000_000), stream.Count())
    return pipeline.detect(stream.Threshold(above=30.0)).processor()


# ------------------------------------------------------------------------------- the entries

_MQTT = pytest.mark.mqtt
_KAFKA = pytest.mark.kafka
_POSTGRES = pytest.mark.postgres


def _model() -> list[Entry]:
    return [
        entry(model.Column, good={"metric": "temp", "ts": [TS], "values": [1.0], "seq": [0]}),
        entry(model.Batch, good={"device_id": DEVICE, "columns": list(BATCH.columns)}),
        entry(model.Batch.from_columns, good={"device_id": DEVICE, "columns": {}}),
        entry(model.Batch.from_readings, good={"readings": [READING]}),
        entry(
            model.Batch.column,
            name="Batch.column",
            subject=subject(lambda: BATCH),
            good={"metric": "temp"},
        ),
        entry(model.ts_from_datetime),
        entry(model.ts_to_datetime),
        entry(model.validate_device_id),
    ]


def _codec() -> list[Entry]:
    dictionary = codec.Dictionary(1, strings=(DEVICE, "temp"))
    return [
        entry(codec.Limits),
        entry(codec.Encoder),
        entry(codec.Encoder.encode, subject=subject(codec.Encoder), good={"batch": BATCH}),
        entry(codec.Encoder.body, subject=subject(codec.Encoder), good={"batch": BATCH}),
        entry(codec.Decoder),
        entry(codec.Decoder.decode, subject=subject(codec.Decoder), examples=80),
        entry(codec.Decoder.add_dictionary, subject=subject(codec.Decoder)),
        entry(codec.Dictionary, good={"id": 1}),
        entry(codec.Dictionary.from_bytes, examples=80),
        entry(codec.Dictionary.name_ref, subject=subject(lambda: dictionary)),
        entry(codec.Dictionary.ts_ref, subject=subject(lambda: dictionary)),
        entry(codec.Dictionary.name, subject=subject(lambda: dictionary)),
        entry(codec.Dictionary.ts, subject=subject(lambda: dictionary)),
        entry(codec.encode, good={"batch": BATCH}),
        entry(codec.decode, good={"data": codec.encode(BATCH)}),
        entry(codec.train_dictionary, good={"samples": [BATCH]}),
    ]


def _mqtt() -> list[Entry]:
    delivery = lambda: _done(mqtt.Delivery(1, "t"))  # noqa: E731
    local_connection_methods = [
        entry(
            mqtt.LocalConnection.publish, subject=connection, good={"topic": "t/a", "payload": b"x"}
        ),
        entry(
            mqtt.LocalConnection.subscribe,
            subject=connection,
            good={"topic_filter": "t/+", "handler": print},
        ),
        entry(mqtt.LocalConnection.ack, subject=connection, good={"mid": 1}),
        entry(mqtt.LocalConnection.wait_connected, subject=connection),
        entry(mqtt.LocalConnection.wait_subscribed, subject=connection),
        entry(mqtt.LocalConnection.close, subject=connection),
    ]
    return [
        entry(mqtt.Topics),
        *[
            entry(getattr(mqtt.Topics, method), subject=subject(mqtt.Topics), good=good)
            for method, good in [
                ("telemetry", {"device_id": DEVICE}),
                ("state", {"device_id": DEVICE}),
                ("command", {"device_id": DEVICE, "name": "reboot"}),
                ("command_result", {"device_id": DEVICE, "name": "reboot"}),
                ("commands", {"device_id": DEVICE}),
                ("config_desired", {"device_id": DEVICE}),
                ("config_reported", {"device_id": DEVICE}),
                ("all_telemetry", {}),
                ("parse", {"topic": "iotdata/dev-1/telemetry"}),
            ]
        ],
        entry(mqtt.MqttSettings),
        entry(
            mqtt.MqttSettings.from_url,
            good={"url": CLOSED_MQTT},
            examples=80,
            extra=(
                "host",
                "port",
                "username",
                "password",
                "tls",
                "protocol",
                "keepalive",
                "connect_timeout",
                "max_packet_size",
            ),
        ),
        entry(mqtt.TlsSettings),
        entry(
            lambda **files: mqtt.TlsSettings(**files).context(),
            name="TlsSettings(...).context()",
            signature=mqtt.TlsSettings,
            covers=mqtt.TlsSettings,
        ),
        entry(mqtt.Will, good={"topic": "t/will", "payload": b"bye"}),
        entry(mqtt.LocalBroker),
        entry(mqtt.LocalBroker.connect, subject=broker, good={"client_id": "c1"}),
        entry(mqtt.LocalBroker.publish, subject=broker, good={"topic": "t/a", "payload": b"x"}),
        *local_connection_methods,
        entry(mqtt.Delivery, good={"mid": 1}),
        entry(mqtt.Delivery.wait, subject=subject(delivery)),
        entry(mqtt.Delivery.add_done_callback, subject=subject(delivery), good={"callback": print}),
        entry(mqtt.backoff_delay, good={"wait": mqtt.default_backoff(), "attempt": 1}),
        entry(
            mqtt.MqttConnection.start,
            good={"settings": mqtt.MqttSettings.from_url(CLOSED_MQTT), "client_id": "c1"},
            extra=(
                "will",
                "clean_start",
                "session_expiry",
                "max_inflight",
                "manual_ack",
                "receive_maximum",
                "on_connect",
                "on_disconnect",
                "backoff",
                "subscriptions",
            ),
            pools={"settings": NO_NONE},
            examples=30,
        ),
    ]


def _mqtt_services() -> list[Entry]:
    """The real connection's methods, on the test broker (topics fuzzed, never hosts)."""
    return [
        entry(
            getattr(mqtt.MqttConnection, method),
            subject=mqtt_connection,
            good=good,
            examples=15,
            marks=(_MQTT,),
            pools={"timeout": FINITE_WAIT},
        )
        for method, good in [
            ("publish", {"topic": "api/x", "payload": b"x"}),
            ("subscribe", {"topic_filter": "api/+", "handler": print}),
            ("ack", {"mid": 1, "qos": 1, "generation": 0}),
            ("wait_connected", {}),
            ("wait_subscribed", {}),
            ("close", {}),
        ]
    ]


def _done(delivery: mqtt.Delivery) -> mqtt.Delivery:
    delivery._finish(None)
    return delivery


def _device() -> list[Entry]:
    edge = device.Pipeline(device.Deadband(0.5), device.RateLimit(100.0))
    operators = {
        "Deadband": (device.Deadband, {"threshold": 0.5}),
        "Downsample": (device.Downsample, {"window": 10.0}),
        "Filter": (device.Filter, {"predicate": bool}),
        "Map": (device.Map, {"function": lambda reading: reading}),
        "RateLimit": (device.RateLimit, {"max_per_second": 10.0}),
    }
    edge_entries = []
    for name, (cls, good) in operators.items():
        make = lambda cls=cls, good=good: cls(**good)  # noqa: E731
        edge_entries += [
            entry(cls, name=f"device.{name}", good=good),
            entry(
                cls.process,
                name=f"device.{name}.process",
                subject=subject(make),
                good={"reading": device.EdgeReading("temp", TS, 1.0)},
            ),
            entry(cls.tick, name=f"device.{name}.tick", subject=subject(make), good={"now": TS}),
        ]
    client_methods = []
    for label, make in (("", _client()), (" with edge", _client(edge))):
        client_methods += [
            entry(
                device.DeviceClient.send,
                name=f"DeviceClient.send{label}",
                subject=make,
                good={"metric": "temp", "value": 1.0},
                examples=80,
            ),
            entry(
                device.DeviceClient.send_many,
                name=f"DeviceClient.send_many{label}",
                subject=make,
                good={"readings": [("temp", 1.0)]},
                examples=80,
            ),
            entry(device.DeviceClient.tick, name=f"DeviceClient.tick{label}", subject=make),
        ]
    queue_config = device.QueueConfig
    return [
        entry(device.QueueConfig),
        entry(
            lambda **config: device.ReadingQueue.open(DEVICE, queue_config(**config)),
            name="ReadingQueue.open(config=QueueConfig(...))",
            signature=device.QueueConfig,
            covers=device.ReadingQueue,
            examples=80,
        ),
        entry(device.ReadingQueue.open, good={"device_id": DEVICE}),
        *[
            entry(
                getattr(device.ReadingQueue, method),
                name=f"ReadingQueue.{method}{label}",
                subject=make,
                good=good,
                examples=examples,
                pools={"timeout": FINITE_WAIT} if method == "wait" else {},
            )
            for label, make in (("", memory_queue), (" (file)", file_queue))
            for method, good, examples in [
                ("put", {"readings": [("temp", TS, 1.0)]}, 80),
                ("append", {"metric": "temp", "ts": TS, "value": 1.0}, 80),
                ("take", {"max_readings": 10}, 40),
                ("ack", {"lease": None}, 20),
                ("release", {"lease": None}, 20),
                ("quarantine", {"batch": BATCH, "reason": "test"}, 40),
                ("wait", {}, 40),
            ]
        ],
        entry(
            device.DeviceClient.connect,
            subject=broker,
            good=lambda local_broker: {"device_id": DEVICE, "mqtt": local_broker},
            bound=False,
            extra=(
                "topics",
                "edge",
                "dictionary",
                "batch_size",
                "linger",
                "max_in_flight",
                "clock",
                "require_subscriber",
                "resend_backoff",
                "backoff",
            ),
            examples=80,
        ),
        entry(
            device.DeviceClient,
            subject=memory_queue,
            bound=False,
            good=lambda queue: {
                "device_id": DEVICE,
                "settings": mqtt.MqttSettings(port=PORT),
                "queue": queue,
            },
            signature=device.DeviceClient,
            skip=("queue",),
            examples=60,
        ),
        *client_methods,
        entry(device.DeviceClient.flush, subject=_client(), pools={"timeout": FINITE_WAIT}),
        entry(
            device.DeviceClient.wait_connected, subject=_client(), pools={"timeout": FINITE_WAIT}
        ),
        entry(device.DeviceClient.close, subject=_client()),
        entry(device.DeviceClient.command, subject=_client(), good={"name": "reboot"}),
        entry(device.DeviceClient.on_config, subject=_client(), good={"handler": print}),
        entry(device.DeviceClient.asend, subject=_client(), good={"metric": "temp", "value": 1.0}),
        entry(
            device.DeviceClient.asend_many, subject=_client(), good={"readings": [("temp", 1.0)]}
        ),
        entry(device.DeviceClient.aflush, subject=_client(), pools={"timeout": FINITE_WAIT}),
        *edge_entries,
        entry(device.Pipeline),
        entry(
            device.Pipeline.process,
            name="device.Pipeline.process",
            subject=subject(lambda: edge),
            good={"reading": device.EdgeReading("temp", TS, 1.0)},
        ),
        entry(
            device.Pipeline.tick,
            name="device.Pipeline.tick",
            subject=subject(lambda: edge),
            good={"now": TS},
        ),
        entry(device.EdgeReading, good={"metric": "temp", "ts": TS, "value": 1.0}),
        entry(
            device.Anomaly,
            good={"device_id": DEVICE, "kind": "spike", "start_ts": TS, "end_ts": TS + 1},
        ),
        entry(device.SyntheticSignal.for_device, good={"index": 0}),
        entry(
            device.SyntheticSignal.reading,
            subject=subject(lambda: device.SyntheticSignal.for_device(0)),
            good={"ts": TS},
        ),
        entry(
            device.SyntheticSignal.expected,
            subject=subject(lambda: device.SyntheticSignal.for_device(0)),
            good={"ts": TS},
        ),
        entry(
            device.ReplaySignal,
            good={"device_id": DEVICE, "ts": (0, 1_000_000), "values": (1.0, 2.0)},
        ),
        entry(
            device.ReplaySignal.reading,
            subject=subject(lambda: device.ReplaySignal(DEVICE, (0, 1_000_000), (1.0, 2.0))),
            good={"ts": TS},
        ),
        entry(device.read_series),
        entry(device.load_anomalies),
        entry(device.save_anomalies, good={"path": "anomalies.json", "events": []}),
        entry(
            device.FleetSimulator,
            good={"mqtt": CLOSED_MQTT, "devices": 1, "rate": 1.0},
            examples=60,
        ),
        entry(
            device.FleetSimulator.run,
            subject=fleet,
            good={"readings_per_device": 1},
            pools={"readings_per_device": without(None, 2**64), "duration": without(None)},
            examples=15,
            marks=(_MQTT,),
        ),
    ]


def _kafka() -> list[Entry]:
    services = [
        entry(
            getattr(kafka.PartitionedProducer, method),
            subject=kafka_producer,
            good=good,
            examples=15,
            marks=(_KAFKA,),
            pools={"timeout": FINITE_WAIT},
        )
        for method, good in [
            ("send", {"topic": PRODUCER_TOPIC, "key": "dev-1", "value": b"x"}),
            ("partitions", {"topic": PRODUCER_TOPIC}),
            ("flush", {}),
            ("close", {}),
        ]
    ]
    return [
        *services,
        entry(kafka.ProducerSettings),
        entry(kafka.KafkaSecurity),
        entry(kafka.KafkaSecurity.from_env),
        entry(kafka.TlsSettings),
        entry(kafka.TopicSpec, good={"name": "t"}),
        entry(kafka.Partitioner),
        entry(
            kafka.Partitioner.partition,
            subject=subject(kafka.Partitioner),
            good={"key": b"k", "partitions": 3},
            examples=80,
        ),
        entry(kafka.partition_for, good={"key": b"k", "partitions": 3}, examples=80),
        entry(kafka.murmur2, good={"data": b"k"}),
        entry(
            kafka.ensure_topics,
            good={"bootstrap": CLOSED_KAFKA, "*specs": ()},
            params=("*specs", "timeout", "security"),
            examples=20,
        ),
        entry(
            kafka.PartitionedProducer.start,
            good={"settings": kafka.ProducerSettings(bootstrap=CLOSED_KAFKA)},
            pools={"settings": NO_NONE},
            extra=(
                "client_id",
                "compression",
                "idempotent",
                "linger",
                "batch_bytes",
                "max_request_bytes",
                "buffer_bytes",
                "delivery_timeout",
                "request_timeout",
                "security",
            ),
            examples=30,
        ),
    ]


def _gateway() -> list[Entry]:
    router = gateway.Router()
    frame = codec.encode(BATCH)
    return [
        entry(gateway.GatewaySettings),
        entry(gateway.KafkaTopics),
        entry(gateway.KafkaTopics.with_prefix),
        entry(gateway.Router),
        entry(
            gateway.Router.route,
            subject=subject(lambda: router),
            good={"mqtt_topic": "iotdata/dev-1/telemetry", "payload": frame},
            examples=80,
        ),
        entry(gateway.OrderedAcks),
        entry(gateway.OrderedAcks.arrive, subject=subject(gateway.OrderedAcks)),
        entry(gateway.OrderedAcks.complete, subject=subject(gateway.OrderedAcks)),
        entry(gateway.prometheus_text),
        entry(
            gateway.Gateway.start,
            good={
                "settings": gateway.GatewaySettings(
                    mqtt=mqtt.MqttSettings(port=PORT),
                    kafka=kafka.ProducerSettings(bootstrap=CLOSED_KAFKA),
                )
            },
            pools={"settings": NO_NONE},
            examples=15,
        ),
    ]


def _stream() -> list[Entry]:
    detectors = {
        "Threshold": (stream.Threshold, {"above": 30.0}),
        "ZScore": (stream.ZScore, {}),
        "RateOfChange": (stream.RateOfChange, {"max_rate": 1.0}),
        "Flatline": (stream.Flatline, {"count": 3}),
        "MissingData": (stream.MissingData, {"timeout": 10_000_000}),
    }
    detector_entries = []
    for name, (cls, good) in detectors.items():
        make = lambda cls=cls, good=good: cls(**good)  # noqa: E731
        detector_entries += [
            entry(cls, good=good, examples=60),
            entry(
                cls.process, name=f"{name}.process", subject=subject(make), good={"batch": BATCH}
            ),
            entry(
                cls.advance,
                name=f"{name}.advance",
                subject=subject(make),
                good={"partition": 0, "now": TS},
            ),
            entry(cls.restore, name=f"{name}.restore", subject=subject(make)),
            entry(cls.snapshot, name=f"{name}.snapshot", subject=subject(make)),
            entry(cls.forget, name=f"{name}.forget", subject=subject(make)),
        ]
    aggregations = [
        (stream.Count, {}),
        (stream.Sum, {}),
        (stream.Min, {}),
        (stream.Max, {}),
        (stream.Mean, {}),
        (stream.First, {}),
        (stream.Last, {}),
        (stream.Variance, {}),
        (stream.Stddev, {}),
        (stream.Quantiles, {"qs": (0.5,)}),
        (stream.ApproxQuantiles, {"qs": (0.5,)}),
    ]
    steps = {
        "Filter": (stream.Filter, {"predicate": bool}),
        "Map": (stream.Map, {"function": lambda reading: reading}),
        "FlatMap": (stream.FlatMap, {"function": lambda reading: [reading]}),
        "Dedup": (stream.Dedup, {}),
        "Chain": (stream.Chain, {"*steps": (stream.Dedup(),)}),
    }
    step_entries = []
    for name, (cls, good) in steps.items():
        make = lambda cls=cls, good=good: _build(cls, good)  # noqa: E731
        step_entries += [
            entry(cls, name=f"stream.{name}", good=good),
            entry(
                cls.process,
                name=f"stream.{name}.process",
                subject=subject(make),
                good={"batch": BATCH},
            ),
        ]
    pipeline = stream.Pipeline()
    sink = sinks.ConsoleSink(stream=io.StringIO())
    builder = [
        ("step", {"step": stream.Dedup()}),
        ("filter", {"predicate": bool}),
        ("map", {"function": lambda reading: reading}),
        ("flat_map", {"function": lambda reading: [reading]}),
        ("dedup", {}),
        ("window", {"window": stream.Tumbling(60_000_000), "*aggregations": (stream.Count(),)}),
        ("detect", {"*detectors": (stream.Threshold(above=1.0),)}),
        ("to", {"sink": sink}),
        ("late_to", {"sink": sink}),
    ]
    return [
        entry(stream.Tumbling, good={"size": 60_000_000}),
        entry(stream.Hopping, good={"size": 60_000_000, "hop": 10_000_000}),
        entry(stream.Session, good={"gap": 60_000_000}),
        *[entry(cls, good=good) for cls, good in aggregations],
        entry(stream.QuantileSketch),
        entry(stream.QuantileSketch.add, subject=subject(stream.QuantileSketch)),
        entry(stream.QuantileSketch.merge, subject=subject(stream.QuantileSketch)),
        entry(stream.QuantileSketch.quantile, subject=subject(stream.QuantileSketch)),
        entry(stream.QuantileSketch.from_state),
        entry(stream.QuantileSketch.worst_case_error, good={"n": 10, "k": 256}),
        entry(stream.WindowOperator, good={"window": stream.Tumbling(60_000_000)}, examples=60),
        *[
            entry(getattr(stream.WindowOperator, method), subject=subject(window), good=good)
            for method, good in [
                ("process", {"batch": BATCH}),
                ("advance", {"partition": 0, "now": TS}),
                ("flush", {}),
                ("watermark", {"partition": 0}),
                ("late_counts", {}),
                ("snapshot", {}),
                ("restore", {"data": b""}),
                ("forget", {"partitions": [0]}),
            ]
        ],
        *detector_entries,
        *step_entries,
        entry(stream.Pipeline, examples=60),
        *[
            entry(
                getattr(stream.Pipeline, method),
                name=f"stream.Pipeline.{method}",
                subject=subject(lambda: pipeline),
                good=good,
                examples=60,
            )
            for method, good in builder
        ],
        entry(stream.Route, good={"sink": sink}),
        entry(stream.PipelineProcessor),
        *[
            entry(getattr(stream.PipelineProcessor, method), subject=subject(processor), good=good)
            for method, good in [
                ("process", {"batch": BATCH}),
                ("tick", {"partition": 0, "now": TS}),
                ("flush", {"partition": 0}),
                ("snapshot", {"partition": 0}),
                ("restore", {"partition": 0, "data": None}),
                ("forget", {"partition": 0}),
            ]
        ],
        entry(
            stream.Pipeline.run,
            name="stream.Pipeline.run",
            subject=subject(lambda: stream.Pipeline().to(sinks.ConsoleSink(stream=io.StringIO()))),
            good={"source": stream.MemorySource([BATCH])},
            pools={"source": NO_NONE},
            examples=60,
        ),
        entry(
            stream.Worker,
            good=lambda _: {
                "source": stream.MemorySource([BATCH]),
                "processor": processor(),
                "routes": (),
                "checkpoints": stream.MemoryCheckpoints(),
            },
            examples=60,
        ),
        entry(
            stream.Worker.run,
            subject=subject(
                lambda: stream.Worker(
                    stream.MemorySource([BATCH]), processor(), (), stream.MemoryCheckpoints()
                )
            ),
        ),
        entry(stream.MemorySource, good={"items": [BATCH]}),
        entry(
            stream.MemorySource.poll,
            subject=started(lambda: stream.MemorySource([BATCH])),
            good={"timeout": 0.0, "max_records": 10},
            asynchronous=True,
        ),
        entry(stream.LocalSource, good={"topic": "t", "log": local.LocalLog(), "group": "g"}),
        entry(
            stream.LocalSource.poll,
            name="LocalSource.poll",
            subject=started(lambda: stream.LocalSource("t", log=_log_with_topic(), group="g")),
            good={"timeout": 0.0, "max_records": 10},
            asynchronous=True,
            pools={"timeout": FINITE_WAIT},
        ),
        entry(
            stream.LocalSource.start,
            subject=subject(lambda: stream.LocalSource("t", log=_log_with_topic(), group="g")),
        ),
        entry(
            stream.KafkaSource,
            good={"topic": "t", "bootstrap": CLOSED_KAFKA, "group": "g"},
            skip=("bootstrap",),
        ),
        entry(
            stream.KafkaSource.start,
            subject=subject(lambda: stream.KafkaSource("t", bootstrap=CLOSED_KAFKA, group="g")),
            examples=15,
        ),
        entry(
            stream.MqttSource, good={"settings": mqtt.MqttSettings(port=PORT), "client_id": "c1"}
        ),
        entry(
            stream.MqttSource.from_url,
            good={"url": CLOSED_MQTT, "client_id": "c1"},
            extra=("topics", "session_expiry", "max_in_flight"),
        ),
        entry(stream.Checkpoint, good={"topic": "t", "partition": 0, "offset": 0, "state": b""}),
        entry(stream.MemoryCheckpoints),
        entry(
            stream.MemoryCheckpoints.load,
            subject=lambda: amemory(stream.MemoryCheckpoints),
            good={"topic": "t", "partitions": [0]},
        ),
        entry(
            stream.MemoryCheckpoints.save,
            subject=lambda: amemory(stream.MemoryCheckpoints),
            good={"checkpoints": []},
        ),
        entry(stream.FileCheckpoints),
        entry(
            stream.FileCheckpoints.load,
            subject=file_checkpoints,
            good={"topic": "t", "partitions": [0]},
        ),
        entry(stream.FileCheckpoints.save, subject=file_checkpoints, good={"checkpoints": []}),
        entry(
            stream.KafkaCheckpoints,
            good={"bootstrap": CLOSED_KAFKA, "topic": "t"},
            skip=("bootstrap",),
        ),
        entry(
            stream.KafkaCheckpoints.load,
            subject=lambda: amemory(lambda: stream.KafkaCheckpoints(CLOSED_KAFKA, "t")),
            good={"topic": "t", "partitions": [0]},
            examples=15,
        ),
        entry(
            stream.SourceRecord, good={"topic": "t", "partition": 0, "offset": 0, "value": BATCH}
        ),
    ]


def _build(cls: Any, good: dict[str, Any]) -> Any:
    args = dict(good)
    return cls(*args.pop("*steps", ()), **args)


def _log_with_topic() -> local.LocalLog:
    log = local.LocalLog()
    log.create_topic("t", 1)
    return log


def _sinks() -> list[Entry]:
    records = [BATCH, AGGREGATE, ALERT]
    writers = {
        "SqliteWriter": lambda folder: sinks.SqliteSink(path=folder / "s.sqlite"),
        "ParquetWriter": lambda folder: sinks.ParquetSink(root=folder / "pq"),
        "ConsoleWriter": lambda folder: sinks.ConsoleSink(stream=io.StringIO()),
    }
    writer_entries = []
    for name, make in writers.items():
        for method, good in (("write", {"records": records}), ("sort_out", {"records": records})):
            writer_entries.append(
                entry(
                    getattr(sinks.BufferedWriter, method),
                    name=f"{name}.{method}",
                    subject=lambda make=make: opened(make),
                    good=good,
                    asynchronous=True,
                    examples=60,
                )
            )
    services = {
        "PostgresWriter": (
            lambda folder: sinks.PostgresSink(
                dsn=POSTGRES_DSN, table_prefix="api_boundary_", create_tables=True
            ),
            _POSTGRES,
        ),
        "KafkaWriter": (
            lambda folder: sinks.KafkaSink(kafka=KAFKA_BOOTSTRAP, readings_topic="api-boundary"),
            _KAFKA,
        ),
        "MqttWriter": (lambda folder: sinks.MqttSink(mqtt=MQTT_URL), _MQTT),
    }
    for name, (make, mark) in services.items():
        writer_entries.append(
            entry(
                sinks.BufferedWriter.write,
                name=f"{name}.write",
                subject=lambda make=make: opened(make),
                good={"records": records},
                asynchronous=True,
                examples=20,
                marks=(mark,),
            )
        )
    return [
        entry(sinks.SqliteSink, good={"path": "s.sqlite"}, examples=60),
        entry(
            lambda **options: sinks.SqliteSink(**{"path": "s.sqlite", **options}).open(),
            name="SqliteSink(...).open()",
            signature=sinks.SqliteSink,
            covers=sinks.SqliteSink,
            asynchronous=True,
            examples=60,
        ),
        entry(sinks.ParquetSink, good={"root": "pq"}, examples=60),
        entry(
            lambda **options: sinks.ParquetSink(**{"root": "pq", **options}).open(),
            name="ParquetSink(...).open()",
            signature=sinks.ParquetSink,
            covers=sinks.ParquetSink,
            asynchronous=True,
            examples=60,
        ),
        entry(sinks.ConsoleSink, examples=60),
        entry(
            lambda **options: sinks.ConsoleSink(**options).open(),
            name="ConsoleSink(...).open()",
            signature=sinks.ConsoleSink,
            covers=sinks.ConsoleSink,
            asynchronous=True,
            pools={"stream": NO_NONE},
        ),
        entry(sinks.PostgresSink, good={"dsn": f"postgresql://127.0.0.1:{PORT}/x"}, examples=60),
        entry(
            lambda **options: sinks.PostgresSink(
                **{
                    "dsn": f"postgresql://127.0.0.1:{PORT}/x",
                    "connect_timeout": 2.0,
                    "retry": sinks.RetryPolicy.never(),
                    **options,
                }
            ).open(),
            name="PostgresSink(...).open()",
            signature=sinks.PostgresSink,
            covers=sinks.PostgresSink,
            skip=("dsn",),
            asynchronous=True,
            examples=20,
        ),
        entry(sinks.KafkaSink, good={"kafka": CLOSED_KAFKA}, skip=("kafka",), examples=60),
        entry(
            lambda **options: sinks.KafkaSink(
                **{"kafka": CLOSED_KAFKA, "retry": sinks.RetryPolicy.never(), **options}
            ).open(),
            name="KafkaSink(...).open()",
            signature=sinks.KafkaSink,
            covers=sinks.KafkaSink,
            skip=("kafka",),
            asynchronous=True,
            examples=20,
        ),
        entry(sinks.MqttSink, good={"mqtt": CLOSED_MQTT}, examples=60),
        entry(sinks.RetryPolicy),
        entry(sinks.RowLimits),
        entry(sinks.Alert, good={"device_id": DEVICE, "detector": "d", "ts": TS}),
        entry(
            sinks.WindowAggregate,
            good={
                "device_id": DEVICE,
                "metric": "temp",
                "window_start": TS,
                "window_end": TS + 1,
                "count": 1,
                "min": 1.0,
                "max": 1.0,
                "sum": 1.0,
            },
        ),
        entry(
            sinks.DeadLetter, good={"record": READING, "reason": "nan", "detail": "d", "sink": "s"}
        ),
        entry(sinks.SourcePosition, good={"topic": "t", "partition": 0, "offset": 0}),
        *writer_entries,
    ]


def _local() -> list[Entry]:
    return [
        entry(local.LocalLog),
        entry(
            local.LocalLog.memory,
            extra=("retention", "session_timeout", "max_record_bytes", "clock", "monotonic"),
        ),
        entry(local.LocalLog.open, good={"path": "log"}, examples=60),
        entry(local.Retention),
        entry(local.TopicPartition, good={"topic": "t", "partition": 0}),
        entry(local.range_assign, good={"subscriptions": {}, "partitions": {}}),
        *[
            entry(getattr(local.LocalLog, method), subject=local_log, good=good, pools=pools)
            for method, good, pools in [
                ("create_topic", {"name": "u", "partitions": 1}, {}),
                ("partitions", {"topic": "t"}, {}),
                ("append", {"topic": "t", "key": b"k", "value": b"v"}, {}),
                ("read", {"topic": "t", "partition": 0, "offset": 0}, {}),
                ("start_offset", {"topic": "t", "partition": 0}, {}),
                ("end_offset", {"topic": "t", "partition": 0}, {}),
                ("wait", {"topic": "t", "partition": 0, "offset": 0}, {"timeout": FINITE_WAIT}),
                ("join", {"group": "g", "topics": "t", "member_id": "m"}, {}),
                ("leave", {"group": "g", "member_id": "m"}, {}),
                ("commit", {"group": "g", "offsets": {}}, {}),
                ("committed", {"group": "g", "topic": "t", "partition": 0}, {}),
            ]
        ],
        entry(
            local.LocalLog.wait_async,
            subject=local_log,
            good={"topic": "t", "partition": 0, "offset": 0},
            pools={"timeout": FINITE_WAIT},
        ),
        entry(
            local.LocalConsumer,
            subject=local_log,
            good=lambda log: {"log": log, "group": "g", "topics": "t"},
            bound=False,
        ),
        *[
            entry(
                getattr(local.LocalConsumer, method),
                subject=consumer,
                good=good,
                asynchronous=True,
                pools=pools,
            )
            for method, good, pools in [
                ("getmany", {}, {"timeout_ms": FINITE_WAIT}),
                ("seek", {"partition": local.TopicPartition("t", 0), "offset": 0}, {}),
                ("seek_to_beginning", {}, {}),
                ("position", {"partition": local.TopicPartition("t", 0)}, {}),
                ("committed", {"partition": local.TopicPartition("t", 0)}, {}),
                ("commit", {}, {}),
            ]
        ],
        entry(local.LocalProducer, subject=local_log, good=lambda log: {"log": log}, bound=False),
        entry(
            local.LocalProducer.send,
            subject=producer,
            good={"topic": "t", "key": b"k", "value": b"v"},
        ),
        entry(local.LocalProducer.flush, subject=producer, pools={"timeout": FINITE_WAIT}),
    ]


def _testing() -> list[Entry]:
    async def open_console() -> Any:
        return await sinks.ConsoleSink(stream=io.StringIO()).open()

    return [
        entry(testing.SinkContents),
        entry(
            testing.check_sink,
            good={"open_writer": open_console, "kinds": ("alerts",)},
            examples=20,
        ),
    ]


def _demo() -> list[Entry]:
    return [
        entry(demo.DemoOptions, examples=60),
        entry(
            demo.run_demo,
            good=lambda _: {
                "options": demo.DemoOptions(
                    out=Path(tempfile.mkdtemp()), devices=1, minutes=1, chart_devices=1
                )
            },
            pools={"options": NO_NONE},
            examples=10,
        ),
    ]


def all_entries() -> list[Entry]:
    return [
        *_model(),
        *_codec(),
        *_mqtt(),
        *_mqtt_services(),
        *_device(),
        *_kafka(),
        *_gateway(),
        *_stream(),
        *_sinks(),
        *_local(),
        *_testing(),
        *_demo(),
    ]


#: Public names not called with wrong values, and why.
EXEMPT: dict[str, str] = {
    # what the library builds and hands out: never an input
    "DeviceStats": "a snapshot the client returns",
    "QueueStats": "a snapshot the queue returns",
    "ConnectionStats": "a snapshot a connection returns",
    "LocalBrokerStats": "a snapshot the broker returns",
    "SimulationSummary": "a snapshot the simulator returns",
    "ProducerStats": "a snapshot the producer returns",
    "GatewayStats": "a snapshot the gateway returns (prometheus_text is fuzzed)",
    "WorkerStats": "a snapshot the worker returns",
    "SinkStats": "a snapshot a writer returns",
    "LogStats": "a snapshot the log returns",
    "ConsumerStats": "a snapshot a consumer returns",
    "DemoProgress": "a snapshot the demo reports",
    "DemoSummary": "a snapshot the demo returns",
    "Detection": "a row of the demo's summary",
    "Lease": "made by ReadingQueue.take (ack and release check their argument)",
    "Delivered": "made by the producers",
    "LocalMessage": "made by the local broker for handlers",
    "GroupAssignment": "made by LocalLog.join",
    "LogRecord": "made by LocalLog.read",
    "Emitted": "made by PipelineProcessor",
    "WindowOutput": "made by WindowOperator",
    "PendingRecords": "made by BufferedWriter for persist()",
    "ReadingColumn": "made by PendingRecords.columns()",
    "gateway.Route": "made by Router.route",
    "Reading": (
        "made per reading when a batch is iterated (a hot path); checked where readings enter "
        "(Batch.from_readings, a per-reading Map, the sinks)"
    ),
    # interfaces, abstract bases and type aliases
    "EdgeOperator": "a Protocol",
    "BatchStep": "a Protocol",
    "Detector": "a Protocol",
    "Stateful": "a Protocol",
    "Source": "a Protocol",
    "Processor": "a Protocol",
    "CheckpointStore": "a Protocol",
    "Aggregation": "a Protocol",
    "Sink": "a Protocol",
    "SinkWriter": "a Protocol",
    "RebalanceListener": "a Protocol",
    "BufferedWriter": "an abstract base (its write and sort_out are fuzzed through the sinks)",
    "Opening": "made by the sinks' open()",
    "Overflow": "an Enum",
    "Value": "a type alias",
    "Duration": "a type alias",
    "Window": "a type alias",
    "AggregateValue": "a type alias",
    "Record": "a type alias",
    "RecordKind": "a type alias",
    "Records": "a type alias",
    "ValueKind": "a type alias",
    "Durability": "a type alias",
    "OffsetReset": "a type alias",
    # connections to real services, fuzzed where they start (MqttConnection.start,
    # PartitionedProducer.start, Gateway.start, the sinks' open())
    "MqttConnection": "built by MqttConnection.start (fuzzed)",
    "PartitionedProducer": "built by PartitionedProducer.start (fuzzed)",
    "Gateway": "built by Gateway.start (fuzzed)",
    "ConsoleWriter": "built by ConsoleSink.open (its write is fuzzed)",
    "SqliteWriter": "built by SqliteSink.open (its write is fuzzed)",
    "ParquetWriter": "built by ParquetSink.open (its write is fuzzed)",
    "PostgresWriter": "built by PostgresSink.open (its write is fuzzed)",
    "KafkaWriter": "built by KafkaSink.open (its write is fuzzed)",
    "MqttWriter": "built by MqttSink.open (its write is fuzzed)",
    "default_backoff": "takes no arguments",
    "refusal_backoff": "takes no arguments",
}
