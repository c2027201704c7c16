"""The ``iotdata`` command.

``iotdata demo`` runs the whole pipeline in one process with no servers (:mod:`iotdata.demo`).

``iotdata gateway`` forwards device telemetry from MQTT to Kafka (:mod:`iotdata.gateway`).

``iotdata simulate`` publishes the telemetry of a simulated fleet (synthetic signals with
injected anomalies, or replayed CSV series) to an MQTT broker, through
:class:`iotdata.device.FleetSimulator`.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotdata import __version__
from iotdata._cli_demo import add_demo
from iotdata._cli_gateway import add_gateway
from iotdata._cli_inspect import add_inspect
from iotdata._cli_run import add_run
from iotdata._cliargs import (
    check_writable,
    mqtt_url,
    positive_int,
    probability,
    rate,
    seconds,
    topics,
)
from iotdata.device import (
    ANOMALY_KINDS,
    DEFAULT_ANOMALY_RATE,
    FleetSimulator,
    SimulationSummary,
    save_anomalies,
)
from iotdata.errors import IotDataError
from iotdata.mqtt import Topics

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]


#: The exit status when standard output or error is a pipe its reader closed (``| head``):
#: what a shell shows for a program killed by SIGPIPE, 128 + 13.
EXIT_CLOSED_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``iotdata`` command; returns the process exit code.

    0 on success, 1 for an error (one line on stderr, ``iotdata: error: ...``), 2 for wrong
    arguments (argparse's ``SystemExit``), 130 after Ctrl-C, and
    :data:`EXIT_CLOSED_PIPE` (quietly) when the reader of our output went away.
    """
    try:
        try:
            args = _parser().parse_args(argv)
            return int(args.run(args))
        finally:  # here, where a closed pipe is handled, not at the interpreter's exit
            sys.stdout.flush()
    except IotDataError as exc:
        return _fail(str(exc))
    except BrokenPipeError as exc:
        if _closed_outputs():
            return EXIT_CLOSED_PIPE
        return _fail(f"broken pipe: {exc}")
    except OSError as exc:  # a path or device the command could not use
        return _fail(_os_error(exc))
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> int:
    try:
        print(f"iotdata: error: {message}", file=sys.stderr)
    except BrokenPipeError:
        _closed_outputs()
    return 1


def _os_error(exc: OSError) -> str:
    if exc.filename is None or not exc.strerror:
        return str(exc)
    return f"{exc.filename}: {exc.strerror}"


def _closed_outputs() -> bool:
    """Whether stdout or stderr is a pipe without a reader; such a stream is pointed at
    /dev/null, so that the interpreter's last flush does not report the pipe again."""
    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):  # replaced, e.g. by a test's capture
            continue
        if _reader_gone(fd):
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
            closed = True
    return closed


def _reader_gone(fd: int) -> bool:
    if not hasattr(select, "poll"):  # pragma: no cover - Windows: assume the usual cause
        return fd == 1
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


class _Parser(argparse.ArgumentParser):
    """argparse, except that help written into a closed pipe is not ignored: argparse's own
    ``_print_message`` swallows the error (and exits 0), where every other output of ours
    ends as :func:`main` says. Subcommand parsers are of this class too."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (file or sys.stderr).write(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iotdata",
        description="IoT telemetry pipelines: device client, codec, Kafka ingestion, "
        "stream operators and storage sinks.",
    )
    parser.add_argument("--version", action="version", version=f"iotdata {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    add_demo(commands)
    _add_simulate(commands)
    add_gateway(commands)
    add_inspect(commands)
    add_run(commands)
    return parser


def _add_simulate(commands: Any) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="publish the telemetry of a simulated device fleet to an MQTT broker",
        description="Simulate a fleet of devices (sim-00000, sim-00001, ...) publishing "
        "metric 'temp' as iotdata frames on PREFIX/DEVICE/telemetry at QoS 1, over a few "
        "shared connections. Signals are synthetic (base, trend, daily cycle and noise, with "
        "injected spikes, level shifts, stuck stretches and dropouts) or replayed from CSV "
        "files. Without --duration or --readings-per-device it runs until Ctrl-C. The "
        "simulator keeps unacknowledged frames in memory only: it is a load generator, not "
        "a durable device client.",
    )
    simulate.add_argument(
        "--mqtt",
        required=True,
        type=mqtt_url,
        metavar="URL",
        help="the broker, e.g. mqtt://127.0.0.1:1883 or mqtts://user:password@host:8883",
    )
    simulate.add_argument(
        "--devices",
        type=positive_int,
        default=100,
        metavar="N",
        help="how many devices to simulate (default 100)",
    )
    simulate.add_argument(
        "--rate",
        type=rate,
        default=1.0,
        metavar="R",
        help="readings per second per device; may be fractional, e.g. 0.1 (default 1; at most "
        "1000000: timestamps are microseconds)",
    )
    length = simulate.add_mutually_exclusive_group()
    length.add_argument(
        "--duration",
        type=seconds,
        metavar="S",
        help="run for S seconds of wall time, each device producing R readings per second",
    )
    length.add_argument(
        "--readings-per-device",
        type=positive_int,
        metavar="K",
        help="give each device K reading slots and run as fast as the broker takes them "
        "(timestamps stay 1/R s apart); dropouts leave some slots empty",
    )
    simulate.add_argument(
        "--replay",
        type=Path,
        metavar="DIR",
        help="replay the CSV files (timestamp,value; naive UTC) in DIR instead of synthetic "
        "signals: device i replays file i %% files, its timestamps moved to start now",
    )
    simulate.add_argument(
        "--keep-timestamps",
        action="store_true",
        help="with --replay, publish the original timestamps",
    )
    simulate.add_argument(
        "--connections",
        type=positive_int,
        default=4,
        metavar="C",
        help="MQTT connections shared by the devices; device i uses connection i %% C (default 4)",
    )
    simulate.add_argument(
        "--batch",
        type=positive_int,
        default=100,
        metavar="B",
        help="readings per frame: a device publishes every B readings or after 1 s (default 100)",
    )
    simulate.add_argument(
        "--prefix",
        type=topics,
        default=Topics(),
        metavar="P",
        help="topic prefix (default iotdata)",
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="X",
        help="seed of the synthetic signals: the same seed gives the same readings (default 0)",
    )
    simulate.add_argument(
        "--anomaly-rate",
        type=probability,
        default=DEFAULT_ANOMALY_RATE,
        metavar="P",
        help=f"chance that a reading starts an anomaly or dropout (default {DEFAULT_ANOMALY_RATE})",
    )
    simulate.add_argument(
        "--anomalies",
        type=Path,
        metavar="FILE",
        help="write the injected anomalies and dropouts to FILE as JSON: a list of "
        "{device_id, kind, start_ts, end_ts} (microseconds, both included)",
    )
    simulate.add_argument(
        "--connect-timeout",
        type=seconds,
        default=10.0,
        metavar="S",
        help="give up when the broker cannot be reached within S seconds (default 10)",
    )
    simulate.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="log connections, losses and reconnections on stderr",
    )
    simulate.set_defaults(run=_simulate_fleet)


def _simulate_fleet(args: argparse.Namespace) -> int:
    if args.keep_timestamps and args.replay is None:
        print("iotdata: error: --keep-timestamps needs --replay", file=sys.stderr)
        return 2
    if args.anomalies is not None and (problem := check_writable(args.anomalies)):
        print(f"iotdata: error: --anomalies: {problem}", file=sys.stderr)
        return 2
    level = logging.INFO if args.verbose else logging.ERROR
    logging.basicConfig(format="iotdata: %(name)s: %(message)s", level=level)
    simulator = FleetSimulator(
        mqtt=args.mqtt,
        devices=args.devices,
        rate=args.rate,
        topics=args.prefix,
        connections=args.connections,
        batch_size=args.batch,
        seed=args.seed,
        anomaly_rate=args.anomaly_rate,
        replay=args.replay,
        keep_timestamps=args.keep_timestamps,
        connect_timeout=args.connect_timeout,
    )
    tty = sys.stderr.isatty()
    previous = signal.signal(signal.SIGINT, _stop_once(simulator))
    try:
        summary = simulator.run(
            readings_per_device=args.readings_per_device,
            duration=args.duration,
            progress=_progress_line(tty),
            progress_every=0.5 if tty else 5.0,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
        if tty:
            print(file=sys.stderr)
    if args.anomalies is not None:
        save_anomalies(args.anomalies, summary.events)
    _print_summary(summary, args)
    return 0


def _stop_once(simulator: FleetSimulator) -> Callable[[int, Any], None]:
    """The first Ctrl-C stops generating and waits for the acks; a second one aborts."""

    def stop(signum: int, frame: Any) -> None:
        simulator.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\niotdata: stopping; Ctrl-C again to abort", file=sys.stderr)

    return stop


def _progress_line(tty: bool) -> Callable[[SimulationSummary], None]:
    def show(now: SimulationSummary) -> None:
        line = (
            f"devices: {now.devices:,}  published: {now.readings_published:,}  "
            f"acknowledged: {now.readings_acknowledged:,}  "
            f"{now.readings_per_second:,.0f} readings/s  "
            f"connections up: {now.connections_up}/{now.connections}"
        )
        if tty:
            print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    return show


def _print_summary(summary: SimulationSummary, args: argparse.Namespace) -> None:
    mode = "accelerated" if args.readings_per_device else "real time"
    source = f"replaying {args.replay}" if args.replay else f"synthetic, seed {args.seed}"
    per_reading = summary.bytes_sent / max(summary.readings_published, 1)
    kinds = ", ".join(f"{kind} {n}" for kind, n in _kinds(summary).items()) or "none"
    print(f"devices: {summary.devices:,} on {summary.connections} connections ({source}, {mode})")
    print(
        f"readings generated: {summary.readings_generated:,} "
        f"({summary.readings_skipped:,} skipped in dropouts)"
    )
    print(f"readings published: {summary.readings_published:,}")
    print(f"readings acknowledged: {summary.readings_acknowledged:,}")
    print(f"anomalies injected: {summary.anomalies:,} ({kinds})")
    print(f"dropouts injected: {summary.dropouts:,}")
    print(
        f"batches published: {summary.batches_published:,} ({summary.batches_held:,} held "
        f"for a reconnection, {summary.resends:,} re-sent); "
        f"bytes on the wire: {summary.bytes_sent:,} ({per_reading:.2f} per reading)"
    )
    print(f"duration: {summary.duration:.1f} s ({summary.readings_per_second:,.0f} readings/s)")
    if args.anomalies is not None:
        print(f"anomalies written to {args.anomalies}")


def _kinds(summary: SimulationSummary) -> dict[str, int]:
    kinds = [kind for kind in ANOMALY_KINDS if kind != "dropout"]
    counts = {kind: sum(e.kind == kind for e in summary.events) for kind in kinds}
    return {kind: n for kind, n in counts.items() if n}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
