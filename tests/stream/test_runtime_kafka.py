"""The stream runtime on real Kafka: a worker killed with SIGKILL mid-run, and a group of two
where one is killed, end with exactly the sink contents of a plain reference computation (every
reading once, every closed window once with its exact statistics, every alert once)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from iotdata.kafka import PartitionedProducer, ProducerSettings, TopicSpec, ensure_topics
from tests.conftest import REPO_ROOT
from tests.stream._support import check, frames, reference, stored
from tests.stream._worker import status

pytestmark = pytest.mark.kafka


def worker(
    bootstrap: str, topic: str, path: Path, member: str, idle: float
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "tests.stream._worker",
        bootstrap,
        topic,
        topic,
        str(path),
        member,
        str(idle),
    ]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def feed(
    bootstrap: str, topic: str, seconds: float, data: list[tuple[str, bytes]] | None = None
) -> None:
    """Produce ``data`` (every frame by default), spread over ``seconds``."""
    data = frames() if data is None else data
    async with await PartitionedProducer.start(ProducerSettings(bootstrap=bootstrap)) as producer:
        started = time.monotonic()
        for n, (device, frame) in enumerate(data):
            await asyncio.sleep(max(0.0, started + seconds * n / len(data) - time.monotonic()))
            await producer.send(topic, device, frame)
        await producer.flush(60)


def prepare(bootstrap: str, topic: str) -> None:
    # the checkpoint topic ({group}.checkpoints) is the Kafka source's default: it creates it
    asyncio.run(ensure_topics(bootstrap, TopicSpec(name=topic, partitions=4)))


def finish(process: subprocess.Popen[bytes], timeout: float = 180) -> str:
    out, _ = process.communicate(timeout=timeout)
    text = out.decode()
    assert process.returncode == 0, text
    return text


def feed_and_kill(
    bootstrap: str,
    topic: str,
    path: Path,
    doomed: subprocess.Popen[bytes],
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """Produce the first half of the frames over 6 s; SIGKILL ``doomed`` once some windows are
    in the sink and ``ready()`` holds (as a rule while that half is still coming in: outputs
    written since the last checkpoint will be replayed), then produce the rest. The second half
    waits for the kill, so the kill is before the end however slowly the group forms."""
    data = frames()
    first, rest = data[: len(data) // 2], data[len(data) // 2 :]

    async def scenario() -> None:
        feeding = asyncio.create_task(feed(bootstrap, topic, 6, first))
        deadline = time.monotonic() + 60
        while not (len(stored(path)) >= 40 and ready()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        doomed.kill()
        doomed.wait()
        assert 0 < len(stored(path)) < len(reference())
        await feeding
        await feed(bootstrap, topic, 2, rest)

    asyncio.run(scenario())


def test_worker_killed_with_sigkill_resumes_exactly(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    prepare(kafka_bootstrap, unique_name)
    path = tmp_path / "out.sqlite"
    feed_and_kill(
        kafka_bootstrap, unique_name, path, worker(kafka_bootstrap, unique_name, path, "w1", 5)
    )
    report = finish(worker(kafka_bootstrap, unique_name, path, "w1", 5))
    print(report)
    check(path)
    resumed = int(report.split("records=")[1].split(",")[0])
    assert resumed < len(frames())  # it resumed from the checkpoint, not from the start


def test_two_workers_one_killed_the_other_takes_over_exactly(
    kafka_bootstrap: str, unique_name: str, tmp_path: Path
) -> None:
    prepare(kafka_bootstrap, unique_name)
    path = tmp_path / "out.sqlite"
    doomed = worker(kafka_bootstrap, unique_name, path, "w1", 20)
    survivor = worker(kafka_bootstrap, unique_name, path, "w2", 20)

    def split_and_checkpointed() -> bool:
        """The two hold complementary partitions and the doomed one has checkpointed."""
        (held, records, checkpoints), other = status(path, "w1"), status(path, "w2")[0]
        split = bool(held) and bool(other) and sorted(held + other) == [0, 1, 2, 3]
        return split and records > 0 and checkpoints > 0

    feed_and_kill(kafka_bootstrap, unique_name, path, doomed, split_and_checkpointed)
    held_by_doomed = status(path, "w1")[0]
    assert held_by_doomed and len(held_by_doomed) < 4  # the group had split the partitions
    print(finish(survivor, 240))
    assert status(path, "w2")[0] == [0, 1, 2, 3]  # the survivor took the doomed one's over
    check(path)
