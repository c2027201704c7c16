"""Soak the whole pipeline under random faults for a while (not part of the test suite).

    python scripts/soak.py --minutes 30 [--seed 1] [--devices 4x5] [--rate 10]

Runs the pipeline of tests/_chaos.py (durable devices, a persistent Mosquitto, two gateways,
the three-node Kafka cluster, two workers, PostgreSQL) and injects a random fault every 10 to
40 s: SIGKILL of a device process, a gateway, a worker or the Kafka node leading most
partitions, or a restart of Mosquitto or PostgreSQL. At the end it stops the devices, waits
until everything is stored, and prints what each fault cost and whether every accepted
(device_id, seq) was stored and counted once. Needs the services (`scripts/services.sh up`)
and the dev install (`./scripts/test.sh` makes .venv). Exit status 1 when anything was lost or
miscounted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import _chaos  # noqa: E402
from tests._brokers import PrivateBroker  # noqa: E402
from tests._kafka_cluster import DEFAULT_CLUSTER_BOOTSTRAP, KafkaCluster  # noqa: E402

DEFAULT_DSN = "postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test"


def schedule(rng: random.Random, until: float, names: list[str]) -> Iterator[str]:
    while time.monotonic() < until:
        yield rng.choice(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="of the random faults (default 1)")
    parser.add_argument("--devices", default="4x5", help="processes x devices (default 4x5)")
    parser.add_argument("--rate", type=float, default=10.0, help="readings/s a device (10)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL (the test database)")
    parser.add_argument("--kafka", default=DEFAULT_CLUSTER_BOOTSTRAP, help="the Kafka cluster")
    args = parser.parse_args(argv)
    groups, per_group = (int(n) for n in args.devices.split("x"))
    rng = random.Random(args.seed)
    cluster = asyncio.run(KafkaCluster.discover(args.kafka))
    asyncio.run(cluster.wait_healthy())
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        broker = PrivateBroker(folder / "mosquitto", persistent=True)
        broker.folder.mkdir()
        broker.start()
        prefix = f"soak_{uuid.uuid4().hex[:8]}"
        pipeline = _chaos.Pipeline(
            folder, prefix, broker, cluster, args.dsn, groups, per_group, args.rate
        )
        names = list(pipeline.faults())
        try:
            pipeline.start()
            pipeline.wait_flowing()
            until = time.monotonic() + args.minutes * 60
            outcome = _chaos.run_started(pipeline, schedule(rng, until, names), rng=rng)
        finally:
            pipeline.close()
            broker.stop()
            cluster.restore()
    print(outcome.table())
    print(
        f"\n{'fault':<28}{'times':>6}{'recovery s mean/max':>22}{'worst lag s':>13}"
        f"{'duplicates':>12}"
    )
    for name in names:
        reports = [f for f in outcome.faults if f.fault == name]
        if reports:
            recovery = [f.recovery for f in reports]
            print(
                f"{name:<28}{len(reports):>6}"
                f"{statistics.mean(recovery):>13.1f} / {max(recovery):<6.1f}"
                f"{max(f.worst_lag for f in reports):>13.1f}"
                f"{sum(f.duplicates for f in reports):>12,}"
            )
    ok = not (outcome.missing or outcome.bad_windows or outcome.uncounted)
    print("PASS: every accepted reading stored and counted once" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
