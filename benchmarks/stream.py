"""Stream benchmark: the iotdata pipeline against Bytewax, side by side in one run.

The workload (the same for every implementation): ``--readings`` readings from ``--devices``
devices, one float metric each, ``--hz`` readings a second per device, seq counting up, in
batches of ``--batch`` readings per device delivered round-robin over the devices (every
device's first batch, then every second one, ...). The job: 10-second tumbling windows on event
time with count and mean per device, every window emitted once when it closes (the end of the
input closes the last ones). Building the input is not timed; each implementation's figure is
readings per second of the fastest of ``--repeats`` runs, and its output is checked against the
other's (same windows, same counts, means equal to 1e-9).

Cases:

* ``stream_vs_bytewax`` (the ratio row), one core, in-process sources on both sides:
  ``iotdata`` is ``Pipeline().window(Tumbling(10 s), Count(), Mean(), grace=...)`` run by a
  :class:`~iotdata.stream.Worker` over a :class:`~iotdata.stream.MemorySource` of the batches
  (8 partitions), into a sink that keeps the aggregates; ``bytewax`` is a Bytewax dataflow
  ``TestingSource -> key_on(device) -> fold_window(EventClock, TumblingWindower)`` run by
  ``run_main``, one item a reading (Bytewax has no columnar batches), with the same wait for
  late data, and ``--bytewax-batch`` items per source batch (100,000 by default: its fastest
  here; 1,000 is 5x slower).
* ``stream_from_log``: ``iotdata`` over the embedded log (:class:`~iotdata.local.LocalLog`) of
  codec frames, so decoding is timed too.
* ``stream_kafka_vs_quix`` (with ``--kafka --quix``): the throughput of ``stream_kafka``
  against Quix Streams reading the same readings from Kafka, one JSON message a reading (Quix
  Streams has no batches), ``tumbling_window(10 s, grace).agg(count, mean).final()``; the
  windows it closed are compared with ours.
* ``stream_kafka`` (with ``--kafka``): ``iotdata`` with the Kafka source end to end. Throughput:
  the frames are produced to a fresh 8-partition topic first, then a worker consumes them all
  (the clock starts at its first record, after the group join). Latency: for ``--live-seconds``
  a producer sends each of ``--live-devices`` devices' readings of the last second every second
  (``ts`` = now), and the worker's ``latency_p50``/``latency_p99`` give the time from a record's
  Kafka timestamp to the window results it closed being handed to the sink.

``--json PATH`` writes ``[{"case", "impl", "metric", "value"}, ...]``: ``readings_per_s`` per
implementation, the ``stream_vs_bytewax`` ratio (impl ``ratio``), and for Kafka
``latency_p50_s``/``latency_p99_s``. The target (>= 10x Bytewax) is printed as PASS/FAIL.

Run from the repository root::

    python benchmarks/stream.py                       # 1M readings, 1000 devices, ~1.5 minutes
    python benchmarks/stream.py --kafka 127.0.0.1:9092 --quix
    python benchmarks/stream.py --quick --json /tmp/stream.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import _common

_common.ensure_repo_importable()

from iotdata import Batch, codec  # noqa: E402
from iotdata.local import LocalLog  # noqa: E402
from iotdata.sinks import WindowAggregate  # noqa: E402
from iotdata.stream import (  # noqa: E402
    Count,
    KafkaSource,
    LocalSource,
    Mean,
    MemoryCheckpoints,
    MemorySource,
    Pipeline,
    Tumbling,
    WorkerStats,
)

SECOND = 1_000_000
WINDOW = 10 * SECOND
START = 1_700_000_000 * SECOND  # a whole multiple of 10 s
PARTITIONS = 8
CASE = "stream_vs_bytewax"
TARGET = 10.0

Windows = dict[tuple[str, int], tuple[int, float]]  # (device, window start): (count, mean)


# --- the workload -------------------------------------------------------------------------


def make_batches(readings: int, devices: int, batch: int, hz: int, seed: int = 7) -> list[Batch]:
    """The batches in delivery order (see the module docstring)."""
    rng = random.Random(seed)
    per_device = readings // devices
    step = SECOND // hz
    names = [f"dev-{d:05d}" for d in range(devices)]
    out = []
    for first in range(0, per_device, batch):
        seqs = range(first, min(per_device, first + batch))
        ts = [START + s * step for s in seqs]
        for name in names:
            values = [round(rng.gauss(20.0, 5.0), 2) for _ in seqs]
            out.append(Batch.from_columns(name, {"temperature": (ts, values, seqs)}))
    return out


def grace_for(batch: int, hz: int) -> int:
    """Devices' batches interleave: within a partition event time runs up to a batch span
    ahead of a device's next batch, so the wait for late data must cover two spans."""
    return 2 * batch * SECOND // hz


class Collect:
    """A sink writer that keeps the window results (what the benchmark checks)."""

    kinds = frozenset({"aggregates"})

    def __init__(self) -> None:
        self.rows: list[WindowAggregate] = []

    async def write(self, records: Iterable[WindowAggregate], *, position: Any = None) -> None:
        self.rows.extend(records)  # as cheap as Bytewax's TestingSink: checked after the run

    @property
    def windows(self) -> Windows:
        return {(r.device_id, r.window_start): (r.count, r.mean or 0.0) for r in self.rows}

    async def flush(self) -> None:
        return None


def window_pipeline(sink: Collect, grace: int) -> Pipeline:
    return Pipeline().window(Tumbling(WINDOW), Count(), Mean(), grace=grace).to(sink)


def timed(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of ``repeats`` calls (collector off while timing) and the last output (made
    into :data:`Windows` by the caller, after the clock stopped)."""
    best, out = math.inf, None
    for _ in range(repeats):
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            started = time.perf_counter()
            out = run()
            best = min(best, time.perf_counter() - started)
        finally:
            if enabled:
                gc.enable()
    return best, out


# --- iotdata ----------------------------------------------------------------------------


def run_iotdata_memory(batches: list[Batch], grace: int) -> Collect:
    sink = Collect()
    source = MemorySource(batches, partitions=PARTITIONS)
    asyncio.run(
        window_pipeline(sink, grace).run(
            source, checkpoints=MemoryCheckpoints(), flush_at_end=True, max_records=1000
        )
    )
    return sink


def filled_log(batches: list[Batch]) -> LocalLog:
    log = LocalLog.memory()
    log.create_topic("telemetry", PARTITIONS)
    encoder = codec.Encoder()
    for batch in batches:
        log.append("telemetry", batch.device_id.encode(), encoder.encode(batch))
    return log


def run_iotdata_log(log: LocalLog, grace: int) -> Collect:
    sink = Collect()
    total = sum(log.end_offset("telemetry", p) for p in range(PARTITIONS))
    source = LocalSource("telemetry", log=log, group=f"bench-{uuid.uuid4().hex[:8]}")
    asyncio.run(
        window_pipeline(sink, grace).run(
            source,
            checkpoints=MemoryCheckpoints(),
            flush_at_end=True,
            max_records=1000,
            until=lambda stats: stats.records >= total,
        )
    )
    return sink


# --- Bytewax ----------------------------------------------------------------------------


def bytewax_items(batches: list[Batch]) -> list[tuple[str, datetime, float]]:
    """One item a reading: what a Bytewax source yields."""
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return [
        (r.device_id, epoch + timedelta(microseconds=r.ts), r.value)  # type: ignore[misc]
        for batch in batches
        for r in batch
    ]


def run_bytewax(items: list[Any], grace: int, source_batch: int) -> list[Any]:
    import bytewax.operators as op  # noqa: PLC0415
    from bytewax.dataflow import Dataflow  # noqa: PLC0415
    from bytewax.operators.windowing import (  # noqa: PLC0415
        EventClock,
        TumblingWindower,
        fold_window,
    )
    from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: PLC0415

    align = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=START)
    flow = Dataflow("windows")
    stream = op.input("readings", flow, TestingSource(items, batch_size=source_batch))
    keyed = op.key_on("by_device", stream, lambda item: item[0])
    clock = EventClock(lambda item: item[1], wait_for_system_duration=timedelta(microseconds=grace))
    windower = TumblingWindower(length=timedelta(microseconds=WINDOW), align_to=align)
    windows = fold_window(
        "count_mean",
        keyed,
        clock,
        windower,
        lambda: [0, 0.0],
        lambda state, item: [state[0] + 1, state[1] + item[2]],
        lambda a, b: [a[0] + b[0], a[1] + b[1]],
    )
    out: list[Any] = []
    late: list[Any] = []
    op.output("results", windows.down, TestingSink(out))
    op.output("late", windows.late, TestingSink(late))
    run_main(flow)
    if late:
        raise RuntimeError(f"bytewax found {len(late)} late readings")
    return out


def bytewax_windows(out: list[Any]) -> Windows:
    return {
        (device, START + number * WINDOW): (count, total / count)
        for device, (number, (count, total)) in out
    }


# --- Kafka --------------------------------------------------------------------------------


async def produce(bootstrap: str, topic: str, frames: Iterable[tuple[str, bytes]]) -> None:
    from iotdata.kafka import PartitionedProducer, ProducerSettings  # noqa: PLC0415

    settings = ProducerSettings(bootstrap=bootstrap, client_id="bench-stream")
    async with await PartitionedProducer.start(settings) as producer:
        for device, frame in frames:
            await producer.send(topic, device, frame)
        await producer.flush(120)


async def kafka_throughput(
    bootstrap: str, batches: list[Batch], grace: int
) -> tuple[float, Windows]:
    from iotdata.kafka import TopicSpec, ensure_topics  # noqa: PLC0415

    topic = f"bench-stream-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, TopicSpec(name=topic, partitions=PARTITIONS))
    encoder = codec.Encoder()
    await produce(bootstrap, topic, ((b.device_id, encoder.encode(b)) for b in batches))
    total = len(batches)
    idle = [time.perf_counter()]  # the last moment the worker had no record yet
    finished: list[float] = []

    def done(stats: WorkerStats) -> bool:
        if not stats.records:
            idle[0] = time.perf_counter()
        if stats.records >= total:
            finished.append(time.perf_counter())
            return True
        return False

    source = KafkaSource(topic, bootstrap=bootstrap, group=topic, client_id="bench-stream")
    sink = Collect()
    stats = await window_pipeline(sink, grace).run(
        source, checkpoints=MemoryCheckpoints(), until=done, max_records=1000
    )
    return stats.readings / max(finished[0] - idle[0], 1e-9), sink.windows


# --- Quix Streams ------------------------------------------------------------------------


def run_quix(bootstrap: str, batches: list[Batch], grace: int) -> tuple[float, Windows]:
    """Quix Streams on the same readings in Kafka: one JSON message a reading (its natural
    form: it has no columnar batches), keyed by device, the Kafka timestamp the event time;
    ``tumbling_window(10 s, grace).agg(count=Count(), mean=Mean("value")).final()``. The
    messages are produced first (not timed); the clock runs from the first message processed
    to the last. Returns readings/s and the windows it closed (a window closes when a later
    reading of its device passes its end plus the grace, so each device's last ones stay open:
    the windows are compared with ours where both have them)."""
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    from iotdata.kafka import TopicSpec, ensure_topics  # noqa: PLC0415

    topic = f"bench-quix-{uuid.uuid4().hex[:8]}"
    # the Kafka timestamps are the readings' (2023): kept, not expired by time retention
    spec = TopicSpec(name=topic, partitions=PARTITIONS, retention_ms=-1)
    asyncio.run(ensure_topics(bootstrap, spec))
    try:
        return _quix_on(topic, bootstrap, batches, grace)
    finally:
        admin = AdminClient({"bootstrap.servers": bootstrap})
        for done in admin.delete_topics([topic]).values():
            done.result(30)


def _quix_on(topic: str, bootstrap: str, batches: list[Batch], grace: int) -> tuple[float, Windows]:
    import tempfile  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from confluent_kafka import Producer  # noqa: PLC0415

    # a dependency of Quix Streams warns about its own one, forcing its filter: keep it quiet
    with warnings.catch_warnings(record=True):
        from quixstreams import Application  # noqa: PLC0415
        from quixstreams.dataframe.windows import Count as QuixCount  # noqa: PLC0415
        from quixstreams.dataframe.windows import Mean as QuixMean  # noqa: PLC0415
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 10**6}
    )
    total = 0
    for batch in batches:
        key = batch.device_id.encode()
        for column in batch.columns:
            for ts, value in zip(column.ts, column.values, strict=True):
                body = json.dumps({"value": value}).encode()
                while True:
                    try:
                        producer.produce(topic, body, key, timestamp=ts // 1000)
                        break
                    except BufferError:  # its queue is full: let it deliver
                        producer.poll(0.1)
            total += len(column.ts)
        producer.poll(0)
    if producer.flush(120):
        raise RuntimeError("Quix Streams' input did not reach Kafka")
    seen = [0]
    clock: list[float] = []
    apps: list[Any] = []

    def processed(topic_: str, partition: int, offset: int) -> None:
        seen[0] += 1
        if seen[0] == 1 or seen[0] == total:
            clock.append(time.perf_counter())
        if seen[0] >= total:
            apps[0].stop()

    with tempfile.TemporaryDirectory() as state:
        app = Application(
            broker_address=bootstrap,
            consumer_group=topic,
            auto_offset_reset="earliest",
            state_dir=state,
            loglevel="WARNING",
            use_changelog_topics=False,
            on_message_processed=processed,
        )
        apps.append(app)
        closed: list[tuple[bytes, dict[str, Any]]] = []
        sdf = app.dataframe(app.topic(topic, value_deserializer="json"))
        sdf = sdf.tumbling_window(
            timedelta(microseconds=WINDOW), grace_ms=timedelta(microseconds=grace)
        )
        sdf = sdf.agg(count=QuixCount(), mean=QuixMean("value")).final()
        sdf.update(lambda value, key, ts, headers: closed.append((key, value)), metadata=True)
        app.run()
    windows = {
        (key.decode(), value["start"] * 1000): (value["count"], value["mean"])
        for key, value in closed
    }
    return total / max(clock[-1] - clock[0], 1e-9), windows


def check_subset(ours: Windows, theirs: Windows, what: str) -> None:
    """Every window ``theirs`` closed is one of ours, with the same count and mean."""
    if not theirs:
        raise RuntimeError(f"{what} closed no window: give it more readings")
    check_same({key: ours[key] for key in theirs if key in ours}, theirs, what)


async def kafka_latency(bootstrap: str, devices: int, hz: int, seconds: float) -> WorkerStats:
    """Live readings (ts = now) for ``seconds``; the worker's latency figures."""
    from iotdata.kafka import PartitionedProducer, ProducerSettings, TopicSpec, ensure_topics  # noqa: PLC0415

    topic = f"bench-live-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, TopicSpec(name=topic, partitions=PARTITIONS))
    names = [f"dev-{d:05d}" for d in range(devices)]
    encoder = codec.Encoder()
    stop = asyncio.Event()

    async def live() -> None:
        settings = ProducerSettings(bootstrap=bootstrap, client_id="bench-live")
        async with await PartitionedProducer.start(settings) as producer:
            seq = 0
            step = SECOND // hz
            while not stop.is_set():
                now = time.time_ns() // 1000
                ts = [now - SECOND + (i + 1) * step for i in range(hz)]
                seqs = range(seq, seq + hz)
                for name in names:
                    frame = Batch.from_columns(name, {"temperature": (ts, [20.0] * hz, seqs)})
                    await producer.send(topic, name, encoder.encode(frame))
                seq += hz
                await asyncio.sleep(max(0.0, 1.0 - (time.time_ns() // 1000 - now) / SECOND))

    source = KafkaSource(topic, bootstrap=bootstrap, group=topic, client_id="bench-live")
    producing = asyncio.create_task(live())
    started: list[float] = []

    def enough(stats: WorkerStats) -> bool:
        if stats.records and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= seconds

    try:
        return await window_pipeline(Collect(), 2 * SECOND).run(
            source, checkpoints=MemoryCheckpoints(), until=enough
        )
    finally:
        stop.set()
        await producing


# --- checks and reporting ----------------------------------------------------------------


def check_same(ours: Windows, theirs: Windows, what: str) -> None:
    if ours.keys() != theirs.keys():
        missing = sorted(ours.keys() ^ theirs.keys())[:3]
        raise RuntimeError(f"{what}: different windows, e.g. {missing}")
    for key, (count, mean) in ours.items():
        other_count, other_mean = theirs[key]
        if count != other_count or not math.isclose(mean, other_mean, rel_tol=1e-9):
            raise RuntimeError(f"{what}: window {key} is {count, mean} vs {theirs[key]}")


def row(case: str, impl: str, metric: str, value: float) -> dict[str, Any]:
    return {"case": case, "impl": impl, "metric": metric, "value": value}


def compare(args: argparse.Namespace, hz: int, case: str, progress: Any) -> list[dict[str, Any]]:
    """One workload, every in-process implementation taking turns; the records."""
    batches = make_batches(args.readings, args.devices, args.batch, hz)
    readings = sum(len(b) for b in batches)
    grace = grace_for(args.batch, hz)
    print(
        f"{case}: {readings:,} readings, {args.devices} devices at {hz} Hz ({10 * hz} readings "
        f"a window), batches of {args.batch}, wait for late data {grace / SECOND:g} s",
        file=sys.stderr,
    )
    log = filled_log(batches)
    items = [] if args.no_bytewax else bytewax_items(batches)
    runs: dict[str, Callable[[], Any]] = {
        "iotdata": lambda: run_iotdata_memory(batches, grace),
        "log": lambda: run_iotdata_log(log, grace),
    }
    if not args.no_bytewax:
        runs["bytewax"] = lambda: run_bytewax(items, grace, args.bytewax_batch)
    # the implementations take turns, so that a slow spell of this shared machine hits all
    best: dict[str, float] = {}
    outputs: dict[str, Any] = {}
    for repeat in range(args.repeats):
        for name, run in runs.items():
            progress.step(f"{case} run {repeat + 1}/{args.repeats}", name)
            seconds, outputs[name] = timed(run, 1)
            best[name] = min(best.get(name, math.inf), seconds)
    rates = {name: readings / seconds for name, seconds in best.items()}
    ours = outputs["iotdata"].windows
    expected = args.devices * -(-(readings // args.devices) // (10 * hz))
    if len(ours) != expected:
        raise RuntimeError(f"iotdata emitted {len(ours)} windows, expected {expected}")
    check_same(ours, outputs["log"].windows, "embedded log")
    log_case = case.replace("stream_vs_bytewax", "stream_from_log")
    rows = [
        row(case, "iotdata", "readings_per_s", rates["iotdata"]),
        row(log_case, "iotdata", "readings_per_s", rates["log"]),
    ]
    print(f"{case} ({hz} Hz):")
    print(f"  iotdata, in-process batches:   {rates['iotdata']:>12,.0f} readings/s")
    print(f"  iotdata, embedded log (codec): {rates['log']:>12,.0f} readings/s")
    if "bytewax" in rates:
        check_same(ours, bytewax_windows(outputs["bytewax"]), "bytewax")
        ratio = rates["iotdata"] / rates["bytewax"]
        rows += [
            row(case, "bytewax", "readings_per_s", rates["bytewax"]),
            row(case, "ratio", "readings_per_s", ratio),
        ]
        verdict = "PASS" if ratio >= TARGET else "FAIL"
        print(f"  bytewax, in-process items:     {rates['bytewax']:>12,.0f} readings/s")
        print(f"  {verdict}  iotdata >= {TARGET:g}x bytewax on one core ({ratio:.1f}x)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (or docs/benchmarks.md) for what each case measures.",
    )
    parser.add_argument("--readings", type=int, default=1_000_000, help="default 1000000")
    parser.add_argument("--devices", type=int, default=1000, help="default 1000")
    parser.add_argument("--batch", type=int, default=100, help="readings a batch (default 100)")
    parser.add_argument(
        "--hz",
        default="10,1",
        help="readings a second a device, one workload each; the first is the ratio case "
        "stream_vs_bytewax, the others stream_vs_bytewax_{hz}hz (default 10,1)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation (3)")
    parser.add_argument(
        "--bytewax-batch",
        type=int,
        default=100_000,
        help="items per TestingSource batch (default 100000, Bytewax's fastest here)",
    )
    parser.add_argument("--no-bytewax", action="store_true", help="iotdata only")
    parser.add_argument("--kafka", help="bootstrap servers: also run the Kafka source case")
    parser.add_argument(
        "--quix",
        action="store_true",
        help="with --kafka: also Quix Streams over the same readings in Kafka (case "
        "stream_kafka_vs_quix)",
    )
    parser.add_argument("--live-seconds", type=float, default=30.0, help="Kafka latency phase")
    parser.add_argument("--live-devices", type=int, default=1000, help="default 1000")
    parser.add_argument("--quick", action="store_true", help="50k readings, 100 devices, 1 run")
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.devices, args.repeats = 50_000, 100, 1
        args.live_seconds, args.live_devices = min(args.live_seconds, 12.0), 50
        args.bytewax_batch = min(args.bytewax_batch, 10_000)
    rates_hz = [int(hz) for hz in str(args.hz).split(",")]
    if not rates_hz or any(hz < 1 or SECOND % hz for hz in rates_hz):
        parser.error("--hz takes rates that divide a second, such as 10,1")
    if args.quix and not args.kafka:
        parser.error("--quix needs --kafka: Quix Streams reads from Kafka")
    steps = len(rates_hz) * args.repeats * (3 - args.no_bytewax)
    steps += (2 if args.kafka else 0) + (1 if args.quix else 0)
    progress = _common.Progress(steps)
    rows: list[dict[str, Any]] = []
    for number, hz in enumerate(rates_hz):
        case = CASE if number == 0 else f"{CASE}_{hz}hz"
        rows += compare(args, hz, case, progress)

    if args.kafka:
        hz = rates_hz[0]
        batches = make_batches(args.readings, args.devices, args.batch, hz)
        progress.step("iotdata, Kafka source", "throughput")
        grace = grace_for(args.batch, hz)
        rate, kafka_windows = asyncio.run(kafka_throughput(args.kafka, batches, grace))
        rows.append(row("stream_kafka", "iotdata", "readings_per_s", rate))
        progress.step("iotdata, Kafka source", "live latency")
        latency = asyncio.run(kafka_latency(args.kafka, args.live_devices, 10, args.live_seconds))
        if latency.latency_p50 is None or latency.latency_p99 is None:
            raise RuntimeError("the live phase closed no window: run it longer")
        rows.append(row("stream_kafka", "iotdata", "latency_p50_s", latency.latency_p50))
        rows.append(row("stream_kafka", "iotdata", "latency_p99_s", latency.latency_p99))
        print(f"stream_kafka ({hz} Hz): iotdata, Kafka source: {rate:>12,.0f} readings/s")
        print(
            f"  Kafka record timestamp -> window emitted: p50 {latency.latency_p50:.3f} s, "
            f"p99 {latency.latency_p99:.3f} s ({args.live_devices} devices at 10 Hz, live)"
        )
        if args.quix:
            progress.step("Quix Streams, Kafka source", "throughput")
            quix_rate, quix_windows = run_quix(args.kafka, batches, grace)
            check_subset(kafka_windows, quix_windows, "Quix Streams")
            ratio = rate / quix_rate
            rows += [
                row("stream_kafka_vs_quix", "iotdata", "readings_per_s", rate),
                row("stream_kafka_vs_quix", "quixstreams", "readings_per_s", quix_rate),
                row("stream_kafka_vs_quix", "ratio", "readings_per_s", ratio),
            ]
            print(f"stream_kafka_vs_quix ({hz} Hz, both reading the same readings from Kafka):")
            print(f"  iotdata, Kafka source (codec frames):  {rate:>12,.0f} readings/s")
            print(f"  Quix Streams (one JSON message each):  {quix_rate:>12,.0f} readings/s")
            print(f"  ratio {ratio:.1f}x ({len(quix_windows):,} windows compared)")
    progress.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
