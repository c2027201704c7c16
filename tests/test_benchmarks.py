"""The benchmark scripts run and write the documented --json records (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, out: Path, *args: str) -> list[dict[str, Any]]:
    """Run ``benchmarks/<script>`` with ``--json``; return its records, checked for shape."""
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    records: list[dict[str, Any]] = json.loads(out.read_text())
    assert records and all(set(r) == {"case", "impl", "metric", "value"} for r in records)
    return records


def test_codec_benchmark_quick_run_writes_json(tmp_path: Path, nab_dir: Path) -> None:
    records = run_benchmark("codec.py", tmp_path / "codec.json", "--quick", "--data", str(nab_dir))
    impls = {r["impl"] for r in records}
    assert {"json", "msgpack", "senml", "gorilla", "iotdata", "iotdata+dict", "ratio"} <= impls
    metrics = {r["metric"] for r in records if r["impl"] == "iotdata"}
    assert metrics == {"bytes_per_reading", "encode_per_s", "decode_per_s"}
    assert all(r["value"] > 0 for r in records if r["impl"] == "iotdata")


@pytest.mark.mqtt
def test_device_benchmark_quick_run_writes_json(tmp_path: Path, mqtt_url: str) -> None:
    records = run_benchmark(
        "device.py", tmp_path / "device.json", "--readings", "300", "--mqtt", mqtt_url
    )
    values = {(r["case"], r["impl"], r["metric"]): r["value"] for r in records}
    assert values["device_vs_paho", "ratio", "readings_per_s"] > 0
    assert values["enqueue_put100", "iotdata", "readings_per_s"] > 0
    assert values["idle", "iotdata", "rss_bytes"] > 1_000_000


@pytest.mark.kafka
def test_producer_benchmark_quick_run_writes_json(tmp_path: Path, kafka_bootstrap: str) -> None:
    records = run_benchmark(
        "producer.py",
        tmp_path / "producer.json",
        "--devices",
        "20",
        "--readings",
        "4000",
        "--baseline-readings",
        "400",
        "--repeats",
        "1",
        "--kafka",
        kafka_bootstrap,
    )
    values = {(r["case"], r["impl"], r["metric"]): r["value"] for r in records}
    assert values["producer_vs_aiokafka", "ratio", "readings_per_s"] > 0
    assert values["producer_with_encoding", "iotdata", "readings_per_s"] > 0


@pytest.mark.mqtt
@pytest.mark.kafka
def test_gateway_benchmark_quick_run_writes_json(
    tmp_path: Path, mqtt_url: str, kafka_bootstrap: str
) -> None:
    records = run_benchmark(
        "gateway.py",
        tmp_path / "gateway.json",
        "--frames",
        "50",
        "--batch",
        "20",
        "--mqtt",
        mqtt_url,
        "--kafka",
        kafka_bootstrap,
    )
    values = {(r["case"], r["impl"], r["metric"]): r["value"] for r in records}
    assert values["gateway", "iotdata", "readings_per_s"] > 0
    assert values["gateway", "iotdata", "latency_p99_s"] > 0


@pytest.mark.postgres
def test_sinks_benchmark_quick_run_writes_json(tmp_path: Path, postgres_dsn: str) -> None:
    records = run_benchmark(
        "sinks.py", tmp_path / "sinks.json", "--quick", "--postgres", postgres_dsn
    )
    values = {(r["case"], r["impl"], r["metric"]): r["value"] for r in records}
    assert values["postgres_vs_copy", "ratio", "rows_per_s"] > 0
    assert values["postgres", "iotdata", "rows_per_s"] > 0
    assert values["sqlite", "iotdata", "rows_per_s"] > 0
    assert values["parquet", "iotdata", "rows_per_s"] > 0


@pytest.mark.kafka
def test_stream_benchmark_quick_run_writes_json(tmp_path: Path, kafka_bootstrap: str) -> None:
    records = run_benchmark(
        "stream.py", tmp_path / "stream.json", "--quick", "--kafka", kafka_bootstrap, "--quix"
    )
    values = {(r["case"], r["impl"], r["metric"]): r["value"] for r in records}
    assert values["stream_vs_bytewax", "ratio", "readings_per_s"] > 0
    assert values["stream_vs_bytewax_1hz", "bytewax", "readings_per_s"] > 0
    assert values["stream_from_log", "iotdata", "readings_per_s"] > 0
    assert values["stream_kafka", "iotdata", "readings_per_s"] > 0
    assert values["stream_kafka_vs_quix", "quixstreams", "readings_per_s"] > 0
    assert values["stream_kafka_vs_quix", "ratio", "readings_per_s"] > 0
    assert values["stream_kafka", "iotdata", "latency_p50_s"] > 0
    assert (
        values["stream_kafka", "iotdata", "latency_p50_s"]
        <= values["stream_kafka", "iotdata", "latency_p99_s"]
    )


def test_the_plot_script_draws_the_ratios_and_the_rates(tmp_path: Path) -> None:
    """An average row stands for its metric's per-case ratios; cases with one impl get no
    rate chart; each bar is labelled with its value."""
    rows = [
        {"case": "a@10", "impl": "ratio", "metric": "json_over_iotdata_bytes", "value": 20.0},
        {"case": "b@10", "impl": "ratio", "metric": "json_over_iotdata_bytes", "value": 40.0},
        {"case": "average@10", "impl": "ratio", "metric": "json_over_iotdata_bytes", "value": 30},
        {"case": "x_vs_y", "impl": "ratio", "metric": "rows_per_s", "value": 0.79},
        {"case": "x_vs_y", "impl": "iotdata", "metric": "rows_per_s", "value": 290_000.0},
        {"case": "x_vs_y", "impl": "copy", "metric": "rows_per_s", "value": 369_000.0},
        {"case": "alone", "impl": "iotdata", "metric": "rows_per_s", "value": 5.0},
    ]
    data = tmp_path / "demo.json"
    data.write_text(json.dumps(rows))
    result = subprocess.run(
        [sys.executable, "scripts/plot_benchmarks.py", str(data), "--out", str(tmp_path / "svg")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    ratios = (tmp_path / "svg" / "ratios.svg").read_text()
    assert ratios.count("<rect x=") == 2  # the average and x_vs_y, not a@10 and b@10
    assert "30x</text>" in ratios
    assert "0.79x</text>" in ratios
    rates = (tmp_path / "svg" / "demo.svg").read_text()
    assert rates.count("<rect x=") == 2  # x_vs_y's two impls; "alone" has no baseline
    assert "290k/s" in rates
    assert "369k/s" in rates
