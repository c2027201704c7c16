"""Publish a sensor's readings from a device (a Raspberry Pi, say) with iotdata.

    python examples/device_publish.py --mqtt mqtt://127.0.0.1:1883 --readings 600

Readings are committed to a local queue before `send` returns and leave it only when the
broker acknowledged them, so this program can be killed at any moment and restarted: nothing
accepted is lost. A deadband keeps flat readings off the network, with a heartbeat. Run a
gateway (`iotdata gateway`) or another subscriber of `iotdata/+/telemetry` first: a broker
with no subscriber drops telemetry ("no matching subscribers"), so the client keeps it queued.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

from iotdata.device import Deadband, DeviceClient, QueueConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883", help="broker URL")
    parser.add_argument("--device", default="greenhouse-1", help="this device's id")
    parser.add_argument("--queue", type=Path, default=Path("greenhouse-1.queue"))
    parser.add_argument("--readings", type=int, default=600, help="how many to take")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between readings")
    args = parser.parse_args()

    edge = Deadband(0.05, heartbeat=60, metrics={"temp"})
    with DeviceClient.connect(
        args.device, args.mqtt, queue=QueueConfig(path=args.queue), edge=edge
    ) as client:

        @client.command("ping")
        def ping(_: object) -> str:
            return "pong"

        for i in range(args.readings):
            temp = 21 + 2 * math.sin(i / 60) + random.gauss(0, 0.02)
            client.send("temp", round(temp, 2))
            client.send("humidity", round(55 + random.gauss(0, 1), 1))
            time.sleep(args.interval)
        client.flush(timeout=30)
        stats = client.statistics()
        print(
            f"{stats.acknowledged} readings acknowledged by the broker, "
            f"{stats.edge_dropped} kept off the network by the deadband, {stats.queued} queued"
        )


if __name__ == "__main__":
    main()
