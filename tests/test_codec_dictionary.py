"""Serialized dictionaries: a checked round trip, and corruption always a DecodeError.

A dictionary decides which device and metric names frames decode to, so a corrupted one must
never load: one flipped byte in its strings kept the id and made frames decode under another
device's name. Every test here asserts the exact exception type, never a subclass or another
exception, and that nothing but the original bytes gives a dictionary.
"""

from __future__ import annotations

import hashlib
import random
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdata import Batch, DecodeError
from iotdata.codec import Decoder, Dictionary, Encoder, train_dictionary

NAMES = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"], max_codepoint=0x2FF),
    min_size=1,
    max_size=12,
)
DICTIONARIES = st.builds(
    Dictionary,
    id=st.integers(1, 2**32 - 1),
    data=st.binary(max_size=64),
    strings=st.lists(NAMES, max_size=8, unique=True),
    ts_base=st.integers(-(2**63), 2**63 - 1),
    ts_step=st.integers(0, 2**63 - 1),
)


def _trained() -> Dictionary:
    rng = random.Random(4)
    start = 1_700_000_000_000_000
    samples = [
        Batch.from_columns(
            f"pump-{i % 20}", {"temp": ([start + i * 10**7], [round(rng.uniform(0, 40), 2)], [i])}
        )
        for i in range(400)
    ]
    return train_dictionary(samples, size=1024)


TRAINED = _trained()
SMALL = Dictionary(7, b"zstd!", ("pump-1", "pump-2", "temp"), 1_700_000_000_000_000, 10_000_000)


def refused(data: Any, match: str | None = None) -> DecodeError:
    with pytest.raises(DecodeError, match=match) as info:
        Dictionary.from_bytes(data)
    assert type(info.value) is DecodeError
    return info.value


# --------------------------------------------------------------------------- round trips


def test_a_trained_dictionary_round_trips_and_decodes_its_frames() -> None:
    assert len(TRAINED.data) > 0
    restored = Dictionary.from_bytes(TRAINED.to_bytes())
    assert restored == TRAINED
    batch = Batch.from_columns("pump-3", {"temp": ([1_700_000_100_000_000], [21.5], [9])})
    frame = Encoder(dictionary=TRAINED).encode(batch)
    assert Decoder(dictionaries=[restored]).decode(frame) == batch


@given(DICTIONARIES)
def test_every_dictionary_round_trips(dictionary: Dictionary) -> None:
    data = dictionary.to_bytes()
    assert Dictionary.from_bytes(data) == dictionary
    assert Dictionary.from_bytes(bytearray(data)) == dictionary
    assert Dictionary.from_bytes(memoryview(data)) == dictionary


def test_the_layout_is_the_documented_one() -> None:
    """docs/format.md: magic, version 2, id, the two lengths, context, zstd data, SHA-256."""
    data = SMALL.to_bytes()
    context = msgpack.packb([list(SMALL.strings), SMALL.ts_base, SMALL.ts_step])
    head = b"iTD\x02" + struct.pack("<III", 7, len(context), len(SMALL.data))
    body = head + context + SMALL.data
    assert data == body + hashlib.sha256(body).digest()


# --------------------------------------------------------------------------- corruption


@pytest.mark.parametrize("dictionary", [SMALL, TRAINED], ids=["small", "trained"])
def test_every_single_bit_flip_is_refused(dictionary: Dictionary) -> None:
    data = dictionary.to_bytes()
    for position in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[position] ^= 1 << bit
            refused(bytes(flipped))


@pytest.mark.parametrize("dictionary", [SMALL, TRAINED], ids=["small", "trained"])
def test_every_truncation_and_every_extension_is_refused(dictionary: Dictionary) -> None:
    data = dictionary.to_bytes()
    for length in range(len(data)):
        refused(data[:length])
    for extra in (b"\x00", b"x" * 7, data):
        refused(data + extra)


def test_a_flipped_byte_in_the_strings_no_longer_renames_a_device() -> None:
    """The reported bug: 'pump-1' became 'pump-3' with the same id, and frames naming string 0
    decoded as pump-3's."""
    data = SMALL.to_bytes()
    position = data.index(b"pump-1") + 5
    corrupt = data[:position] + b"3" + data[position + 1 :]
    # Regression test (was a bug): from_bytes returned Dictionary(7, strings=('pump-3', ...)).
    refused(corrupt, "checksum")


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(DICTIONARIES, st.data())
def test_fuzz_any_mutation_is_refused(dictionary: Dictionary, draw: st.DataObject) -> None:
    data = bytearray(dictionary.to_bytes())
    kind = draw.draw(st.sampled_from(["replace", "flip", "truncate", "insert", "delete"]))
    position = draw.draw(st.integers(0, len(data) - 1))
    if kind == "replace":
        data[position] = draw.draw(st.integers(0, 255).filter(lambda b: b != data[position]))
    elif kind == "flip":
        data[position] ^= 1 << draw.draw(st.integers(0, 7))
    elif kind == "truncate":
        del data[position:]
    elif kind == "insert":
        data[position:position] = draw.draw(st.binary(min_size=1, max_size=8))
    else:
        del data[position : position + draw.draw(st.integers(1, 8))]
    refused(bytes(data))


@settings(max_examples=300)
@given(DICTIONARIES, st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=2))
def test_fuzz_several_changed_bytes_are_refused(
    dictionary: Dictionary, changes: list[tuple[int, int]]
) -> None:
    data = bytearray(dictionary.to_bytes())
    for position, mask in changes:
        data[position % len(data)] ^= mask
    if bytes(data) == dictionary.to_bytes():  # the changes cancelled out
        return
    refused(bytes(data))


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_are_refused(data: bytes) -> None:
    refused(data)


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_fuzz_arbitrary_content_behind_a_valid_header_and_checksum(content: bytes) -> None:
    """What a foreign writer might produce: the checksum holds, the context is garbage."""
    head = b"iTD\x02" + struct.pack("<III", 1, len(content), 0)
    body = head + content
    try:
        loaded = Dictionary.from_bytes(body + hashlib.sha256(body).digest())
    except DecodeError as exc:
        assert type(exc) is DecodeError
        return
    assert Dictionary.from_bytes(loaded.to_bytes()) == loaded


@pytest.mark.parametrize(
    ("context", "match"),
    [
        (["pump-1", 0, 1], "strings must be an array"),  # a str would be split into letters
        ([["pump-1"], 0], "context must be"),
        ([["pump-1"], 0, -1], "ts_step"),
        ([["pump/1"], 0, 1], None),  # accepted: strings are names, not necessarily device ids
        ([["a" * 129], 0, 1], "128"),
        ([[1], 0, 1], "must be a str"),
        ([["x"] * 129, 0, 1], "at most 128"),
        ([["x"], True, 1], "ts_base"),
        ({"strings": []}, "context must be"),
    ],
)
def test_a_checked_but_invalid_context_is_refused(context: Any, match: str | None) -> None:
    packed = msgpack.packb(context)
    head = b"iTD\x02" + struct.pack("<III", 1, len(packed), 0)
    body = head + packed
    data = body + hashlib.sha256(body).digest()
    if match is None:
        assert Dictionary.from_bytes(data).strings == ("pump/1",)
    else:
        refused(data, match)


@pytest.mark.parametrize("value", [None, "iTD", 42, [b"iTD"]])
def test_non_bytes_are_refused(value: Any) -> None:
    refused(value, "expected bytes")


def test_a_released_memoryview_is_refused() -> None:
    view = memoryview(SMALL.to_bytes())
    view.release()
    refused(view, "expected bytes")


# --------------------------------------------------------------------------- older layouts


def _first_layout(dictionary: Dictionary) -> bytes:
    """What ``to_bytes`` wrote before version 2: no version byte, no checksum."""
    context = msgpack.packb([list(dictionary.strings), dictionary.ts_base, dictionary.ts_step])
    return b"iTD" + struct.pack("<II", dictionary.id, len(context)) + context + dictionary.data


@pytest.mark.parametrize("ident", [1, 2, 7, 258, 2**32 - 1])
def test_a_dictionary_of_the_first_layout_is_refused_with_the_way_out(ident: int) -> None:
    old = _first_layout(Dictionary(ident, b"zz", ("pump-1", "temp"), 10, 5))
    error = refused(old, "without a checksum")
    assert "docs/format.md" in str(error)


def test_the_documented_conversion_of_a_first_layout_dictionary() -> None:
    """docs/format.md gives these lines to convert a trusted old file once."""
    old = _first_layout(TRAINED)
    ident, size = struct.unpack_from("<II", old, 3)
    strings, ts_base, ts_step = msgpack.unpackb(old[11 : 11 + size])
    converted = Dictionary(ident, old[11 + size :], strings, ts_base, ts_step).to_bytes()
    assert Dictionary.from_bytes(converted) == TRAINED


@pytest.mark.parametrize("version", [0, 1, 3, 255])
def test_other_versions_are_named(version: int) -> None:
    data = bytearray(SMALL.to_bytes())
    data[3] = version
    refused(bytes(data), "version")
