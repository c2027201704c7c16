"""Kafka over TLS, mutual TLS and SASL (PLAIN, SCRAM): the producer, topic creation, a stream
pipeline with its checkpoints in Kafka, and ``iotdata inspect``, on the real broker's secured
listeners; and the clear errors when a login or a certificate is refused."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotdata import codec
from iotdata.errors import ConnectError, InvalidInputError
from iotdata.gateway import KafkaTopics
from iotdata.kafka import (
    KafkaSecurity,
    PartitionedProducer,
    ProducerSettings,
    TlsSettings,
    TopicSpec,
    ensure_topics,
)
from iotdata.model import Batch
from iotdata.sinks import SqliteSink
from iotdata.stream import KafkaSource, Pipeline, WorkerStats
from tests.conftest import SecuredKafka
from tests.gateway._support import Fleet, GatewayProcess, check_delivery, read_topic

DEVICES, FRAMES, PER_FRAME = 3, 4, 25


def test_settings_say_what_is_wrong() -> None:
    with pytest.raises(InvalidInputError, match="one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"):
        KafkaSecurity(sasl_mechanism="GSSAPI", username="u", password="p")
    with pytest.raises(InvalidInputError, match="needs a username and a password"):
        KafkaSecurity(sasl_mechanism="PLAIN", username="u")
    with pytest.raises(InvalidInputError, match="needs a SASL mechanism"):
        KafkaSecurity(username="u", password="p")
    with pytest.raises(InvalidInputError, match="no such file"):
        TlsSettings(ca_file="/nonexistent/ca.pem")
    login = KafkaSecurity(sasl_mechanism="SCRAM-SHA-512", username="u", password="hunter2")
    assert "hunter2" not in repr(login)
    assert (KafkaSecurity().protocol, login.protocol) == ("PLAINTEXT", "SASL_PLAINTEXT")
    assert KafkaSecurity(tls=TlsSettings()).protocol == "SSL"


def test_the_password_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTDATA_KAFKA_PASSWORD", "from-env")
    security = KafkaSecurity.from_env(sasl_mechanism="PLAIN", username="me")
    assert security.client_options()["sasl_plain_password"] == "from-env"
    assert KafkaSecurity.from_env().password is None  # no mechanism: no password wanted
    monkeypatch.delenv("IOTDATA_KAFKA_PASSWORD")
    with pytest.raises(InvalidInputError, match="IOTDATA_KAFKA_PASSWORD"):
        KafkaSecurity.from_env(sasl_mechanism="PLAIN", username="me")


def frames() -> list[tuple[str, bytes]]:
    out = []
    for frame in range(FRAMES):
        for device in range(DEVICES):
            seqs = range(frame * PER_FRAME, (frame + 1) * PER_FRAME)
            ts = [1_700_000_000_000_000 + s * 1_000_000 for s in seqs]
            batch = Batch.from_columns(
                f"dev-{device}", {"temp": (ts, [20.0 + s % 7 for s in seqs], list(seqs))}
            )
            out.append((batch.device_id, codec.encode(batch)))
    return out


async def through_kafka(bootstrap: str, security: KafkaSecurity, topic: str, db: Path) -> None:
    """Create the topic, produce the frames, run a pipeline (checkpoints in Kafka too) over
    them into SQLite: every connection on the secured listener."""
    await ensure_topics(bootstrap, TopicSpec(name=topic, partitions=2), security=security)
    producer = await PartitionedProducer.start(
        ProducerSettings(bootstrap=bootstrap, security=security)
    )
    try:
        sent = [await producer.send(topic, key, frame) for key, frame in frames()]
        await asyncio.gather(*sent)
    finally:
        await producer.close()
    source = KafkaSource(topic, bootstrap=bootstrap, group=topic, security=security)

    def done(stats: WorkerStats) -> bool:
        return stats.records >= len(sent)

    stats = await Pipeline().dedup().to(SqliteSink(path=db)).run(source, until=done)
    assert stats.records == len(sent)
    assert stats.checkpoints >= 1


def stored_keys(db: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT device_id, seq FROM readings ORDER BY 1, 2").fetchall()


def every_key() -> list[tuple[str, int]]:
    return sorted((f"dev-{d}", s) for d in range(DEVICES) for s in range(FRAMES * PER_FRAME))


@pytest.mark.kafka
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_a_sasl_login_over_tls_carries_the_whole_path(
    secured_kafka: SecuredKafka, mechanism: str, unique_name: str, tmp_path: Path
) -> None:
    user = secured_kafka.plain_user if mechanism == "PLAIN" else secured_kafka.scram_user
    security = KafkaSecurity(
        tls=secured_kafka.tls(),
        sasl_mechanism=mechanism,
        username=user,
        password=secured_kafka.password,
    )
    db = tmp_path / "t.sqlite"
    asyncio.run(through_kafka(secured_kafka.sasl, security, unique_name, db))
    assert stored_keys(db) == every_key()


@pytest.mark.kafka
def test_mutual_tls_carries_the_whole_path(
    secured_kafka: SecuredKafka, unique_name: str, tmp_path: Path
) -> None:
    security = KafkaSecurity(tls=secured_kafka.tls(client_certificate=True))
    db = tmp_path / "t.sqlite"
    asyncio.run(through_kafka(secured_kafka.mutual, security, unique_name, db))
    assert stored_keys(db) == every_key()


async def start_producer(bootstrap: str, security: KafkaSecurity) -> None:
    settings = ProducerSettings(bootstrap=bootstrap, security=security, request_timeout=5)
    producer = await PartitionedProducer.start(settings)
    await producer.close()


@pytest.mark.kafka
def test_refused_logins_and_certificates_are_clear_errors(secured_kafka: SecuredKafka) -> None:
    wrong_password = KafkaSecurity(
        tls=secured_kafka.tls(), sasl_mechanism="PLAIN", username="iotdata", password="nope"
    )
    with pytest.raises(ConnectError, match="Authentication failed"):
        asyncio.run(start_producer(secured_kafka.sasl, wrong_password))
    unknown_ca = KafkaSecurity(
        tls=TlsSettings(), sasl_mechanism="PLAIN", username="iotdata", password="iotdata-test"
    )
    with pytest.raises(ConnectError, match="certificate verify failed"):
        asyncio.run(start_producer(secured_kafka.sasl, unknown_ca))
    no_certificate = KafkaSecurity(tls=secured_kafka.tls())
    with pytest.raises(ConnectError, match=r"cannot reach Kafka at 127\.0\.0\.1:9095"):
        asyncio.run(start_producer(secured_kafka.mutual, no_certificate))
    with pytest.raises(ConnectError, match=r"cannot reach Kafka at 127\.0\.0\.1:9094"):
        asyncio.run(start_producer(secured_kafka.sasl, KafkaSecurity()))  # plaintext to TLS


@pytest.mark.kafka
def test_inspect_reads_a_secured_topic(
    secured_kafka: SecuredKafka, unique_name: str, tmp_path: Path
) -> None:
    security = KafkaSecurity(tls=secured_kafka.tls(client_certificate=True))
    asyncio.run(through_kafka(secured_kafka.mutual, security, unique_name, tmp_path / "t.db"))
    tls = secured_kafka.tls_dir
    options = ["--kafka", secured_kafka.sasl, "--topic", unique_name, "--readings", "0"]
    login = ["--kafka-ca", str(tls / "ca.pem"), "--kafka-sasl", "SCRAM-SHA-256"]
    login += ["--kafka-user", secured_kafka.scram_user]

    def inspect(*extra: str, password: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "IOTDATA_KAFKA_PASSWORD"}
        if password is not None:
            env["IOTDATA_KAFKA_PASSWORD"] = password
        return subprocess.run(
            [sys.executable, "-m", "iotdata.cli", "inspect", *options, *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )

    result = inspect(*login, password=secured_kafka.password)
    assert result.returncode == 0, result.stderr
    readings = DEVICES * FRAMES * PER_FRAME
    assert (
        result.stdout.splitlines()[-1] == f"{DEVICES * FRAMES} frames, {readings} readings, 0 bad"
    )
    refused = inspect(*login, password="wrong")
    assert refused.returncode == 1
    assert "Authentication failed" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = inspect(*login, password=None)
    assert missing.returncode == 1
    assert "IOTDATA_KAFKA_PASSWORD" in missing.stderr


@pytest.mark.mqtt
@pytest.mark.kafka
def test_the_gateway_command_forwards_over_sasl_and_tls(
    mqtt_url: str,
    kafka_bootstrap: str,
    secured_kafka: SecuredKafka,
    unique_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``iotdata gateway --kafka-ca --kafka-sasl --kafka-user`` (password from the environment)
    creates its topics and forwards every accepted reading once; read back over plaintext."""
    monkeypatch.setenv("IOTDATA_KAFKA_PASSWORD", secured_kafka.password)
    args = ["--mqtt", mqtt_url, "--kafka", secured_kafka.sasl, "--prefix", unique_name]
    args += ["--group", unique_name, "--client-id", f"{unique_name}-gw"]
    args += ["--create-topics", "--partitions", "2", "--metrics-port", "0"]
    args += ["--kafka-ca", str(secured_kafka.tls_dir / "ca.pem"), "--kafka-sasl", "SCRAM-SHA-512"]
    args += ["--kafka-user", secured_kafka.scram_user]
    gateway = GatewayProcess(args, tmp_path / "gateway.log").start()
    fleet = Fleet(mqtt_url, unique_name, tmp_path, devices=2, interval=0.005).start()
    time.sleep(1.5)
    accepted = fleet.stop()
    topic = KafkaTopics.with_prefix(unique_name).telemetry
    records = read_topic(kafka_bootstrap, topic, len(accepted))
    log = gateway.stop()
    assert "metrics on http://127.0.0.1:" in log
    assert check_delivery(records, accepted) == 0
