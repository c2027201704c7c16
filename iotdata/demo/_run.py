"""The demo's run: fleet -> device clients -> bridge -> log -> pipeline -> stores -> report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs

from iotdata._checks import (
    check_callable,
    check_instance,
    check_int,
    check_number,
    check_path,
    check_text,
    optional,
    validated,
)
from iotdata.demo._stores import PG_PREFIX, StoredData, read_back
from iotdata.device import Anomaly, DeviceClient, QueueConfig, SyntheticSignal
from iotdata.errors import ConnectError, InvalidInputError
from iotdata.gateway import KafkaTopics, Router
from iotdata.mqtt import LocalBroker, Topics
from iotdata.stream import (
    Count,
    Flatline,
    MissingData,
    Pipeline,
    Stddev,
    Tumbling,
    WorkerStats,
    ZScore,
)

__all__ = ["DemoOptions", "DemoProgress", "DemoSummary", "Detection", "run_demo"]

SECOND = 1_000_000
#: Every run's readings start here (2024-05-01 00:00 UTC): the same seed, the same data.
START_TS = 1_714_521_600 * SECOND
METRIC = "temperature"
PARTITIONS = 4
MARKER = ".iotdata-demo"
#: The most simulated minutes: readings stay before the year 10000 (what the stores take).
MAX_MINUTES = (253_402_300_800 * SECOND - START_TS) // (60 * SECOND)
#: Which detectors are meant to find which injected kind (for the report).
FINDS = {"spike": "zscore", "level_shift": "zscore", "stuck": "flatline", "dropout": "missing"}


#: Most devices a demo simulates (each is a device client with its queue in this process).
_MAX_DEVICES = 100_000


def _folder(value: object) -> Path:
    return Path(check_path("out", value))


def _positive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidInputError(f"{attribute.name} must be a positive number, got {value!r}")


@attrs.frozen
class DemoOptions:
    """What :func:`run_demo` runs. ``out`` is the demo's folder: created, or emptied when an
    earlier demo made it; another folder that is not empty is refused. ``mqtt`` (a broker URL)
    needs ``kafka`` (bootstrap servers): the gateway bridges the two. ``postgres`` (a DSN)
    replaces SQLite as the warm store. ``interval`` is from one microsecond (the unit of
    timestamps) to the whole run, and ``minutes`` at most :data:`MAX_MINUTES`."""

    out: Path = attrs.field(default=Path("iotdata-demo"), converter=_folder)
    devices: int = attrs.field(
        default=200, validator=validated(check_int, minimum=1, maximum=_MAX_DEVICES)
    )
    minutes: int = attrs.field(default=120, validator=_positive)
    #: Seconds between two readings of a device.
    interval: float = attrs.field(default=5.0, validator=_positive)
    seed: int = attrs.field(default=1, validator=validated(check_int))
    #: Chance that a reading starts an anomaly (spike, level shift, stuck, dropout).
    anomaly_rate: float = attrs.field(
        default=0.002, validator=validated(check_number, minimum=0.0, maximum=1.0)
    )
    mqtt: str | None = attrs.field(default=None, validator=optional(check_text))
    kafka: str | None = attrs.field(default=None, validator=optional(check_text))
    postgres: str | None = attrs.field(default=None, validator=optional(check_text))
    #: Devices drawn in the chart.
    chart_devices: int = attrs.field(default=4, validator=validated(check_int, minimum=0))

    def __attrs_post_init__(self) -> None:
        if type(self.devices) is not int or type(self.minutes) is not int:
            raise InvalidInputError("devices and minutes must be whole numbers")
        if not 0 <= self.anomaly_rate <= 1:
            raise InvalidInputError(f"anomaly_rate must be from 0 to 1: {self.anomaly_rate!r}")
        if self.minutes > MAX_MINUTES:
            raise InvalidInputError(
                f"minutes must be at most {MAX_MINUTES:,}: the readings would pass the year 9999"
            )
        if not 1 / SECOND <= self.interval <= 60 * self.minutes:
            raise InvalidInputError(
                f"interval must be from 0.000001 s (timestamps are microseconds) to "
                f"{60 * self.minutes:,} s (the minutes simulated), got {self.interval!r}"
            )
        if self.mqtt is not None and self.kafka is None:
            raise InvalidInputError(
                "--mqtt needs --kafka too: the gateway bridges the broker into Kafka"
            )


@attrs.frozen
class DemoProgress:
    """Where a run stands (given to the ``progress`` callback about twice a second)."""

    phase: str
    readings_sent: int
    readings_total: int
    frames: int
    pipeline_readings: int
    windows: int
    alerts: int


@attrs.frozen
class Detection:
    """Injected anomalies of one kind and how many an alert fell on."""

    kind: str
    detector: str
    injected: int
    detected: int


@attrs.frozen
class DemoSummary:
    """What a run did, read back from the stores."""

    options: DemoOptions
    seconds: float
    #: Ticks of the fleet's clocks, and the readings the devices accepted (dropouts skipped).
    ticks: int
    readings_accepted: int
    #: Frames published by the devices, their bytes, and one JSON message per reading.
    frames: int
    wire_bytes: int
    json_bytes: int
    dead_lettered: int
    stream: WorkerStats
    stored: StoredData
    detections: tuple[Detection, ...]
    #: Alerts that fell on an injected anomaly, of all alerts.
    alerts_on_anomalies: int
    chart: Path
    warm_store: str
    query: str


@attrs.define
class _Counts:
    """Shared between the fleet thread, the bridge and the progress display."""

    phase: str = "starting"
    ticks: int = 0
    sent: int = 0
    json_bytes: int = 0
    frames: int = 0
    wire_bytes: int = 0
    dead: int = 0
    stats: WorkerStats | None = None


def run_demo(
    options: DemoOptions | None = None, progress: Callable[[DemoProgress], None] | None = None
) -> DemoSummary:
    """Run the demo (see the package docstring) and report. Raises :class:`~iotdata.IotDataError`
    subclasses: :class:`~iotdata.InvalidInputError` for bad options or ``out``,
    :class:`~iotdata.ConnectError` for unreachable services."""
    if options is None:
        options = DemoOptions()
    check_instance("options", options, DemoOptions)
    check_callable("progress", progress, none=True)
    return asyncio.run(_Demo(options, progress).run())


@attrs.define
class _Demo:
    options: DemoOptions
    progress: Callable[[DemoProgress], None] | None
    counts: _Counts = attrs.Factory(_Counts)
    run_id: str = attrs.Factory(lambda: uuid.uuid4().hex[:8])
    signals: list[SyntheticSignal] = attrs.Factory(list)
    #: Set when the pipeline failed: the fleet stops sending.
    stopping: threading.Event = attrs.Factory(threading.Event)

    @property
    def ticks_per_device(self) -> int:
        return int(self.options.minutes * 60 // self.options.interval)

    @property
    def chunk(self) -> int:
        """Readings of a device sent at a time, and in a frame: ten simulated minutes."""
        return max(1, int(600 // self.options.interval))

    @property
    def grace(self) -> timedelta:
        """Frames of a partition's devices interleave: two chunks of simulated time."""
        return timedelta(seconds=2 * self.chunk * self.options.interval)

    @property
    def topics(self) -> Topics:
        # the real services are shared: a fresh prefix keeps runs apart there
        embedded = self.options.kafka is None
        return Topics("iotdata-demo" if embedded else f"iotdata-demo-{self.run_id}")

    async def run(self) -> DemoSummary:
        started = time.perf_counter()
        out = _prepare(self.options.out)
        if self.options.postgres is not None:
            await asyncio.to_thread(_drop_demo_tables, self.options.postgres)
        ticker = asyncio.create_task(self._report_progress())
        try:
            stats = await self._pipeline_and_fleet(out)
        finally:
            ticker.cancel()
        self.counts.phase = "reading back"
        self._show()
        stored = await asyncio.to_thread(
            read_back, self.options, out, self.options.chart_devices, self.events()
        )
        return self._summary(out, stats, stored, time.perf_counter() - started)

    def events(self) -> list[Anomaly]:
        return [event for signal in self.signals for event in signal.events()]

    # ------------------------------------------------------------------ the moving parts

    def pipeline(self, out: Path) -> Pipeline:
        gap = timedelta(seconds=3 * self.options.interval)
        pipeline = (
            Pipeline()
            .dedup()
            .window(
                Tumbling(timedelta(minutes=1)),
                Count(),
                Stddev(),
                grace=self.grace,
            )
            .detect(
                ZScore(threshold=5.0, warmup=30, cooldown=timedelta(minutes=2)),
                Flatline(count=8, cooldown=timedelta(minutes=5)),
                MissingData(timeout=gap, severity="critical"),
            )
        )
        if self.options.postgres is not None:
            from iotdata.sinks import PostgresSink  # noqa: PLC0415

            postgres = PostgresSink(
                dsn=self.options.postgres, table_prefix=PG_PREFIX, create_tables=True
            )
            pipeline = pipeline.to(postgres)
        else:
            from iotdata.sinks import SqliteSink  # noqa: PLC0415

            pipeline = pipeline.to(SqliteSink(path=out / "iot.sqlite"))
        if _have_pyarrow():
            from iotdata.sinks import ParquetSink  # noqa: PLC0415

            pipeline = pipeline.to(ParquetSink(root=out / "lake"), kinds=["readings"])
        return pipeline

    async def _pipeline_and_fleet(self, out: Path) -> WorkerStats:
        """Start the transport and the pipeline, run the fleet beside them, stop the pipeline
        once it has read every frame the devices delivered."""
        async with _transport(self, out) as transport:
            expected: list[int] = []

            def until(stats: WorkerStats) -> bool:
                self.counts.stats = stats
                return bool(expected) and stats.records >= expected[0]

            worker = asyncio.create_task(
                self.pipeline(out).run(
                    transport.source, until=until, flush_at_end=True, checkpoint_interval=2.0
                )
            )
            fleet = asyncio.create_task(asyncio.to_thread(self._fleet, transport.device_link))
            await asyncio.wait({worker, fleet}, return_when=asyncio.FIRST_COMPLETED)
            if worker.done():  # before the fleet was done: it failed
                self.stopping.set()
                await asyncio.gather(fleet, return_exceptions=True)
                worker.result()
                raise RuntimeError("the demo's pipeline stopped before the fleet was done")
            try:
                fleet.result()
            except BaseException:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
                raise
            self.counts.phase = "bridging"
            expected.append(await transport.delivered())
            self.counts.phase = "processing"
            return await worker

    def _fleet(self, link: Any) -> None:
        """The devices: one DeviceClient each, durable queue on disk, fed chunk by chunk of
        simulated time; returns once the broker acknowledged every accepted reading."""
        options = self.options
        step = int(options.interval * SECOND)
        self.signals = [
            SyntheticSignal.for_device(
                i, seed=options.seed, start_ts=START_TS, anomaly_rate=options.anomaly_rate
            )
            for i in range(options.devices)
        ]
        queues = options.out / "queues"
        queues.mkdir(exist_ok=True)
        clients: list[DeviceClient] = []
        try:
            for signal in self.signals:  # one by one: those opened are closed on a failure
                client = DeviceClient.connect(
                    signal.device_id,
                    link,
                    queue=QueueConfig(path=queues / f"{signal.device_id}.q"),
                    topics=self.topics,
                    batch_size=self.chunk,
                    linger=0.05,
                )
                clients.append(client)
            self.counts.phase = "devices sending"
            chunk = self.chunk
            for first in range(0, self.ticks_per_device, chunk):
                if self.stopping.is_set():
                    return
                ticks = range(first, min(first + chunk, self.ticks_per_device))
                for signal, client in zip(self.signals, clients, strict=True):
                    readings = []
                    size = 0
                    for tick in ticks:
                        got = signal.reading(START_TS + tick * step)
                        if got is not None:
                            readings.append((METRIC, got[1], got[0]))
                            size += _json_size(signal.device_id, got[0], got[1])
                    if readings:
                        client.send_many(readings)
                    self.counts.ticks += len(ticks)
                    self.counts.sent += len(readings)
                    self.counts.json_bytes += size
                # in step, as live devices are: no device more than a chunk ahead of another;
                # after the last chunk, the broker has acknowledged every accepted reading
                for client in clients:
                    client.flush(timeout=120)
        finally:
            for client in clients:
                client.close(timeout=5)

    # ------------------------------------------------------------------ reporting

    async def _report_progress(self) -> None:
        while True:
            self._show()
            await asyncio.sleep(0.5)

    def _show(self) -> None:
        if self.progress is None:
            return
        counts, stats = self.counts, self.counts.stats
        self.progress(
            DemoProgress(
                phase=counts.phase,
                readings_sent=counts.sent,
                readings_total=self.ticks_per_device * self.options.devices,
                frames=counts.frames,
                pipeline_readings=stats.readings if stats else 0,
                windows=stats.aggregates if stats else 0,
                alerts=stats.alerts if stats else 0,
            )
        )

    def _summary(
        self, out: Path, stats: WorkerStats, stored: StoredData, seconds: float
    ) -> DemoSummary:
        events = self.events()
        detections = []
        for kind, detector in FINDS.items():
            of_kind = [e for e in events if e.kind == kind]
            found = sum(1 for e in of_kind if stored.detected.get(_event_key(e)))
            detections.append(Detection(kind, detector, len(of_kind), found))
        warm, query = _warm_store(self.options, out)
        return DemoSummary(
            options=self.options,
            seconds=seconds,
            ticks=self.counts.ticks,
            readings_accepted=self.counts.sent,
            frames=self.counts.frames,
            wire_bytes=self.counts.wire_bytes,
            json_bytes=self.counts.json_bytes,
            dead_lettered=self.counts.dead,
            stream=stats,
            stored=stored,
            detections=tuple(detections),
            alerts_on_anomalies=stored.alerts_on_anomalies,
            chart=out / "chart.html",
            warm_store=warm,
            query=query,
        )


def _event_key(event: Anomaly) -> tuple[str, str, int]:
    return (event.device_id, event.kind, event.start_ts)


def _json_size(device_id: str, ts: int, value: float) -> int:
    """The bytes of one JSON message per reading, as a plain MQTT publisher would send it."""
    document = {"device_id": device_id, "metric": METRIC, "ts": ts, "value": value}
    return len(json.dumps(document, separators=(",", ":")))


def _have_pyarrow() -> bool:
    """Whether the [parquet] extra is there and loads (a broken install counts as missing)."""
    try:
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        return False
    return True


def _prepare(out: Path) -> Path:
    """A fresh demo folder: an earlier demo's is emptied, anything else left alone."""
    try:
        _empty_or_new(out)
        (out / MARKER).write_text("made by iotdata demo; emptied by the next run\n")
    except OSError as exc:
        raise InvalidInputError(f"cannot use {out} as the demo's folder: {exc.strerror}") from None
    return out


def _empty_or_new(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise InvalidInputError(f"{out} is a file: give --out a folder")
        if (out / MARKER).exists():
            shutil.rmtree(out)
        elif any(out.iterdir()):
            raise InvalidInputError(
                f"{out} is not empty and not a demo folder: choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)


def _warm_store(options: DemoOptions, out: Path) -> tuple[str, str]:
    prefix = "" if options.postgres is None else PG_PREFIX
    query = (
        f"SELECT device_id, detector, count(*) FROM {prefix}alerts "
        "GROUP BY device_id, detector ORDER BY count(*) DESC LIMIT 10;"
    )
    if options.postgres is not None:
        return f"PostgreSQL (tables {PG_PREFIX}*)", f'psql "{options.postgres}" -c "{query}"'
    return f"SQLite {out / 'iot.sqlite'}", f'sqlite3 {out / "iot.sqlite"} "{query}"'


def _drop_demo_tables(dsn: str) -> None:
    """The demo owns its tables: a run starts from empty ones, as with its folder."""
    from iotdata.sinks._postgres import _import_psycopg  # noqa: PLC0415

    psycopg = _import_psycopg()
    names = ", ".join(
        f"{PG_PREFIX}{t}" for t in ("readings", "aggregates", "alerts", "dead_letters")
    )
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {names}")
    except psycopg.Error as exc:
        raise ConnectError(f"cannot use PostgreSQL at {_redacted(dsn)}: {exc}") from None


def _redacted(dsn: str) -> str:
    head, at, tail = dsn.rpartition("@")
    return f"{head.split('://')[0]}://...@{tail}" if at else dsn


# ---------------------------------------------------------------------- transports


@attrs.define
class _Transport:
    """What the devices connect to (``device_link``), what the pipeline reads (``source``),
    and ``delivered()``: the number of frames the pipeline will find, once the fleet is done."""

    source: Any
    device_link: Any
    delivered: Callable[[], Any]


@contextlib.asynccontextmanager
async def _transport(demo: _Demo, out: Path) -> AsyncIterator[_Transport]:
    """The devices' broker and the pipeline's log, closed in reverse order on the way out."""
    async with contextlib.AsyncExitStack() as stack:
        if demo.options.mqtt is not None:
            yield await _gateway(demo, stack)
        else:
            yield await _bridge(demo, out, stack)


async def _log_or_kafka(
    demo: _Demo, out: Path, stack: contextlib.AsyncExitStack, kafka_topics: KafkaTopics
) -> tuple[Any, Any]:
    """The pipeline's source and the bridge's producer: the embedded log, or Kafka."""
    options = demo.options
    source: Any
    producer: Any
    if options.kafka is None:
        from iotdata.local import LocalLog, LocalProducer  # noqa: PLC0415
        from iotdata.stream import LocalSource  # noqa: PLC0415

        log = LocalLog.open(out / "log")
        stack.callback(log.close)
        log.create_topic(kafka_topics.telemetry, PARTITIONS)
        producer = LocalProducer(log)
        source = LocalSource(kafka_topics.telemetry, log=log, group="demo")
    else:
        from iotdata.kafka import (  # noqa: PLC0415
            PartitionedProducer,
            ProducerSettings,
            TopicSpec,
            ensure_topics,
        )
        from iotdata.stream import KafkaSource  # noqa: PLC0415

        await ensure_topics(
            options.kafka, TopicSpec(name=kafka_topics.telemetry, partitions=PARTITIONS)
        )
        producer = await PartitionedProducer.start(ProducerSettings(bootstrap=options.kafka))
        source = KafkaSource(
            kafka_topics.telemetry, bootstrap=options.kafka, group=demo.topics.prefix
        )
    stack.push_async_callback(producer.close)
    return source, producer


async def _bridge(demo: _Demo, out: Path, stack: contextlib.AsyncExitStack) -> _Transport:
    """Devices on the in-process broker; a bridge checks each frame as the gateway does
    (envelope, checksum, limits, the device of the topic) and appends it to the embedded
    log, or to Kafka with ``kafka``."""
    kafka_topics = KafkaTopics.with_prefix(demo.topics.prefix)
    source, producer = await _log_or_kafka(demo, out, stack, kafka_topics)
    broker = LocalBroker()
    stack.callback(broker.close)
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, bytes, int] | None] = asyncio.Queue()

    def arrived(message: Any) -> None:  # on the broker's thread
        item = (message.topic, bytes(message.payload), message.mid)
        loop.call_soon_threadsafe(inbox.put_nowait, item)

    # the broker counts a message as taken (and the device deletes it) only on our ack: after
    # the log (or Kafka) acknowledged the frame
    cloud = broker.connect("iotdata-demo-bridge", manual_ack=True)
    cloud.subscribe(demo.topics.all_telemetry(), arrived)
    router = Router(topics=demo.topics, kafka=kafka_topics)
    counts = demo.counts

    def acked(mid: int, delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            cloud.ack(mid)  # otherwise the device keeps the frame and sends it again

    async def bridge() -> None:
        while (item := await inbox.get()) is not None:
            topic, payload, mid = item
            route = router.route(topic, payload)
            if route.kind != "telemetry":
                counts.dead += 1  # the gateway would dead-letter it; nothing is
                cloud.ack(mid)
                continue
            key = route.key or b""
            delivery = await producer.send(route.topic, key, payload, headers=route.headers)
            delivery.add_done_callback(functools.partial(acked, mid))
            counts.frames += 1
            counts.wire_bytes += len(payload)

    task = asyncio.create_task(bridge())

    async def stop_bridge() -> None:
        inbox.put_nowait(None)
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop_bridge)

    async def delivered() -> int:
        # the devices flushed: the bridge acknowledged every frame, so the log has them all
        if task.done():
            task.result()
            raise RuntimeError("the demo's bridge stopped early")
        await producer.flush(60)
        return counts.frames

    return _Transport(source, broker, delivered)


async def _gateway(demo: _Demo, stack: contextlib.AsyncExitStack) -> _Transport:
    """Devices on the real broker; the gateway forwards into Kafka."""
    from iotdata.gateway import Gateway, GatewaySettings  # noqa: PLC0415
    from iotdata.kafka import ProducerSettings, TopicSpec, ensure_topics  # noqa: PLC0415
    from iotdata.mqtt import MqttSettings  # noqa: PLC0415
    from iotdata.stream import KafkaSource  # noqa: PLC0415

    options = demo.options
    assert options.mqtt is not None and options.kafka is not None
    kafka_topics = KafkaTopics.with_prefix(demo.topics.prefix)
    names = (kafka_topics.telemetry, kafka_topics.devices, kafka_topics.dead_letters)
    await ensure_topics(
        options.kafka, *(TopicSpec(name=name, partitions=PARTITIONS) for name in names)
    )
    settings = GatewaySettings(
        mqtt=MqttSettings.from_url(options.mqtt),
        kafka=ProducerSettings(bootstrap=options.kafka),
        topics=demo.topics,
        kafka_topics=kafka_topics,
        group=demo.topics.prefix,
    )
    gateway = await Gateway.start(settings)
    stack.push_async_callback(gateway.close)
    await asyncio.to_thread(gateway.wait_ready, 60)
    source = KafkaSource(kafka_topics.telemetry, bootstrap=options.kafka, group=demo.topics.prefix)
    counts = demo.counts

    async def delivered() -> int:
        # the devices flushed: the gateway acknowledged (and so forwarded) every frame
        stats = gateway.statistics()
        counts.frames = stats.forwarded
        counts.dead = stats.dead_lettered
        return stats.forwarded

    return _Transport(source, options.mqtt, delivered)
