"""The fleet simulator: its signals (pure), and fleets published to a real Mosquitto."""

from __future__ import annotations

import datetime as dt
import json
import struct
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import tenacity

import iotdata
from iotdata import InvalidInputError
from iotdata.cli import main
from iotdata.device._simulator import (
    ANOMALY_KINDS,
    Anomaly,
    FleetSimulator,
    ReplaySignal,
    SimulationSummary,
    SyntheticSignal,
    load_anomalies,
    read_series,
    save_anomalies,
)
from iotdata.model import ts_from_datetime
from iotdata.mqtt import Topics
from tests._brokers import PrivateBroker
from tests._helpers import Collector, run_cli

FAST = tenacity.wait_fixed(0.2)
START = 1_700_000_000_000_000
SECOND = 1_000_000


def series(signal: SyntheticSignal, count: int, step: int = SECOND) -> list[float | None]:
    out = []
    for k in range(count):
        reading = signal.reading(START + k * step)
        out.append(None if reading is None else reading[1])
    return out


def stretch(event: Anomaly, step: int = SECOND) -> range:
    """The reading numbers an event covers, for a series starting at START."""
    return range((event.start_ts - START) // step, (event.end_ts - START) // step + 1)


# ---------------------------------------------------------------------------------- signals


def test_signals_are_deterministic_for_a_seed_and_device() -> None:
    def make(seed: int, index: int) -> SyntheticSignal:
        return SyntheticSignal.for_device(index, seed=seed, start_ts=START, anomaly_rate=0.05)

    first, again = make(7, 3), make(7, 3)
    assert series(first, 2000) == series(again, 2000)
    assert first.events() == again.events() and first.events()
    assert series(make(8, 3), 50) != series(make(7, 3), 50)
    assert series(make(7, 4), 50) != series(make(7, 3), 50)


def test_clean_signal_is_base_trend_daily_cycle_and_noise() -> None:
    signal = SyntheticSignal.for_device(0, seed=1, start_ts=START, anomaly_rate=0)
    hourly = series(signal, 24 * 14, step=3600 * SECOND)  # two weeks, one reading an hour
    assert signal.events() == [] and None not in hourly
    assert all(round(v, 2) == v for v in hourly if v is not None)
    # One day apart, readings differ by the trend of a day and noise only.
    for now, tomorrow in zip(hourly, hourly[24:], strict=False):
        assert now is not None and tomorrow is not None
        assert abs(tomorrow - now - signal.trend) < 8 * signal.sigma
    # Within a day, the cycle swings by about twice the amplitude.
    day = [v for v in hourly[:24] if v is not None]
    assert max(day) - min(day) > 1.5 * signal.amplitude


def test_anomalies_have_their_documented_shapes() -> None:
    """Same seed with and without anomalies: the difference is exactly the injected episodes."""
    kinds: Counter[str] = Counter()
    for index in range(20):
        make = SyntheticSignal.for_device
        clean = series(make(index, seed=3, start_ts=START, anomaly_rate=0), 3000)
        noisy_signal = make(index, seed=3, start_ts=START, anomaly_rate=0.01)
        noisy = series(noisy_signal, 3000)
        touched: set[int] = set()
        for event in noisy_signal.events():
            kinds[event.kind] += 1
            covered = stretch(event)
            touched.update(covered)
            check_shape(event, covered, clean, noisy, noisy_signal.sigma)
        untouched = [k for k in range(3000) if k not in touched]
        assert all(noisy[k] == clean[k] for k in untouched)
    assert set(kinds) == set(ANOMALY_KINDS), kinds


def check_shape(
    event: Anomaly,
    covered: range,
    clean: list[float | None],
    noisy: list[float | None],
    sigma: float,
) -> None:
    values = [noisy[k] for k in covered]
    cut_short = covered[-1] == len(noisy) - 1  # the series ended during the episode
    if event.kind == "dropout":
        assert values == [None] * len(values) and (len(values) >= 5 or cut_short)
        assert len(values) <= 20
        return
    offsets = [v - c for v, c in zip(values, (clean[k] for k in covered), strict=True)]  # type: ignore[operator]
    if event.kind == "spike":
        assert 1 <= len(values) <= 3
        assert all(abs(o) > 19 * sigma for o in offsets)
    elif event.kind == "level_shift":
        assert 10 <= len(values) <= 40 or cut_short
        assert max(offsets) - min(offsets) < 0.03  # one constant shift, give or take rounding
        assert 4 * sigma - 0.01 < abs(offsets[0]) < 8 * sigma + 0.01
    else:  # stuck: the value sent last, held
        assert 10 <= len(values) <= 40 or cut_short
        assert len(set(values)) == 1
        before = covered[0] - 1
        if before >= 0 and noisy[before] is not None:
            assert values[0] == noisy[before]


def test_replay_keeps_values_and_moves_on_in_time_when_it_starts_over() -> None:
    signal = ReplaySignal("sim-00000", (0, 60, 120), (1.5, 2.5, 3.5), shift=1000)
    readings = [signal.reading(0) for _ in range(7)]
    assert readings == [
        (1000, 1.5), (1060, 2.5), (1120, 3.5),
        (1180, 1.5), (1240, 2.5), (1300, 3.5), (1360, 1.5),
    ]  # fmt: skip
    assert signal.events() == []


def test_bad_csv_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,value\n2024-01-01 00:00:00,1.5\nyesterday,2\n")
    with pytest.raises(InvalidInputError, match=r"bad.csv, line 3"):
        read_series(bad)
    (tmp_path / "empty.csv").write_text("timestamp,value\n")
    with pytest.raises(InvalidInputError, match="no readings"):
        read_series(tmp_path / "empty.csv")


def test_anomalies_files_round_trip(tmp_path: Path) -> None:
    events = [Anomaly("sim-00001", "spike", START, START), Anomaly("sim-00002", "dropout", 1, 9)]
    save_anomalies(tmp_path / "a.json", events)
    assert load_anomalies(tmp_path / "a.json") == events
    (tmp_path / "b.json").write_text('[{"device_id": "x"}]')
    with pytest.raises(InvalidInputError):
        load_anomalies(tmp_path / "b.json")


def test_bad_settings_are_refused() -> None:
    for bad in ({"devices": 0}, {"rate": 0}, {"rate": float("nan")}, {"anomaly_rate": 2}):
        options = {"mqtt": "mqtt://127.0.0.1:1883", "devices": 1, "rate": 1.0, **bad}
        with pytest.raises(InvalidInputError):
            FleetSimulator(**options)  # type: ignore[arg-type]
    simulator = FleetSimulator(mqtt="mqtt://127.0.0.1:1883", devices=1, rate=1)
    with pytest.raises(InvalidInputError, match="not both"):
        simulator.run(readings_per_device=1, duration=1)


# ---------------------------------------------------------------------------------- on a broker


def expected_set(summary: SimulationSummary) -> set[tuple[str, int]]:
    return {(device, seq) for device, count in summary.generated.items() for seq in range(count)}


@pytest.mark.mqtt
def test_a_fleet_delivers_every_generated_reading(
    mqtt_url: str, unique_name: str, tmp_path: Path
) -> None:
    topics = Topics(unique_name)
    received = Collector(mqtt_url, topics, f"{unique_name}-cloud", metric="temp")
    simulator = FleetSimulator(
        mqtt=mqtt_url, devices=200, rate=1.0, topics=topics, seed=5, anomaly_rate=0.02,
        wall_clock=lambda: START,
    )  # fmt: skip
    try:
        summary = simulator.run(readings_per_device=20)
        received.wait_for(expected_set(summary), exact=True)
    finally:
        received.close()
    assert len(summary.generated) == 200
    assert summary.readings_generated == sum(summary.generated.values())
    assert summary.readings_generated + summary.readings_skipped == 200 * 20
    assert summary.readings_published == summary.readings_acknowledged == len(received.readings)
    assert summary.batches_published == received.frames == 200  # one frame each (batch 100)
    assert summary.resends == summary.batches_held == 0 and summary.bytes_sent > 0
    # The anomalies file says which readings were never sent, and where the others are.
    save_anomalies(tmp_path / "anomalies.json", summary.events)
    documents = json.loads((tmp_path / "anomalies.json").read_text())
    assert {tuple(d) for d in documents} == {("device_id", "kind", "start_ts", "end_ts")}
    events = load_anomalies(tmp_path / "anomalies.json")
    assert summary.dropouts > 0 and summary.anomalies > 0
    assert len(events) == summary.dropouts + summary.anomalies
    skipped: Counter[str] = Counter()
    for event in events:
        assert event.kind in ANOMALY_KINDS and event.start_ts <= event.end_ts
        if event.kind == "dropout":
            skipped[event.device_id] += (event.end_ts - event.start_ts) // SECOND + 1
    assert all(summary.generated[d] == 20 - skipped[d] for d in summary.generated)
    # Each device's readings are 1/rate apart, shifted by its place in the fleet.
    for i in range(200):
        device = f"sim-{i:05d}"
        if not skipped[device]:
            stamps = [received.readings[device, seq][0] for seq in range(20)]
            assert stamps == [START + k * SECOND + i * 5000 for k in range(20)]


@pytest.mark.mqtt
def test_replay_publishes_recorded_values_bit_exactly_in_order(
    mqtt_url: str, unique_name: str, nab_dir: Path
) -> None:
    files = sorted(nab_dir.glob("*.csv"))[:2]
    recorded = [read_series(path) for path in files]
    topics = Topics(unique_name)
    received = Collector(mqtt_url, topics, f"{unique_name}-cloud", metric="temp")
    simulator = FleetSimulator(
        mqtt=mqtt_url, devices=2, rate=1.0, topics=topics, replay=nab_dir, wall_clock=lambda: START
    )
    count = 3000
    try:
        summary = simulator.run(readings_per_device=count)
        received.wait_for(expected_set(summary), exact=True)
    finally:
        received.close()
    assert summary.readings_generated == 2 * count and summary.events == ()
    for index, (ts, values) in enumerate(recorded):
        device = f"sim-{index:05d}"
        got = [received.readings[device, seq] for seq in range(count)]
        assert [bits(v) for _, v in got] == [bits(v) for v in values[:count]]
        assert [t for t, _ in got] == [t - ts[0] + START for t in ts[:count]]
    with files[0].open() as handle:
        stamp, value = handle.read().splitlines()[1].split(",")
    assert recorded[0][0][0] == ts_from_datetime(dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    assert received.readings["sim-00000", 0] == (START, float(value))


def bits(value: object) -> bytes:
    assert type(value) is float
    return struct.pack("<d", value)


class VirtualClock:
    """Monotonic time that moves only when the simulator sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@pytest.mark.mqtt
def test_real_time_runs_on_an_injected_clock(mqtt_url: str, unique_name: str) -> None:
    """10 devices at 2 readings/s for 5 s of virtual time; batches linger at most 1 s."""
    clock = VirtualClock()
    topics = Topics(unique_name)
    received = Collector(mqtt_url, topics, f"{unique_name}-cloud", metric="temp")
    snapshots: list[SimulationSummary] = []
    simulator = FleetSimulator(
        mqtt=mqtt_url, devices=10, rate=2.0, topics=topics, anomaly_rate=0,
        clock=clock, sleep=clock.sleep, wall_clock=lambda: START,
    )  # fmt: skip
    started = time.monotonic()
    try:
        summary = simulator.run(duration=5, progress=snapshots.append, progress_every=1)
        received.wait_for(expected_set(summary), exact=True)
    finally:
        received.close()
    assert time.monotonic() - started < 5  # virtual time, not wall time
    assert 4.9 < clock.slept < 5.2 and 4.9 < summary.duration < 5.2
    assert summary.generated == {f"sim-{i:05d}": 10 for i in range(10)}
    for i in range(10):
        stamps = [received.readings[f"sim-{i:05d}", seq][0] for seq in range(10)]
        assert stamps == [START + k * 500_000 + i * 50_000 for k in range(10)]
    assert 40 <= summary.batches_published <= 70  # every second or so, not once at the end
    assert len(snapshots) >= 4 and snapshots[-1].readings_acknowledged == 100


@pytest.mark.mqtt
def test_frames_lost_with_the_connection_are_published_again(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    private_broker.stop()
    private_broker.persistent = True
    private_broker.start()
    topics = Topics(unique_name)
    received = Collector(
        private_broker.url, topics, f"{unique_name}-cloud", persistent=True, metric="temp"
    )
    simulator = FleetSimulator(
        mqtt=private_broker.url, devices=50, rate=20.0, topics=topics, batch_size=10,
        backoff=FAST,
    )  # fmt: skip
    outcome: list[SimulationSummary] = []
    runner = threading.Thread(target=lambda: outcome.append(simulator.run(duration=4)))
    try:
        runner.start()
        time.sleep(1.5)
        private_broker.stop()
        time.sleep(1.0)
        private_broker.start()
        runner.join(30)
        assert outcome, "the simulation did not finish"
        summary = outcome[0]
        received.connection.wait_connected(10)
        received.wait_for(expected_set(summary), exact=True)
    finally:
        simulator.stop()
        received.close()
    assert summary.batches_held > 0
    assert summary.readings_acknowledged == summary.readings_generated
    duplicates = sum(n - 1 for n in received.copies.values())
    print(
        f"outage: {summary.readings_generated} readings, {summary.batches_held} frames held, "
        f"{summary.resends} re-sent, {duplicates} duplicate readings"
    )


@pytest.mark.mqtt
def test_a_broker_gone_for_good_is_an_error_not_a_hang(
    private_broker: PrivateBroker, unique_name: str
) -> None:
    simulator = FleetSimulator(
        mqtt=private_broker.url, devices=20, rate=20.0, topics=Topics(unique_name),
        batch_size=5, max_in_flight=4, stall_timeout=1.0, backoff=FAST,
    )  # fmt: skip
    threading.Timer(0.5, private_broker.stop).start()
    started = time.monotonic()
    with pytest.raises(iotdata.ConnectError, match="acknowledged nothing for 1 s"):
        simulator.run(duration=30)
    assert time.monotonic() - started < 5


@pytest.mark.mqtt
def test_two_thousand_devices_from_one_process(mqtt_url: str, unique_name: str) -> None:
    topics = Topics(unique_name)
    received = Collector(mqtt_url, topics, f"{unique_name}-cloud", metric="temp")
    simulator = FleetSimulator(mqtt=mqtt_url, devices=2000, rate=1.0, topics=topics)
    started = time.monotonic()
    try:
        summary = simulator.run(readings_per_device=5)
        elapsed = time.monotonic() - started
        received.wait_for(expected_set(summary), timeout=60, exact=True)
    finally:
        received.close()
    assert summary.readings_acknowledged == summary.readings_generated > 9000
    print(
        f"2000 devices x 5: {summary.readings_generated} readings in {elapsed:.2f} s "
        f"({summary.readings_generated / elapsed:,.0f} readings/s)"
    )


# ---------------------------------------------------------------------------------- the command


@pytest.mark.mqtt
def test_cli_simulates_a_fleet_and_prints_a_summary(
    mqtt_url: str, unique_name: str, tmp_path: Path
) -> None:
    anomalies = tmp_path / "anomalies.json"
    received = Collector(mqtt_url, Topics(unique_name), f"{unique_name}-cloud", metric="temp")
    try:
        result = run_cli(
            "simulate", "--devices", "50", "--readings-per-device", "10", "--mqtt", mqtt_url,
            "--prefix", unique_name, "--anomaly-rate", "0.05", "--anomalies", str(anomalies),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
        generated = int(lines["readings generated"].split()[0].replace(",", ""))
        assert lines["readings acknowledged"] == f"{generated:,}"
        received.wait_count(generated)  # every one reached the subscriber
    finally:
        received.close()
    assert "on 4 connections" in lines["devices"]
    assert "bytes on the wire" in result.stdout and "duration" in lines
    events = load_anomalies(anomalies)
    assert len(events) == int(lines["anomalies injected"].split()[0]) + int(
        lines["dropouts injected"]
    )
    assert "acknowledged:" in result.stderr  # progress, one line at the end at least


@pytest.mark.mqtt
def test_a_fleet_nobody_subscribes_to_keeps_its_frames_and_says_why(
    mqtt_url: str, unique_name: str
) -> None:
    """The broker answers "no matching subscribers" (0x10) and drops such messages: the
    simulator keeps its frames, resends them with backoff, and its error names the cause."""
    simulator = FleetSimulator(
        mqtt=mqtt_url, devices=3, rate=1.0, topics=Topics(unique_name), stall_timeout=2
    )
    with pytest.raises(iotdata.ConnectError, match=r"no matching subscribers \(0x10\).*gateway"):
        simulator.run(readings_per_device=5)
    summary = simulator.snapshot()
    assert summary.readings_acknowledged == 0


def test_cli_reports_an_unreachable_broker_clearly() -> None:
    started = time.monotonic()
    result = run_cli(
        "simulate", "--devices", "5", "--duration", "1", "--mqtt", "mqtt://127.0.0.1:1"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("iotdata: error: cannot reach mqtt://127.0.0.1:1")
    assert time.monotonic() - started < 15
    assert result.stdout == ""


def exit_code(*args: str) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


def test_cli_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["simulate", "--mqtt", "mqtt://127.0.0.1:1"]
    for bad in (
        ["--devices", "0"],
        ["--rate", "-1"],
        ["--rate", "fast"],
        ["--duration", "5", "--readings-per-device", "5"],
        ["--prefix", "a/+"],
        ["--anomaly-rate", "1.5"],
        ["--mqtt", "http://x"],
    ):
        assert exit_code(*base, *bad) == 2, bad
        assert "error:" in capsys.readouterr().err
    assert exit_code("simulate") == 2  # --mqtt is required
    assert exit_code(*base, "--keep-timestamps") == 2
    assert exit_code(*base, "--replay", str(tmp_path)) == 1
    assert "iotdata: error: no CSV files in" in capsys.readouterr().err
    assert exit_code("simulate", "--help") == 0
    help_text = capsys.readouterr().out
    for option in ("--devices", "--rate", "--replay", "--connections", "--anomalies"):
        assert option in help_text
