"""The whole pipeline on the real services, with faults injected while it runs.

Durable devices (a few processes of several ``DeviceClient`` each) publish to a persistent
Mosquitto of our own; two ``iotdata gateway`` processes share a subscription and forward into
the three-node Kafka cluster (replication factor 3, ``min.insync.replicas=2``); two
``iotdata run`` workers in one consumer group dedup, count readings in one-second windows and
write readings and window counts to PostgreSQL. Faults: SIGKILL of a device process, of a
gateway, of a worker and of the Kafka node that leads most partitions (each restarted), a
restart of Mosquitto and one of PostgreSQL.

What is checked is data, by ``(device_id, seq)``: every reading a device accepted is stored,
and every window's count equals the distinct readings stored in it. What is measured, per
fault: how long until readings reach PostgreSQL as fresh as before (recovery), the worst lag
meanwhile, and the duplicates the fault put into Kafka (absorbed downstream by dedup and keys).

Used by ``tests/integration/test_chaos.py`` (a fixed schedule, a few minutes) and
``scripts/soak.py`` (``--minutes N``, random faults).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg

from iotdata import codec
from tests._brokers import PrivateBroker
from tests._kafka_cluster import KafkaCluster

REPO = Path(__file__).resolve().parent.parent
PARTITIONS = 6
#: Readings reach PostgreSQL at the workers' checkpoints (every 2 s): fresher than this is
#: "flowing" again after a fault.
FRESH_SECONDS = 6.0

DEVICE = """
import signal, sys, threading, time
import tenacity
from iotdata.device import DeviceClient, QueueConfig
from iotdata.mqtt import Topics
url, prefix, folder, rate, *names = sys.argv[1:]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
clients = [
    DeviceClient.connect(
        name, url, queue=QueueConfig(path=f"{folder}/{name}.queue"), topics=Topics(prefix),
        linger=0.05, backoff=tenacity.wait_random_exponential(0.1, max=2),
        resend_backoff=tenacity.wait_random_exponential(0.05, max=1),
    )
    for name in names
]
period, tick, i = 1 / float(rate), time.monotonic(), 0
while not stop.is_set():
    for client in clients:
        print(client.device_id, client.send("temp", float(i % 100)), flush=True)
    i += 1
    tick += period
    stop.wait(max(0.0, tick - time.monotonic()))
for client in clients:
    client.flush(180)
    client.close()
print("done", flush=True)
"""

APP = """
import os
from datetime import timedelta
from iotdata.sinks import PostgresSink
from iotdata.stream import Count, Pipeline, Tumbling
sink = PostgresSink(
    dsn=os.environ["CHAOS_DSN"], table_prefix=os.environ["CHAOS_TABLES"], create_tables=True
)
pipeline = (
    Pipeline()
    .dedup()
    .window(Tumbling(timedelta(seconds=1)), Count(), grace=timedelta(hours=1), emit_updates=True)
    .to(sink)
)
"""


@attrs.define
class Process:
    """A child process we can SIGKILL and start again with the same command line."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    on_line: Callable[[str], None] | None = None
    process: subprocess.Popen[str] | None = None
    _reader: threading.Thread | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}\n")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=subprocess.PIPE if self.on_line else self.log.open("a"),
            stderr=self.log.open("a"),
            text=True,
        )
        if self.on_line is not None:
            self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
            self._reader.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None and self.on_line is not None
        for line in process.stdout:
            self.on_line(line)

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone (and its output read)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.wait()

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM (a clean stop), and wait; the exit status."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60) -> int:
        assert self.process is not None
        status = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return status

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@attrs.frozen
class FaultReport:
    """What one fault cost."""

    fault: str
    #: Seconds from the fault until readings reached PostgreSQL fresh again.
    recovery: float
    #: The worst lag of the newest stored reading behind the clock meanwhile, in seconds.
    worst_lag: float
    #: Readings the fault put into Kafka a second time (absorbed downstream).
    duplicates: int


@attrs.define
class Outcome:
    """The end of a run: what was accepted, stored and counted."""

    accepted: int
    stored: int
    missing: list[tuple[str, int]]
    bad_windows: list[tuple[str, str, int, int]]  # device, metric, start, count vs stored
    uncounted: int  # stored readings in no window
    kafka_readings: int
    kafka_distinct: int
    faults: list[FaultReport]

    def table(self) -> str:
        lines = [
            f"{self.accepted:,} readings accepted, {self.stored:,} stored, "
            f"{len(self.missing)} missing, {len(self.bad_windows)} windows miscounted, "
            f"{self.kafka_readings - self.kafka_distinct:,} duplicates in Kafka absorbed "
            f"({self.kafka_readings:,} readings there, {self.kafka_distinct:,} distinct)",
            f"{'fault':<28}{'recovery s':>11}{'worst lag s':>12}{'duplicates':>11}",
        ]
        lines += [
            f"{f.fault:<28}{f.recovery:>11.1f}{f.worst_lag:>12.1f}{f.duplicates:>11,}"
            for f in self.faults
        ]
        return "\n".join(lines)


@attrs.define
class Pipeline:
    """The services and processes of one run (see the module docs)."""

    folder: Path
    prefix: str
    broker: PrivateBroker
    cluster: KafkaCluster
    dsn: str
    device_groups: int = 4
    devices_per_group: int = 5
    rate: float = 10.0
    accepted: set[tuple[str, int]] = attrs.Factory(set)
    devices: list[Process] = attrs.Factory(list)
    gateways: list[Process] = attrs.Factory(list)
    workers: list[Process] = attrs.Factory(list)
    reports: list[FaultReport] = attrs.Factory(list)
    #: ``(time.monotonic(), lag or None)`` samples of :meth:`newest_lag`.
    lags: list[tuple[float, float | None]] = attrs.Factory(list)
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    _stopped: threading.Event = attrs.Factory(threading.Event)

    @property
    def topic(self) -> str:
        return f"{self.prefix}.telemetry"

    @property
    def tables(self) -> str:
        return f"{self.prefix}_"

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        env = dict(os.environ, CHAOS_DSN=self.dsn, CHAOS_TABLES=self.tables)
        env.pop("IOTDATA_KAFKA_PASSWORD", None)
        cli = [sys.executable, "-m", "iotdata.cli"]
        for i in range(2):
            gateway = [
                *cli, "gateway", "--mqtt", self.broker.url, "--kafka", self.cluster.bootstrap,
                "--prefix", self.prefix, "--group", "gw", "--client-id", f"{self.prefix}-gw-{i}",
                "--create-topics", "--partitions", str(PARTITIONS),
            ]  # fmt: skip
            self.gateways.append(Process(f"gateway-{i}", gateway, env, self._log(f"gateway-{i}")))
        app = self.folder / "app.py"
        app.write_text(APP)
        for i in range(2):
            worker = [
                *cli, "run", str(app), "--kafka", self.cluster.bootstrap, "--topic", self.topic,
                "--group", f"{self.prefix}-workers", "--checkpoint-interval", "2",
            ]  # fmt: skip
            self.workers.append(Process(f"worker-{i}", worker, env, self._log(f"worker-{i}")))
        queues = self.folder / "queues"
        queues.mkdir(exist_ok=True)
        for g in range(self.device_groups):
            names = [
                f"dev-{g * self.devices_per_group + k:02d}" for k in range(self.devices_per_group)
            ]
            argv = [
                sys.executable, "-c", DEVICE, self.broker.url, self.prefix, str(queues),
                str(self.rate), *names,
            ]  # fmt: skip
            self.devices.append(
                Process(f"devices-{g}", argv, env, self._log(f"devices-{g}"), self._accepted)
            )
        self.gateways[0].start()  # it creates the topics; the other finds them
        self._wait_for_topic()
        for process in (*self.gateways[1:], *self.workers, *self.devices):
            process.start()
        threading.Thread(target=self._sample, name="chaos-lag", daemon=True).start()

    def _log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def _accepted(self, line: str) -> None:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            with self._lock:
                self.accepted.add((parts[0], int(parts[1])))

    def _wait_for_topic(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for gateway in self.gateways:
                if gateway.process is not None and not gateway.running:
                    raise AssertionError(
                        f"{gateway.name} exited: {gateway.log.read_text()[-3000:]}"
                    )
            try:  # all topics: naming one would have the cluster create it (auto-create)
                known = asyncio.run(self.cluster.partitions(None, timeout=5))
            except Exception:  # no answer yet: ask again
                known = {}
            if sum(topic == self.topic for topic, _ in known) == PARTITIONS:
                return
            time.sleep(0.5)
        raise AssertionError(f"the gateways did not create {self.topic} in {timeout} s")

    def close(self) -> None:
        """Stop everything that still runs (a finaliser)."""
        self._stopped.set()
        for process in (*self.devices, *self.workers, *self.gateways):
            if process.running:
                process.kill()

    # ------------------------------------------------------------------ observing

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.dsn, connect_timeout=3, autocommit=True)

    def newest_lag(self) -> float | None:
        """Seconds the stalest device's newest stored reading is behind the clock (None:
        nothing readable, or a device with nothing stored yet)."""
        devices = self.device_groups * self.devices_per_group
        try:
            with self._connect() as conn:
                row = conn.execute(
                    f"""SELECT extract(epoch FROM now() - min(newest)), count(*)
                        FROM (SELECT max(ts) AS newest FROM {self.tables}readings
                              GROUP BY device_id) AS per_device"""
                ).fetchone()
        except psycopg.Error:
            return None
        if row is None or row[0] is None or row[1] < devices:
            return None
        return float(row[0])

    def wait_flowing(self, timeout: float = 180) -> tuple[float, float]:
        """Wait until stored readings are fresh; ``(seconds waited, worst lag seen)``."""
        started = time.monotonic()
        worst = 0.0
        while time.monotonic() - started < timeout:
            lag = self.newest_lag()
            if lag is not None:
                worst = max(worst, lag)
                if lag < FRESH_SECONDS:
                    return time.monotonic() - started, worst
            else:
                worst = max(worst, time.monotonic() - started)
            self._check_alive()
            time.sleep(0.25)
        raise AssertionError(f"readings were not fresh in PostgreSQL within {timeout} s")

    def _check_alive(self) -> None:
        for process in (*self.gateways, *self.workers, *self.devices):
            if process.process is not None and process.process.poll() not in (None, 0, -9):
                raise AssertionError(
                    f"{process.name} exited with {process.process.returncode}: "
                    f"{process.log.read_text()[-3000:]}"
                )

    def kafka_readings(self) -> tuple[int, int]:
        """``(readings, distinct readings)`` in the telemetry topic."""
        return asyncio.run(_count_readings(self.cluster.bootstrap, self.topic))

    def _sample(self) -> None:
        """In the background: the lag of the stalest device, four times a second."""
        while not self._stopped.wait(0.25):
            lag = self.newest_lag()
            with self._lock:
                self.lags.append((time.monotonic(), lag))

    # ------------------------------------------------------------------ faults

    def faults(self) -> dict[str, Callable[[], None]]:
        return {
            "SIGKILL a device process": lambda: self._bounce(random.choice(self.devices), 2),
            "SIGKILL a gateway": lambda: self._bounce(random.choice(self.gateways), 3),
            "SIGKILL a worker": lambda: self._bounce(random.choice(self.workers), 3),
            "SIGKILL the Kafka leader": self._kill_kafka_leader,
            "restart Mosquitto": self._restart_mosquitto,
            "restart PostgreSQL": self._restart_postgres,
        }

    def inject(self, name: str) -> FaultReport:
        """Inject one fault, wait until the pipeline recovered, and say what it cost."""
        total, distinct = self.kafka_readings()
        started = time.monotonic()
        self.faults()[name]()
        self.wait_flowing()
        recovered = time.monotonic()
        time.sleep(3)  # let the redeliveries of the fault land in Kafka before counting
        total_after, distinct_after = self.kafka_readings()
        with self._lock:
            lags = [lag for t, lag in self.lags if started <= t <= recovered]
        # a sample without an answer (the database down) counts as behind since the fault
        worst = max((recovered - started if lag is None else lag for lag in lags), default=0.0)
        duplicates = (total_after - distinct_after) - (total - distinct)
        report = FaultReport(name, recovered - started, worst, duplicates)
        self.reports.append(report)
        return report

    def _bounce(self, process: Process, pause: float) -> None:
        process.kill()
        time.sleep(pause)  # the fault lasts this long: the process is down
        process.start()

    def _kill_kafka_leader(self) -> None:
        node = asyncio.run(self.cluster.leader_of_most(self.topic))
        self.cluster.kill(node)
        asyncio.run(self.cluster.wait_failover(node, self.topic))
        time.sleep(5)  # down for a while: the cluster runs on two nodes
        self.cluster.start()
        asyncio.run(self.cluster.wait_full_isr(self.topic))

    def _restart_mosquitto(self) -> None:
        self.broker.stop()
        self.broker.start()

    def _restart_postgres(self) -> None:
        done = subprocess.run(
            [str(REPO / "scripts" / "services.sh"), "restart", "postgres"],
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    # ------------------------------------------------------------------ the end

    def finish(self, timeout: float = 240) -> Outcome:
        """Stop the devices cleanly (they flush), wait until everything is stored and
        counted, and compare by ``(device_id, seq)``."""
        for process in self.devices:
            status = process.stop(timeout)
            assert status == 0, f"{process.name}: {process.log.read_text()[-3000:]}"
        deadline = time.monotonic() + timeout
        while True:
            missing, bad, uncounted, stored = self._compare()
            if not (missing or bad or uncounted) or time.monotonic() > deadline:
                break
            self._check_alive()
            time.sleep(1)
        total, distinct = self.kafka_readings()
        return Outcome(
            accepted=len(self.accepted),
            stored=stored,
            missing=missing,
            bad_windows=bad,
            uncounted=uncounted,
            kafka_readings=total,
            kafka_distinct=distinct,
            faults=list(self.reports),
        )

    def _compare(self) -> tuple[list[tuple[str, int]], list[tuple[str, str, int, int]], int, int]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT device_id, seq FROM {self.tables}readings").fetchall()
            windows = conn.execute(
                f"""SELECT a.device_id, a.metric, extract(epoch FROM a.window_start)::bigint,
                           a.count, count(r.seq)
                    FROM {self.tables}aggregates a LEFT JOIN {self.tables}readings r
                      ON r.device_id = a.device_id AND r.metric = a.metric
                     AND r.ts >= a.window_start AND r.ts < a.window_end
                    GROUP BY 1, 2, 3, 4"""
            ).fetchall()
            [(counted,)] = conn.execute(
                f"SELECT coalesce(sum(count), 0) FROM {self.tables}aggregates"
            ).fetchall()
        stored = {(device, int(seq)) for device, seq in rows}
        with self._lock:
            missing = sorted(self.accepted - stored)
        bad = [(d, m, s, int(c)) for d, m, s, c, n in windows if int(c) != int(n)]
        return missing, bad, len(stored) - int(counted), len(stored)


async def _count_readings(bootstrap: str, topic: str) -> tuple[int, int]:
    """``(readings, distinct (device_id, seq))`` of every frame in ``topic``, read from the
    start to the current end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # noqa: PLC0415

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        total = frames = 0
        keys: set[tuple[str, int]] = set()
        decoder = codec.Decoder()
        remaining = {p for p in partitions if ends[p] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for partition, fetched in batches.items():
                records = [r for r in fetched if r.offset < ends[partition]]
                frames += len(records)
                for record in records:
                    batch = decoder.decode(record.value)
                    total += len(batch)
                    keys.update((batch.device_id, s) for c in batch.columns for s in c.seq)
            for partition in list(remaining):
                if await consumer.position(partition) >= ends[partition]:
                    remaining.discard(partition)
        if frames != sum(ends.values()):  # every offset is a record: nothing was skipped
            raise AssertionError(f"read {frames} records of {topic}, not {sum(ends.values())}")
        return total, len(keys)
    finally:
        await consumer.stop()


def run(pipeline: Pipeline, schedule: Iterator[str], *, settle: float = 5.0) -> Outcome:
    """Start the pipeline, let it flow, inject the faults of ``schedule`` one after another
    (``settle`` seconds of normal running between them), and finish."""
    pipeline.start()
    pipeline.wait_flowing()
    return run_started(pipeline, schedule, settle=settle)


def run_started(
    pipeline: Pipeline,
    schedule: Iterator[str],
    *,
    settle: float = 5.0,
    rng: random.Random | None = None,
) -> Outcome:
    """Inject the faults of ``schedule`` into a flowing pipeline (a pause of ``settle``
    seconds between them, or 10 to 40 s at random with ``rng``), then finish."""
    for name in schedule:
        time.sleep(settle if rng is None else rng.uniform(10, 40))
        report = pipeline.inject(name)
        print(
            f"chaos: {report.fault}: recovered in {report.recovery:.1f} s, worst lag "
            f"{report.worst_lag:.1f} s, {report.duplicates} duplicates",
            flush=True,
        )
    time.sleep(settle)
    return pipeline.finish()
