"""Child process of the SIGKILL test in test_queue.py: puts or appends (and acks) readings until
killed.

Usage: python _queue_child.py PATH DEVICE_ID DURABILITY SEED

Prints ``ready`` once the queue is open, then ``P first_seq count`` after each put returned,
``T first_seq last_seq count`` after a take and ``A`` once its ack returned. Reading ``seq``
holds ``float(seq)``.
"""

from __future__ import annotations

import random
import sys

from iotdata.device._queue import QueueConfig, ReadingQueue

TS0 = 1_700_000_000_000_000


def main() -> None:
    path, device_id, durability, seed = sys.argv[1:5]
    rng = random.Random(int(seed))
    config = QueueConfig(path=path, durability=durability)  # type: ignore[arg-type]
    with ReadingQueue.open(device_id, config) as queue:
        print("ready", flush=True)
        seq = queue.statistics().next_seq
        while True:
            if rng.random() < 0.5:  # single readings go through the intake journal
                count = 1
                first = queue.append("temp", TS0 + seq * 1000, float(seq))
            else:
                count = rng.randint(1, 20)
                readings = [("temp", TS0 + (seq + k) * 1000, float(seq + k)) for k in range(count)]
                first = queue.put(readings)
            print(f"P {first} {count}", flush=True)
            seq = first + count
            if rng.random() < 0.1:
                lease = queue.take(rng.randint(1, 50))
                assert lease is not None
                seqs = lease.batch.column("temp").seq
                print(f"T {seqs[0]} {seqs[-1]} {len(seqs)}", flush=True)
                queue.ack(lease)
                print("A", flush=True)


if __name__ == "__main__":
    main()
