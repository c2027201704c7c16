"""Value columns: choose the smallest lossless encoding for each column of each batch.

Pure functions, no I/O. ``n`` (the column length) is kept by the column header.

=====================================  ========================================================
form                                   meaning
=====================================  ========================================================
a bare value (not an array)            ``n == 1``: the value itself
``[10, ints]``                         integers (see :mod:`._ints`)
``[11, k, ints]``                      floats equal, bit for bit, to ``int / 10**k``
``[11, k, ints, corrections]``         the same, each float64 then XOR its correction lane
``[12, [first], data]``                floats: each float64 XOR the previous, as lanes
``[13, data]``                         booleans, one byte (0 or 1) each
``[14, [distinct strings], ints]``     strings as indexes into a table of distinct strings
``[15, [values], ints]``               run-length: each value repeated by its run length
``[16, m, pos, inner]``                ``m`` missing values at positions ``pos``, then the rest
``[17, [values]]``                     plain msgpack values (mixed kinds)
=====================================  ========================================================

Decimal scaling (``11``) is what makes sensor data small: most readings are decimals with a
few digits (``21.5``, ``0.132``), whose float64 bits look random but whose scaled integers have
small deltas. It is lossless for every float: where ``int / 10**k`` is not bit-identical to
the original (``nan``, a value off by an ulp, a reading with more digits), the XOR of the two
is stored in a corrections lane, mostly zero bytes that zstd squashes.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Sequence
from itertools import compress, islice, repeat
from operator import add, is_, is_not, lt, mul, ne, truediv
from typing import Any

from iotdata.codec._ints import (
    decode_ints,
    encode_ints,
    estimated_size,
    join_lanes,
    lane_cost,
    lanes_fit,
    pack_lanes,
    split_lanes,
    unpack_lanes,
)
from iotdata.errors import DecodeError
from iotdata.model import MAX_STRING_LENGTH, Value

__all__ = ["decode_values", "encode_values"]

INTS, DECIMAL, XOR, BOOLS, STRINGS, RUNS, MISSING, PLAIN = range(10, 18)

#: Largest decimal scale tried: 10**k stays exact as a float up to k = 22.
MAX_SCALE = 18
_DIVISORS = [10**k for k in range(MAX_SCALE + 1)]
_FACTORS = [10.0**k for k in range(MAX_SCALE + 1)]
_SWAP = sys.byteorder == "big"
_PLAIN_TYPES = frozenset({float, int, bool, str, type(None)})
_NONE = type(None)
_SAMPLE = 16


# --------------------------------------------------------------------------- encoding


def encode_values(values: Sequence[Value]) -> Any:
    """Encode a column of values; the caller has checked that each value is supported."""
    kinds = set(map(type, values))
    if len(values) <= 1 and float not in kinds:
        return values[0] if values else [PLAIN, []]
    if _NONE in kinds and len(kinds) > 1:
        return _encode_missing(values)
    if kinds == {float}:
        return _encode_floats(values)  # type: ignore[arg-type]
    if kinds == {int}:
        return [INTS, encode_ints(values)]  # type: ignore[arg-type]
    if kinds <= {bool, str, _NONE}:
        return _encode_few_kinds(values, kinds)
    return [PLAIN, list(values)]


def _encode_missing(values: Sequence[Value]) -> list[Any]:
    present = list(compress(values, map(is_not, values, repeat(None))))
    positions = list(compress(range(len(values)), map(is_, values, repeat(None))))
    return [MISSING, len(positions), encode_ints(positions), encode_values(present)]


def _encode_few_kinds(values: Sequence[Value], kinds: set[type]) -> Any:
    run_values, run_lengths = _runs(values)
    if len(run_values) * 4 <= len(values) or kinds == {_NONE}:
        return [RUNS, run_values, encode_ints(run_lengths)]
    if kinds == {bool}:
        return [BOOLS, bytes(values)]  # type: ignore[arg-type]
    if kinds == {str}:
        table = list(dict.fromkeys(values))
        index = {text: i for i, text in enumerate(table)}
        return [STRINGS, table, encode_ints(list(map(index.__getitem__, values)))]
    return [PLAIN, list(values)]


def _runs(values: Sequence[Value]) -> tuple[list[Value], list[int]]:
    """Run values and run lengths; only for kinds whose ``!=`` is exact (not floats)."""
    count = len(values)
    starts = [0, *compress(range(1, count), map(ne, values[1:], values[:-1]))]
    lengths = [b - a for a, b in zip(starts, [*starts[1:], count], strict=True)]
    return [values[i] for i in starts], lengths


def _float_bytes(values: Sequence[float]) -> bytes:
    packed = array("d", values)
    if _SWAP:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tobytes()


def _encode_floats(values: Sequence[float]) -> Any:
    raw = _float_bytes(values)
    decimal = _encode_decimal(values, raw)
    if len(values) == 1:  # [11, k, int] beats a 9-byte float only while int takes 1 to 5 bytes
        fits = decimal is not None and -(2**31) <= decimal[0][2] < 2**32
        return decimal[0] if fits else values[0]  # type: ignore[index]
    # Decimal lanes of at most 4 significant bytes a value cannot lose to XOR.
    if decimal is not None and decimal[1] <= 4 * len(values):
        return decimal[0]
    first, xor = split_lanes(_xor_forward(raw), len(values), 1)
    if decimal is not None and decimal[1] <= lane_cost(xor) + 9:
        return decimal[0]
    return [XOR, first, xor]


def _guess_scale(values: Sequence[float]) -> int | None:
    """Decimal places of a sample of values, from their shortest round-trip repr.

    Places of 13 or more are float artefacts (``45.751999999999995`` is 45.752 off by one
    ulp, left by some earlier computation); they are ignored when cleaner values exist, since
    the corrections lane repairs such values at a small cost.
    """
    step = max(1, len(values) // _SAMPLE)
    places = []
    for value in values[::step]:
        text = repr(value)
        if "e" in text or "n" in text:  # exponent form, nan or inf
            continue
        places.append(0 if text.endswith(".0") else len(text) - text.index(".") - 1)
    clean = [p for p in places if p < 13] or places
    return min(max(clean), MAX_SCALE) if clean else None


def _encode_decimal(values: Sequence[float], raw: bytes) -> tuple[list[Any], int] | None:
    """``[DECIMAL, k, ints]`` or ``[DECIMAL, k, ints, corrections]``, with its estimated size.

    ``corrections`` is the XOR of each original float64 with ``ints[i] / 10**k``, as shuffled
    lanes: zero where the value is an exact decimal, a few low bits where it is off by an ulp,
    the whole value for nan and inf.
    """
    count = len(values)
    scale = _guess_scale(values)
    if scale is None:
        return None
    ints = _scaled(values, _FACTORS[scale])
    try:
        encoded: list[Any] = [DECIMAL, scale, encode_ints(ints, signed=True)]
    except OverflowError:  # huge values: not decimals worth scaling
        return None
    size = estimated_size(encoded[2])
    rebuilt = _float_bytes(list(map(truediv, ints, repeat(_DIVISORS[scale]))))
    if rebuilt != raw:
        if count == 1:
            return None
        corrections = int.from_bytes(rebuilt, "little") ^ int.from_bytes(raw, "little")
        encoded.append(pack_lanes(corrections, count))
        size += lane_cost(encoded[3])
    return encoded, size


def _scaled(values: Sequence[float], factor: float) -> list[int]:
    """``floor(v * factor + 0.5)`` for each value, with non-finite values as 0."""
    try:
        return list(map(math.floor, map(add, map(mul, values, repeat(factor)), repeat(0.5))))
    except (ValueError, OverflowError):  # nan or inf: rare, take the slow path
        return [math.floor(v * factor + 0.5) if math.isfinite(v * factor) else 0 for v in values]


def _xor_forward(raw: bytes) -> int:
    """Each 64-bit lane XOR the lane before it (the first lane unchanged)."""
    lanes = int.from_bytes(raw, "little")
    return (lanes ^ (lanes << 64)) & ((1 << (8 * len(raw))) - 1)


def _xor_backward(lanes: int, count: int) -> bytes:
    """Invert :func:`_xor_forward` with a prefix XOR in log2(count) big-integer steps."""
    mask = (1 << (64 * count)) - 1
    shift = 64
    while shift < 64 * count:
        lanes = (lanes ^ (lanes << shift)) & mask
        shift <<= 1
    return lanes.to_bytes(8 * count, "little")


# --------------------------------------------------------------------------- decoding


def decode_values(encoded: Any, count: int) -> list[Value]:
    """Decode :func:`encode_values` output of ``count`` values; raises :class:`DecodeError`."""
    if type(encoded) is not list:
        if count != 1 or type(encoded) not in _PLAIN_TYPES:
            raise DecodeError("value column: a bare value stands for exactly one reading")
        return _plain([encoded])
    if len(encoded) < 2 or type(encoded[0]) is not int:
        raise DecodeError("value column: expected an encoding array")
    decoder = _DECODERS.get(encoded[0])
    if decoder is None:
        raise DecodeError(f"value column: unknown encoding {encoded[0]!r}")
    values = decoder(encoded, count)
    if len(values) != count:
        raise DecodeError(f"value column: {len(values)} values where {count} were declared")
    return values


def _shape(encoded: list[Any], *sizes: int) -> list[Any]:
    if len(encoded) not in sizes:
        raise DecodeError(f"value column: malformed encoding {encoded[0]}")
    return encoded


def _decode_ints(encoded: list[Any], count: int) -> list[Value]:
    return decode_ints(_shape(encoded, 2)[1], count, signed=False)  # type: ignore[return-value]


def _decode_decimal(encoded: list[Any], count: int) -> list[Value]:
    scale = _shape(encoded, 3, 4)[1]
    if type(scale) is not int or not 0 <= scale <= MAX_SCALE:
        raise DecodeError(f"value column: decimal scale {scale!r} out of range")
    ints = decode_ints(encoded[2], count)
    values: list[Value] = list(map(truediv, ints, repeat(_DIVISORS[scale])))
    if len(encoded) == 3:
        return values
    corrections = encoded[3]
    if not lanes_fit(corrections, count):
        raise DecodeError(f"value column: bad length of decimal corrections for {count} values")
    rebuilt = int.from_bytes(_float_bytes(values), "little")  # type: ignore[arg-type]
    rebuilt ^= unpack_lanes(corrections, count)
    return _floats_from_bytes(rebuilt.to_bytes(8 * count, "little"))


def _floats_from_bytes(data: bytes) -> list[Value]:
    floats = array("d")
    floats.frombytes(data)
    if _SWAP:  # pragma: no cover - big-endian hosts
        floats.byteswap()
    return floats.tolist()  # type: ignore[return-value]


def _decode_xor(encoded: list[Any], count: int) -> list[Value]:
    _, first, data = _shape(encoded, 3)
    lanes = join_lanes(first, data, count)
    return _floats_from_bytes(_xor_backward(lanes, count))


def _decode_bools(encoded: list[Any], count: int) -> list[Value]:
    data = _shape(encoded, 2)[1]
    if type(data) is not bytes or len(data) != count or data.translate(None, b"\x00\x01"):
        raise DecodeError("value column: booleans must be one 0 or 1 byte each")
    return list(map(bool, data))


def _decode_strings(encoded: list[Any], count: int) -> list[Value]:
    _, table, ints = _shape(encoded, 3)
    if type(table) is not list or set(map(type, table)) - {str}:
        raise DecodeError("value column: a string table must hold strings")
    _check_lengths(table)
    index = decode_ints(ints, count)
    if index and (min(index) < 0 or max(index) >= len(table)):
        raise DecodeError("value column: string index out of the table")
    return list(map(table.__getitem__, index))


def _plain(values: Any) -> list[Value]:
    if type(values) is not list:
        raise DecodeError("value column: plain values must be an array")
    kinds = set(map(type, values))
    if not kinds <= _PLAIN_TYPES:
        raise DecodeError("value column: plain values must be float, int, bool, str or nil")
    if str in kinds:
        _check_lengths([v for v in values if type(v) is str])
    return values


def _check_lengths(strings: list[str]) -> None:
    """Decoded strings obey the model's limit, as strings in a constructed batch do."""
    if strings and max(map(len, strings)) > MAX_STRING_LENGTH:
        raise DecodeError(f"value column: string over {MAX_STRING_LENGTH} characters")


def _decode_plain(encoded: list[Any], count: int) -> list[Value]:
    return _plain(_shape(encoded, 2)[1])


def _decode_runs(encoded: list[Any], count: int) -> list[Value]:
    _, values, lengths = _shape(encoded, 3)
    values = _plain(values)
    lengths = decode_ints(lengths, len(values))
    if lengths and min(lengths) < 1:
        raise DecodeError("value column: run lengths must be positive")
    if sum(lengths) != count:
        raise DecodeError(f"value column: runs cover {sum(lengths)} values, not {count}")
    out: list[Value] = []
    for run in map(repeat, values, lengths):
        out.extend(run)
    return out


def _decode_missing(encoded: list[Any], count: int) -> list[Value]:
    _, missing, positions_encoded, inner = _shape(encoded, 4)
    if type(missing) is not int or not 0 < missing <= count:
        raise DecodeError("value column: bad count of missing values")
    positions = decode_ints(positions_encoded, missing)
    if positions[0] < 0 or positions[-1] >= count or not all(map(lt, positions, positions[1:])):
        raise DecodeError("value column: missing positions must increase within the column")
    present = iter(decode_values(inner, count - missing))
    out: list[Value] = []
    previous = 0
    for position in positions:
        out.extend(islice(present, position - previous))
        out.append(None)
        previous = position + 1
    out.extend(present)
    return out


_DECODERS = {
    INTS: _decode_ints,
    DECIMAL: _decode_decimal,
    XOR: _decode_xor,
    BOOLS: _decode_bools,
    STRINGS: _decode_strings,
    RUNS: _decode_runs,
    MISSING: _decode_missing,
    PLAIN: _decode_plain,
}
