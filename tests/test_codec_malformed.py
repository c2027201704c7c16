"""Malformed frames: ``codec.decode`` takes untrusted bytes and raises only ``DecodeError``.

Groups: non-bytes input; the envelope (magic, versions, flags, dictionary ids); truncation
and single bit flips of real frames; bodies crafted by hand, one defect at a time, behind a
valid envelope and CRC (so that the body parser is reached); fuzzing with hypothesis. Limits,
decompression bombs and memory use are in test_codec_limits.py.

Tests marked ``# BUG:`` fail until the codec is fixed.
"""

from __future__ import annotations

import math
import random
import zlib
from functools import cache
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdata import Batch, DecodeError
from iotdata.codec import Decoder, Dictionary, Encoder, decode, encode, train_dictionary
from iotdata.model import Column

MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
PARAMS = zstandard.ZstdCompressionParameters.from_level(
    3, format=MAGICLESS, write_content_size=1, write_checksum=0, write_dict_id=0
)
_COMPRESSOR = zstandard.ZstdCompressor(compression_params=PARAMS)


# --------------------------------------------------------------------------- helpers


def frame(body: bytes, compress: bool = False, *, flags: int = 0, dict_id: bytes = b"") -> bytes:
    """A version-1 envelope with a correct CRC around ``body``, built as _frame.py does."""
    payload = _COMPRESSOR.compress(body) if compress else body
    header = b"iT" + bytes([0x10 | flags | int(compress)]) + dict_id
    return header + zlib.crc32(payload, zlib.crc32(header)).to_bytes(4, "little") + payload


def payload_of(data: bytes) -> bytes:
    """The payload of a frame without a dictionary."""
    return data[7:]


def body_of(data: bytes, dictionary: Dictionary | None = None) -> bytes:
    """The msgpack body of a valid frame (header of 7 bytes, or 8 with a small dictionary id)."""
    payload = data[8:] if data[2] & 0x02 else data[7:]
    if not data[2] & 0x01:
        return payload
    zdict = dictionary.zstd() if dictionary else None
    return zstandard.ZstdDecompressor(dict_data=zdict, format=MAGICLESS).decompress(payload)


def reframe(data: bytes, new_body: bytes, dictionary: Dictionary | None = None) -> bytes:
    """``new_body`` in the envelope of ``data``: same flags, dictionary id and compression."""
    header = data[:4] if data[2] & 0x02 else data[:3]
    payload = new_body
    if data[2] & 0x01:
        zdict = dictionary.zstd() if dictionary else None
        payload = zstandard.ZstdCompressor(dict_data=zdict, compression_params=PARAMS).compress(
            new_body
        )
    return header + zlib.crc32(payload, zlib.crc32(header)).to_bytes(4, "little") + payload


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def column(
    metric: Any = "m",
    n: Any = 3,
    ts: Any = (2, [10, 20, 30]),
    seq: Any = (0, 0, 1),
    values: Any = (17, [1.5, 2.5, 3.5]),
) -> list[Any]:
    """A column of 3 readings, valid unless a part is overridden (tuples pack as arrays)."""
    return [metric, n, ts, seq, values]


def body(*columns: Any, device: Any = "dev-1") -> bytes:
    return pack([device, list(columns) or [column()]])


def rejects(data: Any, match: str | None = None, **options: Any) -> DecodeError:
    """Decode ``data`` expecting exactly a DecodeError (whose message matches ``match``)."""
    with pytest.raises(DecodeError, match=match) as info:
        decode(data, **options)
    assert type(info.value) is DecodeError
    return info.value


def decode_or_reject(data: bytes, **options: Any) -> Batch | None:
    """A valid Batch, or None after a DecodeError; any other outcome fails the test."""
    try:
        batch = decode(data, **options)
    except DecodeError as exc:
        assert type(exc) is DecodeError
        return None
    assert type(batch) is Batch
    # The decoder builds batches without validation: they must still pass it.
    columns = [Column(c.metric, c.ts, c.values, c.seq) for c in batch.columns]
    assert Batch(batch.device_id, columns) == batch
    return batch


def int_forms(encoded: Any, found: set[Any]) -> None:
    """Collect the integer-sequence forms used in ``encoded`` (BITS with its flag)."""
    if type(encoded) is int:
        found.add(("ints", "bare"))
        return
    found.add(("ints", *encoded[:1], *([encoded[4]] if encoded[0] == 4 else [])))
    if encoded[0] == 3:
        int_forms(encoded[3], found)


def value_forms(encoded: Any, found: set[Any]) -> None:
    """Collect the value-column forms (and integer forms inside them) used in ``encoded``."""
    if type(encoded) is not list:
        found.add(("values", "bare"))
        return
    form = encoded[0]
    found.add(("values", form))
    if form in (10, 11, 14, 15, 16):
        int_forms(encoded[1 if form == 10 else 2], found)
    if form == 16:
        value_forms(encoded[3], found)


# --------------------------------------------------------------------------- sample frames


def _forms_batch() -> Batch:
    """One column per column encoding (checked by test_samples_decode_and_cover_every_form)."""
    rng = random.Random(7)
    t0 = 1_700_000_000_000_000

    def col(values: list[Any], ts: list[int] | None = None) -> tuple[Any, ...]:
        n = len(values)
        return (ts or [t0 + i * 10_000 + rng.randrange(3) for i in range(n)], values, range(n))

    return Batch.from_columns(
        "forms-1",
        {
            "decimal": col([round(rng.uniform(-40, 40), 2) for _ in range(40)]),
            "corrected": col([0.1 + 0.2, math.nan, math.inf, -0.0, 21.5] * 8),
            "xor": col([rng.random() for _ in range(40)]),
            "bits": col([rng.randrange(1000) for _ in range(40)]),
            "flagged": col([rng.choice([0, 0, 0, 0, 9]) for _ in range(40)]),
            "lanes": col([rng.getrandbits(60) for _ in range(300)]),
            "plain": col([3, -7, 2**64 - 1]),
            "progression": col(list(range(5, 505, 10))),
            "divided": col([1.0] * 40, [t0 + rng.randrange(1000) * 1_000_000 for _ in range(40)]),
            "bools": col([rng.random() < 0.5 for _ in range(40)]),
            "strings": col([rng.choice(["ok", "warn", "fail", "idle"]) for _ in range(40)]),
            "runs": col(["ok"] * 30 + ["warn"] * 10),
            "missing": col([None if i % 5 == 0 else i / 4 for i in range(40)]),
            "mixed": col([1, "a", 2.5, True, "b"]),
            "bare": col([42]),
        },
    )


def _zstd_batch() -> Batch:
    rng = random.Random(11)
    ts = [1_700_000_000_000_000 + i * 1_000_000 for i in range(1000)]
    values = [round(20 + rng.gauss(0, 3), 1) for _ in range(1000)]
    return Batch.from_columns("pump-7", {"temp": (ts, values, range(1000))})


def _single(i: int) -> Batch:
    return Batch.from_columns(
        "greenhouse-0042", {"temperature": ([1_700_000_000_000_000 + i * 10_000_000], [20.5], [i])}
    )


@cache
def dictionary() -> Dictionary:
    return train_dictionary([_single(i) for i in range(300)], size=1024)


@cache
def samples() -> dict[str, tuple[Batch, bytes, Dictionary | None]]:
    """name -> (batch, frame, dictionary or None)."""
    small = Batch.from_columns("pump-7", {"temp": ([0, 1_000_000], [21.5, 21.75], [0, 1])})
    forms = _forms_batch()
    zstd = _zstd_batch()
    dict_encoder = Encoder(dictionary=dictionary())
    return {
        "small": (small, encode(small), None),
        "forms": (forms, encode(forms), None),
        "zstd-1000": (zstd, encode(zstd), None),
        "dictionary": (_single(1000), dict_encoder.encode(_single(1000)), dictionary()),
        "dictionary-zstd": (forms, dict_encoder.encode(forms), dictionary()),
    }


SAMPLES = ["small", "forms", "zstd-1000", "dictionary", "dictionary-zstd"]


def options(name: str) -> dict[str, Any]:
    found = samples()[name][2]
    return {"dictionaries": [found]} if found else {}


def test_samples_decode_and_cover_every_form() -> None:
    """The sample frames are valid and hold every column encoding (else the tests prove less)."""
    for name in SAMPLES:
        batch, data, _ = samples()[name]
        assert decode(data, **options(name)) == batch
    flags = {name: samples()[name][1][2] for name in SAMPLES}
    assert flags == {
        "small": 0x10,
        "forms": 0x11,
        "zstd-1000": 0x11,
        "dictionary": 0x12,
        "dictionary-zstd": 0x13,
    }
    found: set[Any] = set()
    for encoded in msgpack.unpackb(body_of(samples()["forms"][1]))[1]:
        int_forms(encoded[2], found)
        int_forms(encoded[3], found)
        value_forms(encoded[4], found)
    every_int_form = {("ints", k) for k in (0, 1, 2, 3)} | {("ints", 4, 0), ("ints", 4, 1)}
    every_value_form = {("values", k) for k in range(10, 18)}
    assert every_int_form | every_value_form | {("ints", "bare"), ("values", "bare")} <= found
    decimal = msgpack.unpackb(body_of(samples()["forms"][1]))[1][1][4]
    assert decimal[0] == 11 and len(decimal) == 4  # with corrections


# --------------------------------------------------------------------------- non-bytes input


@pytest.mark.parametrize("value", ["iT\x10abcd", 12345, None, [0x69, 0x54], {}, 1.5, object()])
def test_non_bytes_input_is_a_decode_error(value: Any) -> None:
    rejects(value, "expected bytes")
    with pytest.raises(DecodeError, match="expected bytes"):
        Decoder().decode(value)


def test_bytearray_and_memoryview_decode_like_bytes() -> None:
    batch, data, _ = samples()["forms"]
    padded = b"xx" + data + b"yy"
    for view in (bytearray(data), memoryview(data), memoryview(padded)[2:-2]):
        assert decode(view) == batch
        assert Decoder().decode(view) == batch
    rejects(bytearray(data[:-1]), "checksum")
    rejects(memoryview(data)[:-1], "checksum")


def test_released_memoryview_is_a_decode_error() -> None:
    view = memoryview(samples()["small"][1])
    view.release()
    # Regression test (was a bug): bytes(data) runs outside the decoder's try block; ValueError
    # escapes.
    rejects(view)


# --------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("magic", [b"iU", b"IT", b"Ti", b"\x00\x00", b"PK", b"\x92\xa1"])
def test_wrong_magic(magic: bytes) -> None:
    rejects(magic + samples()["small"][1][2:], "bad magic")


@pytest.mark.parametrize("major", [0, *range(2, 16)])
def test_unknown_major_version_names_both_versions(major: int) -> None:
    data = bytearray(samples()["small"][1])
    data[2] = major << 4 | data[2] & 0x0F
    rejects(bytes(data), rf"version {major} is not supported.*reads version 1")


def test_minor_version_bump_appends_fields_that_are_ignored() -> None:
    """Minor versions only append elements to the body and column arrays (docs/format.md)."""
    for name in SAMPLES:
        batch, data, found = samples()[name]
        value = msgpack.unpackb(body_of(data, found))
        for encoded in value[1]:
            encoded += [7, "future", {"k": [1, 2]}, b"\x00", None]
        value += [[1, 2, 3], {"extra": True}, "note"]
        assert decode(reframe(data, pack(value), found), **options(name)) == batch


@pytest.mark.parametrize("flags", [0x4, 0x8, 0xC, 0x5, 0x6, 0x7, 0x9, 0xF])
def test_unknown_flags(flags: int) -> None:
    data = bytearray(samples()["small"][1])
    data[2] = 0x10 | flags
    rejects(bytes(data), f"unknown frame flags 0x{flags:x}")


def test_dictionary_flag_without_zstd_is_valid_only_with_that_dictionary() -> None:
    batch, data, found = samples()["dictionary"]
    assert found is not None and data[2] == 0x12 and data[3] == found.id
    assert decode(data, dictionaries=[found]) == batch
    rejects(data, f"unknown dictionary id {found.id}:")
    rejects(data, f"unknown dictionary id {found.id}:", dictionaries=[Dictionary(found.id + 1)])


@pytest.mark.parametrize(
    ("varint", "dict_id"),
    [(b"\x4d", 77), (b"\xac\x02", 300), (b"\xff\xff\xff\xff\x0f", 2**32 - 1)],
)
def test_unknown_dictionary_id_is_named(varint: bytes, dict_id: int) -> None:
    data = frame(body(), flags=0x02, dict_id=varint)
    rejects(data, f"unknown dictionary id {dict_id}:")
    rejects(frame(body(), compress=True, flags=0x02, dict_id=varint), f"id {dict_id}:")
    # With that dictionary (no strings, no zstd data) the same frame decodes.
    assert decode(data, dictionaries=[Dictionary(dict_id)]).device_id == "dev-1"


@pytest.mark.parametrize("varint", [b"\x80" * 5 + b"\x01", b"\xff" * 6, b"\x81" * 9 + b"\x00"])
def test_dictionary_id_longer_than_5_bytes(varint: bytes) -> None:
    rejects(frame(body(), flags=0x02, dict_id=varint), "dictionary id longer than 5 bytes")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "truncated frame: 0 bytes"),
        (b"iT\x10\x00\x00\x00", "truncated frame: 6 bytes"),
        (b"iT\x12\x80\x80\x80\x80", "truncated frame: dictionary id"),
        (b"iT\x12\x01\x00\x00\x00", "truncated frame: checksum"),
        (b"iT\x10\x00\x00\x00\x00\xc0", "checksum mismatch"),
        (b"iT\x10" + zlib.crc32(b"iT\x10").to_bytes(4, "little"), "malformed msgpack body"),
        (b"iT\x11" + zlib.crc32(b"iT\x11").to_bytes(4, "little"), "corrupt zstd frame header"),
    ],
)
def test_short_and_empty_frames(data: bytes, match: str) -> None:
    rejects(data, match, dictionaries=[Dictionary(1)])


# --------------------------------------------------------------------------- truncation


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", SAMPLES)
def test_every_proper_prefix_of_a_frame_is_rejected(name: str) -> None:
    data = samples()[name][1]
    for end in range(len(data)):
        rejects(data[:end], **options(name))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", SAMPLES)
def test_every_truncated_body_behind_a_valid_crc_is_rejected(name: str) -> None:
    """The CRC matches (and the zstd frame is whole), so the msgpack parser sees the cut."""
    _, data, found = samples()[name]
    encoded = body_of(data, found)
    for end in range(len(encoded)):
        rejects(reframe(data, encoded[:end], found), "malformed msgpack body", **options(name))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["forms", "zstd-1000"])
def test_every_truncated_zstd_payload_behind_a_valid_crc_is_rejected(name: str) -> None:
    payload = payload_of(samples()[name][1])
    for end in range(len(payload)):
        cut = payload[:end]
        rejects(
            b"iT\x11" + zlib.crc32(cut, zlib.crc32(b"iT\x11")).to_bytes(4, "little") + cut, "zstd"
        )


@pytest.mark.timeout(60)
def test_a_decoder_keeps_working_after_malformed_frames() -> None:
    """One Decoder (reused zstd contexts) fed truncated frames and bodies still decodes."""
    decoder = Decoder(dictionaries=[dictionary()])
    for name in SAMPLES:
        batch, data, found = samples()[name]
        encoded = body_of(data, found)
        for end in range(0, len(data), 7):
            with pytest.raises(DecodeError):
                decoder.decode(data[:end])
            with pytest.raises(DecodeError):
                decoder.decode(reframe(data, encoded[: end % len(encoded)], found))
            if end % 10 == 0:
                assert decoder.decode(data) == batch


# --------------------------------------------------------------------------- bit flips


def flipped(data: bytes):
    for bit in range(8 * len(data)):
        changed = bytearray(data)
        changed[bit // 8] ^= 1 << (bit % 8)
        yield bit, bytes(changed)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", SAMPLES)
def test_every_single_bit_flip_is_detected(name: str) -> None:
    """CRC-32 covers the payload and every header field is checked: no flip goes unnoticed."""
    batch, data, _ = samples()[name]
    accepted = {}
    for bit, changed in flipped(data):
        result = decode_or_reject(changed, **options(name))
        if result is not None:
            accepted[bit] = result == batch
    assert accepted == {}


def test_a_bit_flip_in_the_dictionary_id_is_detected() -> None:
    """A decoder that knows dictionaries 1 and 3 gets frames of dictionary 1; bit 1 of the id
    flips in transit (the CRC covers only the payload)."""
    first = Dictionary(1, strings=("pump-1", "temp"), ts_step=1_000_000)
    third = Dictionary(3, strings=("pump-3", "flow"), ts_step=1_000_000)
    batch = Batch.from_columns("pump-1", {"temp": ([5_000_000], [21.5], [7])})
    data = bytearray(Encoder(dictionary=first).encode(batch))
    assert data[2:4] == b"\x12\x01"
    data[3] ^= 0x02
    # Regression test (was a bug): the header is outside the CRC; this decodes as device 'pump-3',
    # metric 'flow'.
    rejects(bytes(data), dictionaries=[first, third])


# --------------------------------------------------------------------------- crafted bodies

I64 = 2**63
BITS3 = [4, 0, [], 8, 0, b"\x00\x02\x04"]  # lanes 0, 2, 4 unzigzagged: 0, 1, 2


def cases(**groups: dict[str, tuple[Any, str]]) -> list[Any]:
    """pytest params (value, match) named group-case."""
    return [
        pytest.param(value, match, id=f"{group}-{case}")
        for group, table in groups.items()
        for case, (value, match) in table.items()
    ]


TOP_LEVEL = {
    "int": (pack(7), "body must be"),
    "str": (pack("dev"), "body must be"),
    "nil": (pack(None), "body must be"),
    "map": (pack({"device": "d", "columns": []}), "body must be"),
    "bin": (pack(b"\x92\xa1d\x90"), "body must be"),
    "empty": (pack([]), "body must be"),
    "one": (pack(["dev"]), "body must be"),
    "columns-map": (pack(["dev", {"m": 1}]), "body must be"),
    "columns-str": (pack(["dev", "m"]), "body must be"),
    "columns-nil": (pack(["dev", None]), "body must be"),
    "column-str": (pack(["dev", ["m"]]), "column must be"),
    "column-map": (pack(["dev", [{"metric": "m"}]]), "column must be"),
    "column-short": (pack(["dev", [column()[:4]]]), "column must be"),
    "duplicate": (body(column(), column()), "a metric appears twice"),
    "ext": (pack(msgpack.ExtType(5, b"abc")), "max_ext_len"),
    "ext-value": (body(column(values=[17, [1, msgpack.ExtType(1, b"x"), 3]])), "max_ext_len"),
    "empty-ext-value": (body(column(values=[17, [1, msgpack.ExtType(1, b""), 3]])), "plain"),
    "timestamp": (body(column(values=msgpack.Timestamp(1, 0), n=1, ts=1, seq=1)), "ext"),
    "int-map-key": (pack(["dev", [], {1: 2}]), "int is not allowed for map key"),
    "big-map": (pack(["dev", [], {str(i): i for i in range(65)}]), "max_map_len"),
    "bad-utf8": (b"\x92\xa2\xff\xfe\x90", "malformed msgpack body"),
    "reserved-c1": (b"\x92\xc1\x90", "malformed msgpack body"),
    "trailing": (body() + b"\xc0", "malformed msgpack body"),
    "deep": (b"\x91" * 100_000 + b"\xc0", "malformed msgpack body"),
    "deep-maps": (b"\x81\xa1k" * 50_000 + b"\xc0", "malformed msgpack body"),
    "long-device": (pack(["d" * 5000, []]), "exceeds max_str_len"),
    "long-value": (body(column(values=[17, ["x" * 4097, "a", "b"]])), "exceeds max_str_len"),
}
NAMES = {
    **{
        f"device-{case}": (pack([device, [column()]]), "device id")
        for case, device in {
            "empty": "",
            "slash": "a/b",
            "plus": "a+b",
            "hash": "a#b",
            "tab": "a\tb",
            "nul": "a\x00",
            "del": "a\x7f",
            "129-chars": "d" * 129,
            "129-wide-chars": "é" * 129,
            "int": 3,
            "bin": b"dev",
            "nil": None,
            "list": ["dev"],
        }.items()
    },
    **{
        f"metric-{case}": (body(column(metric=metric)), "metric name")
        for case, metric in {
            "empty": "",
            "newline": "m\n",
            "escape": "\x1b[31m",
            "129-chars": "m" * 129,
            "int": 0,
            "float": 1.5,
            "nil": None,
            "true": True,
        }.items()
    },
}
COUNTS = {
    "negative": (body(column(n=-1)), "bad reading count -1"),
    "str": (body(column(n="3")), "bad reading count '3'"),
    "float": (body(column(n=3.0)), "bad reading count 3.0"),
    "bool": (body(column(n=True, ts=1, seq=1, values=1)), "bad reading count True"),
    "nil": (body(column(n=None)), "bad reading count None"),
    "too-few": (body(column(n=2)), "3 items where 2 were declared"),
    "too-many": (body(column(n=4)), "3 items where 4 were declared"),
    "negative-seq": (body(column(seq=[2, [0, -5, 3]])), "negative seq"),
    "negative-bare-seq": (body(column(n=1, ts=1, seq=-1, values=1)), "negative seq"),
    "ts-above-int64": (body(column(ts=[2, [0, 1, I64]])), "out of the 64-bit range"),
    "bare-ts-above-int64": (body(column(n=1, ts=I64, seq=0, values=1)), "64-bit range"),
    "ts-progression-above-int64": (body(column(ts=[0, I64 - 1, 1])), "leaves the 64-bit range"),
    "seq-above-int64": (body(column(seq=[2, [0, 1, 2**64 - 1]])), "out of the 64-bit range"),
}
INTS = {
    "str": ("abc", "expected an encoding array"),
    "float": (1.5, "expected an encoding array"),
    "nil": (None, "expected an encoding array"),
    "map": ({"0": 1}, "expected an encoding array"),
    "empty": ([], "expected an encoding array"),
    "form-only": ([0], "expected an encoding array"),
    "unknown-form": ([9, 1, 2], "unknown or malformed encoding 9"),
    "negative-form": ([-1, 1, 2], "unknown or malformed encoding -1"),
    "str-form": (["0", 1, 2], "unknown or malformed encoding '0'"),
    "progression-short": ([0, 1], "unknown or malformed encoding 0"),
    "progression-long": ([0, 1, 2, 3], "unknown or malformed encoding 0"),
    "progression-float": ([0, 1.5, 1], "integer start and step"),
    "progression-nil": ([0, 1, None], "integer start and step"),
    "progression-overflow": ([0, 2**64 - 2, 1], "leaves the 64-bit range"),
    "progression-step-overflow": ([0, 0, I64], "leaves the 64-bit range"),
    "progression-underflow": ([0, -I64, -1], "leaves the 64-bit range"),
    "plain-short": ([2, [1, 2]], "2 items where 3"),
    "plain-str-item": ([2, [1, "a", 3]], "non-integer item"),
    "plain-bool-item": ([2, [1, True, 3]], "non-integer item"),
    "plain-float-item": ([2, [1, 2.0, 3]], "non-integer item"),
    "plain-not-list": ([2, b"\x01\x02\x03"], "unknown or malformed encoding 2"),
    "lanes-short": ([1, 0, []], "unknown or malformed encoding 1"),
    "lanes-long": ([1, 0, [], b"\x00" * 3, 0], "bad lanes for 3 items"),
    "lanes-order-3": ([1, 3, [0, 0, 0], b""], "bad difference order"),
    "lanes-order-negative": ([1, -1, [], b""], "bad difference order"),
    "lanes-order-str": ([1, "1", [0], b""], "bad difference order"),
    "lanes-heads-count": ([1, 1, [0, 0], b""], "bad difference order or heads"),
    "lanes-heads-type": ([1, 1, [0.5], b""], "bad difference order or heads"),
    "lanes-heads-not-list": ([1, 1, 0, b""], "bad difference order or heads"),
    "lanes-not-bin": ([1, 0, [], "\x00\x00\x00"], "bad lanes for 3 items"),
    "lanes-ragged": ([1, 0, [], b"\x00" * 4], "bad lanes for 3 items"),
    "lanes-too-wide": ([1, 0, [], b"\x00" * 27], "bad lanes for 3 items"),
    "bits-short": ([4, 0, [], 8, 0], "malformed bit-packed form"),
    "bits-width-65": ([4, 0, [], 65, 0, b"\x00" * 25], "bad bit width"),
    "bits-width-negative": ([4, 0, [], -1, 0, b""], "bad bit width"),
    "bits-width-str": ([4, 0, [], "8", 0, b"\x00\x00\x00"], "bad bit width"),
    "bits-flag-2": ([4, 0, [], 8, 2, b"\x00\x00\x00"], "bad bit width"),
    "bits-data-str": ([4, 0, [], 8, 0, "abc"], "bad bit-packed data"),
    "bits-data-huge": ([4, 0, [], 8, 1, b"\x00" * 28], "bad bit-packed data"),
    "bits-data-short": ([4, 0, [], 8, 0, b"\x00\x02"], "wrong length"),
    "bits-data-long": ([4, 0, [], 8, 0, b"\x00\x02\x04\x00"], "wrong length"),
    "flagged-empty": ([4, 0, [], 8, 1, b""], "ends early"),
    "flagged-runs-out": ([4, 0, [], 8, 1, b"\x80"], "ends early"),
    "flagged-width-0": ([4, 0, [], 0, 1, b"\x20"], "ends early"),
    "flagged-extra-byte": ([4, 0, [], 8, 1, b"\x00\x00"], "wrong length"),
    "divided-divisor-0": ([3, 0, 0, BITS3], "bad divisor or remainder"),
    "divided-divisor-negative": ([3, -10, 0, BITS3], "bad divisor or remainder"),
    "divided-divisor-float": ([3, 10.0, 0, BITS3], "bad divisor or remainder"),
    "divided-remainder-equal": ([3, 10, 10, BITS3], "bad divisor or remainder"),
    "divided-remainder-above": ([3, 10, 11, BITS3], "bad divisor or remainder"),
    "divided-remainder-negative": ([3, 10, -1, BITS3], "bad divisor or remainder"),
    "divided-progression": ([3, 10, 0, [0, 0, 1]], "a divided sequence holds lanes"),
    "divided-plain": ([3, 10, 0, [2, [0, 1, 2]]], "a divided sequence holds lanes"),
    "divided-nested": ([3, 10, 0, [3, 10, 0, BITS3]], "a divided sequence holds lanes"),
    "divided-huge-divisor": ([3, I64, 0, BITS3], "out of the 64-bit range"),
    "divided-overflow": (
        [3, 2**40, 0, [4, 0, [], 24, 0, b"\x00" * 6 + b"\x80\x00\x00"]],
        "divided item out of the 64-bit range",
    ),
    "divided-wrong-length": ([3, 10, 0, [4, 0, [], 8, 0, b"\x00\x02"]], "wrong length"),
}
VALUES = {
    "unknown-form": ([9, [1, 2, 3]], "unknown encoding 9"),
    "form-18": ([18, [1, 2, 3]], "unknown encoding 18"),
    "str-form": (["17", [1, 2, 3]], "expected an encoding array"),
    "float-form": ([17.0, [1, 2, 3]], "expected an encoding array"),
    "form-only": ([17], "expected an encoding array"),
    "bare-float": (1.5, "a bare value stands for exactly one reading"),
    "bare-str": ("ok", "a bare value stands for exactly one reading"),
    "bare-nil": (None, "a bare value stands for exactly one reading"),
    "map": ({"a": 1}, "a bare value stands for exactly one reading"),
    "ints-form-3": ([10, [0, 0, 1], 7], "malformed encoding 10"),
    "ints-wrong-count": ([10, [2, [1, 2]]], "2 items where 3"),
    "ints-above-uint64": ([10, [0, 2**64 - 2, 1]], "leaves the 64-bit range"),
    "decimal-scale-99": ([11, 99, [2, [1, 2, 3]]], "decimal scale 99 out of range"),
    "decimal-scale-19": ([11, 19, [2, [1, 2, 3]]], "decimal scale 19 out of range"),
    "decimal-scale-negative": ([11, -1, [2, [1, 2, 3]]], "decimal scale -1 out of range"),
    "decimal-scale-str": ([11, "2", [2, [1, 2, 3]]], "decimal scale '2' out of range"),
    "decimal-short": ([11, 2], "malformed encoding 11"),
    "decimal-long": ([11, 2, [2, [1, 2, 3]], b"", 0], "malformed encoding 11"),
    "decimal-ints": ([11, 2, [2, [1, 2]]], "2 items where 3"),
    "decimal-ints-uint64": ([11, 2, [2, [1, 2, 2**64 - 1]]], "out of the 64-bit range"),
    "corrections-ragged": ([11, 2, [2, [1, 2, 3]], b"\x00" * 7], "decimal corrections"),
    "corrections-too-wide": ([11, 2, [2, [1, 2, 3]], b"\x00" * 27], "decimal corrections"),
    "corrections-str": ([11, 2, [2, [1, 2, 3]], "\x00\x00\x00"], "decimal corrections"),
    "corrections-list": ([11, 2, [2, [1, 2, 3]], [0, 0, 0]], "decimal corrections"),
    "xor-short": ([12, [0]], "malformed encoding 12"),
    "xor-first-not-list": ([12, 0, b"\x00" * 3], "malformed lanes for 3 items"),
    "xor-first-float": ([12, [1.5], b"\x00" * 3], "malformed lanes for 3 items"),
    "xor-first-too-many": ([12, [0, 0, 0, 0], b"\x00" * 3], "malformed lanes for 3 items"),
    "xor-first-negative": ([12, [-1], b"\x00" * 3], "malformed lanes for 3 items"),
    "xor-ragged": ([12, [0], b"\x00" * 4], "malformed lanes for 3 items"),
    "bools-byte-2": ([13, b"\x00\x02\x01"], "booleans must be one 0 or 1 byte each"),
    "bools-byte-ff": ([13, b"\xff\x01\x01"], "booleans must be one 0 or 1 byte each"),
    "bools-short": ([13, b"\x00\x01"], "booleans must be one 0 or 1 byte each"),
    "bools-str": ([13, "\x00\x01\x01"], "booleans must be one 0 or 1 byte each"),
    "bools-list": ([13, [True, False, True]], "booleans must be one 0 or 1 byte each"),
    "strings-index-high": ([14, ["a", "b"], [2, [0, 1, 2]]], "string index out of the table"),
    "strings-index-negative": ([14, ["a", "b"], [2, [0, -1, 1]]], "out of the table"),
    "strings-empty-table": ([14, [], [0, 0, 0]], "string index out of the table"),
    "strings-table-int": ([14, ["a", 1], [2, [0, 1, 1]]], "table must hold strings"),
    "strings-table-bin": ([14, [b"a"], [0, 0, 0]], "table must hold strings"),
    "strings-table-str": ([14, "ab", [0, 0, 0]], "table must hold strings"),
    "strings-short": ([14, ["a"]], "malformed encoding 14"),
    "runs-zero": ([15, ["a", "b"], [2, [3, 0]]], "run lengths must be positive"),
    "runs-negative": ([15, ["a", "b"], [2, [4, -1]]], "run lengths must be positive"),
    "runs-short": ([15, ["a", "b"], [2, [1, 1]]], "runs cover 2 values, not 3"),
    "runs-long": ([15, ["a", "b"], [2, [2, 2]]], "runs cover 4 values, not 3"),
    "runs-huge": ([15, ["a"], 2**63 - 1], "runs cover"),
    "runs-count": ([15, ["a", "b"], [2, [3]]], "1 items where 2"),
    "runs-values-list": ([15, [["a"]], 3], "plain values must be"),
    "runs-values-str": ([15, "abc", [2, [1, 1, 1]]], "plain values must be"),
    "missing-zero": ([16, 0, [2, []], [17, [1, 2, 3]]], "bad count of missing values"),
    "missing-too-many": ([16, 4, [0, 0, 1], [17, []]], "bad count of missing values"),
    "missing-negative": ([16, -1, [2, []], [17, [1, 2, 3]]], "bad count of missing values"),
    "missing-str": ([16, "1", 0, [17, [1, 2]]], "bad count of missing values"),
    "missing-equal": ([16, 2, [2, [1, 1]], [17, [1]]], "must increase"),
    "missing-decreasing": ([16, 2, [2, [2, 0]], [17, [1]]], "must increase"),
    "missing-out-of-range": ([16, 1, 3, [17, [1, 2]]], "must increase within the column"),
    "missing-negative-position": ([16, 1, -1, [17, [1, 2]]], "must increase"),
    "missing-positions-count": ([16, 2, 1, [17, [1]]], "1 items where 2 were declared"),
    "missing-inner-long": ([16, 1, 1, [17, [1, 2, 3]]], "3 values where 2 were declared"),
    "missing-inner-short": ([16, 1, 1, [17, [1]]], "1 values where 2 were declared"),
    "missing-short": ([16, 1, 1], "malformed encoding 16"),
    "plain-short": ([17, [1, 2]], "2 values where 3 were declared"),
    "plain-long": ([17, [1, 2, 3, 4]], "4 values where 3 were declared"),
    "plain-list-item": ([17, [1, [2], 3]], "plain values must be"),
    "plain-map-item": ([17, [1, {"a": 2}, 3]], "plain values must be"),
    "plain-bin-item": ([17, [1, b"2", 3]], "plain values must be"),
    "plain-not-list": ([17, "abc"], "plain values must be"),
    "plain-extra": ([17, [1, 2, 3], 0], "malformed encoding 17"),
}
BARE = {
    "n-0": (body(column(n=0, ts=[0, 0, 1], seq=[0, 0, 1], values=1.5)), "a bare value"),
    "n-2": (body(column(n=2, ts=[0, 0, 1], seq=[0, 0, 1], values=1.5)), "a bare value"),
    "bin": (body(column(n=1, ts=0, seq=0, values=b"x")), "a bare value"),
    "map": (body(column(n=1, ts=0, seq=0, values={"x": 1})), "a bare value"),
}


@pytest.mark.parametrize(
    ("crafted", "match"), cases(top=TOP_LEVEL, names=NAMES, counts=COUNTS, bare=BARE)
)
def test_crafted_body_is_rejected(crafted: bytes, match: str) -> None:
    rejects(frame(crafted), match)
    rejects(frame(crafted, compress=True), match)


@pytest.mark.parametrize(("encoded", "match"), cases(ints=INTS))
def test_crafted_integer_sequence_is_rejected(encoded: Any, match: str) -> None:
    """Each malformed sequence is tried as timestamps, as seq, and inside int values."""
    assert decode(frame(body(column(ts=[0, 0, 1])))).columns[0].ts == (0, 1, 2)
    rejects(frame(body(column(ts=encoded))), match)
    rejects(frame(body(column(seq=encoded))), match)
    rejects(frame(body(column(values=[10, encoded]))), match)
    rejects(frame(body(column(values=[11, 2, encoded]))), match)


@pytest.mark.parametrize(("encoded", "match"), cases(values=VALUES))
def test_crafted_value_column_is_rejected(encoded: Any, match: str) -> None:
    rejects(frame(body(column(values=encoded))), match)
    # The same defect behind missing values (two present values, then one nil).
    rejects(frame(body(column(n=4, ts=[0, 0, 1], seq=[0, 0, 1], values=[16, 1, 3, encoded]))))


CONTEXT = Dictionary(9, strings=("dev-1", "m"), ts_base=1000, ts_step=10)
WITH_CONTEXT = {
    "device-index-high": (pack([2, [column()]]), "string index 2 outside dictionary 9"),
    "device-index-negative": (pack([-1, [column()]]), "string index -1 outside dictionary 9"),
    "metric-index-high": (body(column(metric=200)), "string index 200 outside dictionary 9"),
    "ts-nil": (body(column(n=1, ts=None, seq=0, values=1)), "bad lone timestamp None"),
    "ts-str": (body(column(n=1, ts="5", seq=0, values=1)), "bad lone timestamp '5'"),
    "ts-off-grid-short": (body(column(n=1, ts=[5], seq=0, values=1)), "bad lone timestamp"),
    "ts-off-grid-form": (body(column(n=1, ts=[6, 0], seq=0, values=1)), "bad lone timestamp"),
    "ts-off-grid-huge": (body(column(n=1, ts=[5, I64], seq=0, values=1)), "64-bit range"),
    "ts-off-grid-str": (body(column(n=1, ts=[5, "0"], seq=0, values=1)), "64-bit range"),
    "ts-index-huge": (body(column(n=1, ts=2**64 - 1, seq=0, values=1)), "64-bit range"),
    "ts-index-negative": (body(column(n=1, ts=-(I64), seq=0, values=1)), "64-bit range"),
}


@pytest.mark.parametrize(("crafted", "match"), cases(dictionary=WITH_CONTEXT))
def test_crafted_body_using_a_dictionary_is_rejected(crafted: bytes, match: str) -> None:
    for compress in (False, True):
        data = frame(crafted, compress, flags=0x02, dict_id=b"\x09")
        rejects(data, match, dictionaries=[CONTEXT])


def test_crafted_body_using_a_dictionary_control() -> None:
    def data(ts: Any) -> bytes:
        encoded = pack([0, [column(metric=1, n=1, ts=ts, seq=0, values=1)]])
        return frame(encoded, flags=0x02, dict_id=b"\x09")

    for ts, expected in ((7, 1070), ([5, 1071], 1071)):
        batch = decode(data(ts), dictionaries=[CONTEXT])
        assert (batch.device_id, batch.columns[0].metric) == ("dev-1", "m")
        assert batch.columns[0].ts == (expected,)
    # Regression test (was a bug): the off-grid marker is the int 5 (docs/format.md); the float 5.0
    # is accepted too.
    rejects(data([5.0, 1071]), dictionaries=[CONTEXT])


def test_crafted_valid_bodies_decode() -> None:
    """Controls: the crafted shapes above, without their defect, are accepted."""
    checks = {
        "plain": ([17, [1.5, 2.5, 3.5]], (1.5, 2.5, 3.5)),
        "bits": ([10, BITS3], (0, 1, 2)),
        "divided": ([10, [3, 10, 4, BITS3]], (4, 14, 24)),
        "decimal": ([11, 2, [2, [1, 2, 3]]], (0.01, 0.02, 0.03)),
        "bools": ([13, b"\x00\x01\x01"], (False, True, True)),
        "strings": ([14, ["a", "b"], [2, [0, 1, 1]]], ("a", "b", "b")),
        "runs": ([15, ["a", "b"], [2, [1, 2]]], ("a", "b", "b")),
        "missing": ([16, 1, 1, [17, [1, 2]]], (1, None, 2)),
        "flagged": ([10, [4, 0, [], 2, 1, b"\x60"]], (0, 1, 0)),
        "bits-width-4": ([10, [4, 0, [], 4, 0, b"\x02\x40"]], (0, 1, 2)),
        "divisor-2": ([10, [3, 2, 1, BITS3]], (1, 3, 5)),
        "lanes": ([10, [1, 0, [], b"\x00\x02\x04"]], (0, 1, 2)),
        "xor": ([12, [0], b""], (0.0, 0.0, 0.0)),
    }
    for name, (encoded, expected) in checks.items():
        assert decode(frame(body(column(values=encoded)))).columns[0].values == expected, name
    empty = decode(frame(body(column(n=0, ts=[0, 5, 1], seq=[2, []], values=[17, []]))))
    assert empty.columns[0].ts == empty.columns[0].values == ()


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param([3, 1, 0, BITS3], id="divisor-1"),  # the spec says 2 <= divisor
        pytest.param([4, 0, [], 2, True, b"\x60"], id="flagged-true"),
        pytest.param([4, 0, [], 4, 0, b"\x02\x4f"], id="nonzero-padding-bits"),
        pytest.param([0.0, 0, 1], id="float-form"),
        pytest.param([False, 0, 1], id="bool-form"),
    ],
)
def test_fields_the_spec_forbids_are_rejected(encoded: Any) -> None:
    """docs/format.md: "Unknown forms, unknown flag bits and malformed fields are errors, never
    silently skipped"."""
    # Regression test (was a bug): each of these decodes (as 0, 1, 2 or 0, 1, 0): the decoder skips
    # the defect.
    rejects(frame(body(column(ts=encoded))))


def test_bytes_after_the_zstd_frame_are_rejected() -> None:
    """Bytes after the msgpack body are an error (msgpack's ExtraData); after the zstd frame
    holding the body they must be too."""
    raw = body()
    rejects(frame(raw + b"\x00"), "ExtraData")
    payload = _COMPRESSOR.compress(raw) + b"trailing garbage"
    data = b"iT\x11" + zlib.crc32(payload, zlib.crc32(b"iT\x11")).to_bytes(4, "little") + payload
    # Regression test (was a bug): zstandard's decompress() ignores data after the first frame; this
    # decodes.
    rejects(data)


def test_decoded_string_values_respect_the_model_limit() -> None:
    """A Column refuses string values over MAX_STRING_LENGTH (1024) characters; the decoder
    must not build one (4096 bytes is only the msgpack bound)."""
    crafted = frame(body(column(n=1, ts=0, seq=0, values="x" * 4000)))
    # Regression test (was a bug): decodes into a Column that Column(...) itself would refuse.
    rejects(crafted)


# --------------------------------------------------------------------------- fuzzing


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


LEAVES = st.one_of(
    st.integers(-2, 20),
    st.integers(-(2**63), 2**64 - 1),
    st.binary(max_size=24),
    st.text(max_size=5),
    st.floats(),
    st.booleans(),
    st.none(),
)
NODES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(st.integers(0, 17), inner, inner, inner).map(list),
        st.tuples(st.integers(0, 17), inner).map(list),
    ),
    max_leaves=20,
)
COLUMNS = st.tuples(
    st.sampled_from(["m", "t", "", 0]), st.integers(-1, 4), NODES, NODES, NODES
).map(list)
ANY_INT = st.one_of(st.integers(-3, 70), st.integers(-(2**63), 2**64 - 1))
SEQUENCES = st.deferred(
    lambda: st.one_of(
        ANY_INT,
        st.tuples(st.just(0), ANY_INT, ANY_INT),
        st.tuples(
            st.just(1), st.integers(-1, 3), st.lists(ANY_INT, max_size=3), st.binary(max_size=40)
        ),
        st.tuples(st.just(2), st.lists(ANY_INT, max_size=6)),
        st.tuples(st.just(3), ANY_INT, ANY_INT, SEQUENCES),
        st.tuples(
            st.just(4),
            st.integers(-1, 3),
            st.lists(ANY_INT, max_size=3),
            st.integers(-1, 66),
            st.integers(-1, 2),
            st.binary(max_size=12),
        ),
    )
)
PLAIN_VALUES = st.lists(
    st.one_of(ANY_INT, st.floats(), st.text(max_size=3), st.booleans(), st.none()), max_size=6
)
VALUE_COLUMNS = st.deferred(
    lambda: st.one_of(
        LEAVES,
        st.tuples(st.just(10), SEQUENCES),
        st.tuples(st.just(11), st.integers(-1, 19), SEQUENCES),
        st.tuples(st.just(11), st.integers(-1, 19), SEQUENCES, st.binary(max_size=40)),
        st.tuples(st.just(12), st.lists(ANY_INT, max_size=2), st.binary(max_size=40)),
        st.tuples(st.just(13), st.binary(max_size=6)),
        st.tuples(st.just(14), st.lists(st.text(max_size=3), max_size=4), SEQUENCES),
        st.tuples(st.just(15), PLAIN_VALUES, SEQUENCES),
        st.tuples(st.just(16), ANY_INT, SEQUENCES, VALUE_COLUMNS),
        st.tuples(st.just(17), PLAIN_VALUES),
    )
)
MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["insert", "delete", "replace"]),
        st.integers(0),
        st.binary(min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, mutations: list[tuple[str, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, at, chunk in mutations:
        pos = at % (len(out) + 1)
        if op == "insert":
            out[pos:pos] = chunk
        elif op == "delete":
            del out[pos : pos + len(chunk)]
        else:
            out[pos : pos + len(chunk)] = chunk
    return bytes(out)


@pytest.mark.timeout(120)
@fuzz(1000)
@given(st.binary(max_size=4096))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    decode_or_reject(data)
    decode_or_reject(b"iT" + data)


@pytest.mark.timeout(120)
@fuzz(600)
@given(st.binary(max_size=4096), st.sampled_from([0, 1, 2, 3]))
def test_fuzz_arbitrary_payload_behind_a_valid_crc(payload: bytes, flags: int) -> None:
    """Garbage reaches the msgpack parser, the zstd parser, or (compressed) the body parser."""
    known = [Dictionary(1)]
    decode_or_reject(
        frame(payload, dict_id=b"\x01" if flags & 2 else b"", flags=flags), dictionaries=known
    )
    decode_or_reject(frame(payload, compress=True))


@pytest.mark.timeout(120)
@fuzz(200)
@given(st.one_of(LEAVES, st.text(max_size=8)), st.lists(COLUMNS, max_size=3), st.booleans())
def test_fuzz_body_shaped_garbage(device: Any, columns: list[Any], compress: bool) -> None:
    """Msgpack bodies of the right outline with random forms reach the column decoders, with
    and without a dictionary (names as indexes, lone timestamps on a grid)."""
    data = pack([device, columns])
    decode_or_reject(frame(data, compress=compress))
    context = Dictionary(1, strings=("dev", "m", "t"), ts_base=10, ts_step=1000)
    flagged = frame(data, compress=compress, flags=0x02, dict_id=b"\x01")
    decode_or_reject(flagged, dictionaries=[context])


@pytest.mark.timeout(120)
@fuzz(600)
@given(st.sampled_from(SAMPLES), MUTATIONS, st.booleans())
def test_fuzz_mutated_frames(name: str, mutations: Any, in_body: bool) -> None:
    """Mutate the frame (the CRC catches it), or the body behind a recomputed CRC."""
    batch, data, found = samples()[name]
    if in_body:
        changed = reframe(data, mutate(body_of(data, found), mutations), found)
        decode_or_reject(changed, **options(name))
    else:
        assert decode_or_reject(mutate(data, mutations), **options(name)) in (None, batch)


@pytest.mark.timeout(120)
@fuzz(1000)
@given(st.sampled_from([-1, 0, 1, 1, 2, 3, 5]), SEQUENCES, SEQUENCES, VALUE_COLUMNS)
def test_fuzz_column_grammar(n: int, ts: Any, seq: Any, values: Any) -> None:
    """Columns built from the grammar of docs/format.md with random parameters: a few percent
    decode, the rest must fail with a DecodeError."""
    decode_or_reject(frame(body(column("m", n, ts, seq, values))))
