"""The iotdata command, run as a user would: a real subprocess."""

from __future__ import annotations

from pathlib import Path

from tests._helpers import run_cli


def test_demo_runs_with_no_servers_and_reports_sizes() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    assert "readings encoded, decoded and checked: 100,000" in result.stdout
    assert "JSON is" in result.stdout


def test_demo_reads_csv_series(tmp_path: Path) -> None:
    (tmp_path / "boiler.csv").write_text(
        "timestamp,value\n2024-01-01 00:00:00,21.5\n2024-01-01 00:01:00,21.75\n"
    )
    result = run_cli("demo", "--data", str(tmp_path), "--batch", "10")
    assert result.returncode == 0, result.stderr
    assert "checked: 2 in" in result.stdout


def test_bad_arguments_give_clear_errors(tmp_path: Path) -> None:
    assert "no CSV files" in run_cli("demo", "--data", str(tmp_path)).stderr
    assert run_cli("demo", "--data", str(tmp_path)).returncode == 1
    assert run_cli("demo", "--batch", "0").returncode == 2
    assert run_cli("bogus").returncode == 2
    assert "demo" in run_cli("--help").stdout
