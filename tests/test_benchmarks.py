"""The benchmark scripts run and write the documented --json records (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_codec_benchmark_quick_run_writes_json(tmp_path: Path, nab_dir: Path) -> None:
    out = tmp_path / "codec.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/codec.py",
            "--quick",
            "--data",
            str(nab_dir),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = json.loads(out.read_text())
    assert records and all(set(r) == {"case", "impl", "metric", "value"} for r in records)
    impls = {r["impl"] for r in records}
    assert {"json", "msgpack", "senml", "gorilla", "iotdata", "iotdata+dict", "ratio"} <= impls
    metrics = {r["metric"] for r in records if r["impl"] == "iotdata"}
    assert metrics == {"bytes_per_reading", "encode_per_s", "decode_per_s"}
    assert all(r["value"] > 0 for r in records if r["impl"] == "iotdata")


@pytest.mark.mqtt
def test_device_benchmark_quick_run_writes_json(tmp_path: Path, mqtt_url: str) -> None:
    out = tmp_path / "device.json"
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/device.py",
            "--readings",
            "300",
            "--mqtt",
            mqtt_url,
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records = {(r["case"], r["impl"], r["metric"]): r["value"] for r in json.loads(out.read_text())}
    assert records["device_vs_paho", "ratio", "readings_per_s"] > 0
    assert records["enqueue_put100", "iotdata", "readings_per_s"] > 0
    assert records["idle", "iotdata", "rss_bytes"] > 1_000_000
