"""Helpers shared by test modules: a cloud-side telemetry collector, and the iotdata command."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import tenacity

from iotdata import codec
from iotdata.mqtt import MqttConnection, MqttSettings, Topics

Key = tuple[str, int]


class Collector:
    """A cloud-side subscriber under ``topics``: decodes every telemetry frame and records every
    (device, seq); keeps the state, command result and reported config messages too.

    ``persistent`` keeps a session, so that what the broker queues for it while it is away is
    not lost. With ``metric``, a reading of another metric is an error.
    """

    def __init__(
        self,
        url: str,
        topics: Topics,
        client_id: str,
        *,
        persistent: bool = False,
        metric: str | None = None,
    ) -> None:
        #: Every (device, seq) in order of arrival (by seq within a frame), copies included.
        self.seqs: list[Key] = []
        #: The ``(ts, value)`` of each (device, seq).
        self.readings: dict[Key, tuple[int, object]] = {}
        #: Telemetry frames received.
        self.frames = 0
        #: ``(topic, payload)`` of the other messages.
        self.other: list[tuple[str, bytes]] = []
        self._metric = metric
        self._cond = threading.Condition()
        session = {"clean_start": False, "session_expiry": 3600} if persistent else {}
        self.connection = MqttConnection.start(
            MqttSettings.from_url(url), client_id, backoff=tenacity.wait_fixed(0.2), **session
        )
        self.connection.wait_connected(10)
        self.connection.subscribe(topics.all_telemetry(), self._telemetry)
        self.connection.subscribe(f"{topics.prefix}/+/state", self._other)
        self.connection.subscribe(f"{topics.prefix}/+/commands/+/result", self._other)
        self.connection.subscribe(f"{topics.prefix}/+/config/reported", self._other)
        self.connection.wait_subscribed(10)

    @property
    def values(self) -> dict[Key, object]:
        """The value of each (device, seq)."""
        with self._cond:
            return {key: value for key, (_, value) in self.readings.items()}

    @property
    def copies(self) -> Counter[Key]:
        """How many times each (device, seq) arrived."""
        with self._cond:
            return Counter(self.seqs)

    def _telemetry(self, message: paho.MQTTMessage) -> None:
        batch = codec.decode(message.payload)
        assert message.topic.endswith(f"/{batch.device_id}/telemetry")
        with self._cond:
            self.frames += 1
            for reading in sorted(batch, key=lambda r: r.seq):
                assert self._metric is None or reading.metric == self._metric
                self.seqs.append((reading.device_id, reading.seq))
                self.readings[reading.device_id, reading.seq] = (reading.ts, reading.value)
            self._cond.notify_all()

    def _other(self, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.other.append((message.topic, bytes(message.payload)))
            self._cond.notify_all()

    def wait_for(self, expected: set[Key], timeout: float = 30, *, exact: bool = False) -> None:
        """Wait until every expected (device, seq) arrived; with ``exact``, nothing else did."""
        with self._cond:
            done = self._cond.wait_for(lambda: expected <= self.readings.keys(), timeout)
            missing = expected - self.readings.keys()
            assert done, f"{len(missing)} readings missing, e.g. {sorted(missing)[:10]}"
            extra = self.readings.keys() - expected
            assert not (exact and extra), f"unexpected readings, e.g. {sorted(extra)[:5]}"

    def wait_count(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` distinct (device, seq) arrived."""
        with self._cond:
            done = self._cond.wait_for(lambda: len(self.readings) >= count, timeout)
            assert done, f"{len(self.readings)} distinct readings arrived, not {count}"

    def wait_other(
        self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float = 10
    ) -> list[tuple[str, bytes]]:
        """Wait until ``predicate(other messages)`` holds; return them."""
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.other), timeout), self.other
            return list(self.other)

    def close(self) -> None:
        self.connection.close()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m iotdata.cli ARGS`` as a user would, in a subprocess (``env``: its whole
    environment, the current one by default)."""
    return subprocess.run(
        [sys.executable, "-m", "iotdata.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def without_extras(folder: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing each of ``modules`` fails as if it were not installed
    (a package of that name that raises ImportError, first on PYTHONPATH)."""
    for name in modules:
        package = folder / name
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(f'raise ImportError("No module named {name}")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")]))
    return env
