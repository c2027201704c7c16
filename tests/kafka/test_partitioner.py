"""The Java-compatible partitioner: Kafka's published murmur2 vectors, properties of the pure
code, and agreement with the real Java client: ``Utils.murmur2`` and the partition its
producer picks for thousands of keys, and where a Java console producer's records land on a
real broker."""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

import iotdata.kafka
from iotdata.errors import InvalidInputError
from iotdata.kafka import Partitioner, murmur2, partition_for
from tests.conftest import REPO_ROOT, START_HINT, unavailable

# From Kafka's own UtilsTest.testMurmur2 (clients/src/test/.../common/utils/UtilsTest.java).
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

PARTITION_COUNTS = [1, 2, 3, 7, 10, 12, 16, 50, 64, 100, 997, 1000, 2**31 - 1]
INT32 = range(-(2**31), 2**31)


# ---------------------------------------------------------------------------------------------
# Pure code


def test_kafka_published_vectors() -> None:
    for key, expected in KAFKA_VECTORS.items():
        assert murmur2(key) == expected, key
        assert partition_for(key, 12) == (expected & 0x7FFFFFFF) % 12


def test_the_package_exports_the_partitioner() -> None:
    assert {"Partitioner", "murmur2", "partition_for"} <= set(iotdata.kafka.__all__)
    assert all(hasattr(iotdata.kafka, name) for name in iotdata.kafka.__all__)


@given(st.binary(max_size=600))
def test_murmur2_is_a_java_int_and_agrees_with_aiokafka(data: bytes) -> None:
    result = murmur2(data)
    assert result in INT32
    assert murmur2(data) == result
    assert murmur2(bytearray(data)) == result
    assert result & 0xFFFFFFFF == aiokafka_murmur2(data)  # aiokafka returns the unsigned bits


@given(st.binary(max_size=80), st.integers(1, 2**40))
def test_partition_for_is_the_positive_hash_modulo(key: bytes, partitions: int) -> None:
    partition = partition_for(key, partitions)
    assert 0 <= partition < partitions
    assert partition == (murmur2(key) & 0x7FFFFFFF) % partitions


@given(
    st.lists(st.binary(max_size=24), max_size=120),
    st.integers(0, 12),
    st.integers(1, 40),
)
def test_the_cache_changes_nothing_and_stays_bounded(
    keys: list[bytes], max_keys: int, partitions: int
) -> None:
    partitioner = Partitioner(max_keys=max_keys)
    for key in keys + keys[::-1] + keys:
        assert partitioner.partition(key, partitions) == partition_for(key, partitions)
        assert partitioner.cached_keys <= max_keys
    assert partitioner.cached_keys == min(max_keys, len(set(keys)))


def test_the_cache_keeps_only_short_bytes_keys() -> None:
    partitioner = Partitioner(max_key_bytes=8)
    assert partitioner.partition(b"x" * 9, 5) == partition_for(b"x" * 9, 5)
    assert partitioner.partition(bytearray(b"dev-1"), 5) == partition_for(b"dev-1", 5)
    assert partitioner.cached_keys == 0
    assert partitioner.partition(b"x" * 8, 5) == partition_for(b"x" * 8, 5)
    assert partitioner.cached_keys == 1


def test_a_full_cache_keeps_serving_the_right_partitions() -> None:
    partitioner = Partitioner(max_keys=100)
    keys = [f"dev-{i}".encode() for i in range(1000)]
    for _ in range(2):
        assert [partitioner.partition(key, 7) for key in keys] == [
            partition_for(key, 7) for key in keys
        ]
    assert partitioner.cached_keys == 100


@given(st.binary(max_size=40), st.integers(1, 64), st.randoms(use_true_random=False))
def test_as_aiokafka_partitioner_it_agrees_with_its_default(
    key: bytes, partitions: int, rnd: random.Random
) -> None:
    ordered = list(range(partitions))
    shuffled = rnd.sample(ordered, partitions)
    available = shuffled[: partitions // 2]
    expected = DefaultPartitioner()(key, ordered, available)
    assert Partitioner()(key, shuffled, available) == expected == partition_for(key, partitions)


def test_records_without_key_go_to_a_random_available_partition() -> None:
    partitioner = Partitioner()
    picks = Counter(partitioner(None, [0, 1, 2, 3], [3, 1]) for _ in range(400))
    assert set(picks) == {1, 3}
    assert {partitioner(None, [0, 1, 2], []) for _ in range(400)} == {0, 1, 2}
    assert partitioner.cached_keys == 0


def test_partitions_may_be_any_index_type() -> None:
    class Count:
        def __index__(self) -> int:
            return 7

    assert partition_for(b"dev-1", Count()) == partition_for(b"dev-1", 7)  # type: ignore[arg-type]


@pytest.mark.parametrize("partitions", [0, -3, True, 2.0, "7", None])
def test_bad_partition_counts_are_refused(partitions: object) -> None:
    with pytest.raises(InvalidInputError, match="partition count"):
        partition_for(b"dev-1", partitions)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="partition count"):
        Partitioner().partition(b"dev-1", partitions)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["dev-1", None, 17, [1, 2], memoryview(b"dev-1")])
def test_keys_must_be_bytes(key: object) -> None:
    hint = "encode it first" if isinstance(key, str) else "must be bytes"
    with pytest.raises(InvalidInputError, match=hint):
        murmur2(key)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match=hint):
        partition_for(key, 3)  # type: ignore[arg-type]
    partitioner = Partitioner()
    for _ in range(2):  # a refused key is not cached either
        with pytest.raises(InvalidInputError, match=hint):
            partitioner.partition(key, 3)  # type: ignore[arg-type]
    assert partitioner.cached_keys == 0


def test_no_partitions_to_choose_from() -> None:
    with pytest.raises(InvalidInputError, match="no partitions"):
        Partitioner()(b"dev-1", [], [])
    with pytest.raises(InvalidInputError, match="no partitions"):
        Partitioner()(None, [], [])


@pytest.mark.parametrize("settings", [{"max_keys": -1}, {"max_key_bytes": "64"}])
def test_bad_cache_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError, match=">= 0"):
        Partitioner(**settings)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The real Java client (jars of scripts/services.sh; no broker needed for the first part)


def kafka_version() -> str:
    pom = (REPO_ROOT / "scripts" / "services" / "kafka" / "pom.xml").read_text()
    found = re.search(r"<kafka\.version>(.+?)</kafka\.version>", pom)
    assert found, "scripts/services/kafka/pom.xml names no <kafka.version>"
    return found.group(1)


@pytest.fixture(scope="session")
def kafka_libs() -> Path:
    """The folder of Kafka's jars that scripts/services.sh fetched into $IOTDATA_CACHE."""
    version = kafka_version()
    cache = Path(os.environ.get("IOTDATA_CACHE") or Path.home() / ".cache" / "iotdata")
    libs = cache / f"kafka-{version}" / "libs"
    if not (libs / f"kafka-clients-{version}.jar").is_file():
        unavailable(f"the Kafka {version} jars are not in {libs}; {START_HINT}")
    return libs


def java_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} (Java 17 JDK) is not installed; it is needed to check against Kafka")
    return path


def java_command(libs: Path, *classpath: Path) -> list[str]:
    """A quick-starting JVM with ``classpath`` and all of Kafka's jars; logging at WARN."""
    log4j = REPO_ROOT / "scripts" / "services" / "kafka" / "tools-log4j.properties"
    path = os.pathsep.join([*map(str, classpath), str(libs / "*")])
    return [
        java_tool("java"),
        "-Xmx256m",
        "-XX:TieredStopAtLevel=1",
        "-Dfile.encoding=UTF-8",
        f"-Dlog4j.configuration={log4j.as_uri()}",
        "-cp",
        path,
    ]


# Reads keys as hex lines on stdin; prints "murmur2 partition(n1) partition(n2) ..." per key,
# using the producer's own keyed-record logic (BuiltInPartitioner.partitionForKey, Kafka 3.3+).
JAVA_VECTORS = """\
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import org.apache.kafka.clients.producer.internals.BuiltInPartitioner;
import org.apache.kafka.common.utils.Utils;

public class Vectors {
    public static void main(String[] args) throws Exception {
        int[] counts = new int[args.length];
        for (int i = 0; i < args.length; i++) counts[i] = Integer.parseInt(args[i]);
        BufferedReader in = new BufferedReader(
            new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        HexFormat hex = HexFormat.of();
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            byte[] key = hex.parseHex(line);
            out.append(Utils.murmur2(key));
            for (int n : counts) out.append(' ').append(BuiltInPartitioner.partitionForKey(key, n));
            out.append('\\n');
        }
        System.out.print(out);
    }
}
"""

# Accents, Cyrillic, CJK, an emoji (4 UTF-8 bytes), a combining accent, a letterlike symbol.
UNICODE_KEYS = ["température", "Gerät-ß-ü", "датчик-7", "设备-42", "🚀-sensor", "e\u0301", "\u210c"]


def vector_keys() -> list[bytes]:
    """A few thousand keys: device-id-like strings, unicode, every short length, long keys."""
    rnd = random.Random(20240917)
    keys = [b""]
    keys += [f"dev-{i}".encode() for i in range(800)]
    keys += [f"plant-{i % 7}/line-{i % 3}/sensor-{i:05d}".encode() for i in range(400)]
    keys += [str(uuid.UUID(int=rnd.getrandbits(128))).encode() for _ in range(300)]
    keys += [key.encode() for key in UNICODE_KEYS]
    keys += [rnd.randbytes(length) for length in range(100) for _ in range(3)]
    keys += [rnd.randbytes(rnd.randrange(300)) for _ in range(600)]
    keys += [bytes([byte]) * length for byte in (0x00, 0x7F, 0x80, 0xFF) for length in range(1, 9)]
    keys += [rnd.randbytes(length) for length in (1000, 4096, 10_003, 65_537)]
    return keys


@pytest.fixture(scope="module")
def java_vectors(
    kafka_libs: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[list[bytes], list[list[int]]]:
    """The keys, and for each one what the Java client computes: [murmur2, partition(n)...]."""
    folder = tmp_path_factory.mktemp("java-vectors")
    (folder / "Vectors.java").write_text(JAVA_VECTORS)
    clients_jar = kafka_libs / f"kafka-clients-{kafka_version()}.jar"
    compiled = subprocess.run(
        [java_tool("javac"), "-cp", str(clients_jar), "-d", str(folder), folder / "Vectors.java"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert compiled.returncode == 0, compiled.stderr
    keys = vector_keys()
    ran = subprocess.run(
        [*java_command(kafka_libs, folder), "Vectors", *map(str, PARTITION_COUNTS)],
        input="".join(key.hex() + "\n" for key in keys),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    rows = [[int(field) for field in line.split()] for line in ran.stdout.splitlines()]
    assert len(rows) == len(keys)
    return keys, rows


@pytest.mark.timeout(300)
def test_murmur2_agrees_with_the_java_client(
    java_vectors: tuple[list[bytes], list[list[int]]],
) -> None:
    keys, rows = java_vectors
    ours = [murmur2(key) for key in keys]
    java = [row[0] for row in rows]
    assert [(k, a, b) for k, a, b in zip(keys, ours, java, strict=True) if a != b] == []


@pytest.mark.timeout(300)
def test_partitions_agree_with_the_java_producer(
    java_vectors: tuple[list[bytes], list[list[int]]],
) -> None:
    keys, rows = java_vectors
    partitioner = Partitioner(max_keys=500)
    for key, row in zip(keys, rows, strict=True):
        java = dict(zip(PARTITION_COUNTS, row[1:], strict=True))
        assert {n: partition_for(key, n) for n in PARTITION_COUNTS} == java, key
        assert {n: partitioner.partition(key, n) for n in PARTITION_COUNTS} == java, key
        small = [n for n in PARTITION_COUNTS if n <= 1000]
        listed = {n: partitioner(key, list(range(n))[::-1], []) for n in small}
        assert listed == {n: java[n] for n in small}, key


# ---------------------------------------------------------------------------------------------
# The real broker: records a Java console producer wrote sit where partition_for says


BROKER_PARTITIONS = 7
SEPARATOR = "\t"


def console_keys() -> list[str]:
    """Keys a console line can carry (no separator, no newline): device ids, unicode, empty."""
    return [f"dev-{i}" for i in range(300)] + UNICODE_KEYS + [""]


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    asyncio.run(create_topic(kafka_bootstrap, unique_name, BROKER_PARTITIONS))
    try:
        yield unique_name
    finally:
        asyncio.run(delete_topic(kafka_bootstrap, unique_name))


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        created = await admin.create_topics([NewTopic(name, partitions, replication_factor=1)])
        assert [(topic, code) for topic, code, *_ in created.topic_errors] == [(name, 0)]
    finally:
        await admin.close()


async def delete_topic(bootstrap: str, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([name])
    finally:
        await admin.close()


async def consume_all(bootstrap: str, topic: str, expected: int) -> dict[bytes | None, int]:
    """Key -> partition of every record in the topic (read from the start of each partition)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(BROKER_PARTITIONS)])
        found: list[tuple[bytes | None, int]] = []
        while len(found) < expected:  # bounded by the caller's deadline
            batches = await consumer.getmany(timeout_ms=1000)
            found += [(r.key, r.partition) for batch in batches.values() for r in batch]
        assert Counter(key for key, _ in found).most_common(1)[0][1] == 1  # each key once
        return dict(found)
    finally:
        await consumer.stop()


@pytest.mark.kafka
@pytest.mark.timeout(300)
def test_java_console_producer_puts_keys_where_partition_for_says(
    kafka_bootstrap: str, topic: str, kafka_libs: Path
) -> None:
    keys = console_keys()
    lines = "".join(f"{key}{SEPARATOR}{n}\n" for n, key in enumerate(keys))
    produced = subprocess.run(
        [
            *java_command(kafka_libs),
            "kafka.tools.ConsoleProducer",
            f"--bootstrap-server={kafka_bootstrap}",
            f"--topic={topic}",
            "--producer-property=acks=all",
            "--property=parse.key=true",
            f"--property=key.separator={SEPARATOR}",
        ],
        input=lines.encode(),
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr.decode(errors="replace")

    placed = asyncio.run(asyncio.wait_for(consume_all(kafka_bootstrap, topic, len(keys)), 90))
    expected = {key.encode(): partition_for(key.encode(), BROKER_PARTITIONS) for key in keys}
    assert placed == expected
    assert len(set(placed.values())) == BROKER_PARTITIONS  # 300 keys reach every partition
