"""Device benchmark: DeviceClient against plain paho-mqtt, on the real local Mosquitto.

What is measured, side by side in one run:

* ``device_vs_paho``: readings per second *delivered* (best of ``--repeats`` runs each;
  every message acknowledged by the broker at QoS 1) from one device process. ``paho``: one
  JSON message per reading
  ``{"device_id", "metric", "ts", "value", "seq"}`` published at QoS 1 (paho's default 20
  messages in flight), timed until the last PUBACK. ``iotdata``: ``DeviceClient.send`` per
  reading into the durable queue (SQLite file, ``durability="normal"``), batched, encoded and
  published at QoS 1, timed until ``flush`` saw every reading acknowledged. The ratio is
  iotdata over paho.
* ``device_send_many100``: the same delivery measurement with ``send_many`` of 100 readings
  at a time (one durable write each), for applications that read sensors in groups.
* ``enqueue``: the durable queue alone, readings per second through ``ReadingQueue.put`` of
  100 readings at a time and of 1 reading at a time (each put is one committed transaction).
* Throughout the delivery measurements a subscriber of ``bench/#`` (another process, QoS 0)
  takes the messages, as a gateway would: a broker with no subscriber drops telemetry and
  answers "no matching subscribers" (0x10), which the device client does not count as
  delivery.
* ``idle``: resident memory of a connected, idle client (a fresh process), and the time of
  ``import iotdata.device`` in a fresh interpreter with the package's bytecode compiled, as
  ``pip install`` leaves it (best of 5).

Run from the repository root, with the services up (``scripts/services.sh up``)::

    python benchmarks/device.py [--readings 20000] [--mqtt mqtt://127.0.0.1:1883] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _common

_common.ensure_repo_importable()

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from iotdata.device import DeviceClient, QueueConfig, ReadingQueue  # noqa: E402
from iotdata.mqtt import Topics  # noqa: E402

BASE_TS = 1_700_000_000_000_000


def values(count: int) -> list[float]:
    return [round(20 + (i % 500) / 100, 2) for i in range(count)]


def paho_rate(url: str, count: int) -> float:
    """One JSON message per reading at QoS 1, until the last PUBACK."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    acked = threading.Semaphore(0)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{os.getpid()}")
    client.on_publish = lambda *args: acked.release()
    client.connect(host, int(port))
    client.loop_start()
    try:
        readings = values(count)
        started = time.perf_counter()
        for seq, value in enumerate(readings):
            record = {
                "device_id": "bench-paho",
                "metric": "temp",
                "ts": BASE_TS + seq,
                "value": value,
                "seq": seq,
            }
            client.publish("bench/paho/telemetry", json.dumps(record), qos=1)
        for _ in range(count):
            if not acked.acquire(timeout=60):
                raise RuntimeError("paho: PUBACKs stopped coming")
        return count / (time.perf_counter() - started)
    finally:
        client.loop_stop()
        client.disconnect()


def device_rate(url: str, count: int, folder: Path, group: int = 1) -> float:
    """DeviceClient.send per reading (or send_many of ``group``), durable queue on, until every
    reading is acknowledged."""
    folder.mkdir(parents=True, exist_ok=True)
    queue = QueueConfig(path=folder / f"bench{group}.queue", max_bytes=1 << 30)
    device = f"bench-device-{group}"
    with DeviceClient.connect(device, url, queue=queue, topics=Topics("bench")) as client:
        client.wait_connected(10)
        readings = [("temp", v, BASE_TS + i) for i, v in enumerate(values(count))]
        started = time.perf_counter()
        if group == 1:
            for metric, value, ts in readings:
                client.send(metric, value, ts=ts)
        else:
            for start in range(0, count, group):
                client.send_many(readings[start : start + group])
        client.flush(120)
        elapsed = time.perf_counter() - started
        if client.statistics().acknowledged != count:
            raise RuntimeError("not every reading was acknowledged")
    return count / elapsed


def enqueue_rate(folder: Path, count: int, per_put: int) -> float:
    queue = ReadingQueue.open(
        "bench-queue", QueueConfig(path=folder / f"put{per_put}.queue", max_bytes=1 << 30)
    )
    readings = [("temp", BASE_TS + i, v) for i, v in enumerate(values(count))]
    try:
        started = time.perf_counter()
        for start in range(0, count, per_put):
            queue.put(readings[start : start + per_put])
        return count / (time.perf_counter() - started)
    finally:
        queue.close()


IDLE_CHILD = """
import sys, time
from iotdata.device import DeviceClient
client = DeviceClient.connect("bench-idle", sys.argv[1])
client.wait_connected(10)
time.sleep(1.0)
rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]
print(int(rss) * 1024, flush=True)
client.close()
"""


def idle_rss(url: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", IDLE_CHILD, url],
        capture_output=True,
        text=True,
        check=True,
        cwd=_common.REPO_ROOT,
        timeout=60,
    )
    return int(out.stdout.split()[-1])


def import_time() -> float:
    """Best of 5 fresh interpreters, with bytecode: as after ``pip install``, which compiles the
    package's ``.pyc`` files. (With ``PYTHONDONTWRITEBYTECODE`` set, every import would compile
    the sources again; the first, uncounted run writes the bytecode.)"""
    code = (
        "import time; t = time.perf_counter(); import iotdata.device; "
        "print(time.perf_counter() - t)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    times = []
    for _ in range(6):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=_common.REPO_ROOT,
            env=env,
            timeout=60,
        )
        times.append(float(out.stdout))
    return min(times[1:])


SUBSCRIBER = """
import sys
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
host, port = sys.argv[1].split("://", 1)[1].rsplit(":", 1)
client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-subscriber")
client.on_connect = lambda c, u, f, r, p: c.subscribe("bench/#", qos=0)
client.on_subscribe = lambda c, u, m, r, p: print("ready", flush=True)
client.connect(host, int(port))
client.loop_forever()
"""


@contextlib.contextmanager
def subscriber(url: str) -> Iterator[None]:
    """A process subscribed to ``bench/#`` (what a gateway would be), for the block."""
    process = subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the bench/# subscriber did not subscribe on {url}")
        yield
    finally:
        process.kill()
        process.wait()


def record(case: str, impl: str, metric: str, value: float) -> dict[str, Any]:
    return {"case": case, "impl": impl, "metric": metric, "value": value}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mqtt",
        default=os.environ.get("IOTDATA_MQTT_URL", "mqtt://127.0.0.1:1883"),
        help="broker URL (default $IOTDATA_MQTT_URL or mqtt://127.0.0.1:1883)",
    )
    parser.add_argument(
        "--readings",
        type=int,
        default=20_000,
        help="readings per delivery measurement (default 20000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each delivery measurement; the best counts (default 3)",
    )
    parser.add_argument("--json", type=Path, help="write the records here")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        print("delivered readings/s at QoS 1 ...", file=sys.stderr)
        # Best of a few runs on each side: the loaded 2-core machine makes single runs noisy.
        with subscriber(args.mqtt):
            paho_per_s = max(paho_rate(args.mqtt, args.readings) for _ in range(args.repeats))
            device_per_s = max(
                device_rate(args.mqtt, args.readings, folder / f"send{i}")
                for i in range(args.repeats)
            )
            many_per_s = max(
                device_rate(args.mqtt, args.readings * 5, folder / f"many{i}", group=100)
                for i in range(args.repeats)
            )
        print("durable enqueue ...", file=sys.stderr)
        put100 = enqueue_rate(folder, 200_000, 100)
        put1 = enqueue_rate(folder, 20_000, 1)
    rss = idle_rss(args.mqtt)
    seconds = import_time()
    ratio = device_per_s / paho_per_s
    rows += [
        record("device_vs_paho", "paho", "readings_per_s", paho_per_s),
        record("device_vs_paho", "iotdata", "readings_per_s", device_per_s),
        record("device_vs_paho", "ratio", "readings_per_s", ratio),
        record("device_send_many100", "iotdata", "readings_per_s", many_per_s),
        record("device_send_many100", "ratio", "readings_per_s", many_per_s / paho_per_s),
        record("enqueue_put100", "iotdata", "readings_per_s", put100),
        record("enqueue_put1", "iotdata", "readings_per_s", put1),
        record("idle", "iotdata", "rss_bytes", rss),
        record("idle", "iotdata", "import_seconds", seconds),
    ]
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(
        f"Device benchmark against {args.mqtt}, {args.readings} readings, QoS 1, "
        f"best of {args.repeats}"
    )
    print(f"  paho, one JSON message per reading:  {_common.format_rate(paho_per_s)} readings/s")
    print(f"  iotdata DeviceClient, durable queue: {_common.format_rate(device_per_s)} readings/s")
    print(
        f"  iotdata DeviceClient, send_many(100): {_common.format_rate(many_per_s)} readings/s"
        f" ({many_per_s / paho_per_s:.1f}x paho)"
    )
    print(f"  durable enqueue, puts of 100:        {_common.format_rate(put100)} readings/s")
    print(f"  durable enqueue, puts of 1:          {_common.format_rate(put1)} readings/s")
    print(f"  idle connected client RSS:           {rss / 2**20:.1f} MiB")
    print(f"  import iotdata.device:               {seconds * 1000:.0f} ms")
    print("Targets")
    print(f"  {verdict(ratio >= 10)}  DeviceClient >= 10x paho JSON per reading ({ratio:.1f}x)")
    print(f"  {verdict(put100 >= 100_000)}  durable enqueue >= 100k readings/s (puts of 100)")
    print(f"  {verdict(rss <= 30_000_000)}  idle client RSS <= 30 MB (30,000,000 bytes)")
    print(f"  {verdict(seconds <= 0.150)}  import iotdata.device <= 150 ms")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
