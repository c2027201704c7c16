"""Shared pytest fixtures."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import attrs
import pytest

from iotdata.mqtt import TlsSettings
from tests._brokers import PrivateBroker
from tests._kafka_cluster import DEFAULT_CLUSTER_BOOTSTRAP, ClusterError, KafkaCluster

# ---------------------------------------------------------------------------------------------
# Real services: Mosquitto, Apache Kafka (one node, and a three-node cluster), PostgreSQL
# (started by scripts/services.sh)
#
# Each fixture returns where its service runs (the IOTDATA_* variable, or the address
# scripts/services.sh uses by default) after checking once per session that it answers. When it
# does not, tests that need it fail under CI (CI=true or CI=1) and are skipped elsewhere.
# ---------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_POSTGRES_DSN = "postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test"

CONNECT_TIMEOUT = 3.0
START_HINT = "start the services with `scripts/services.sh up` (or run `./scripts/test.sh`)"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


def unavailable(reason: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) the test that needs something missing."""
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def tcp_error(host: str, port: int) -> str | None:
    """Why a TCP connection to host:port fails, or None when it succeeds."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return f"{host}:{port}: {exc}"


def require_tcp(service: str, address: str, host: str, port: int) -> None:
    error = tcp_error(host, port)
    if error is not None:
        unavailable(f"{service} is not reachable at {address} ({error}); {START_HINT}")


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    """URL of the MQTT broker, e.g. ``mqtt://127.0.0.1:1883`` (env IOTDATA_MQTT_URL)."""
    url = os.environ.get("IOTDATA_MQTT_URL") or DEFAULT_MQTT_URL
    parts = urlsplit(url)
    default_port = 8883 if parts.scheme in {"mqtts", "ssl"} else 1883
    require_tcp("MQTT broker", url, parts.hostname or "127.0.0.1", parts.port or default_port)
    return url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Kafka bootstrap servers, e.g. ``127.0.0.1:9092`` (env IOTDATA_KAFKA_BOOTSTRAP)."""
    bootstrap = os.environ.get("IOTDATA_KAFKA_BOOTSTRAP") or DEFAULT_KAFKA_BOOTSTRAP
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    require_tcp("Kafka", bootstrap, host.strip("[]") or "127.0.0.1", int(port or 9092))
    return bootstrap


@attrs.frozen
class SecuredKafka:
    """The listeners of the test Kafka that want TLS (scripts/services.sh makes the CA)."""

    #: TLS and a SASL login: PLAIN as ``plain_user``, SCRAM-SHA-256/512 as ``scram_user``.
    sasl: str
    #: TLS with a client certificate (mutual TLS).
    mutual: str
    tls_dir: Path
    plain_user: str = "iotdata"
    scram_user: str = "iotdata-scram"
    password: str = "iotdata-test"

    def tls(self, *, client_certificate: bool = False) -> TlsSettings:
        folder = self.tls_dir
        if not client_certificate:
            return TlsSettings(ca_file=str(folder / "ca.pem"))
        return TlsSettings(
            ca_file=str(folder / "ca.pem"),
            cert_file=str(folder / "client.pem"),
            key_file=str(folder / "client.key"),
        )


@pytest.fixture(scope="session")
def secured_kafka(kafka_bootstrap: str) -> SecuredKafka:
    """The TLS+SASL (127.0.0.1:9094) and mutual TLS (127.0.0.1:9095) listeners of the Kafka
    that scripts/services.sh runs, with the folder of its test CA and client certificate."""
    if os.environ.get("IOTDATA_KAFKA_BOOTSTRAP"):
        unavailable("the TLS and SASL listeners are those of the Kafka scripts/services.sh runs")
    cache = Path(os.environ.get("IOTDATA_CACHE") or Path.home() / ".cache" / "iotdata")
    tls_dir = Path(os.environ.get("IOTDATA_KAFKA_TLS_DIR") or cache / "kafka-tls")
    if not (tls_dir / "ca.pem").is_file():
        unavailable(f"no test CA in {tls_dir}; {START_HINT}")
    secured = SecuredKafka(sasl="127.0.0.1:9094", mutual="127.0.0.1:9095", tls_dir=tls_dir)
    for address in (secured.sasl, secured.mutual):
        require_tcp("Kafka (TLS listener)", address, "127.0.0.1", int(address.rsplit(":")[1]))
    return secured


def host_port(server: str, default_port: int = 9092) -> tuple[str, int]:
    """``(host, port)`` of one ``host[:port]`` bootstrap server."""
    host, colon, port = server.strip().rpartition(":")
    if not colon or "]" in port:  # a host alone, or an IPv6 address alone
        return server.strip().strip("[]") or "127.0.0.1", default_port
    return host.strip("[]") or "127.0.0.1", int(port)


@pytest.fixture(scope="session")
def kafka_cluster() -> KafkaCluster:
    """The three-node Kafka cluster of scripts/services.sh (replication factor 3,
    min.insync.replicas 2; env IOTDATA_KAFKA_CLUSTER_BOOTSTRAP names another), once it is
    healthy: every broker registered, every partition with its full ISR."""
    bootstrap = os.environ.get("IOTDATA_KAFKA_CLUSTER_BOOTSTRAP") or DEFAULT_CLUSTER_BOOTSTRAP
    for server in bootstrap.split(","):
        require_tcp("The Kafka cluster", bootstrap, *host_port(server))
    try:
        cluster = asyncio.run(KafkaCluster.discover(bootstrap))
        asyncio.run(cluster.wait_healthy(60))
    except ClusterError as exc:
        unavailable(f"the Kafka cluster at {bootstrap} is not healthy: {exc}; {START_HINT}")
    return cluster


@pytest.fixture
def kafka_cluster_faults(kafka_cluster: KafkaCluster) -> Iterator[KafkaCluster]:
    """``kafka_cluster`` for a test that kills and restarts its nodes: every node runs and every
    partition has its full ISR again when the test ends, whatever happened in it."""
    if not kafka_cluster.controllable:
        unavailable(
            f"the nodes of the Kafka cluster at {kafka_cluster.bootstrap} do not run here from "
            "scripts/services.sh, so a test cannot kill and restart them"
        )
    try:
        yield kafka_cluster
    finally:
        kafka_cluster.restore()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """libpq DSN of the test database (env IOTDATA_POSTGRES_DSN); a real login is checked."""
    import psycopg  # noqa: PLC0415  (only sessions that use PostgreSQL pay for the import)

    dsn = os.environ.get("IOTDATA_POSTGRES_DSN") or DEFAULT_POSTGRES_DSN
    try:
        psycopg.connect(dsn, connect_timeout=int(CONNECT_TIMEOUT)).close()
    except psycopg.Error as exc:
        # The message names host and port; the DSN itself is not shown as it may hold a password.
        source = "IOTDATA_POSTGRES_DSN" if os.environ.get("IOTDATA_POSTGRES_DSN") else "default DSN"
        unavailable(f"PostgreSQL is not reachable ({source}): {exc}; {START_HINT}")
    return dsn


@pytest.fixture
def unique_name() -> str:
    """A fresh name like ``t_1a2b3c4d``: valid as an MQTT topic prefix, a Kafka topic or group
    name and an unquoted SQL identifier, so that tests never see each other's data."""
    return f"t_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def nab_dir() -> Path:
    """The Numenta Anomaly Benchmark extract shipped beside the repository in shared/data/nab
    (env IOTDATA_NAB_DIR overrides)."""
    path = Path(os.environ.get("IOTDATA_NAB_DIR") or REPO_ROOT.parent / "shared" / "data" / "nab")
    if not path.is_dir():
        unavailable(f"NAB data not found in {path}; set IOTDATA_NAB_DIR to its folder")
    return path


# ---------------------------------------------------------------------------------------------
# Private brokers: a mosquitto process per test, for outages and TLS listeners.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A running mosquitto of this test's own on a free port (``.stop()``/``.start()``)."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        unavailable("mosquitto is not installed; " + START_HINT)
    broker = PrivateBroker(tmp_path / "broker")
    broker.folder.mkdir()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
