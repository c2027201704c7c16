"""Every example runs as a user would run it (a real process, real services)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.mqtt
def test_device_publish(mqtt_url: str, tmp_path: Path, unique_name: str) -> None:
    script = str(REPO / "examples" / "device_publish.py")
    options = ["--device", unique_name, "--queue", str(tmp_path / "q"), "--readings", "300"]
    result = subprocess.run(
        [sys.executable, script, "--mqtt", mqtt_url, *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    acknowledged = int(result.stdout.split()[0])
    assert 300 <= acknowledged <= 600  # every humidity reading, temperatures past the deadband
    assert result.stdout.rstrip().endswith("0 queued")


@pytest.mark.mqtt
@pytest.mark.kafka
def test_mqtt_to_kafka(mqtt_url: str, kafka_bootstrap: str, unique_name: str) -> None:
    script = str(REPO / "examples" / "mqtt_to_kafka.py")
    options = ["--mqtt", mqtt_url, "--kafka", kafka_bootstrap, "--prefix", unique_name]
    result = subprocess.run(
        [sys.executable, script, *options, "--devices", "2", "--readings", "500"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"1000 readings from 2 devices in {unique_name}.telemetry")
    assert "0 dead-lettered" in result.stdout
