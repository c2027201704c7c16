"""A fleet simulator: thousands of virtual devices publishing telemetry from one process.

:class:`FleetSimulator` drives ``devices`` virtual devices (``sim-00000``, ``sim-00001``, ...),
each producing ``rate`` readings per second of the metric ``"temp"``, and publishes them as
codec frames on ``Topics(prefix).telemetry(device_id)`` at QoS 1. It is built for scale:

* **multiplexed**: a few shared :class:`~iotdata.mqtt.MqttConnection` (device ``i`` uses
  connection ``i % connections``) and one scheduler loop on the calling thread, instead of a
  thread, a queue file and a connection per device;
* **batched**: one frame per device every ``batch_size`` readings, or once its oldest buffered
  reading waited ``linger`` seconds;
* **bounded**: at most ``max_in_flight`` unacknowledged frames per connection; when full, the
  loop waits for acknowledgements;
* **complete, not durable**: frames stay in memory until acknowledged and are published again
  after a reconnection, so nothing generated is lost while the process lives. Sequence numbers
  live in memory and start at 0 on every run; :class:`~iotdata.device.DeviceClient` is the
  durable client.

Time is a sequence of ticks spread evenly over the fleet: tick ``g`` belongs to device
``g % devices`` and lies ``g / (rate * devices)`` seconds after the start, so each device's
readings are ``1 / rate`` seconds apart. With ``duration`` the ticks follow the (injectable)
clock; with ``readings_per_device`` they run as fast as the broker takes them, on simulated time.

Signals come from ``_signals.py``: :class:`SyntheticSignal` (deterministic for a seed and device
index, with injected anomalies and dropouts recorded as :class:`Anomaly`) or
:class:`ReplaySignal` (recorded ``timestamp,value`` CSV series such as the NAB corpus, see
:func:`read_series`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import tenacity

from iotdata._checks import (
    check_bool,
    check_callable,
    check_instance,
    check_int,
    check_path,
    check_seconds,
    validated,
)
from iotdata.codec import Encoder
from iotdata.device._signals import (
    ANOMALY_KINDS,
    DEFAULT_ANOMALY_RATE,
    DROPOUT,
    Anomaly,
    ReplaySignal,
    Series,
    Source,
    SyntheticSignal,
    load_anomalies,
    read_series,
    replay_files,
    save_anomalies,
    sim_device_id,
)
from iotdata.errors import (
    ConnectError,
    ConnectionLostError,
    InvalidInputError,
    IotDataError,
    PublishRefusedError,
)
from iotdata.model import Batch
from iotdata.mqtt import (
    Delivery,
    MqttConnection,
    MqttSettings,
    Topics,
    backoff_delay,
    default_backoff,
    refusal_backoff,
)

# With the signal names, which iotdata.device (loading lazily) takes from this module too.
__all__ = [
    "ANOMALY_KINDS",
    "DEFAULT_ANOMALY_RATE",
    "Anomaly",
    "FleetSimulator",
    "ReplaySignal",
    "SimulationSummary",
    "SyntheticSignal",
    "load_anomalies",
    "read_series",
    "save_anomalies",
]

log = logging.getLogger("iotdata.device")

METRIC = "temp"


def _now_us() -> int:
    return time.time_ns() // 1000


# ---------------------------------------------------------------------------------- summary


@attrs.frozen(kw_only=True)
class SimulationSummary:
    """A snapshot of a simulation: during a run (progress) or after it (the result).

    ``generated`` maps each device to how many readings it produced: its seqs are
    ``0 .. generated - 1``. ``events`` lists the injected anomalies and dropouts.
    ``batches_held`` counts the times a frame waited for a reconnection (in flight when its
    connection dropped, or due while it was down); ``resends`` the frames published again
    after being in flight once (the broker may have got them twice). ``bytes_sent`` counts
    frame bytes published, re-sends included (MQTT headers and topics not counted).
    """

    devices: int
    connections: int
    connections_up: int
    readings_generated: int
    readings_skipped: int
    readings_published: int
    readings_acknowledged: int
    batches_published: int
    batches_held: int
    resends: int
    bytes_sent: int
    duration: float
    generated: Mapping[str, int]
    events: tuple[Anomaly, ...]

    @property
    def dropouts(self) -> int:
        return sum(e.kind == DROPOUT for e in self.events)

    @property
    def anomalies(self) -> int:
        """Injected anomalies, dropouts not included."""
        return len(self.events) - self.dropouts

    @property
    def readings_per_second(self) -> float:
        """Acknowledged readings per second of the run."""
        return self.readings_acknowledged / self.duration if self.duration > 0 else 0.0


# ---------------------------------------------------------------------------------- simulator


@attrs.define(eq=False)
class _Pending:
    topic: str
    frame: bytes
    readings: int
    sent: bool = False
    attempt: int = 0  # which publish of the frame the awaited delivery belongs to
    epoch: int = 0  # how many times its connection had connected when it was published


@attrs.define(eq=False)
class _Link:
    """One shared connection and the frames it owes the broker."""

    connection: MqttConnection
    in_flight: set[_Pending] = attrs.field(factory=set)
    retry: list[_Pending] = attrs.field(factory=list)
    #: Refusals in a row (no matching subscribers, a quota), and no resend before this.
    refusals: int = 0
    hold_until: float = 0.0

    def load(self) -> int:
        return len(self.in_flight) + len(self.retry)


@attrs.define(eq=False)
class _Device:
    index: int
    device_id: str
    topic: str
    source: Source
    seq: int = 0
    ts: list[int] = attrs.field(factory=list)
    values: list[float] = attrs.field(factory=list)
    seqs: list[int] = attrs.field(factory=list)


#: Most devices one simulator runs.
MAX_DEVICES = 1_000_000


def _settings(mqtt: str | MqttSettings) -> MqttSettings:
    if isinstance(mqtt, MqttSettings):
        return mqtt
    if not isinstance(mqtt, str):
        raise InvalidInputError(f"mqtt must be a broker URL or MqttSettings, not {mqtt!r:.60}")
    return MqttSettings.from_url(mqtt)


def _replay(value: object) -> Path | None:
    return None if value is None else Path(check_path("replay", value))


def _at_least_one(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{attribute.name} must be a positive int, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not 0 < value < math.inf:
        raise InvalidInputError(f"{attribute.name} must be a positive number, got {value!r}")


def _probability(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if type(value) not in (int, float) or not 0 <= value <= 1:
        raise InvalidInputError(f"{attribute.name} must lie in [0, 1], got {value!r}")


@attrs.define(kw_only=True)
class FleetSimulator:
    """Simulated devices publishing telemetry over a few shared connections (see the module).

    >>> simulator = FleetSimulator(mqtt="mqtt://127.0.0.1:1883", devices=1000, rate=0.5)
    >>> summary = simulator.run(duration=60)  # doctest: +SKIP

    ``replay`` is a folder of CSV files (or one file): device ``i`` replays file
    ``i % files``, moved to start at the run's start unless ``keep_timestamps``; nothing is
    injected then (``seed`` and ``anomaly_rate`` serve synthetic signals only). ``clock``
    (monotonic seconds), ``sleep`` and ``wall_clock`` (microseconds since the epoch, the first
    timestamp) are injectable for tests. :meth:`stop` (from a signal handler or another thread)
    ends a run early: it stops generating, publishes what is buffered and waits for the acks.
    """

    mqtt: MqttSettings = attrs.field(converter=_settings)
    #: Virtual devices, 1 to 1,000,000 (each keeps its signal and a buffer in memory).
    devices: int = attrs.field(validator=validated(check_int, minimum=1, maximum=MAX_DEVICES))
    rate: float = attrs.field(validator=_positive)
    topics: Topics = attrs.field(factory=Topics, validator=validated(check_instance, kind=Topics))
    #: MQTT connections the devices share, 1 to 10,000.
    connections: int = attrs.field(
        default=4, validator=validated(check_int, minimum=1, maximum=10_000)
    )
    batch_size: int = attrs.field(default=100, validator=_at_least_one)
    linger: float = attrs.field(default=1.0, validator=_positive)
    seed: int = attrs.field(default=0, validator=validated(check_int))
    anomaly_rate: float = attrs.field(default=DEFAULT_ANOMALY_RATE, validator=_probability)
    replay: Path | None = attrs.field(default=None, converter=_replay)
    keep_timestamps: bool = attrs.field(default=False, validator=validated(check_bool))
    max_in_flight: int = attrs.field(default=256, validator=_at_least_one)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Give up (ConnectError) when the broker acknowledges nothing for this many seconds.
    stall_timeout: float = attrs.field(default=60.0, validator=_positive)
    #: How long the connections wait between attempts to reconnect (a tenacity wait).
    backoff: tenacity.wait.wait_base = attrs.field(
        factory=default_backoff, validator=validated(check_callable)
    )
    #: How long a connection holds back its frames after the broker did not take one on (no
    #: matching subscribers, a quota): they are kept and sent again (a tenacity wait).
    resend_backoff: tenacity.wait.wait_base = attrs.field(
        factory=refusal_backoff, validator=validated(check_callable)
    )
    clock: Callable[[], float] = attrs.field(
        default=time.monotonic, validator=validated(check_callable)
    )
    sleep: Callable[[float], None] = attrs.field(
        default=time.sleep, validator=validated(check_callable)
    )
    wall_clock: Callable[[], int] = attrs.field(
        default=_now_us, validator=validated(check_callable)
    )
    _stopping: threading.Event = attrs.field(factory=threading.Event, init=False)
    _cond: threading.Condition = attrs.field(factory=threading.Condition, init=False)
    _links: list[_Link] = attrs.field(factory=list, init=False)
    _fleet: list[_Device] = attrs.field(factory=list, init=False)
    _lingering: dict[int, float] = attrs.field(factory=dict, init=False)
    _counts: dict[str, int] = attrs.field(factory=dict, init=False)
    _encoder: Encoder = attrs.field(factory=Encoder, init=False)
    _started: float = attrs.field(default=0.0, init=False)
    _ended: float | None = attrs.field(default=None, init=False)
    _start_us: int = attrs.field(default=0, init=False)
    _last_ack: float = attrs.field(default=0.0, init=False)
    _refusal: str | None = attrs.field(default=None, init=False)
    _progress: Callable[[SimulationSummary], None] | None = attrs.field(default=None, init=False)
    _progress_every: float = attrs.field(default=5.0, init=False)
    _next_report: float = attrs.field(default=0.0, init=False)

    def run(
        self,
        *,
        readings_per_device: int | None = None,
        duration: float | None = None,
        progress: Callable[[SimulationSummary], None] | None = None,
        progress_every: float = 5.0,
    ) -> SimulationSummary:
        """Simulate until each device had ``readings_per_device`` ticks (accelerated), for
        ``duration`` seconds (real time), or, with neither, until :meth:`stop`; then wait until
        the broker acknowledged everything. ``progress(snapshot)`` is called every
        ``progress_every`` seconds. Raises :class:`~iotdata.ConnectError` when the broker cannot
        be reached within ``connect_timeout`` or stalls for ``stall_timeout``."""
        total = self._total_ticks(readings_per_device, duration)
        check_callable("progress", progress, none=True)
        check_seconds("progress_every", progress_every, zero=False)
        series = [read_series(p) for p in replay_files(self.replay)] if self.replay else []
        self._stopping.clear()
        self._progress, self._progress_every = progress, progress_every
        self._links = self._connect()
        try:
            self._start(series)
            self._generate(total, accelerated=readings_per_device is not None)
            self._drain()
            self._ended = self.clock()
            return self.snapshot()
        finally:
            for link in self._links:
                link.connection.close()

    def stop(self) -> None:
        """End the current run early (safe from signal handlers and other threads)."""
        self._stopping.set()

    def snapshot(self) -> SimulationSummary:
        """Where the current (or last) run stands."""
        counts = self._counts
        generated = {d.device_id: d.seq for d in self._fleet}
        return SimulationSummary(
            devices=self.devices,
            connections=len(self._links),
            connections_up=sum(link.connection.connected for link in self._links),
            readings_generated=sum(generated.values()),
            readings_skipped=counts.get("skipped", 0),
            readings_published=counts.get("published", 0),
            readings_acknowledged=counts.get("acknowledged", 0),
            batches_published=counts.get("batches", 0),
            batches_held=counts.get("held", 0),
            resends=counts.get("resends", 0),
            bytes_sent=counts.get("bytes", 0),
            duration=self._elapsed(),
            generated=generated,
            events=tuple(e for d in self._fleet for e in d.source.events()),
        )

    def _elapsed(self) -> float:
        if not self._fleet:
            return 0.0
        return (self.clock() if self._ended is None else self._ended) - self._started

    # ------------------------------------------------------------------ set-up

    def _total_ticks(self, readings_per_device: int | None, duration: float | None) -> int | None:
        if readings_per_device is not None and duration is not None:
            raise InvalidInputError("give readings_per_device or duration, not both")
        if readings_per_device is not None:
            if type(readings_per_device) is not int or readings_per_device < 0:
                raise InvalidInputError("readings_per_device must be an int >= 0")
            return readings_per_device * self.devices
        if duration is not None:
            check_seconds("duration", duration)
            return math.ceil(duration * self.rate * self.devices)
        return None

    def _connect(self) -> list[_Link]:
        run = uuid.uuid4().hex[:8]
        options = {"max_inflight": 0, "backoff": self.backoff}  # our bound, not paho's
        links = [
            _Link(MqttConnection.start(self.mqtt, f"iotdata-sim-{run}-{n}", **options))
            for n in range(self.connections)
        ]
        deadline = time.monotonic() + self.connect_timeout
        try:
            for link in links:
                link.connection.wait_connected(max(0.1, deadline - time.monotonic()))
        except IotDataError:
            for link in links:
                link.connection.close()
            raise
        log.info("simulator: %d connections to %s", len(links), self.mqtt.url)
        return links

    def _start(self, series: list[Series]) -> None:
        self._start_us = start = self.wall_clock()
        self._fleet = [self._device(index, start, series) for index in range(self.devices)]
        self._lingering.clear()
        self._counts = dict.fromkeys(
            ("skipped", "published", "acknowledged", "batches", "held", "resends", "bytes"), 0
        )
        self._started = self.clock()
        self._next_report = self._started + self._progress_every
        self._ended = None
        self._last_ack = time.monotonic()

    def _device(self, index: int, start_us: int, series: list[Series]) -> _Device:
        device_id = sim_device_id(index)
        source: Source
        if series:
            ts, values = series[index % len(series)]
            shift = 0 if self.keep_timestamps else start_us - ts[0]
            source = ReplaySignal(device_id, ts, values, shift)
        else:
            source = SyntheticSignal.for_device(
                index, seed=self.seed, start_ts=start_us, anomaly_rate=self.anomaly_rate
            )
        return _Device(index, device_id, self.topics.telemetry(device_id), source)

    # ------------------------------------------------------------------ the scheduler loop

    def _generate(self, total: int | None, *, accelerated: bool) -> None:
        tick, chunk = 0, max(self.devices, 256)
        while not self._stopping.is_set() and (total is None or tick < total):
            limit = tick + chunk if accelerated else min(tick + chunk, self._due())
            if total is not None:
                limit = min(limit, total)
            for number in range(tick, limit):
                self._tick(number)
            if limit <= tick:
                ahead = tick / (self.rate * self.devices) - (self.clock() - self._started)
                self.sleep(min(max(ahead, 0.02), 0.1))
            tick = max(tick, limit)
            self._flush_lingering()
            self._resend()
            self._report()

    def _due(self) -> int:
        """Ticks due by now: tick ``g`` is due ``g / (rate * devices)`` s after the start."""
        elapsed = self.clock() - self._started
        return math.floor(elapsed * self.rate * self.devices) + 1

    def _tick(self, number: int) -> None:
        count = self.devices
        round_, index = divmod(number, count)
        period = 1_000_000 / self.rate
        ts = self._start_us + round(round_ * period) + round(index * period / count)
        device = self._fleet[index]
        reading = device.source.reading(ts)
        if reading is None:
            self._counts["skipped"] += 1
            return
        if not device.ts:
            self._lingering[index] = self.clock()
        device.ts.append(reading[0])
        device.values.append(reading[1])
        device.seqs.append(device.seq)
        device.seq += 1
        if len(device.ts) >= self.batch_size:
            self._flush(device)

    def _flush_lingering(self) -> None:
        cutoff = self.clock() - self.linger
        while self._lingering:
            index, since = next(iter(self._lingering.items()))
            if since > cutoff:
                return
            self._flush(self._fleet[index])

    def _flush(self, device: _Device) -> None:
        """Publish a device's buffered readings as one frame (waiting for room if need be)."""
        self._lingering.pop(device.index, None)
        columns = {METRIC: (device.ts, device.values, device.seqs)}
        frame = self._encoder.encode(Batch.from_columns(device.device_id, columns))
        pending = _Pending(device.topic, frame, len(device.ts))
        device.ts, device.values, device.seqs = [], [], []
        link = self._links[device.index % len(self._links)]
        while self._load(link) >= self.max_in_flight:
            self._resend()
            self._await_acks()
        if link.retry:  # older frames first
            self._resend_on(link)
        self._send(link, pending)

    # ------------------------------------------------------------------ publishing

    def _send(self, link: _Link, pending: _Pending) -> None:
        epoch = link.connection.statistics().connects
        try:
            delivery = link.connection.publish(pending.topic, pending.frame, qos=1)
        except ConnectionLostError:
            with self._cond:
                link.retry.append(pending)
                self._counts["held"] += 1
            return
        counts = self._counts
        counts["bytes"] += len(pending.frame)
        if pending.sent:
            counts["resends"] += 1
        else:
            pending.sent = True
            counts["batches"] += 1
            counts["published"] += pending.readings
        with self._cond:
            pending.attempt += 1
            pending.epoch = epoch
            link.in_flight.add(pending)
        settle = functools.partial(self._settled, link, pending, pending.attempt)
        delivery.add_done_callback(settle)

    def _settled(self, link: _Link, pending: _Pending, attempt: int, delivery: Delivery) -> None:
        """On a network thread: count the ack, or keep the frame to publish again."""
        with self._cond:
            if pending.attempt != attempt or pending not in link.in_flight:
                return  # given up as orphaned meanwhile (see _reclaim)
            link.in_flight.discard(pending)
            error = delivery.error()
            if error is None:
                self._counts["acknowledged"] += pending.readings
                self._last_ack = time.monotonic()
                link.refusals = 0
            else:
                link.retry.append(pending)
                self._counts["held"] += 1
                if isinstance(error, PublishRefusedError):  # kept, and sent again later
                    self._refusal = str(error)
                    link.refusals += 1
                    delay = backoff_delay(self.resend_backoff, link.refusals)
                    link.hold_until = max(link.hold_until, time.monotonic() + delay)
            self._cond.notify_all()

    def _resend(self) -> None:
        for link in self._links:
            self._reclaim(link)
            if link.retry:
                self._resend_on(link)

    def _reclaim(self, link: _Link) -> None:
        """Publish again what was sent on an earlier connection and is still unsettled.

        A loss fails every delivery awaited before the next connection is made, so such a frame
        has a delivery that will never complete (publish raced with the loss): resend it.
        """
        connects = link.connection.statistics().connects
        with self._cond:
            orphans = [p for p in link.in_flight if p.epoch < connects]
            for pending in orphans:
                link.in_flight.discard(pending)
                link.retry.append(pending)
            self._counts["held"] += len(orphans)
        if orphans:
            log.warning("simulator: %d frames lost track of with a connection", len(orphans))

    def _resend_on(self, link: _Link) -> None:
        if not link.connection.connected or time.monotonic() < link.hold_until:
            return
        with self._cond:
            frames, link.retry = link.retry, []
        for pending in frames:
            self._send(link, pending)

    def _load(self, link: _Link) -> int:
        with self._cond:
            return link.load()

    def _await_acks(self) -> None:
        """Wait a little for acknowledgements; give up after ``stall_timeout`` without any."""
        with self._cond:
            self._cond.wait(0.05)
            stalled = time.monotonic() - self._last_ack
        self._report()
        if stalled > self.stall_timeout:
            errors = {link.connection.statistics().last_error for link in self._links} - {None}
            if self._refusal is not None:
                errors.add(f"{self._refusal}; is a gateway subscribed?")
            reason = f" ({'; '.join(sorted(map(str, errors)))})" if errors else ""
            raise ConnectError(
                f"{self.mqtt.url} acknowledged nothing for {self.stall_timeout:g} s{reason}"
            )

    def _drain(self) -> None:
        for device in self._fleet:
            if device.ts:
                self._flush(device)
        while True:
            self._resend()
            with self._cond:
                if not any(link.load() for link in self._links):
                    break
            self._await_acks()
        self._report(final=True)

    def _report(self, *, final: bool = False) -> None:
        if self._progress is None or (not final and self.clock() < self._next_report):
            return
        self._next_report = self.clock() + self._progress_every
        self._progress(self.snapshot())
