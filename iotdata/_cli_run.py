"""``iotdata run``: run a pipeline defined in a user's Python file."""

from __future__ import annotations

import argparse
import asyncio
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import attrs

from iotdata._cliargs import add_kafka_security, kafka_security, positive_int, seconds

__all__ = ["add_run"]

_DESCRIPTION = """\
Run a stream pipeline defined in a Python file. The file is run as a script (not as
__main__) and must leave an iotdata.stream.Pipeline in a variable, `pipeline` by default
(--name). Its source is a Kafka topic (--kafka with --topic and --group) or an embedded log's
topic (--log FOLDER with --topic and --group), or a `source` the file defines. The worker
checkpoints every --checkpoint-interval seconds and on SIGINT or SIGTERM, then exits; --records
stops it after that many source records (for bounded runs). The final statistics go to
standard output.

Records a sink refuses (NaN in SQLite, a NUL character or a time before 4714 BC in
PostgreSQL, ...) do not stop the run: the good records of the same batch are stored, and each
refused one is dead-lettered with the reason, in the sink's own dead letters (the
dead_letters table of its SQLite or PostgreSQL database, a dead_letters folder beside the
Parquet files, the Kafka sink's iotdata.dlq topic, standard error for the console), once
however often it is replayed. --bad-rows skip only counts and logs them; --bad-rows stop stops
the run with the error, as before; --dead-letters FILE puts every route's dead letters in the
dead_letters table of that SQLite file instead (- for standard error, one JSON line each).
These options override what the file says for every route.

  # app.py
  from datetime import timedelta
  from iotdata.sinks import SqliteSink
  from iotdata.stream import Count, Mean, Pipeline, Tumbling
  pipeline = (Pipeline().dedup()
      .window(Tumbling(timedelta(minutes=1)), Count(), Mean())
      .to(SqliteSink(path="iot.sqlite")))

  iotdata run app.py --kafka 127.0.0.1:9092 --topic iotdata.telemetry --group app
"""


def add_run(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        help="run a stream pipeline defined in a Python file",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("file", type=Path, help="the Python file that defines the pipeline")
    run.add_argument("--name", default="pipeline", help="the pipeline's variable (pipeline)")
    run.add_argument("--kafka", help="Kafka bootstrap servers")
    run.add_argument("--log", type=Path, help="an embedded log's folder")
    run.add_argument("--topic", help="the topic of codec frames to read")
    run.add_argument("--group", help="the consumer group (its checkpoints are kept per group)")
    run.add_argument("--records", type=positive_int, help="stop after this many records")
    run.add_argument(
        "--checkpoint-interval",
        type=seconds,
        default=5.0,
        help="seconds between checkpoints (default 5)",
    )
    run.add_argument(
        "--bad-rows",
        choices=("dead-letter", "skip", "stop"),
        help="what to do with records a sink refuses (default: what the file says, "
        "dead-letter unless it says otherwise)",
    )
    run.add_argument(
        "--dead-letters",
        metavar="FILE",
        help="a SQLite file for every route's dead letters (its dead_letters table), or - "
        "for standard error",
    )
    run.add_argument(
        "--flush-at-end",
        action="store_true",
        help="close every open window before stopping (the end of a bounded input)",
    )
    add_kafka_security(run)
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from iotdata.errors import InvalidInputError  # noqa: PLC0415
    from iotdata.stream import Pipeline  # noqa: PLC0415

    if not args.file.is_file():
        return _usage(f"no file {args.file}")
    try:
        namespace = runpy.run_path(str(args.file), run_name="__iotdata_run__")
    except Exception as exc:
        print(
            f"iotdata run: error: {args.file} failed: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    pipeline = namespace.get(args.name)
    if not isinstance(pipeline, Pipeline):
        found = type(pipeline).__name__ if args.name in namespace else "nothing"
        return _usage(f"{args.file} must define {args.name!r} as a Pipeline (found {found})")
    try:
        pipeline = _with_bad_rows(pipeline, args)
        source = _source(args, namespace)
    except InvalidInputError as exc:
        return _usage(str(exc))
    stats = asyncio.run(_serve(pipeline, source, args))
    print(
        f"{stats.records:,} records, {stats.readings:,} readings, {stats.aggregates:,} "
        f"aggregates, {stats.alerts:,} alerts, {stats.late:,} late, {stats.undecodable:,} "
        f"undecodable, {stats.checkpoints} checkpoints, {stats.dead_lettered:,} dead-lettered, "
        f"{stats.skipped:,} skipped"
    )
    return 0


def _with_bad_rows(pipeline: Any, args: argparse.Namespace) -> Any:
    """``pipeline`` with every route's policy for refused records set by the options."""
    from iotdata.errors import InvalidInputError  # noqa: PLC0415

    if args.bad_rows is None and args.dead_letters is None:
        return pipeline
    policy = args.bad_rows or "dead-letter"
    if args.dead_letters is not None and policy != "dead-letter":
        raise InvalidInputError(f"--dead-letters needs --bad-rows dead-letter, not {policy}")
    destination = _dead_letters(args.dead_letters)

    def changed(route: Any) -> Any:
        dead = route.dead_letters if destination is None else destination
        return attrs.evolve(
            route, bad_rows=policy, dead_letters=dead if policy == "dead-letter" else None
        )

    return attrs.evolve(
        pipeline,
        routes=tuple(map(changed, pipeline.routes)),
        late_routes=tuple(map(changed, pipeline.late_routes)),
    )


def _dead_letters(where: str | None) -> Any:
    from iotdata.sinks import ConsoleSink, SqliteSink  # noqa: PLC0415

    if where is None:
        return None
    if where == "-":
        return ConsoleSink(stream=sys.stderr, format="json")
    return SqliteSink(path=where)


def _usage(message: str) -> int:
    print(f"iotdata run: error: {message}", file=sys.stderr)
    return 2


def _source(args: argparse.Namespace, namespace: dict[str, Any]) -> Any:
    from iotdata.errors import InvalidInputError  # noqa: PLC0415

    given = [x for x in (args.kafka, args.log) if x]
    if len(given) > 1:
        raise InvalidInputError("give --kafka or --log, not both")
    if not given:
        if "source" not in namespace:
            raise InvalidInputError(f"give --kafka or --log, or define `source` in {args.file}")
        return namespace["source"]
    if not args.topic or not args.group:
        raise InvalidInputError("--kafka and --log need --topic and --group")
    if args.kafka:
        from iotdata.stream import KafkaSource  # noqa: PLC0415

        security = kafka_security(args)
        return KafkaSource(args.topic, bootstrap=args.kafka, group=args.group, security=security)
    from iotdata.local import LocalLog  # noqa: PLC0415
    from iotdata.stream import LocalSource  # noqa: PLC0415

    if not args.log.is_dir():
        raise InvalidInputError(f"{args.log} is not an embedded log's folder")
    return LocalSource(args.topic, log=LocalLog.open(args.log), group=args.group)


async def _serve(pipeline: Any, source: Any, args: argparse.Namespace) -> Any:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    tty = sys.stderr.isatty()

    def until(stats: Any) -> bool:
        if tty:
            print(
                f"\rrecords {stats.records:,}  readings {stats.readings:,}  "
                f"aggregates {stats.aggregates:,}  alerts {stats.alerts:,}  late {stats.late:,}"
                "\x1b[K",
                end="",
                file=sys.stderr,
                flush=True,
            )
        return stopping.is_set() or (args.records is not None and stats.records >= args.records)

    try:
        return await pipeline.run(
            source,
            until=until,
            checkpoint_interval=args.checkpoint_interval,
            flush_at_end=args.flush_at_end,
        )
    finally:
        if tty:
            print(file=sys.stderr)
