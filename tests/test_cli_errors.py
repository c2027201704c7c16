"""The iotdata command under bad input: one line on stderr and a non-zero status, never a
traceback (docs/cli.md), and no more memory than the input needs. Each test runs the real
command in a subprocess, as a user or a shell pipeline would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotdata import Batch, codec
from tests._helpers import run_cli

COMMAND = [sys.executable, "-m", "iotdata.cli"]
CLOSED_PIPE = 141
MiB = 1024 * 1024
START = 1_714_521_600_000_000


def _frame_file(folder: Path, readings: int, name: str = "many.frame") -> Path:
    ts = [START + i * 1_000_000 for i in range(readings)]
    values = [float(i) for i in range(readings)]
    batch = Batch.from_columns("pump-1", {"rpm": (ts, values, range(readings))})
    path = folder / name
    path.write_bytes(codec.encode(batch))
    return path


def _one_error_line(stderr: str) -> str:
    """The command's last words: one ``iotdata...: error: ...`` line, no traceback."""
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("iotdata") and ": error: " in last, stderr
    return last


# --------------------------------------------------------------------------- closed pipes


def _into_a_closed_pipe(*args: str, read_first_line: bool) -> tuple[int, str, bytes]:
    """Run the command with stdout into a pipe whose reader goes away: at once, or after the
    first line as ``| head -1`` does. Returns the exit status, stderr and that line."""
    reader, writer = os.pipe()
    process = subprocess.Popen([*COMMAND, *args], stdout=writer, stderr=subprocess.PIPE)
    os.close(writer)
    line = b""
    with os.fdopen(reader, "rb") as out:
        if read_first_line:
            line = out.readline()
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr.decode(), line


@pytest.mark.parametrize("json", [False, True], ids=["text", "json"])
def test_inspect_into_head_1_stops_quietly(tmp_path: Path, json: bool) -> None:
    """``iotdata inspect FILE --readings 20000 | head -1``: about 1 MB of output, far more
    than a pipe holds, so the command is still writing when head leaves."""
    path = _frame_file(tmp_path, 20_000)
    options = ["--json"] if json else []
    status, stderr, line = _into_a_closed_pipe(
        "inspect", str(path), "--readings", "20000", *options, read_first_line=True
    )
    # Regression test (was a bug): BrokenPipeError and its traceback, status 1.
    assert (status, stderr) == (CLOSED_PIPE, "")
    assert line.startswith(b'{"device_id": "pump-1"' if json else str(path).encode())


def _app(folder: Path) -> list[str]:
    from iotdata.local import LocalLog  # noqa: PLC0415

    with LocalLog.open(folder / "log") as log:
        log.create_topic("telemetry", 1)
        log.append("telemetry", b"pump-1", codec.encode(Batch.from_columns("pump-1", {})))
    app = folder / "app.py"
    app.write_text("from iotdata.stream import Pipeline\npipeline = Pipeline()\n")
    options = ["--log", str(folder / "log"), "--topic", "telemetry", "--group", "g"]
    return ["run", str(app), *options, "--records", "1"]


@pytest.mark.parametrize(
    "command",
    ["inspect", "inspect --json", "run", "demo", "help", "inspect help"],
)
def test_every_command_stops_quietly_when_its_output_is_closed(
    tmp_path: Path, command: str
) -> None:
    """Short outputs too: they are written when the command ends, so the pipe breaks in the
    last flush, which Python reports at exit with its own message and status 120."""
    args = {
        "inspect": ["inspect", str(_frame_file(tmp_path, 10))],
        "inspect --json": ["inspect", "--json", str(_frame_file(tmp_path, 10))],
        "run": _app(tmp_path),
        "demo": ["demo", "--out", str(tmp_path / "demo"), "--devices", "2", "--minutes", "2"],
        "help": ["--help"],
        "inspect help": ["inspect", "--help"],
    }[command]
    status, stderr, _ = _into_a_closed_pipe(*args, read_first_line=False)
    assert "Traceback" not in stderr
    assert "Exception ignored" not in stderr
    assert status == CLOSED_PIPE, stderr


def test_an_error_with_stderr_closed_too_still_ends_with_status_1(tmp_path: Path) -> None:
    reader, writer = os.pipe()
    process = subprocess.Popen(
        [*COMMAND, "inspect", str(tmp_path / "none.frame")], stdout=writer, stderr=writer
    )
    os.close(writer)
    os.close(reader)
    assert process.wait(timeout=60) == 1


# --------------------------------------------------------------------------- inspect's input


def test_inspect_shows_timestamps_outside_the_calendar_as_integers(tmp_path: Path) -> None:
    """Any int64 is a valid ts; the years 1 to 9999 are what datetime can show."""
    batch = Batch.from_columns(
        "pump-1", {"rpm": ([-(2**63), 0, 2**62], [1.0, 2.0, 3.0], [0, 1, 2])}
    )
    path = tmp_path / "odd.frame"
    path.write_bytes(codec.encode(batch))
    result = run_cli("inspect", str(path))
    # Regression test (was a bug): ValueError: year 148108 is out of range.
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "-9223372036854775808us .. 4611686018427387904us" in lines[0]
    assert lines[1:4] == [
        "    -9223372036854775808us  rpm = 1.0  (seq 0)",
        "    1970-01-01T00:00:00Z  rpm = 2.0  (seq 1)",
        "    4611686018427387904us  rpm = 3.0  (seq 2)",
    ]


def test_inspect_shows_microseconds_exactly(tmp_path: Path) -> None:
    """ts / 1e6 as a float rounds: 2024-05-01T00:00:00.999999Z must not become .000000."""
    ts = [START + 999_999, 253_402_300_799_999_999]  # the last microsecond of 9999
    batch = Batch.from_columns("pump-1", {"rpm": (ts, [1.0, 2.0], [0, 1])})
    (tmp_path / "f").write_bytes(codec.encode(batch))
    result = run_cli("inspect", str(tmp_path / "f"))
    assert result.returncode == 0, result.stderr
    assert "2024-05-01T00:00:00.999999Z .. 9999-12-31T23:59:59.999999Z" in result.stdout


#: The command, then its peak resident memory (VmHWM) written to the file argv[1]. Measured in
#: the process itself: the rusage of a child counts what it shared with its parent (this
#: pytest process) between fork and exec.
_PEAK = """
import sys
from iotdata.cli import main
status = main(sys.argv[2:])
with open("/proc/self/status") as lines, open(sys.argv[1], "w") as out:
    out.write(next(line.split()[1] for line in lines if line.startswith("VmHWM")))
sys.exit(status)
"""


def _peak_rss(folder: Path, *args: str, stdin: int | None = None) -> tuple[int, str, int]:
    """Exit status, stdout and the peak resident memory (bytes) of the command."""
    peak = folder / "peak"
    result = subprocess.run(
        [sys.executable, "-c", _PEAK, str(peak), *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout, int(peak.read_text()) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="VmHWM in /proc, /dev/zero")
def test_inspect_reads_no_more_of_a_file_than_a_frame_can_hold(tmp_path: Path) -> None:
    huge = tmp_path / "huge.frame"
    with huge.open("wb") as handle:  # sparse: 1 GiB that takes no disk
        handle.truncate(1024 * MiB)
    good = _frame_file(tmp_path, 10)
    status, out, rss = _peak_rss(tmp_path, "inspect", str(huge), str(good))
    # Regression test (was a bug): the whole file was read first, 1 GiB resident.
    assert rss < 200 * MiB
    assert status == 1
    assert f"{huge}: not a frame: 1,073,741,824 bytes, over the decoder's max_frame_bytes" in out
    assert out.rstrip().endswith("1 frames, 10 readings, 1 bad")
    status, out, rss = _peak_rss(tmp_path, "inspect", "/dev/zero")  # no end at all
    assert (status, rss < 200 * MiB) == (1, True)
    assert "/dev/zero: not a frame: more than 4,194,304 bytes" in out
    with open("/dev/zero", "rb") as zeros:
        status, out, rss = _peak_rss(tmp_path, "inspect", "-", stdin=zeros.fileno())
    assert (status, rss < 200 * MiB) == (1, True)
    assert "stdin: not a frame: more than 4,194,304 bytes" in out


def test_inspect_max_counts_bad_frames_too(tmp_path: Path) -> None:
    bad = tmp_path / "bad.frame"
    bad.write_bytes(b"not a frame")
    good = _frame_file(tmp_path, 10)
    result = run_cli("inspect", "--max", "2", str(bad), str(good), str(good))
    assert result.returncode == 1
    assert result.stdout.rstrip().endswith("1 frames, 10 readings, 1 bad")


# --------------------------------------------------------------------------- paths and values


@pytest.mark.parametrize("where", ["/proc/x", "file/x"])
def test_demo_reports_a_folder_it_cannot_make(tmp_path: Path, where: str) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    out = where if where.startswith("/") else str(tmp_path / where)
    if where.startswith("/proc") and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    result = run_cli("demo", "--out", out, "--devices", "2", "--minutes", "2")
    # Regression test (was a bug): FileNotFoundError and its traceback.
    assert result.returncode == 1
    assert _one_error_line(result.stderr).startswith(
        f"iotdata: error: cannot use {out} as the demo's folder:"
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--interval", "1e300"], "interval must be from 0.000001 s"),  # was OverflowError
        (["--interval", "0.0000001"], "interval must be from 0.000001 s"),  # ts would repeat
        (["--minutes", "100000000000000"], "the year 9999"),
    ],
)
def test_demo_refuses_what_it_cannot_simulate(
    tmp_path: Path, options: list[str], match: str
) -> None:
    result = run_cli("demo", "--out", str(tmp_path / "demo"), *options)
    assert result.returncode == 2
    assert match in _one_error_line(result.stderr)
    assert not (tmp_path / "demo").exists()


def test_simulate_checks_the_anomalies_file_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    base = ["simulate", "--mqtt", "mqtt://127.0.0.1:1", "--devices", "1", "--duration", "1"]
    for target in (tmp_path / "file" / "x", tmp_path):
        result = run_cli(*base, "--anomalies", str(target))
        # Regression test (was a bug): the run went on, and its end was a traceback.
        assert result.returncode == 2
        assert _one_error_line(result.stderr).startswith(
            f"iotdata: error: --anomalies: cannot write {target}:"
        )
    fine = tmp_path / "anomalies.json"
    result = run_cli(*base, "--anomalies", str(fine), "--connect-timeout", "1")
    assert result.returncode == 1  # the broker is unreachable; the file was only tried
    assert "cannot reach" in _one_error_line(result.stderr)
    assert not fine.exists()


def test_simulate_replay_of_a_file_that_is_not_text(tmp_path: Path) -> None:
    (tmp_path / "noise.csv").write_bytes(bytes(range(256)) * 8)
    result = run_cli(
        "simulate", "--mqtt", "mqtt://127.0.0.1:1", "--replay", str(tmp_path / "noise.csv")
    )
    # Regression test (was a bug): UnicodeDecodeError and its traceback.
    assert result.returncode == 1
    assert _one_error_line(result.stderr).startswith(f"iotdata: error: cannot read {tmp_path}")


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", "--mqtt", "mqtt://127.0.0.1:1883", "--topic", "x", "--seconds", "1e300"],
        ["simulate", "--mqtt", "mqtt://127.0.0.1:1883", "--connect-timeout", "1e300"],
        ["simulate", "--mqtt", "mqtt://127.0.0.1:1883", "--duration", "1e10"],
        ["simulate", "--mqtt", "mqtt://127.0.0.1:1883", "--rate", "1e7"],
        ["gateway", "--stats-every", "1e300"],
        ["gateway", "--metrics-port", "70000"],
        ["gateway", "--metrics-port", "-1"],
        ["run", "app.py", "--checkpoint-interval", "1e300"],
    ],
    ids=lambda args: " ".join(args[:1] + args[-2:]),
)
def test_out_of_range_options_are_argument_errors(args: list[str]) -> None:
    """Values past what the waits and timestamps behind them can take: argparse refuses
    them, status 2, instead of an OverflowError later (or a simulation of duplicate
    timestamps at 10 million readings a second)."""
    result = run_cli(*args)
    assert result.returncode == 2
    assert f"argument {args[-2]}: expected" in _one_error_line(result.stderr)
