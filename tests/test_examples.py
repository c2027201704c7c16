"""Every example runs as a user would run it (a real process, real services)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from iotdata.mqtt import Topics
from tests._helpers import Collector

REPO = Path(__file__).resolve().parent.parent


def run_example(name: str, *options: str, timeout: float = 180) -> str:
    """Run ``examples/<name>.py`` with ``options``; it must succeed. Its standard output."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / f"{name}.py"), *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.mqtt
def test_device_publish(mqtt_url: str, tmp_path: Path, unique_name: str) -> None:
    options = ["--device", unique_name, "--queue", str(tmp_path / "q"), "--readings", "300"]
    cloud = Collector(mqtt_url, Topics(), f"{unique_name}-cloud")  # what a gateway would be
    try:
        output = run_example("device_publish", "--mqtt", mqtt_url, *options)
        acknowledged = int(output.split()[0])
        assert 300 <= acknowledged <= 600  # every humidity reading, temperatures past the deadband
        assert output.rstrip().endswith("0 queued")
        cloud.wait_for({(unique_name, seq) for seq in range(acknowledged)})
    finally:
        cloud.close()


@pytest.mark.mqtt
@pytest.mark.kafka
def test_mqtt_to_kafka(mqtt_url: str, kafka_bootstrap: str, unique_name: str) -> None:
    options = ["--mqtt", mqtt_url, "--kafka", kafka_bootstrap, "--prefix", unique_name]
    output = run_example("mqtt_to_kafka", *options, "--devices", "2", "--readings", "500")
    assert output.startswith(f"1000 readings from 2 devices in {unique_name}.telemetry")
    assert "0 dead-lettered" in output


def test_cold_path_parquet(tmp_path: Path) -> None:
    """Twice on the same folder: the files are named after the source positions, so the second
    run overwrites them instead of doubling the rows."""
    pytest.importorskip("pyarrow")
    options = ["--out", str(tmp_path / "lake"), "--devices", "4", "--batches", "5"]
    outputs = [run_example("cold_path_parquet", *options) for _ in range(2)]
    # 4 devices x 5 batches x 100 readings of 2 metrics
    assert outputs[0].startswith("4000 readings in ")
    assert outputs[1] == outputs[0]
    files = sorted(p.name for p in (tmp_path / "lake" / "readings").rglob("*") if p.is_file())
    assert files and all(name.startswith("telemetry-p") for name in files)


def _windowed_alerts(*options: str) -> str:
    return run_example("windowed_alerts", *options)


def _check_windowed_alerts(output: str, db: Path | str) -> None:
    # 20 pumps x 30 minutes, pump 7 silent for the last 15: one frame and one window per minute
    assert output.startswith(f"585 frames, 585 one-minute windows, 3 alerts in {db}")
    assert "critical pump-03 threshold:temperature" in output
    assert "warning  pump-03 zscore:temperature" in output
    assert "warning  pump-07 missing" in output


def test_windowed_alerts_embedded(tmp_path: Path) -> None:
    """Twice into the same SQLite file: every key lands once, so the second run changes nothing."""
    db = tmp_path / "alerts.sqlite"
    first = _windowed_alerts("--db", str(db))
    _check_windowed_alerts(first, db)
    assert _windowed_alerts("--db", str(db)) == first


@pytest.mark.kafka
def test_windowed_alerts_through_kafka(kafka_bootstrap: str, tmp_path: Path) -> None:
    db = tmp_path / "alerts.sqlite"
    _check_windowed_alerts(_windowed_alerts("--db", str(db), "--kafka", kafka_bootstrap), db)


def test_custom_sink(tmp_path: Path) -> None:
    """The example's sink passes check_sink, and two runs of its pipeline store each alert once."""
    output = run_example("custom_sink", "--file", str(tmp_path / "new" / "alerts.json"))
    assert output.splitlines() == [
        "AlertFile passes iotdata.testing.check_sink",
        "critical boiler-1 threshold:temperature 48.0 at +100 s",
        "critical boiler-1 threshold:temperature 55.0 at +400 s",
    ]


def test_edge_gateway(tmp_path: Path) -> None:
    """Edge operators keep most readings off the network; what is sent arrives whole."""
    first, second = run_example("edge_gateway", "--queue", str(tmp_path / "q")).splitlines()
    # 120 s of 100 Hz vibration and 1 Hz temperature: 12,120 readings; vibration leaves as
    # 120 one-second min/max/mean triples (360), temperature past the deadband or the heartbeat
    assert first.startswith("12,120 readings taken, ")
    sent = int(first.split(", ")[1].split()[0].replace(",", ""))
    assert 360 < sent < 500
    assert first.endswith("0 still queued")
    assert second.startswith(f"the cloud decoded {sent:,} readings in ")


@pytest.mark.postgres
def test_windowed_alerts_to_postgres(postgres_dsn: str) -> None:
    """Into PostgreSQL, twice: the tables hold each window and alert once."""
    for _ in range(2):
        _check_windowed_alerts(_windowed_alerts("--postgres", postgres_dsn), "PostgreSQL")
