"""The iotdata command, run as a user would: a real subprocess."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from tests._helpers import run_cli

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
    if "Parquet skipped" not in result.stdout:
        assert f"{figures['sent']:,} in Parquet" in result.stdout
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
