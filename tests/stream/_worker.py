"""A stream worker process for the runtime's fault tests.

    python -m tests.stream._worker BOOTSTRAP TOPIC GROUP SQLITE_PATH MEMBER IDLE_SECONDS

Runs the pipeline of tests/stream/_support.py over the Kafka topic as a member of GROUP, with
its checkpoints in the compacted topic GROUP.checkpoints every half second, until killed or
until it has processed nothing for IDLE_SECONDS. It keeps ``SQLITE_PATH.MEMBER.json`` up to
date with its partitions, records processed and checkpoints taken (see :func:`status`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from iotdata.stream import KafkaSource, WorkerStats
from tests.stream._support import pipeline


async def main(bootstrap: str, topic: str, group: str, path: str, member: str, idle: str) -> None:
    source = KafkaSource(
        topic, bootstrap=bootstrap, group=group, client_id=member, session_timeout=6
    )
    idle_since = [time.monotonic(), 0]
    shown: list[object] = []

    def quiet(stats: WorkerStats) -> bool:
        if stats.records != idle_since[1]:
            idle_since[:] = [time.monotonic(), stats.records]
        now = [list(stats.partitions), stats.records, stats.checkpoints]
        if now != shown:
            shown[:] = now
            report(Path(path), member, now)
        return time.monotonic() - idle_since[0] > float(idle)

    print(f"{member} running", flush=True)
    stats = await pipeline(Path(path)).run(source, checkpoint_interval=0.5, until=quiet)
    print(f"{member} done: {stats}", flush=True)


def report(path: Path, member: str, status: list[object]) -> None:
    temporary = path.with_name(f"{path.name}.{member}.tmp")
    temporary.write_text(json.dumps(status))
    os.replace(temporary, path.with_name(f"{path.name}.{member}.json"))


def status(path: Path, member: str) -> tuple[list[int], int, int]:
    """``(partitions, records, checkpoints)`` a worker last reported (nothing yet: empty)."""
    try:
        partitions, records, checkpoints = json.loads(
            path.with_name(f"{path.name}.{member}.json").read_text()
        )
    except FileNotFoundError:
        return [], 0, 0
    return partitions, records, checkpoints


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
