"""Limits and bombs: the decoder refuses oversized input early, without allocating for it.

Groups: decompression bombs (declared content size, no content size, lying sizes); frame and
body sizes; bodies that declare huge lengths or counts; object-graph bombs (small frames whose
msgpack body expands into millions of objects); and the five ``Limits`` seen from both sides:
a batch written with raised limits is refused by a default decoder with a message naming the
limit, and an encoder refuses what a decoder with its limits would refuse.

Memory is measured with tracemalloc (Python allocations, msgpack's and zstandard's output
buffers included). Tests marked ``# BUG:`` fail until the codec is fixed.
"""

from __future__ import annotations

import random
import string
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard

from iotdata import Batch, DecodeError, EncodeError
from iotdata.codec import Decoder, Encoder, Limits, decode, encode

MiB = 1024 * 1024
MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
PARAMS = zstandard.ZstdCompressionParameters.from_level(
    3, format=MAGICLESS, write_content_size=1, write_checksum=0, write_dict_id=0
)
NO_SIZE = zstandard.ZstdCompressionParameters.from_level(
    3, format=MAGICLESS, write_content_size=0, write_checksum=0, write_dict_id=0
)
DEFAULTS = Limits()


def frame(body: bytes, compress: bool = False) -> bytes:
    """A version-1 envelope with a correct CRC around ``body``, built as _frame.py does."""
    payload = (
        zstandard.ZstdCompressor(compression_params=PARAMS).compress(body) if compress else body
    )
    return wrap(payload, compressed=compress)


def wrap(payload: bytes, *, compressed: bool) -> bytes:
    header = b"iT" + bytes([0x11 if compressed else 0x10])
    return header + zlib.crc32(payload, zlib.crc32(header)).to_bytes(4, "little") + payload


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


VALID_BODY = pack(["dev-1", [["m", 3, [0, 0, 1], [0, 0, 1], [17, [1.5, 2.5, 3.5]]]]])


def padded_body(size: int) -> bytes:
    """A valid body of exactly ``size`` bytes (a trailing string, ignored as a minor-version
    field, pads it)."""
    pad = size - len(VALID_BODY)
    while True:
        value = msgpack.unpackb(VALID_BODY)
        encoded = pack([*value, "x" * max(pad, 0)])
        if len(encoded) == size:
            return encoded
        pad -= len(encoded) - size


def refused(data: Any, match: str | None, **options: Any) -> tuple[DecodeError, int]:
    """Decode expecting a DecodeError matching ``match``; returns it and the peak memory."""
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match=match) as info:
            decode(data, **options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert type(info.value) is DecodeError
    return info.value, peak


# --------------------------------------------------------------------------- decompression bombs


@pytest.mark.timeout(60)
def test_zstd_frame_declaring_a_body_over_max_body_bytes_is_refused_before_decompressing() -> None:
    bomb = frame(bytes(32 * MiB), compress=True)
    assert len(bomb) < 64 * 1024  # 32 MiB of zeros: a few KiB compressed
    _, peak = refused(bomb, f"body of {32 * MiB} bytes exceeds max_body_bytes")
    assert peak < 1 * MiB


@pytest.mark.parametrize("streaming", [False, True])
def test_zstd_frame_without_a_content_size_is_refused(streaming: bool) -> None:
    compressor = zstandard.ZstdCompressor(compression_params=NO_SIZE)
    if streaming:
        stream = compressor.compressobj()
        payload = stream.compress(VALID_BODY) + stream.flush()
    else:
        payload = compressor.compress(VALID_BODY)
    params = zstandard.get_frame_parameters(payload, format=MAGICLESS)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    refused(wrap(payload, compressed=True), "zstd frame without a content size")
    bomb = wrap(compressor.compress(bytes(32 * MiB)), compressed=True)
    _, peak = refused(bomb, "without a content size")
    assert peak < 1 * MiB


def _with_declared_size(payload: bytes, size: int) -> bytes:
    """Rewrite the Frame_Content_Size of a magic-less zstd frame (single segment, 2 bytes)."""
    descriptor = payload[0]
    assert descriptor >> 6 == 1 and descriptor & 0x20 and not descriptor & 0x03
    return payload[:1] + (size - 256).to_bytes(2, "little") + payload[3:]


@pytest.mark.parametrize("delta", [-100, -1, 1, 100])
def test_zstd_frame_whose_declared_size_lies_is_refused(delta: int) -> None:
    body = padded_body(1000)
    payload = zstandard.ZstdCompressor(compression_params=PARAMS).compress(body)
    assert decode(wrap(_with_declared_size(payload, 1000), compressed=True))
    refused(wrap(_with_declared_size(payload, 1000 + delta), compressed=True), "zstd")


@pytest.mark.parametrize("compress", [False, True])
def test_body_of_exactly_max_body_bytes_is_accepted_and_one_more_refused(compress: bool) -> None:
    limits = Limits(max_body_bytes=2000)
    assert decode(frame(padded_body(2000), compress), limits=limits).device_id == "dev-1"
    refused(frame(padded_body(2001), compress), "2001 bytes exceeds max_body_bytes", limits=limits)


# --------------------------------------------------------------------------- frame size


@pytest.mark.timeout(30)
def test_frame_over_max_frame_bytes_is_refused_without_reading_it() -> None:
    oversized = b"iT\x10" + bytes(DEFAULTS.max_frame_bytes)
    _, peak = refused(oversized, f"frame of {len(oversized)} bytes exceeds max_frame_bytes")
    assert peak < 64 * 1024


def test_frame_of_exactly_max_frame_bytes_is_accepted() -> None:
    data = frame(VALID_BODY)
    assert decode(data, limits=Limits(max_frame_bytes=len(data))).device_id == "dev-1"
    refused(data, "exceeds max_frame_bytes", limits=Limits(max_frame_bytes=len(data) - 1))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_oversized_bytearray_or_memoryview_is_refused_without_copying_it(kind: type) -> None:
    buffer = bytearray(b"iT\x10" + bytes(64 * MiB))
    _, peak = refused(kind(buffer), "exceeds max_frame_bytes")
    # Regression test (was a bug): Decoder.decode copies the whole buffer (bytes(data)) before
    # checking its size.
    assert peak < 1 * MiB


# --------------------------------------------------------------------------- declared lengths

HUGE_HEADERS = {
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "str32": b"\xdb\xff\xff\xff\xff",
    "bin32": b"\xc6\xff\xff\xff\xff",
    "ext32": b"\xc9\xff\xff\xff\xff\x01",
    "array16": b"\xdc\xff\xff",
    "str-under-limit": b"\xdb\x00\x00\x10\x00",
    "bin-16MiB": b"\xc6\x01\x00\x00\x00",
}


@pytest.mark.parametrize("header", HUGE_HEADERS.values(), ids=HUGE_HEADERS)
@pytest.mark.parametrize("where", ["top", "device", "values"])
def test_huge_declared_lengths_with_few_bytes_behind(header: bytes, where: str) -> None:
    prefix = {
        "top": b"",
        "device": b"\x92",
        "values": b"\x92\xa5dev-1\x91\x95\xa1m\x03\x93\x00\x00\x01\x93\x00\x00\x01",
    }[where]
    for body in (prefix + header, prefix + header + b"\x00" * 100):
        for compress in (False, True):
            _, peak = refused(frame(body, compress), "malformed msgpack body")
            assert peak < 2 * MiB


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("ts", "seq", "values"),
    [
        ([0, 0, 1], [0, 0, 1], [15, [1.5], 10**9]),
        ([0, 0, 1], [0, 0, 1], [17, []]),
        ([1, 0, [], b""], [4, 0, [], 0, 0, b""], [13, b""]),
    ],
)
def test_a_billion_readings_are_refused_before_expanding(ts: Any, seq: Any, values: Any) -> None:
    body = pack(["dev-1", [["m", 10**9, ts, seq, values]]])
    _, peak = refused(frame(body), "readings exceed max_readings")
    assert peak < 1 * MiB


@pytest.mark.timeout(30)
def test_readings_are_counted_across_columns() -> None:
    def col(metric: str, n: int) -> list[Any]:
        return [metric, n, [0, 0, 1], [0, 0, 1], [15, [1.5], n]]

    ok = pack(["dev-1", [col("a", 60_000), col("b", 40_000)]])
    assert len(decode(frame(ok))) == 100_000
    over = pack(["dev-1", [col("a", 60_000), col("b", 40_001)]])
    refused(frame(over), "readings exceed max_readings")
    many = pack(["dev-1", [col(f"m{i}", 100) for i in range(1001)]])
    refused(frame(many), "readings exceed max_readings")


# --------------------------------------------------------------------------- object-graph bombs


@pytest.mark.timeout(60)
def test_a_body_of_empty_arrays_is_refused_without_building_them() -> None:
    """A 1 MiB body of 1-byte empty arrays (0x90) compresses to ~200 bytes and expands into a
    million lists (~70 MiB) before max_metrics or max_readings are checked. With the default
    limits (16 MiB body) a 1.5 KiB frame costs 1.2 GiB and 8 s."""
    limits = Limits(max_body_bytes=1 * MiB, max_readings=1000, max_metrics=8)
    count = 1000
    chunk = b"\xdc" + count.to_bytes(2, "big") + b"\x90" * count
    body = b"\x92\xa5dev-1\xdc" + (1040).to_bytes(2, "big") + chunk * 1040
    assert len(body) <= limits.max_body_bytes
    bomb = frame(body, compress=True)
    assert len(bomb) < 2048
    _, peak = refused(bomb, None, limits=limits)
    # Regression test (was a bug): peak is ~70 MiB, 70 times max_body_bytes, for 1000 readings at
    # most.
    assert peak < 16 * MiB


def test_nested_arrays_declaring_many_items_cost_a_bounded_amount() -> None:
    """1000 nested array32 headers, each declaring max_readings + 64 items, 5 KB in all. msgpack
    preallocates each level (at most 10,000 slots, 80 KB) before finding the body truncated:
    ~80 MiB for this 5 KB frame, however large the limits. (A decode of the largest valid
    batches, 100,000 readings, peaks at ~24 MiB.) This guards the bound against msgpack
    changes: without its cap, the same frame would cost 800 MiB."""
    header = b"\xdd" + (DEFAULTS.max_readings + 64).to_bytes(4, "big")
    bomb = frame(header * 1000)
    assert len(bomb) < 6000
    _, peak = refused(bomb, "malformed msgpack body")
    assert peak < 128 * MiB


def test_deep_nesting_is_refused_cheaply() -> None:
    for body in (b"\x91" * 100_000 + b"\xc0", b"\x81\xa1k" * 100_000 + b"\xc0"):
        _, peak = refused(frame(body, compress=True), "malformed msgpack body")
        assert peak < 4 * MiB


# --------------------------------------------------------------------------- limits on both sides


def _readings(n: int, values: Any = None) -> Batch:
    rng = random.Random(n)
    ts = [1_700_000_000_000_000 + i * 1_000_000 + rng.randrange(1000) for i in range(n)]
    values = values or [round(rng.uniform(0, 100), 2) for _ in range(n)]
    return Batch.from_columns("dev-1", {"temp": (ts, values, range(n))})


@pytest.mark.timeout(60)
def test_max_readings_both_sides() -> None:
    batch = _readings(150_000)
    with pytest.raises(EncodeError, match="150000 readings exceed max_readings=100000"):
        encode(batch)
    data = Encoder(limits=Limits(max_readings=200_000)).encode(batch)
    _, peak = refused(data, "readings exceed max_readings")
    assert peak < 4 * len(data) + 2 * MiB  # refused on the column header, before expanding
    raised = Decoder(limits=Limits(max_readings=200_000))
    assert raised.decode(data) == batch


@pytest.mark.timeout(60)
def test_max_readings_is_named_for_plain_columns() -> None:
    """Mixed values are written as one msgpack array of n items (form 17)."""
    batch = _readings(150_000, ["ok", 1, 2.5, True] * 37_500)
    data = Encoder(limits=Limits(max_readings=200_000)).encode(batch)
    # Regression test (was a bug): refused by msgpack with "150000 exceeds max_array_len(100064)", a
    # name the caller
    # never set; docs/format.md promises a message naming the limit.
    refused(data, "max_readings")


def test_max_metrics_both_sides() -> None:
    batch = Batch.from_columns("dev-1", {f"m{i}": ([i], [1.5], [i]) for i in range(1025)})
    with pytest.raises(EncodeError, match="1025 metrics exceed max_metrics"):
        encode(batch)
    data = Encoder(limits=Limits(max_metrics=2000)).encode(batch)
    refused(data, "1025 metrics exceed max_metrics")
    assert decode(data, limits=Limits(max_metrics=1025)) == batch


def test_max_body_bytes_both_sides() -> None:
    batch = _readings(500)
    body_size = len(Encoder().body(batch))
    with pytest.raises(EncodeError, match="exceeds max_body_bytes"):
        Encoder(limits=Limits(max_body_bytes=body_size - 1)).encode(batch)
    data = encode(batch)
    assert data[2] & 0x01
    smaller = Limits(max_body_bytes=body_size - 1)
    refused(data, f"body of {body_size} bytes exceeds max_body_bytes", limits=smaller)
    assert decode(data, limits=Limits(max_body_bytes=body_size)) == batch


def _long_string_batch() -> Batch:
    return Batch.from_columns("dev-1", {"log": ([0], ["é" * 1000], [0])})  # 2000 UTF-8 bytes


def test_max_string_bytes_decoder() -> None:
    data = encode(_long_string_batch())
    assert decode(data) == _long_string_batch()
    error, _ = refused(data, "2000", limits=Limits(max_string_bytes=1999))
    # Regression test (was a bug): the message is msgpack's "2000 exceeds max_str_len(1999)": it
    # must name the limit.
    assert "max_string_bytes" in str(error)


def test_max_string_bytes_encoder() -> None:
    """docs/format.md: encoders refuse batches beyond their own limits."""
    limits = Limits(max_string_bytes=1999)
    refused(encode(_long_string_batch()), "2000", limits=limits)
    # Regression test (was a bug): Encoder.body checks max_metrics, max_readings and max_body_bytes
    # only.
    with pytest.raises(EncodeError, match="max_string_bytes"):
        Encoder(limits=limits).encode(_long_string_batch())


@pytest.mark.timeout(60)
def test_default_encoder_output_fits_max_frame_bytes() -> None:
    """docs/format.md: "a frame that an encoder with default limits writes is always accepted by
    a decoder with default limits". Incompressible strings: 6000 readings, 6 MiB body."""
    rng = random.Random(3)
    alphabet = string.ascii_letters + string.digits
    values = ["".join(rng.choices(alphabet, k=1024)) for _ in range(6000)]
    batch = Batch.from_columns("dev-1", {"log": (range(6000), values, range(6000))})
    try:
        data = encode(batch)
    except EncodeError as exc:
        assert "max_frame_bytes" in str(exc)
        return
    # Regression test (was a bug): the encoder never checks max_frame_bytes; it writes a 4.6 MB
    # frame that every
    # default decoder refuses with "exceeds max_frame_bytes".
    assert len(data) <= DEFAULTS.max_frame_bytes
    assert decode(data) == batch


# ------------------------------------------------------------------- memory kept between decodes


#: ``n`` readings whose ts, seq and values are lanes of zero width (all zeros), behind a divisor
#: for ts: 47 bytes whatever ``n``, and every decode of it meets the lane masks for ``n`` lanes.
def _many_counts_frame(n: int) -> bytes:
    lanes = [1, 0, [], b""]
    return frame(pack(["d", [["m", n, [3, 1_000_000, 0, lanes], lanes, [10, lanes]]]]))


_RSS_GROWTH = """
import sys
from iotdata import codec
sys.path.insert(0, {tests!r})
from test_codec_limits import _many_counts_frame

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

frames = [_many_counts_frame(100_000 - i) for i in range(64)]
assert {{len(f) for f in frames}} == {{47}}
codec.decode(_many_counts_frame(10))  # first use: whatever the imports still allocate
before = rss()
for data in frames:
    codec.decode(data)
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.timeout(120)
def test_small_frames_declaring_many_counts_leave_no_memory_behind() -> None:
    """64 valid frames of 47 bytes, each declaring a different count near max_readings: each
    decode needs lane masks of ~800 KB, and a cache keyed by the count kept them all (210 MB
    resident after the loop). Measured in a fresh interpreter, as resident memory."""
    tests = str(Path(__file__).resolve().parent)
    code = _RSS_GROWTH.format(tests=tests)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=110, check=False
    )
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout)
    # Regression test (was a bug): 210 MiB.
    assert growth < 8 * MiB, f"{growth / MiB:.1f} MiB more resident after 64 frames"


def test_the_mask_cache_is_bounded_by_entries_and_bytes() -> None:
    from iotdata.codec._ints import MASKS  # noqa: PLC0415

    for n in [*range(300, 600), *range(90_000, 90_100)]:
        assert len(decode(_many_counts_frame(n))) == n
        entries, size = MASKS.statistics()
        assert entries <= MASKS.max_entries
        assert size <= MASKS.max_bytes


def test_mask_cache_keeps_the_most_recent_and_never_an_oversized_value() -> None:
    from iotdata.codec._ints import MaskCache  # noqa: PLC0415

    cache = MaskCache(max_entries=3, max_bytes=4000)
    made: list[int] = []

    def make(key: int) -> tuple[int, ...]:
        made.append(key)
        return (1 << (8 * key),)  # about key + 28 bytes

    for key in (1, 2, 3, 1, 4):  # 1 used again: 2 is the oldest when 4 arrives
        assert cache.get(key, lambda key=key: make(key)) == (1 << (8 * key),)
    assert made == [1, 2, 3, 4]
    assert cache.get(1, lambda: make(1)) == (1 << 8,)  # still kept
    cache.get(2, lambda: make(2))
    assert made == [1, 2, 3, 4, 2]  # 2 had been dropped
    for _ in range(2):
        cache.get(2000, lambda: make(2000))  # over a quarter of max_bytes: never kept
    assert made[-2:] == [2000, 2000]
    assert cache.statistics()[0] == 3
    assert cache.statistics()[1] <= 4000


_ENCODERS_GROWTH = """
import random
import attrs
from iotdata import Batch, codec

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))

rng = random.Random(0)
samples = [
    Batch.from_columns(f"dev-{i % 50}", {"temp": ([i * 10**6], [rng.uniform(0, 30)], [i])})
    for i in range(500)
]
trained = codec.train_dictionary(samples)
assert len(trained.data) > 1000
codec.encode(samples[0], dictionary=trained)
before = rss()
for i in range(1, 401):
    codec.encode(samples[0], dictionary=attrs.evolve(trained, id=i))
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
@pytest.mark.timeout(120)
def test_encode_keeps_a_bounded_number_of_encoders_per_thread() -> None:
    """``codec.encode(batch, dictionary=d)`` keeps an encoder (a zstd context with ``d``, about
    100 KB) per dictionary; a service going through many dictionaries kept them all."""
    result = subprocess.run(
        [sys.executable, "-c", _ENCODERS_GROWTH],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    growth = int(result.stdout)
    # Regression test (was a bug): about 44 MiB for 400 dictionaries.
    assert growth < 8 * MiB, f"{growth / MiB:.1f} MiB more resident after 400 dictionaries"
