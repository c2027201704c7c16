"""The whole pipeline under every fault at once, on the real services (see tests/_chaos.py):
every accepted (device_id, seq) is stored, and every window counts each reading once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import _chaos
from tests._brokers import PrivateBroker
from tests._kafka_cluster import KafkaCluster

pytestmark = [pytest.mark.mqtt, pytest.mark.kafka, pytest.mark.postgres]

SCHEDULE = (
    "SIGKILL a device process",
    "SIGKILL a gateway",
    "SIGKILL a worker",
    "SIGKILL the Kafka leader",
    "restart Mosquitto",
    "restart PostgreSQL",
)


@pytest.fixture
def chaos(
    tmp_path: Path,
    unique_name: str,
    kafka_cluster_faults: KafkaCluster,
    postgres_dsn: str,
) -> Iterator[_chaos.Pipeline]:
    broker = PrivateBroker(tmp_path / "mosquitto", persistent=True)
    broker.folder.mkdir()
    broker.start()
    pipeline = _chaos.Pipeline(tmp_path, unique_name, broker, kafka_cluster_faults, postgres_dsn)
    try:
        yield pipeline
    finally:
        pipeline.close()
        broker.stop()
        for log in sorted(tmp_path.glob("*.log")):
            print(f"--- {log.name} (end)\n{log.read_text(errors='replace')[-1500:]}")


@pytest.mark.timeout(900)
def test_every_fault_of_the_platform_loses_and_doubles_nothing(chaos: _chaos.Pipeline) -> None:
    outcome = _chaos.run(chaos, iter(SCHEDULE))
    print(outcome.table())
    assert [f.fault for f in outcome.faults] == list(SCHEDULE)
    assert outcome.accepted > 1000
    assert not outcome.missing, f"{len(outcome.missing)} lost, e.g. {outcome.missing[:5]}"
    assert not outcome.bad_windows, f"windows miscounted, e.g. {outcome.bad_windows[:5]}"
    assert outcome.uncounted == 0
    assert outcome.stored >= outcome.accepted
