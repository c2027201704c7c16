"""The MQTT source on the real Mosquitto: a worker stopped mid-run without its last checkpoint
and started again on the same session ends with exactly the reference in the sink."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from iotdata import InvalidInputError
from iotdata.mqtt import MqttConnection, MqttSettings, Topics
from iotdata.sinks import SqliteSink
from iotdata.stream import (
    FileCheckpoints,
    MemoryCheckpoints,
    MqttSource,
    Pipeline,
    Tumbling,
    WorkerStats,
)
from tests.stream._support import DEVICES, READINGS, check, frames, pipeline

TOTAL = DEVICES * READINGS


def publish_all(url: str, topics: Topics) -> None:
    with MqttConnection.start(MqttSettings.from_url(url), f"{topics.prefix}-pub") as connection:
        connection.wait_connected(30)
        deliveries = []
        for n, (device, frame) in enumerate(frames()):
            deliveries.append(connection.publish(topics.telemetry(device), frame, qos=1))
            if n % 10 == 9:
                time.sleep(0.05)  # over about 2 s: the worker is stopped while they arrive
        for delivery in deliveries:
            delivery.wait(60)


async def first_run(source: MqttSource, path: Path, state: Path, url: str) -> WorkerStats:
    """Runs until half the frames are processed, then is cancelled: its last checkpoint never
    happens, so the broker keeps what came after the one before."""
    seen: list[WorkerStats] = []

    def watch(stats: WorkerStats) -> bool:
        seen.append(stats)
        return False

    task = asyncio.create_task(
        pipeline(path).run(
            source,
            checkpoints=FileCheckpoints(state),
            checkpoint_interval=0.2,
            max_records=10,
            until=watch,
        )
    )
    await source.ready()
    publishing = asyncio.create_task(asyncio.to_thread(publish_all, url, source.topics))
    half = len(frames()) // 2
    while not seen or seen[-1].records < half or not seen[-1].checkpoints:
        await asyncio.sleep(0.01)
        assert not task.done(), task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await publishing
    return seen[-1]


@pytest.mark.mqtt
def test_a_stopped_worker_resumes_its_session_exactly(
    mqtt_url: str, unique_name: str, tmp_path: Path
) -> None:
    path, state = tmp_path / "out.sqlite", tmp_path / "state"
    topics = Topics(unique_name)

    def source() -> MqttSource:
        return MqttSource.from_url(mqtt_url, client_id=f"{unique_name}-stream", topics=topics)

    first = asyncio.run(first_run(source(), path, state, mqtt_url))
    assert first.records >= len(frames()) // 2 and first.checkpoints > 0

    def everything(stats: WorkerStats) -> bool:
        return stats.operators["steps.0.dedup.passed"] == TOTAL

    second = asyncio.run(
        pipeline(path).run(
            source(), checkpoints=FileCheckpoints(state), checkpoint_interval=0.2, until=everything
        )
    )
    assert 0 < second.records < len(frames())  # the broker kept only what was not checkpointed
    check(path)


def test_the_mqtt_source_needs_dedup_and_a_lasting_checkpoint_store(tmp_path: Path) -> None:
    source = MqttSource.from_url("mqtt://127.0.0.1:1", client_id="x")
    sink = SqliteSink(path=tmp_path / "x.sqlite")
    plain = Pipeline().window(Tumbling(10**6)).to(sink)
    with pytest.raises(InvalidInputError, match="dedup"):
        asyncio.run(plain.run(source, checkpoints=MemoryCheckpoints()))
    with pytest.raises(InvalidInputError, match="checkpoint store"):
        asyncio.run(Pipeline().dedup().run(source))
    with pytest.raises(InvalidInputError, match="MQTT 5"):
        MqttSource.from_url("mqtt://127.0.0.1:1?protocol=3.1.1", client_id="x")
