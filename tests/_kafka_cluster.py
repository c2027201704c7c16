"""The three-node Kafka cluster of ``scripts/services.sh`` (service ``kafka-cluster``) for
replication and broker-failure tests.

Each node is broker and controller in one JVM on 127.0.0.1 (brokers on 19092-19094 by default).
:class:`KafkaCluster` says where the nodes are, SIGKILLs one, starts the dead ones again (with
the command line, config and data the script gives them: it runs ``scripts/services.sh start
kafka-cluster``), tells which node leads the most partitions of some topics, and waits with a
deadline for every partition to have its full ISR again. The nodes are found by their JVMs'
command lines, so a cluster that another checkout's script started on this machine can be
controlled too; a cluster elsewhere (``IOTDATA_KAFKA_CLUSTER_BOOTSTRAP``) can only be used.

No mocks: every answer comes from the cluster's own metadata.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICES = REPO_ROOT / "scripts" / "services.sh"
DEFAULT_CLUSTER_BOOTSTRAP = "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
#: Seconds ``scripts/services.sh start kafka-cluster`` may take (it waits up to 120 s itself).
START_TIMEOUT = 240.0

Partition = tuple[str, int]


class ClusterError(RuntimeError):
    """The cluster could not be controlled or did not get healthy in time."""


@attrs.frozen
class PartitionState:
    """One partition as the cluster's metadata shows it."""

    leader: int  # -1: no leader
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def full(self) -> bool:
        """Every replica is in sync and there is a leader."""
        return self.leader >= 0 and set(self.isr) == set(self.replicas)


@attrs.frozen
class KafkaNode:
    """One node of the cluster: its id and broker port, and (when its JVM runs on this machine
    from a services folder) that folder, ``<services dir>/kafka-cluster/node-N``."""

    node_id: int
    host: str
    port: int
    folder: Path | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def config(self) -> Path | None:
        return None if self.folder is None else self.folder / "server.properties"

    @property
    def pid(self) -> int | None:
        """The pid of the node's JVM, None when it is not running (read afresh each time: a
        restarted node has a new one)."""
        if self.folder is None:
            return None
        try:
            pid = int((self.folder / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _runs(pid, str(self.config)) else None


def _runs(pid: int, pattern: str) -> bool:
    """The process ``pid`` runs (not a zombie) and its command line contains ``pattern`` (the
    rule of the script's ``pid_of``: a reused pid is never taken for the node)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return pattern in command


def _kafka_jvms() -> Iterator[Path]:
    """The config of every cluster node JVM running here (``kafka.Kafka <...>/kafka-cluster/
    node-N/server.properties``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
        if len(args) > 1 and args[-2] == "kafka.Kafka":
            config = Path(args[-1])
            if config.name == "server.properties" and config.parent.parent.name == "kafka-cluster":
                yield config


def _listens_on(config: Path, port: int) -> bool:
    try:
        text = config.read_text()
    except OSError:
        return False
    return any(
        line.startswith("listeners=") and f"://127.0.0.1:{port}," in line + ","
        for line in text.splitlines()
    )


def _folder_of(port: int) -> Path | None:
    """The folder of the running node whose broker listens on 127.0.0.1:``port``."""
    for config in _kafka_jvms():
        if _listens_on(config, port):
            return config.parent
    return None


@attrs.define
class KafkaCluster:
    """The cluster: ``bootstrap`` for clients, ``nodes`` by id."""

    bootstrap: str
    nodes: dict[int, KafkaNode]

    @classmethod
    async def discover(cls, bootstrap: str, timeout: float = 30.0) -> KafkaCluster:
        """Ask the cluster for its brokers and find, for each one on 127.0.0.1, its JVM here."""
        described = await _with_admin(bootstrap, lambda admin: admin.describe_cluster(), timeout)
        nodes = {}
        for broker in described["brokers"]:
            host, port = broker["host"], broker["port"]
            folder = _folder_of(port) if host in {"127.0.0.1", "localhost"} else None
            nodes[broker["node_id"]] = KafkaNode(broker["node_id"], host, port, folder)
        return cls(bootstrap, dict(sorted(nodes.items())))

    @property
    def controllable(self) -> bool:
        """Whether every node's JVM was found here (so it can be killed and started again)."""
        return bool(self.nodes) and all(node.folder is not None for node in self.nodes.values())

    @property
    def services_dir(self) -> Path:
        """The services folder of the script that started the nodes."""
        folders = {node.folder.parent.parent for node in self.nodes.values() if node.folder}
        if len(folders) != 1 or not self.controllable:
            raise ClusterError(f"the nodes of {self.bootstrap} are not all of one services folder")
        return folders.pop()

    # -------------------------------------------------------------------- processes

    def kill(self, node_id: int, sig: signal.Signals = signal.SIGKILL, timeout: float = 30) -> int:
        """Send ``sig`` (SIGKILL by default) to the node's JVM and wait until it is gone;
        return the pid it had."""
        node = self.nodes[node_id]
        pid = node.pid
        if pid is None:
            raise ClusterError(f"node {node_id} is not running (or not ours to kill)")
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while _runs(pid, str(node.config)):
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node_id} (pid {pid}) still runs {timeout} s after {sig}")
            time.sleep(0.05)
        return pid

    def running(self) -> list[int]:
        """Ids of the nodes whose JVM runs."""
        return [node_id for node_id, node in self.nodes.items() if node.pid is not None]

    def start(self) -> float:
        """Start every node that is not running, with its config and data, and return once all
        are registered brokers again (``scripts/services.sh start kafka-cluster``); return the
        seconds that took. Blocks: from asyncio, run it in a thread."""
        started = time.monotonic()
        environment = dict(os.environ, IOTDATA_SERVICES_DIR=str(self.services_dir))
        environment.pop("IOTDATA_KAFKA_CLUSTER_BOOTSTRAP", None)  # ours, not an external one
        done = subprocess.run(
            [str(SERVICES), "start", "kafka-cluster"],
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace")
            raise ClusterError(f"scripts/services.sh start kafka-cluster failed:\n{output}")
        return time.monotonic() - started

    # -------------------------------------------------------------------- metadata

    async def brokers(self, timeout: float = 30.0) -> list[int]:
        """Ids of the brokers the cluster's metadata lists now (registered, not fenced)."""
        described = await _with_admin(
            self.bootstrap, lambda admin: admin.describe_cluster(), timeout
        )
        return sorted(broker["node_id"] for broker in described["brokers"])

    async def partitions(
        self, topics: Iterable[str] | None = None, timeout: float = 30.0
    ) -> dict[Partition, PartitionState]:
        """The state of every partition of ``topics`` (every topic when None). A broker that has
        not yet applied a new topic's metadata is asked again, until ``timeout``."""
        wanted = None if topics is None else list(topics)

        async def describe(admin: Any) -> list[Any]:
            described: list[Any] = await admin.describe_topics(wanted)
            for topic in described:
                if topic["error_code"] != 0:
                    raise _NotYetError(f"no metadata for topic {topic['topic']!r}: {topic}")
            return described

        states = {}
        for topic in await _with_admin(self.bootstrap, describe, timeout):
            for p in topic["partitions"]:
                states[topic["topic"], p["partition"]] = PartitionState(
                    leader=p["leader"], replicas=tuple(p["replicas"]), isr=tuple(p["isr"])
                )
        return states

    async def leaders(self, *topics: str) -> Counter[int]:
        """How many partitions of ``topics`` each node leads (nodes that lead none included)."""
        counts: Counter[int] = Counter(dict.fromkeys(self.nodes, 0))
        for state in (await self.partitions(topics)).values():
            if state.leader >= 0:
                counts[state.leader] += 1
        return counts

    async def leader_of_most(self, *topics: str) -> int:
        """The node that leads the most partitions of ``topics`` (the lowest id on a tie)."""
        counts = await self.leaders(*topics)
        return max(sorted(counts), key=lambda node_id: counts[node_id])

    async def wait_full_isr(self, *topics: str, timeout: float = 120.0) -> None:
        """Wait until every partition of ``topics`` (of every topic when none is named) has a
        leader and all its replicas in sync; :class:`ClusterError` naming the partitions that
        lag after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        lagging: object = "no answer"
        while time.monotonic() < deadline:
            try:
                states = await self.partitions(
                    topics or None, max(1.0, deadline - time.monotonic())
                )
            except ClusterError as exc:
                lagging = str(exc)
            else:
                lagging = {p: state for p, state in sorted(states.items()) if not state.full}
                if not lagging:
                    return
            await asyncio.sleep(0.2)
        raise ClusterError(f"partitions without their full ISR after {timeout} s: {lagging}")

    async def wait_failover(self, node_id: int, *topics: str, timeout: float = 60.0) -> None:
        """Wait until every partition of ``topics`` has a leader and it is not ``node_id`` (the
        cluster fenced that dead node and moved its leaderships)."""
        deadline = time.monotonic() + timeout
        stuck: object = "no answer"
        while time.monotonic() < deadline:
            try:
                states = await self.partitions(topics, max(1.0, deadline - time.monotonic()))
            except ClusterError as exc:
                stuck = str(exc)
            else:
                stuck = sorted(p for p, s in states.items() if s.leader in (-1, node_id))
                if not stuck:
                    return
            await asyncio.sleep(0.2)
        raise ClusterError(
            f"partitions still led by {node_id} or by none after {timeout} s: {stuck}"
        )

    async def wait_brokers(self, wanted: Iterable[int], timeout: float = 120.0) -> None:
        """Wait until the metadata lists exactly the brokers ``wanted``."""
        expected = sorted(wanted)
        deadline = time.monotonic() + timeout
        seen: object = "no answer"
        while time.monotonic() < deadline:
            try:
                seen = await self.brokers(max(1.0, deadline - time.monotonic()))
            except ClusterError as exc:
                seen = str(exc)
            if seen == expected:
                return
            await asyncio.sleep(0.2)
        raise ClusterError(f"brokers {seen} after {timeout} s, not {expected}")

    async def wait_healthy(self, timeout: float = 120.0) -> None:
        """Wait until all nodes are registered brokers and every partition of every topic has
        its full ISR."""
        deadline = time.monotonic() + timeout
        await self.wait_brokers(self.nodes, timeout)
        await self.wait_full_isr(timeout=max(1.0, deadline - time.monotonic()))

    def restore(self, timeout: float = 180.0) -> None:
        """Start whatever node is down and wait until the cluster is healthy (a finaliser)."""
        if len(self.running()) < len(self.nodes):
            self.start()
        asyncio.run(self.wait_healthy(timeout))

    async def topic_config(self, topic: str, timeout: float = 30.0) -> dict[str, str]:
        """The effective configuration of ``topic`` (its own settings and the cluster's
        defaults), as a broker that knows the topic describes it."""
        from aiokafka.admin.config_resource import (  # noqa: PLC0415
            ConfigResource,
            ConfigResourceType,
        )

        async def describe(admin: Any) -> dict[str, str]:
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            (response,) = await admin.describe_configs([resource])
            (described,) = response.to_object()["resources"]
            if described["error_code"] != 0:
                raise _NotYetError(f"topic {topic!r}: {described}")
            entries = described["config_entries"]
            return {entry["config_names"]: entry["config_value"] for entry in entries}

        config: dict[str, str] = await _with_admin(self.bootstrap, describe, timeout)
        return config

    async def wait_topic_config(
        self, topic: str, wanted: dict[str, str], timeout: float = 30.0
    ) -> None:
        """Wait until the effective configuration of ``topic`` has the values ``wanted``
        (a change reaches the brokers a moment after the controller took it)."""
        deadline = time.monotonic() + timeout
        while True:
            config = await self.topic_config(topic, max(1.0, deadline - time.monotonic()))
            seen = {name: config.get(name) for name in wanted}
            if seen == wanted:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"topic {topic!r} has {seen} after {timeout} s, not {wanted}")
            await asyncio.sleep(0.2)

    async def delete_topics(self, *topics: str, timeout: float = 30.0) -> None:
        """Delete ``topics`` (tests clean up after themselves: the cluster keeps its data)."""
        await _with_admin(self.bootstrap, lambda admin: admin.delete_topics(list(topics)), timeout)


class _NotYetError(Exception):
    """An answer that another try (maybe another broker) may improve on."""


async def _with_admin(bootstrap: str, call: Any, timeout: float) -> Any:
    """``await call(admin)`` with a fresh admin client, retried on Kafka errors (a node that
    died may be the one asked) and on :class:`_NotYetError` until ``timeout`` seconds pass."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415
    from aiokafka.errors import KafkaError  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        admin = AIOKafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=int(max(1.0, min(remaining, 10)) * 1000)
        )
        try:
            return await asyncio.wait_for(_ask(admin, call), max(1.0, min(remaining, 15)))
        except (KafkaError, TimeoutError, asyncio.TimeoutError, _NotYetError) as exc:
            if time.monotonic() + 0.2 >= deadline:  # else ask again (maybe another node)
                raise ClusterError(f"Kafka at {bootstrap} did not answer: {exc!r}") from exc
        finally:
            await admin.close()
        await asyncio.sleep(0.2)


async def _ask(admin: Any, call: Any) -> Any:
    await admin.start()
    return await call(admin)
