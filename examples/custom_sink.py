"""Your own sink: alerts kept in a JSON file, checked by iotdata's conformance check, then used.

    python examples/custom_sink.py [--file alerts.json]

`AlertFile` keeps one JSON document of alerts keyed by (device_id, detector, ts), the first of
each key winning, replaced atomically at every flush: writing the same alerts again (a replay
after a restart) changes nothing. `check_sink` proves it: replays, a crash between write and
flush, bad rows, closing twice. Then a pipeline raises threshold alerts into it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path

from iotdata import Batch
from iotdata.sinks import Alert, BufferedWriter, Opening, PendingRecords
from iotdata.stream import MemorySource, Pipeline, Threshold
from iotdata.testing import SinkContents, check_sink

SECOND = 1_000_000


class AlertFileWriter(BufferedWriter):
    kinds = frozenset({"alerts"})

    def __init__(self, path: Path) -> None:
        super().__init__(name="AlertFile", flush_rows=10_000)
        self.path = path

    async def persist(self, pending: PendingRecords) -> None:
        stored = load(self.path)
        for alert in pending.alerts():
            stored.setdefault(f"{alert.device_id}|{alert.detector}|{alert.ts}", as_json(alert))
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(stored, sort_keys=True))
        os.replace(temporary, self.path)  # all of the flush or none of it


class AlertFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def open(self) -> Opening[AlertFileWriter]:
        async def opener() -> AlertFileWriter:
            return AlertFileWriter(self.path)

        return Opening(opener)


def as_json(alert: Alert) -> dict[str, object]:
    return {
        "device_id": alert.device_id,
        "detector": alert.detector,
        "ts": alert.ts,
        "metric": alert.metric,
        "value": alert.value,
        "score": alert.score,
        "severity": alert.severity,
        "message": alert.message,
    }


def load(path: Path) -> dict[str, dict[str, object]]:
    return json.loads(path.read_text()) if path.exists() else {}


def stored_alerts(path: Path) -> list[Alert]:
    return [Alert(**document) for document in load(path).values()]  # type: ignore[arg-type]


async def main(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    checked = path.with_name("checked-" + path.name)
    checked.unlink(missing_ok=True)

    async def read_back() -> SinkContents:
        return SinkContents(alerts=stored_alerts(checked))

    await check_sink(AlertFile(checked).open, read_back=read_back, kinds={"alerts"})
    print("AlertFile passes iotdata.testing.check_sink")

    temperatures = [21.0 + (i % 7) * 0.1 for i in range(600)]
    temperatures[100:103] = [48.0, 51.5, 49.0]  # a fault, and a second one later
    temperatures[400] = 55.0
    ts = [1_714_521_600 * SECOND + i * SECOND for i in range(600)]
    batches = [
        Batch.from_columns(
            "boiler-1",
            {"temperature": (ts[i : i + 60], temperatures[i : i + 60], range(i, i + 60))},
        )
        for i in range(0, 600, 60)
    ]
    pipeline = (
        Pipeline()
        .detect(Threshold(above=45.0, cooldown=timedelta(minutes=1), severity="critical"))
        .to(AlertFile(path))
    )
    for _ in range(2):  # twice: the second run stores nothing new
        await pipeline.run(MemorySource(batches))
    for alert in sorted(stored_alerts(path), key=lambda a: a.ts):
        after = (alert.ts - ts[0]) // SECOND
        print(f"{alert.severity} {alert.device_id} {alert.detector} {alert.value} at +{after} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="the alerts file (default: a temporary one)")
    args = parser.parse_args()
    asyncio.run(main(args.file or Path(tempfile.mkdtemp()) / "alerts.json"))
