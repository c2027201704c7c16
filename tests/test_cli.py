"""The iotdata command, run as a user would: a real subprocess."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests._helpers import run_cli, without_extras

SMALL = ("--devices", "12", "--minutes", "40", "--anomaly-rate", "0.01")


def _figures(stdout: str) -> dict[str, int]:
    """The counts the summary prints, by name."""

    def number(pattern: str) -> int:
        found = re.search(pattern, stdout)
        assert found, f"{pattern!r} not in:\n{stdout}"
        return int(found.group(1).replace(",", ""))

    return {
        "ticks": number(r"ticks ([\d,]+)"),
        "sent": number(r"sent ([\d,]+)"),
        "through": number(r"through the pipeline ([\d,]+)"),
        "late": number(r"late (\d+)"),
        "stored": number(r"stored ([\d,]+) in the warm store"),
        "twice": number(r"\((\d+) twice\)"),
        "windows": number(r"([\d,]+) one-minute windows"),
        "alerts": number(r"alerts +([\d,]+):"),
    }


def test_demo_runs_the_whole_pipeline_with_no_servers(tmp_path: Path) -> None:
    """Fleet -> device clients -> log -> pipeline -> SQLite and Parquet, checked against the
    stores themselves: every reading the devices accepted is stored once."""
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", str(out), *SMALL)
    assert result.returncode == 0, result.stderr
    figures = _figures(result.stdout)
    assert figures["ticks"] == 12 * 40 * 60 // 5
    assert 0 < figures["sent"] <= figures["ticks"]  # dropouts are never sent
    assert figures["through"] == figures["stored"] == figures["sent"]
    assert (figures["late"], figures["twice"]) == (0, 0)
    with sqlite3.connect(out / "iot.sqlite") as conn:
        assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == figures["sent"]
        windows = conn.execute('SELECT count(*), sum("count") FROM aggregates').fetchone()
        alerts = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
    assert windows == (figures["windows"], figures["sent"])  # each reading in one window
    assert alerts == figures["alerts"] > 0
    assert f"{figures['sent']:,} in Parquet" in result.stdout  # and "(0 twice)" among them
    chart = (out / "chart.html").read_text()
    assert chart.count("<svg") == 4
    assert "window mean" in chart
    assert "JSON message a reading" in result.stdout


def test_demo_again_on_its_folder_gives_the_same_result(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    first = run_cli("demo", "--out", str(out), *SMALL)
    second = run_cli("demo", "--out", str(out), *SMALL)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert _figures(first.stdout) == _figures(second.stdout)


def test_bad_arguments_give_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("not a demo's")
    refused = run_cli("demo", "--out", str(tmp_path))
    assert refused.returncode == 1
    assert "not a demo folder" in refused.stderr
    assert (tmp_path / "mine.txt").exists()
    no_kafka = run_cli("demo", "--mqtt", "mqtt://127.0.0.1:1883", "--out", str(tmp_path / "x"))
    assert no_kafka.returncode == 2
    assert "--mqtt needs --kafka" in no_kafka.stderr
    assert run_cli("demo", "--devices", "0").returncode == 2
    malformed = run_cli("inspect", "--kafka", "bad:host::", "--topic", "t")
    assert malformed.returncode == 1
    assert "bootstrap servers are host:port" in malformed.stderr
    assert "Traceback" not in malformed.stderr
    assert run_cli("bogus").returncode == 2
    assert "demo" in run_cli("--help").stdout
    assert "no servers" in run_cli("demo", "--help").stdout


@pytest.mark.mqtt
@pytest.mark.kafka
@pytest.mark.postgres
def test_demo_through_the_real_services(
    mqtt_url: str, kafka_bootstrap: str, postgres_dsn: str, tmp_path: Path
) -> None:
    """The same pipeline: devices on Mosquitto, the gateway into Kafka, PostgreSQL."""
    services = ("--mqtt", mqtt_url, "--kafka", kafka_bootstrap, "--postgres", postgres_dsn)
    result = run_cli("demo", "--out", str(tmp_path / "demo"), *SMALL, *services)
    assert result.returncode == 0, result.stderr
    figures = _figures(result.stdout)
    assert figures["through"] == figures["stored"] == figures["sent"] > 0
    assert (figures["late"], figures["twice"]) == (0, 0)
    assert figures["alerts"] > 0
    assert "gateway -> Kafka" in result.stdout
    assert "PostgreSQL" in result.stdout


@pytest.mark.kafka
def test_demo_with_a_kafka_topic_as_the_log(kafka_bootstrap: str, tmp_path: Path) -> None:
    result = run_cli("demo", "--out", str(tmp_path / "demo"), *SMALL, "--kafka", kafka_bootstrap)
    assert result.returncode == 0, result.stderr
    figures = _figures(result.stdout)
    assert figures["through"] == figures["stored"] == figures["sent"] > 0
    assert (figures["late"], figures["twice"]) == (0, 0)
    assert f"Kafka {kafka_bootstrap}" in result.stdout


def _frames(count: int) -> list[tuple[str, bytes]]:
    from iotdata import Batch, codec  # noqa: PLC0415

    start = 1_714_521_600_000_000
    out = []
    for i in range(count):
        ts = [start + s * 1_000_000 for s in range(10)]
        batch = Batch.from_columns(f"pump-{i}", {"rpm": (ts, [float(i)] * 10, range(10))})
        out.append((batch.device_id, codec.encode(batch)))
    return out


def test_inspect_decodes_files_and_reports_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "good.frame").write_bytes(_frames(1)[0][1])
    (tmp_path / "bad.frame").write_bytes(b"iT\x10 not really")
    good = run_cli("inspect", str(tmp_path / "good.frame"))
    assert good.returncode == 0, good.stderr
    assert "pump-0: 10 readings of rpm; 2024-05-01T00:00:00Z .. 2024-05-01T00:00:09Z" in good.stdout
    assert "2024-05-01T00:00:00Z  rpm = 0.0  (seq 0)" in good.stdout
    both = run_cli("inspect", str(tmp_path / "good.frame"), str(tmp_path / "bad.frame"))
    assert both.returncode == 1
    assert "bad.frame: not a frame:" in both.stdout
    assert both.stdout.rstrip().endswith("1 frames, 10 readings, 1 bad")
    assert run_cli("inspect").returncode == 2
    assert run_cli("inspect", "--log", str(tmp_path)).returncode == 2  # no --topic
    missing = run_cli("inspect", str(tmp_path / "none.frame"))
    assert (missing.returncode, "cannot read" in missing.stderr) == (1, True)


def test_inspect_json_is_strict_json_for_jq(tmp_path: Path) -> None:
    """Non-finite values, which JSON numbers cannot hold, are the strings the sinks use."""
    import json  # noqa: PLC0415

    from iotdata import Batch, codec  # noqa: PLC0415

    values = [1.5, float("nan"), float("inf"), float("-inf")]
    batch = Batch.from_columns("pump-1", {"rpm": ([1, 2, 3, 4], values, [0, 1, 2, 3])})
    (tmp_path / "odd.frame").write_bytes(codec.encode(batch))
    result = run_cli("inspect", str(tmp_path / "odd.frame"), "--json")
    assert result.returncode == 0, result.stderr
    parsed = [json.loads(line, parse_constant=_refuse) for line in result.stdout.splitlines()]
    assert [r["value"] for r in parsed] == [1.5, "NaN", "Infinity", "-Infinity"]
    assert [r["seq"] for r in parsed] == [0, 1, 2, 3]


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} is not JSON")


def test_inspect_reads_an_embedded_log(tmp_path: Path) -> None:
    from iotdata.local import LocalLog  # noqa: PLC0415

    with LocalLog.open(tmp_path / "log") as log:
        log.create_topic("telemetry", 2)
        for device, frame in _frames(5):
            log.append("telemetry", device.encode(), frame)
    result = run_cli("inspect", "--log", str(tmp_path / "log"), "--topic", "telemetry", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 50
    assert sorted({line.split('"device_id": "')[1].split('"')[0] for line in lines}) == [
        f"pump-{i}" for i in range(5)
    ]
    wrong = run_cli("inspect", "--log", str(tmp_path / "log"), "--topic", "other")
    assert (wrong.returncode, "topics: telemetry" in wrong.stderr) == (1, True)


@pytest.mark.kafka
def test_inspect_reads_a_kafka_topic(kafka_bootstrap: str, unique_name: str) -> None:
    import asyncio  # noqa: PLC0415

    from iotdata.kafka import (  # noqa: PLC0415
        PartitionedProducer,
        ProducerSettings,
        TopicSpec,
        ensure_topics,
    )

    async def produce() -> None:
        await ensure_topics(kafka_bootstrap, TopicSpec(name=unique_name, partitions=3))
        settings = ProducerSettings(bootstrap=kafka_bootstrap)
        async with await PartitionedProducer.start(settings) as producer:
            for device, frame in _frames(6):
                await producer.send(unique_name, device, frame)
            await producer.flush(30)

    asyncio.run(produce())
    result = run_cli("inspect", "--kafka", kafka_bootstrap, "--topic", unique_name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("6 frames, 60 readings, 0 bad")


@pytest.mark.mqtt
def test_inspect_listens_on_an_mqtt_topic(mqtt_url: str, unique_name: str) -> None:
    import contextlib  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    from iotdata.errors import NoSubscribersError  # noqa: PLC0415
    from iotdata.mqtt import MqttConnection, MqttSettings  # noqa: PLC0415

    options = ["--topic", f"{unique_name}/+/telemetry", "--max", "3", "--seconds", "60"]
    listener = subprocess.Popen(
        [sys.executable, "-m", "iotdata.cli", "inspect", "--mqtt", mqtt_url, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    publisher = MqttConnection.start(MqttSettings.from_url(mqtt_url), f"pub-{unique_name}")
    try:
        publisher.wait_connected(10)
        frames = iter(_frames(100))
        while listener.poll() is None:  # until it has its three (it may subscribe late)
            device, frame = next(frames)
            delivery = publisher.publish(f"{unique_name}/{device}/telemetry", frame)
            with contextlib.suppress(NoSubscribersError):  # until inspect has subscribed
                delivery.wait(10)
            time.sleep(0.2)
        out, err = listener.communicate(timeout=60)
    finally:
        publisher.close()
        listener.kill()
    assert listener.returncode == 0, err
    assert out.rstrip().endswith("3 frames, 30 readings, 0 bad")


APP = """
from datetime import timedelta
from iotdata.sinks import SqliteSink
from iotdata.stream import Count, Mean, Pipeline, Tumbling

pipeline = (
    Pipeline()
    .dedup()
    .window(Tumbling(timedelta(seconds=5)), Count(), Mean(), grace=timedelta(seconds=10))
    .to(SqliteSink(path={db!r}))
)
"""


def test_run_a_pipeline_from_a_users_file(tmp_path: Path) -> None:
    from iotdata.local import LocalLog  # noqa: PLC0415

    with LocalLog.open(tmp_path / "log") as log:
        log.create_topic("telemetry", 2)
        for device, frame in _frames(4):
            log.append("telemetry", device.encode(), frame)
    app = tmp_path / "app.py"
    app.write_text(APP.format(db=str(tmp_path / "out.sqlite")))
    options = ["--log", str(tmp_path / "log"), "--topic", "telemetry", "--group", "app"]
    result = run_cli("run", str(app), *options, "--records", "4", "--flush-at-end")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("4 records, 40 readings, 8 aggregates, 0 alerts, 0 late")
    with sqlite3.connect(tmp_path / "out.sqlite") as conn:
        rows = conn.execute(
            'SELECT device_id, "count", "sum" FROM aggregates ORDER BY device_id, window_start'
        ).fetchall()
    # 10 readings a device of value i, at seconds 0..9: two 5-second windows each
    assert rows == [(f"pump-{i}", 5, 5.0 * i) for i in range(4) for _ in range(2)]
    app.write_text("pipeline = 42\n")
    wrong = run_cli("run", str(app), *options)
    assert (wrong.returncode, "must define 'pipeline' as a Pipeline" in wrong.stderr) == (2, True)
    app.write_text("raise RuntimeError('boom')\n")
    broken = run_cli("run", str(app), *options)
    assert (broken.returncode, "RuntimeError: boom" in broken.stderr) == (1, True)
    assert run_cli("run", str(tmp_path / "none.py")).returncode == 2


def test_a_missing_extra_names_the_pip_command(tmp_path: Path) -> None:
    """Each command path that needs an optional extra says which one, without a traceback."""
    env = without_extras(tmp_path / "hidden", "psycopg", "pyarrow")
    out = str(tmp_path / "demo")
    dsn = "postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test"
    postgres = run_cli("demo", "--out", out, *SMALL, "--postgres", dsn, env=env)
    assert postgres.returncode == 1
    assert "pip install 'iotdata[postgres]'" in postgres.stderr
    assert "Traceback" not in postgres.stderr
    embedded = run_cli("demo", "--out", out, *SMALL, env=env)  # Parquet is optional there
    assert embedded.returncode == 0, embedded.stderr
    assert "Parquet skipped: pip install 'iotdata[parquet]'" in embedded.stdout
    app = tmp_path / "app.py"
    app.write_text(
        "from iotdata.sinks import ParquetSink\n"
        "from iotdata.stream import Pipeline\n"
        f"pipeline = Pipeline().to(ParquetSink(root={str(tmp_path / 'lake')!r}))\n"
    )
    from iotdata.local import LocalLog  # noqa: PLC0415

    with LocalLog.open(tmp_path / "log") as log:
        log.create_topic("telemetry", 1)
    options = ["--log", str(tmp_path / "log"), "--topic", "telemetry", "--group", "g"]
    parquet = run_cli("run", str(app), *options, "--records", "1", env=env)
    assert parquet.returncode == 1
    assert "pip install 'iotdata[parquet]'" in parquet.stderr
    assert "Traceback" not in parquet.stderr


READINGS_APP = """
from iotdata.sinks import SqliteSink
from iotdata.stream import Pipeline

pipeline = Pipeline().to(SqliteSink(path={db!r}))
"""


def _nan_log(folder: Path) -> None:
    """Two frames of pump-0 (seq 0..4 and 5..9), a NaN at seq 7; a frame of pump-1."""
    from iotdata import Batch, codec  # noqa: PLC0415
    from iotdata.local import LocalLog  # noqa: PLC0415

    start = 1_714_521_600_000_000
    with LocalLog.open(folder) as log:
        log.create_topic("telemetry", 1)
        for device, seqs in (("pump-0", range(5)), ("pump-1", range(5)), ("pump-0", range(5, 10))):
            ts = [start + s * 1_000_000 for s in seqs]
            values = [float("nan") if s == 7 else float(s) for s in seqs]
            batch = Batch.from_columns(device, {"rpm": (ts, values, seqs)})
            log.append("telemetry", device.encode(), codec.encode(batch))


def _sqlite(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        found = sorted(conn.execute(sql).fetchall())
    conn.close()
    return found


def test_run_dead_letters_a_nan_reading_and_stores_the_rest(tmp_path: Path) -> None:
    _nan_log(tmp_path / "log")
    db = tmp_path / "out.sqlite"
    app = tmp_path / "app.py"
    app.write_text(READINGS_APP.format(db=str(db)))
    log = ["--log", str(tmp_path / "log"), "--topic", "telemetry"]
    result = run_cli("run", str(app), *log, "--group", "first", "--records", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 records, 15 readings")
    assert "1 dead-lettered, 0 skipped" in result.stdout
    stored = {(d, s) for d in ("pump-0", "pump-1") for s in range(5)} | {
        ("pump-0", s) for s in (5, 6, 8, 9)
    }
    assert _sqlite(db, "SELECT device_id, seq FROM readings") == sorted(stored)
    sink = f"SqliteSink({str(db)!r})"
    letters = 'SELECT sink, kind, key, reason, topic, partition, "offset" FROM dead_letters'
    assert _sqlite(db, letters) == [(sink, "reading", "pump-0/7", "nan", "telemetry", 0, 2)]
    # a second group reads everything again: the dead letter is stored once
    again = run_cli("run", str(app), *log, "--group", "second", "--records", "3")
    assert again.returncode == 0, again.stderr
    assert len(_sqlite(db, letters)) == 1
    # the old behaviour on request: the NaN stops the run, saying why
    stop = run_cli(
        "run", str(app), *log, "--group", "third", "--records", "3", "--bad-rows", "stop"
    )
    assert stop.returncode == 1
    assert "cannot store NaN" in stop.stderr and "Traceback" not in stop.stderr
    # skipped: counted, stored nowhere; or dead letters in a file of their own
    app.write_text(READINGS_APP.format(db=str(tmp_path / "skip.sqlite")))
    skip = run_cli("run", str(app), *log, "--group", "skip", "--records", "3", "--bad-rows", "skip")
    assert "0 dead-lettered, 1 skipped" in skip.stdout, skip.stderr
    assert _sqlite(tmp_path / "skip.sqlite", "SELECT key FROM dead_letters") == []
    app.write_text(READINGS_APP.format(db=str(tmp_path / "other.sqlite")))
    dlq = tmp_path / "dlq.sqlite"
    other = run_cli(
        "run", str(app), *log, "--group", "other", "--records", "3", "--dead-letters", str(dlq)
    )
    assert other.returncode == 0, other.stderr
    assert _sqlite(dlq, "SELECT key FROM dead_letters") == [("pump-0/7",)]
    assert _sqlite(tmp_path / "other.sqlite", "SELECT key FROM dead_letters") == []
    help_text = run_cli("run", "--help").stdout
    assert "--bad-rows" in help_text and "dead_letters" in help_text
    wrong = run_cli(
        "run", str(app), *log, "--group", "wrong", "--bad-rows", "skip", "--dead-letters", "-"
    )
    assert wrong.returncode == 2
