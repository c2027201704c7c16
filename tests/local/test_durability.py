"""A log kept in a folder: reopened with the same records and commits; torn tails cut."""

from __future__ import annotations

import errno
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from iotdata.errors import InvalidInputError
from iotdata.local import LocalLog, LogRecord, LogStorageError, Retention, TopicPartition
from iotdata.local._storage import decode_segment, encode_record

TP = TopicPartition


def segments(folder: Path, topic: str = "t", partition: int = 0) -> list[Path]:
    return sorted((folder / "topics" / topic / str(partition)).glob("*.seg"))


def everything(log: LocalLog, topic: str = "t") -> list[LogRecord]:
    return [
        record
        for p in range(log.partitions(topic))
        for record in log.read(topic, p, log.start_offset(topic, p), 10**6)
    ]


@pytest.mark.parametrize("durability", ["none", "flush", "fsync"])
def test_reopen_has_the_same_topics_records_and_commits(tmp_path: Path, durability: str) -> None:
    with LocalLog.open(tmp_path, durability=durability) as log:  # type: ignore[arg-type]
        log.create_topic("t", 3)
        log.create_topic("dlq", 1, retention=Retention(max_records=7))
        for i in range(50):
            log.append("t", b"dev-%d" % (i % 7), b"%d" % i, headers=[("n", b"%d" % i)])
        log.append("dlq", b"", b"bad", timestamp_ms=-1)
        ends = [log.end_offset("t", p) for p in range(3)]
        log.commit("g", {TP("t", 0): ends[0] // 3, TP("t", 2): ends[2] // 2})
        log.commit("g", {TP("t", 0): ends[0] // 2})
        before = everything(log)
    with LocalLog.open(tmp_path, durability=durability) as log:  # type: ignore[arg-type]
        assert log.topics() == {"t": 3, "dlq": 1}
        assert everything(log) == before
        assert log.committed("g", "t", 0) == ends[0] // 2
        assert log.committed("g", "t", 2) == ends[2] // 2
        assert log.committed("g", "t", 1) is None
        assert everything(log, "dlq")[0].timestamp_ms == -1
        partition, offset = log.append("t", b"dev-1", b"more")
        assert offset == len([r for r in before if r.partition == partition])
        log.create_topic("dlq", 1)  # its retention came back with it
        for _ in range(10):
            log.append("dlq", b"", b"x")
        assert log.statistics().records == len(before) + 1 + 7


def test_a_torn_tail_is_truncated_and_appends_continue(tmp_path: Path) -> None:
    with LocalLog.open(tmp_path) as log:
        log.create_topic("t", 1)
        for i in range(5):
            log.append("t", b"k", b"record %d" % i)
    (path,) = segments(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as handle:  # the last record half written, as a crash leaves it
        handle.truncate(size - 3)
    with LocalLog.open(tmp_path) as log:
        assert [r.value for r in log.read("t", 0, 0)] == [b"record %d" % i for i in range(4)]
        assert log.statistics().truncated_bytes > 0
        assert log.append("t", b"k", b"again") == (0, 4)
    with LocalLog.open(tmp_path) as log:
        assert [r.value for r in log.read("t", 0, 3)] == [b"record 3", b"again"]
        assert log.statistics().truncated_bytes == 0


@pytest.mark.parametrize("damage", ["flip", "garbage", "header"])
def test_a_corrupt_last_frame_is_cut(tmp_path: Path, damage: str) -> None:
    with LocalLog.open(tmp_path) as log:
        log.create_topic("t", 1)
        for i in range(3):
            log.append("t", b"k", b"value %d" % i)
    (path,) = segments(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-2] ^= 0xFF  # the CRC no longer matches
    elif damage == "garbage":
        data += b"\x07\x00\x00\x00garbage!"
    else:
        data += b"\x01\x00"  # not even a whole frame header
    path.write_bytes(bytes(data))
    expected = 2 if damage == "flip" else 3
    with LocalLog.open(tmp_path) as log:
        assert log.end_offset("t", 0) == expected
    assert len(decode_segment(path.read_bytes(), "t", 0, 0)[0]) == expected


def test_corruption_before_the_last_segment_is_an_error(tmp_path: Path) -> None:
    with LocalLog.open(tmp_path, segment_bytes=200) as log:
        log.create_topic("t", 1)
        for _ in range(10):
            log.append("t", b"k", b"v" * 50)
    first = segments(tmp_path)[0]
    whole = first.read_bytes()
    first.write_bytes(whole[:-1])
    with pytest.raises(LogStorageError, match="before its tail"):
        LocalLog.open(tmp_path)
    first.write_bytes(whole)
    segments(tmp_path)[1].unlink()  # one missing between others
    with pytest.raises(LogStorageError, match="missing"):
        LocalLog.open(tmp_path)


def test_segments_roll_and_retention_deletes_whole_old_segments(tmp_path: Path) -> None:
    retention = Retention(max_records=10)
    with LocalLog.open(tmp_path, segment_bytes=500, retention=retention) as log:
        log.create_topic("t", 1)
        for i in range(200):
            log.append("t", b"k", b"%03d" % i)
        files = segments(tmp_path)
        assert 1 < len(files) < 10  # old segments were deleted as retention moved on
        assert int(files[0].stem) <= log.start_offset("t", 0) == 190
    with LocalLog.open(tmp_path, segment_bytes=500) as log:
        assert (log.start_offset("t", 0), log.end_offset("t", 0)) == (190, 200)
        assert log.read("t", 0, 190)[0].value == b"190"


def test_records_written_with_flush_survive_a_killed_process(tmp_path: Path) -> None:
    code = (
        "import os, signal, sys\n"
        "from iotdata.local import LocalLog, TopicPartition\n"
        "log = LocalLog.open(sys.argv[1], durability='flush')\n"
        "log.create_topic('t', 2)\n"
        "for i in range(100):\n"
        "    log.append('t', b'k%d' % i, b'v%d' % i)\n"
        "log.commit('g', {TopicPartition('t', 0): 7})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60, check=False)
    assert child.returncode == -signal.SIGKILL
    with LocalLog.open(tmp_path) as log:
        assert log.end_offset("t", 0) + log.end_offset("t", 1) == 100
        assert log.committed("g", "t", 0) == 7
        assert sorted(r.value for r in everything(log)) == sorted(b"v%d" % i for i in range(100))


def test_a_folder_is_used_by_one_log_at_a_time(tmp_path: Path) -> None:
    with LocalLog.open(tmp_path), pytest.raises(LogStorageError, match="in use"):
        LocalLog.open(tmp_path)
    LocalLog.open(tmp_path).close()  # released on close


def test_a_state_file_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(LogStorageError, match="not a state file"):
        LocalLog.open(tmp_path)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(LogStorageError):
        LocalLog.open(tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"format": 1, "topics": {"t": {}}}))
    with pytest.raises(LogStorageError, match="malformed"):
        LocalLog.open(tmp_path)


def test_the_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    with LocalLog.open(tmp_path) as log:
        log.create_topic("t", 1)
        log.append("t", b"k", b"v")
        log.commit("g", {TP("t", 0): 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "state.json", "topics"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["offsets"] == {"g": [["t", 0, 1]]}


def test_bad_folder_options_raise_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="durability"):
        LocalLog.open(tmp_path, durability="always")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="segment_bytes"):
        LocalLog.open(tmp_path, segment_bytes=0)


def test_frames_round_trip_and_stop_at_the_first_bad_one() -> None:
    records = [
        LogRecord("t", 0, 10 + i, b"k%d" % i, b"v" * i, (("h", b"%d" % i),), i) for i in range(5)
    ]
    data = b"".join(encode_record(r) for r in records)
    assert decode_segment(data, "t", 0, 10) == (records, len(data))
    assert decode_segment(data, "t", 0, 11) == ([], 0)  # the offsets do not follow on
    cut = len(encode_record(records[0])) + 4
    assert decode_segment(data[:cut], "t", 0, 10) == (records[:1], cut - 4)


class FullDisk:
    """A segment file on a disk that just filled up."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_failed_write_stops_the_log_until_reopened(tmp_path: Path) -> None:
    log = LocalLog.open(tmp_path)
    log.create_topic("t", 1)
    log.append("t", b"k", b"v")
    store = log._store
    assert store is not None
    segments_of_t = store._partitions[TP("t", 0)]
    assert segments_of_t.file is not None
    segments_of_t.file.close()
    segments_of_t.file = FullDisk()  # type: ignore[assignment]
    with pytest.raises(LogStorageError, match="No space") as info:
        log.append("t", b"k", b"v")
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(LogStorageError, match="reopen"):
        log.append("t", b"k", b"v")
    assert log.end_offset("t", 0) == 1  # a record not written is not visible either
    log.close()  # releases the folder without raising again
    with LocalLog.open(tmp_path) as reopened:
        assert [r.value for r in reopened.read("t", 0, 0)] == [b"v"]
        reopened.append("t", b"k", b"w")
