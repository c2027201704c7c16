"""An edge gateway: local sensors shaped by edge operators before anything leaves the site.

    python examples/edge_gateway.py [--seconds 120] [--mqtt mqtt://127.0.0.1:1883]

A gateway box on a pump reads a vibration sensor at 100 Hz and a temperature probe at 1 Hz.
Vibration is summarised per second (min, max, mean) and temperature sent only when it moves
more than 0.2 degrees (with a heartbeat every 30 s), so a fraction of the readings goes on the
network, durably queued. Without --mqtt it runs on the in-process broker, and a "cloud"
subscriber on it decodes what arrives.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import threading
import time
from pathlib import Path

from iotdata.codec import Decoder
from iotdata.device import Deadband, DeviceClient, Downsample, Pipeline, QueueConfig
from iotdata.mqtt import LocalBroker, Topics

SECOND = 1_000_000
START = 1_714_521_600 * SECOND  # 2024-05-01 00:00 UTC, simulated time


def readings(seconds: int) -> list[tuple[str, float, int]]:
    """What the sensors produce, in time order: (metric, value, ts)."""
    rng = random.Random(3)
    out = []
    for tick in range(seconds * 100):
        ts = START + tick * SECOND // 100
        out.append(("vibration", round(math.sin(tick / 3) + rng.gauss(0, 0.1), 3), ts))
        if tick % 100 == 0:
            out.append(("temperature", round(40 + tick / 6000 + rng.gauss(0, 0.05), 2), ts))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=120, help="simulated seconds (120)")
    parser.add_argument("--mqtt", help="a broker URL (default: the in-process broker)")
    parser.add_argument("--queue", type=Path, help="the queue file (default: a temporary one)")
    args = parser.parse_args()

    link: str | LocalBroker = args.mqtt or LocalBroker()
    arrived: list[int] = []
    lock = threading.Lock()
    if isinstance(link, LocalBroker):  # the cloud side, on the same in-process broker
        decoder = Decoder()

        def received(message: object) -> None:
            batch = decoder.decode(message.payload)  # type: ignore[attr-defined]
            with lock:
                arrived.append(len(batch))

        link.connect("cloud").subscribe(Topics().all_telemetry(), received)

    edge = Pipeline(
        Downsample(1, ("min", "max", "mean"), metrics={"vibration"}),
        Deadband(0.2, heartbeat=30, metrics={"temperature"}),
    )
    queue = args.queue or Path(tempfile.mkdtemp()) / "pump-7.queue"
    taken = readings(args.seconds)
    with DeviceClient.connect("pump-7", link, queue=QueueConfig(path=queue), edge=edge) as client:
        for start in range(0, len(taken), 1000):
            client.send_many(taken[start : start + 1000])
        client.close(timeout=30)  # flushes the edge operators' last windows, then sends
        stats = client.statistics()
    print(
        f"{len(taken):,} readings taken, {stats.acknowledged:,} sent "
        f"({stats.acknowledged / len(taken):.1%}), {stats.queued} still queued"
    )
    if isinstance(link, LocalBroker):
        for _ in range(100):  # the broker hands messages over on its own thread
            with lock:
                if sum(arrived) >= stats.acknowledged:
                    break
            time.sleep(0.05)
        with lock:
            print(f"the cloud decoded {sum(arrived):,} readings in {len(arrived)} frames")
        link.close()


if __name__ == "__main__":
    main()
