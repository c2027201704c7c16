"""Integer sequences: the lossless encodings behind timestamps, sequence numbers and int values.

Pure functions, no I/O. An encoded sequence is a msgpack-ready value; its length ``n`` is kept
by the caller (the column header) and checked again on decoding.

======================================  ===================================================
form                                    meaning
======================================  ===================================================
``int``                                 ``n == 1``: the single value itself
``[0, start, step]``                    arithmetic progression (constant when step is 0)
``[1, order, heads, data]``             64-bit lanes, differenced ``order`` times (0 to 2)
``[4, order, heads, width, f, data]``   the same lanes bit-packed (for short sequences)
``[2, [v0, v1, ...]]``                  plain msgpack integers (short or 64-bit unsigned)
``[3, divisor, remainder, inner]``      ``inner[i] * divisor + remainder`` (inner: form 1 or 4)
======================================  ===================================================

**Lanes.** The values, taken as one big integer ``X`` of ``n`` 64-bit two's-complement digits,
are transformed with a handful of big-integer operations instead of ``n`` Python ones:

* differencing is ``D = (X - (X << 64)) mod 2**(64 n)``: each lane becomes its value's delta,
  give or take a borrow of 1 from the lane below; it is undone by multiplying back by
  ``1 + 2**64 + 2**128 + ...`` in log2(n) doubling steps, exactly, since all of it is integer
  arithmetic modulo ``2**(64 n)``;
* zigzag maps each lane ``d`` to ``2d`` or ``-2d - 1`` so that small negative numbers have
  zero high bytes too;
* the lanes are written little-endian and byte-shuffled (all first bytes, then all second
  bytes, ...); the planes of high bytes that are zero in every lane are left out, and what
  remains is mostly runs for zstd.

**Common divisor.** Timestamps in microseconds that tick in whole seconds or minutes are
multiples of a large number; dividing it out first turns 4-byte deltas into 1-byte ones.
"""

from __future__ import annotations

import math
import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from itertools import repeat
from operator import sub
from typing import Any

from iotdata.errors import DecodeError

__all__ = [
    "MASKS",
    "MaskCache",
    "decode_ints",
    "encode_ints",
    "estimated_size",
    "join_lanes",
    "lane_cost",
    "lanes_fit",
    "pack_lanes",
    "split_lanes",
    "unpack_lanes",
]

PROGRESSION, LANES, PLAIN, DIVIDED, BITS = range(5)

_SWAP = sys.byteorder == "big"
# Up to this length plain msgpack integers (1 to 9 bytes each) beat 8-byte lanes.
_SHORT = 16
_MAX_ORDER = 2
_SAMPLE = 64
# Smaller common divisors save less than a byte a value.
_MIN_DIVISOR = 16
# Below this length lanes are bit-packed: zstd has too little data to learn byte frequencies.
_BITS_BELOW = 256
_MIN, _MAX, _UMAX = -(2**63), 2**63 - 1, 2**64 - 1
_ONES = 2**64 - 1


def pack_lanes(lanes: int, count: int) -> bytes:
    """``count`` 64-bit lanes, byte-shuffled, without the all-zero planes at the top.

    The result holds ``width`` planes of ``count`` bytes (``width`` from 0 to 8): byte 0 of
    every lane, then byte 1 of every lane, and so on; planes above ``width`` are all zero.
    """
    raw = lanes.to_bytes(8 * count, "little")
    planes = [raw[k::8] for k in range(8)]
    zero = bytes(count)
    while planes and planes[-1] == zero:
        planes.pop()
    return b"".join(planes)


def unpack_lanes(data: bytes, count: int) -> int:
    """Invert :func:`pack_lanes`; the caller has checked ``len(data)``."""
    out = bytearray(8 * count)
    for k in range(len(data) // count if count else 0):
        out[k::8] = data[k * count : (k + 1) * count]
    return int.from_bytes(out, "little")


def lanes_fit(data: object, count: int) -> bool:
    """Whether ``data`` can be the output of :func:`pack_lanes` for ``count`` lanes."""
    return type(data) is bytes and len(data) <= 8 * count and (not count or len(data) % count == 0)


def split_lanes(lanes: int, count: int, heads: int) -> tuple[list[int], bytes]:
    """The first ``heads`` lanes as unsigned ints, and the rest packed (the heads zeroed).

    The first lanes of a differenced sequence hold its starting values, which are large: kept
    apart, they no longer stop the high planes of the others from being left out.
    """
    head = lanes & ((1 << (64 * heads)) - 1)
    values = [(head >> (64 * i)) & _ONES for i in range(heads)]
    return values, pack_lanes(lanes ^ head, count)


def join_lanes(heads: Any, data: Any, count: int) -> int:
    """Invert :func:`split_lanes`; raises :class:`DecodeError` for malformed parts."""
    if (
        type(heads) is not list
        or len(heads) > count
        or any(type(h) is not int or not 0 <= h <= _ONES for h in heads)
        or not lanes_fit(data, count)
    ):
        raise DecodeError(f"malformed lanes for {count} items")
    lanes = unpack_lanes(data, count)
    for i, head in enumerate(heads):
        lanes = (lanes & ~(_ONES << (64 * i))) | (head << (64 * i))
    return lanes


def lane_cost(data: bytes) -> int:
    """A cheap stand-in for the compressed size: bytes that are not zero."""
    return len(data) - data.count(0)


# --------------------------------------------------------------------------- lane arithmetic


class MaskCache:
    """Big-integer masks kept between calls, least recently used dropped first.

    The key is a lane count, which a frame declares: an unbounded cache would let a stream of
    small frames declaring many different counts keep megabytes each (a 100,000-lane mask is
    800 KB). So both the entries and their total size are bounded; a value larger than a
    quarter of ``max_bytes`` is computed for each call and never kept. Thread-safe: the lock
    is held only around the dictionary, never while computing a value.
    """

    __slots__ = ("_entries", "_lock", "_size", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[Hashable, tuple[tuple[int, ...], int]] = OrderedDict()
        self._lock = threading.Lock()
        self._size = 0

    def get(self, key: Hashable, make: Callable[[], tuple[int, ...]]) -> tuple[int, ...]:
        """The cached value of ``key``, else ``make()`` (kept if it is small enough)."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        value = make()
        size = sum(map(sys.getsizeof, value))
        if size <= self.max_bytes // 4:
            with self._lock:
                self._keep(key, value, size)
        return value

    def _keep(self, key: Hashable, value: tuple[int, ...], size: int) -> None:
        if key in self._entries:  # another thread made it meanwhile
            return
        self._entries[key] = (value, size)
        self._size += size
        while len(self._entries) > self.max_entries or self._size > self.max_bytes:
            self._size -= self._entries.popitem(last=False)[1][1]

    def statistics(self) -> tuple[int, int]:
        """``(entries, bytes)`` kept now."""
        with self._lock:
            return len(self._entries), self._size


#: The masks of the lane arithmetic, by lane count (see :class:`MaskCache`).
MASKS = MaskCache(max_entries=64, max_bytes=1024 * 1024)


def _masks(count: int) -> tuple[int, ...]:
    """Bit 0 of every lane, bit 63 of every lane, and all ``count`` lanes."""
    return MASKS.get(count, lambda: _make_masks(count))


def _make_masks(count: int) -> tuple[int, int, int]:
    low = int.from_bytes(b"\x01\x00\x00\x00\x00\x00\x00\x00" * count, "little")
    return low, low << 63, (1 << (64 * count)) - 1


def _difference(lanes: int, count: int) -> int:
    return (lanes - (lanes << 64)) & _masks(count)[2]


def _integrate(lanes: int, count: int) -> int:
    everything = _masks(count)[2]
    shift = 64
    while shift < 64 * count:
        lanes = (lanes + (lanes << shift)) & everything
        shift <<= 1
    return lanes


def _zigzag(lanes: int, count: int) -> int:
    low, high, everything = _masks(count)
    return ((lanes << 1) & (everything ^ low)) ^ (((lanes & high) >> 63) * _ONES)


def _unzigzag(lanes: int, count: int) -> int:
    low, high, everything = _masks(count)
    return ((lanes >> 1) & (everything ^ high)) ^ ((lanes & low) * _ONES)


def _to_lanes(values: Sequence[int], *, unsigned: bool = False) -> int:
    """The values as one big integer of 64-bit digits; ``OverflowError`` if one does not fit."""
    packed = array("Q" if unsigned else "q", values if type(values) is list else list(values))
    if _SWAP:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return int.from_bytes(packed.tobytes(), "little")


def _from_lanes(lanes: int, count: int, *, unsigned: bool = False) -> list[int]:
    packed = array("Q" if unsigned else "q")
    packed.frombytes(lanes.to_bytes(8 * count, "little"))
    if _SWAP:  # pragma: no cover - big-endian hosts
        packed.byteswap()
    return packed.tolist()


def pack_bits(values: list[int]) -> list[Any]:
    """``[width, flagged, data]``: unsigned values as a big-endian bit string of fixed width.

    With ``flagged`` set, each value is a ``0`` bit when it is zero, else a ``1`` bit and its
    ``width`` bits: what a run of equal deltas costs in Gorilla, and worth it when zeros are
    common. Used for short columns, where zstd has too little data to learn byte frequencies.
    """
    width = max(values).bit_length()
    zeros = values.count(0)
    flagged = zeros * width > len(values)
    if flagged:
        pattern = f"1{{:0{width}b}}"
        text = "".join(["0" if v == 0 else pattern.format(v) for v in values])
    else:
        text = "".join(map(format, values, repeat(f"0{width}b"))) if width else ""
    text += "0" * (-len(text) % 8)
    data = int(text, 2).to_bytes(len(text) // 8, "big") if text else b""
    return [width, int(flagged), data]


def unpack_bits(width: Any, flagged: Any, data: Any, count: int) -> list[int]:
    """Invert :func:`pack_bits`; raises :class:`DecodeError` for malformed input."""
    if type(width) is not int or not 0 <= width <= 64 or type(flagged) is not int:
        raise DecodeError("integer sequence: bad bit width")
    if flagged not in (0, 1):
        raise DecodeError("integer sequence: bad bit width")
    if type(data) is not bytes or len(data) > 9 * count:
        raise DecodeError("integer sequence: bad bit-packed data")
    text = format(int.from_bytes(data, "big"), f"0{8 * len(data)}b") if data else ""
    if not flagged:
        if len(data) != (count * width + 7) // 8:
            raise DecodeError("integer sequence: bit-packed data of the wrong length")
        if "1" in text[count * width :]:
            raise DecodeError("integer sequence: bit-packed padding must be zero")
        if not width:
            return [0] * count
        return [int(text[i : i + width], 2) for i in range(0, count * width, width)]
    values, pos = [], 0
    for _ in range(count):
        if pos >= len(text):
            raise DecodeError("integer sequence: bit-packed data ends early")
        if text[pos] == "0":
            values.append(0)
            pos += 1
        else:
            chunk = text[pos + 1 : pos + 1 + width]
            if len(chunk) != width or not width:
                raise DecodeError("integer sequence: bit-packed data ends early")
            values.append(int(chunk, 2))
            pos += 1 + width
    if (pos + 7) // 8 != len(data) or "1" in text[pos:]:
        raise DecodeError("integer sequence: bit-packed data of the wrong length or padding")
    return values


# --------------------------------------------------------------------------- encoding


def encode_ints(values: Sequence[int], *, signed: bool = False) -> Any:
    """Encode a sequence of Python ints, each within a signed or unsigned 64-bit range.

    With ``signed`` set, raise ``OverflowError`` unless every value fits a signed 64-bit int.
    """
    count = len(values)
    if count <= _SHORT:
        if signed and values and (min(values) < _MIN or max(values) > _MAX):
            raise OverflowError("integer out of the signed 64-bit range")
        return values[0] if count == 1 else [PLAIN, list(values)]
    progression = _progression(values)
    if progression is not None:
        return progression
    try:
        lanes = _to_lanes(values)
    except OverflowError:
        if signed:
            raise
        return [PLAIN, list(values)]
    return _divided(values, lanes) or _lanes_form(values[:_SAMPLE], lanes, count)


def _lanes_form(first: Sequence[int], lanes: int, count: int) -> list[Any]:
    """Form 1 or 4 for ``count`` values held in ``lanes``; ``first`` are the first few."""
    order = _best_order(first)
    for _ in range(order):
        lanes = _difference(lanes, count)
    heads = [first[0], first[1] - first[0]][:order]
    if order == 2 and not _MIN <= heads[1] <= _MAX:
        heads[1] &= _ONES
    body = _zigzag(lanes & ~((1 << (64 * order)) - 1), count)
    if count < _BITS_BELOW:
        return [BITS, order, heads, *pack_bits(_from_lanes(body, count, unsigned=True))]
    return [LANES, order, heads, pack_lanes(body, count)]


def _progression(values: Sequence[int]) -> list[int] | None:
    start, count = values[0], len(values)
    step = values[1] - start
    middle = count // 2
    if values[-1] != start + step * (count - 1) or values[middle] != start + step * middle:
        return None
    if list(values) == list(range(start, start + step * count, step) if step else [start] * count):
        return [PROGRESSION, start, step]
    return None


def _divided(values: Sequence[int], lanes: int) -> list[Any] | None:
    """``[DIVIDED, g, r, inner]`` when every value is ``r`` modulo a large common ``g``.

    ``g`` comes from a sample; the whole column is then divided as one big integer:
    ``Y = lanes - r * (1 + 2**64 + ...)`` divided by ``g``. The quotient's lanes are the
    per-value quotients exactly when the division leaves nothing and every quotient lane is
    below ``2**(63 - g.bit_length())``: then no lane of ``quotient * g`` carries, and every
    value is a non-negative ``quotient * g + r``.
    """
    count, start = len(values), values[0]
    divisor = math.gcd(*[v - start for v in values[1:_SAMPLE]])
    if divisor < _MIN_DIVISOR:
        return None
    remainder = start % divisor
    scaled = lanes - remainder * _masks(count)[0]
    if scaled < 0:
        return None
    quotients, rest = divmod(scaled, divisor)
    if rest or quotients & _high_bits(count, 63 - divisor.bit_length()):
        return None
    first = [(v - remainder) // divisor for v in values[:_SAMPLE]]
    return [DIVIDED, divisor, remainder, _lanes_form(first, quotients, count)]


def _high_bits(count: int, low: int) -> int:
    """Bits ``low`` to 63 of each of ``count`` lanes."""
    return MASKS.get((count, low), lambda: (_make_high_bits(count, low),))[0]


def _make_high_bits(count: int, low: int) -> int:
    lane = (_ONES ^ ((1 << max(low, 0)) - 1)).to_bytes(8, "little")
    return int.from_bytes(lane * count, "little")


def _best_order(values: Sequence[int]) -> int:
    """How many times to difference, judged on a sample: the order with the smallest sum."""
    sample = list(values[:_SAMPLE])
    sizes = []
    for _ in range(_MAX_ORDER + 1):
        sizes.append(sum(map(abs, sample)))
        sample = list(map(sub, sample[1:], sample[:-1]))
    return sizes.index(min(sizes))


def estimated_size(encoded: Any) -> int:
    """Roughly how many bytes :func:`encode_ints` output costs after compression."""
    if type(encoded) is not list:
        return 9
    form = encoded[0]
    if form == LANES:
        return lane_cost(encoded[3]) + 9 * len(encoded[2])
    if form == BITS:
        return len(encoded[5]) + 9 * len(encoded[2])
    if form == DIVIDED:
        return estimated_size(encoded[3]) + 9
    return 9 * len(encoded[1]) if form == PLAIN else 2


# --------------------------------------------------------------------------- decoding


def decode_ints(encoded: Any, count: int, *, signed: bool = True) -> list[int]:
    """Decode :func:`encode_ints` output of ``count`` items; raises :class:`DecodeError`.

    Every item is checked to lie in the signed 64-bit range, or with ``signed`` off in
    -2**63 .. 2**64-1.
    """
    high = _MAX if signed else _UMAX
    if type(encoded) is int:
        values = [encoded]
    elif type(encoded) is not list or len(encoded) < 2:
        raise DecodeError("integer sequence: expected an encoding array")
    elif type(encoded[0]) is not int:
        raise DecodeError(f"integer sequence: unknown or malformed encoding {encoded[0]!r}")
    elif encoded[0] in (LANES, BITS) and len(encoded) >= 4:
        return _decode_lanes(encoded, count)  # 64-bit lanes: in the int64 range by design
    elif encoded[0] == PROGRESSION and len(encoded) == 3:
        return _decode_progression(encoded[1], encoded[2], count, high)
    elif encoded[0] == DIVIDED and len(encoded) == 4:
        return _decode_divided(encoded, count)  # non-negative and below 2**63 by design
    elif encoded[0] == PLAIN and type(encoded[1]) is list:
        values = encoded[1]
        if set(map(type, values)) - {int}:
            raise DecodeError("integer sequence: non-integer item in a plain list")
    else:
        raise DecodeError(f"integer sequence: unknown or malformed encoding {encoded[0]!r}")
    if len(values) != count:
        raise DecodeError(f"integer sequence: {len(values)} items where {count} were declared")
    if values and (min(values) < _MIN or max(values) > high):
        raise DecodeError("integer sequence: item out of the 64-bit range")
    return values


def _decode_progression(start: Any, step: Any, count: int, high: int) -> list[int]:
    if type(start) is not int or type(step) is not int:
        raise DecodeError("integer sequence: progression needs integer start and step")
    for end in (start, start + step * max(count - 1, 0)):
        if not _MIN <= end <= high:
            raise DecodeError("integer sequence: progression leaves the 64-bit range")
    if step == 0:
        return [start] * count
    return list(range(start, start + step * count, step))


def _decode_lanes(encoded: list[Any], count: int) -> list[int]:
    return _from_lanes(_lanes_of(encoded, count), count)


def _lanes_of(encoded: list[Any], count: int) -> int:
    """The lanes of the LANES and BITS forms ``[form, order, heads, ...]``, as one integer."""
    order, heads = encoded[1], encoded[2]
    if (
        type(order) is not int
        or not 0 <= order <= min(_MAX_ORDER, count)
        or type(heads) is not list
        or len(heads) != order
        or any(type(h) is not int or not _MIN <= h <= _UMAX for h in heads)
    ):
        raise DecodeError("integer sequence: bad difference order or heads")
    if encoded[0] == LANES:
        if len(encoded) != 4 or not lanes_fit(encoded[3], count):
            raise DecodeError(f"integer sequence: bad lanes for {count} items")
        body = unpack_lanes(encoded[3], count)
    else:
        if len(encoded) != 6:
            raise DecodeError("integer sequence: malformed bit-packed form")
        body = _to_lanes(unpack_bits(encoded[3], encoded[4], encoded[5], count), unsigned=True)
    lanes = _unzigzag(body, count)
    lanes &= ~((1 << (64 * order)) - 1)
    if order:
        lanes |= heads[0] & _ONES
    if order == 2:
        lanes |= ((heads[1] - heads[0]) & _ONES) << 64
    for _ in range(order):
        lanes = _integrate(lanes, count)
    return lanes


def _decode_divided(encoded: list[Any], count: int) -> list[int]:
    """``inner * divisor + remainder``, computed on all lanes at once (see :func:`_divided`)."""
    _, divisor, remainder, inner = encoded
    if type(divisor) is not int or type(remainder) is not int or not 0 <= remainder < divisor:
        raise DecodeError("integer sequence: bad divisor or remainder")
    if divisor < 2:
        raise DecodeError("integer sequence: bad divisor or remainder")
    if type(inner) is not list or len(inner) < 4 or inner[0] not in (LANES, BITS):
        raise DecodeError("integer sequence: a divided sequence holds lanes")
    quotients = _lanes_of(inner, count)
    if divisor.bit_length() > 63 or quotients & _high_bits(count, 63 - divisor.bit_length()):
        raise DecodeError("integer sequence: divided item out of the 64-bit range")
    return _from_lanes(quotients * divisor + remainder * _masks(count)[0], count)
