"""Reference implementations of the formats the codec benchmark compares iotdata with.

Plain functions on plain values, no I/O. ``json``, ``msgpack`` and ``senml`` encode a list of
reading dicts ``{"device_id", "metric", "ts" (int microseconds), "value", "seq"}`` and decode back
to such a list. ``gorilla`` is a pure-Python reference of the Gorilla time-series compression
(Pelkonen et al., "Gorilla: A Fast, Scalable, In-Memory Time Series Database", VLDB 2015); it is
slow, and meant for sizes and correctness, not as a speed reference.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

__all__ = [
    "GorillaFrame",
    "Readings",
    "gorilla_decode",
    "gorilla_encode",
    "gorilla_frame_decode",
    "gorilla_frame_encode",
    "json_decode",
    "json_encode",
    "msgpack_decode",
    "msgpack_encode",
    "senml_decode",
    "senml_encode",
]

Readings = list[dict[str, Any]]
_JSON_SEPARATORS = (",", ":")

# ---------------------------------------------------------------------------------------------
# JSON, msgpack and SenML (RFC 8428)


def json_encode(readings: Readings) -> bytes:
    return json.dumps(readings, separators=_JSON_SEPARATORS).encode()


def json_decode(data: bytes) -> Readings:
    readings: Readings = json.loads(data)
    return readings


def msgpack_encode(readings: Readings) -> bytes:
    data: bytes = msgpack.packb(readings)
    return data


def msgpack_decode(data: bytes) -> Readings:
    readings: Readings = msgpack.unpackb(data)
    return readings


def _seconds(micros: int) -> int | float:
    """Seconds as SenML writes them: an integer when whole."""
    whole, fraction = divmod(micros, 1_000_000)
    return whole if fraction == 0 else micros / 1_000_000


def _micros(seconds: int | float) -> int:
    return seconds * 1_000_000 if isinstance(seconds, int) else round(seconds * 1_000_000)


def senml_encode(readings: Readings) -> bytes:
    """One SenML pack: ``bn``/``bt`` on the first record, then ``n``, ``t`` (relative) and ``v``.

    ``seq`` is not an RFC 8428 field: it is an extension on the first record and on any record
    whose seq is not the previous one + 1.
    """
    first = readings[0]
    pack: list[dict[str, Any]] = [
        {
            "bn": first["device_id"] + ":",
            "bt": _seconds(first["ts"]),
            "n": first["metric"],
            "v": first["value"],
            "seq": first["seq"],
        }
    ]
    last_seq = first["seq"]
    for reading in itertools.islice(readings, 1, None):
        relative = _seconds(reading["ts"] - first["ts"])
        record = {"n": reading["metric"], "t": relative, "v": reading["value"]}
        if reading["seq"] != last_seq + 1:
            record["seq"] = reading["seq"]
        last_seq = reading["seq"]
        pack.append(record)
    return json.dumps(pack, separators=_JSON_SEPARATORS).encode()


def senml_decode(data: bytes) -> Readings:
    """Resolve a pack from :func:`senml_encode` back into absolute reading dicts."""
    readings: Readings = []
    base_name, base_time, seq = "", 0, -1
    for record in json.loads(data):
        base_name = record.get("bn", base_name)
        if "bt" in record:
            base_time = _micros(record["bt"])
        seq = record.get("seq", seq + 1)
        readings.append(
            {
                "device_id": base_name.removesuffix(":"),
                "metric": record["n"],
                "ts": base_time + _micros(record.get("t", 0)),
                "value": float(record["v"]),
                "seq": seq,
            }
        )
    return readings


# ---------------------------------------------------------------------------------------------
# Gorilla

_FLOAT = struct.Struct(">d")
_U64 = struct.Struct(">Q")
_NO_WINDOW = (64, 64)  # leading/trailing zeros no XOR can fit into: forces the '11' form
# Delta-of-delta buckets after the '0' for zero: control bits, payload bits, lowest value held.
_DOD_BUCKETS = (("10", 7, -63), ("110", 9, -255), ("1110", 12, -2047))
_DOD_ESCAPE_BITS = 32


def _float_bits(value: float) -> int:
    return int.from_bytes(_FLOAT.pack(value), "big")


def _bits_float(bits: int) -> float:
    value: float = _FLOAT.unpack(bits.to_bytes(8, "big"))[0]
    return value


class _BitWriter:
    """Collects bits as text ('0'/'1'), which keeps appending linear and simple."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def bits(self, text: str) -> None:
        self._parts.append(text)

    def uint(self, value: int, width: int) -> None:
        self._parts.append(format(value, f"0{width}b"))

    def to_bytes(self) -> bytes:
        text = "".join(self._parts)
        text += "0" * (-len(text) % 8)
        return int(text, 2).to_bytes(len(text) // 8, "big")


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self._text = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b")
        self._pos = 0

    def uint(self, width: int) -> int:
        start = self._pos
        self._pos += width
        if self._pos > len(self._text):
            raise ValueError("gorilla stream truncated")
        return int(self._text[start : self._pos], 2)

    def ones(self, limit: int) -> int:
        """Count '1' bits up to ``limit``, consuming the '0' that ends a shorter run."""
        count = 0
        while count < limit and self.uint(1):
            count += 1
        return count


def _write_dod(out: _BitWriter, dod: int) -> None:
    if dod == 0:
        out.bits("0")
        return
    for control, width, low in _DOD_BUCKETS:
        if low <= dod < low + (1 << width):
            out.bits(control)
            out.uint(dod - low, width)
            return
    if not -(1 << 31) <= dod < 1 << 31:
        raise ValueError(f"delta-of-delta {dod} s does not fit in 32 bits")
    out.bits("1111")
    out.uint(dod & 0xFFFFFFFF, _DOD_ESCAPE_BITS)


def _read_dod(stream: _BitReader) -> int:
    bucket = stream.ones(4)
    if bucket == 0:
        return 0
    if bucket < 4:
        _, width, low = _DOD_BUCKETS[bucket - 1]
        return stream.uint(width) + low
    raw = stream.uint(_DOD_ESCAPE_BITS)
    return raw - (1 << 32) if raw >= 1 << 31 else raw


def _write_xor(out: _BitWriter, xor: int, window: tuple[int, int]) -> tuple[int, int]:
    """Write one XORed value; return the (leading, trailing) zeros window now in force."""
    if xor == 0:
        out.bits("0")
        return window
    leading = min(64 - xor.bit_length(), 31)  # 5 bits hold at most 31
    trailing = (xor & -xor).bit_length() - 1
    if leading >= window[0] and trailing >= window[1]:
        out.bits("10")
        out.uint(xor >> window[1], 64 - window[0] - window[1])
        return window
    length = 64 - leading - trailing
    out.bits("11")
    out.uint(leading, 5)
    out.uint(length & 63, 6)  # 64 meaningful bits are written as 0
    out.uint(xor >> trailing, length)
    return leading, trailing


def _read_xor(stream: _BitReader, window: tuple[int, int]) -> tuple[int, tuple[int, int]]:
    control = stream.ones(2)
    if control == 0:
        return 0, window
    if control == 2:
        leading = stream.uint(5)
        length = stream.uint(6) or 64
        window = (leading, 64 - leading - length)
    return stream.uint(64 - window[0] - window[1]) << window[1], window


def gorilla_encode(times: Sequence[int], values: Sequence[float]) -> bytes:
    """Gorilla-compress points with timestamps in seconds; at least one point."""
    out = _BitWriter()
    out.uint(times[0] % (1 << 64), 64)
    previous = _float_bits(values[0])
    out.uint(previous, 64)
    last_time, last_delta, window = times[0], 0, _NO_WINDOW
    for time, value in zip(times[1:], values[1:], strict=True):
        delta = time - last_time
        _write_dod(out, delta - last_delta)
        last_time, last_delta = time, delta
        bits = _float_bits(value)
        window = _write_xor(out, bits ^ previous, window)
        previous = bits
    return out.to_bytes()


def gorilla_decode(data: bytes, count: int) -> tuple[list[int], list[float]]:
    """Invert :func:`gorilla_encode` for a stream of ``count`` points."""
    stream = _BitReader(data)
    time = stream.uint(64)
    time -= (1 << 64) if time >= 1 << 63 else 0
    bits = stream.uint(64)
    times, values = [time], [_bits_float(bits)]
    delta, window = 0, _NO_WINDOW
    for _ in range(count - 1):
        delta += _read_dod(stream)
        time += delta
        xor, window = _read_xor(stream, window)
        bits ^= xor
        times.append(time)
        values.append(_bits_float(bits))
    return times, values


class GorillaFrame(NamedTuple):
    """What a benchmark Gorilla frame holds: Gorilla itself has no seq, so it is prepended."""

    first_seq: int
    times: list[int]  # whole seconds since the epoch
    values: list[float]


def gorilla_frame_encode(frame: GorillaFrame) -> bytes:
    """The first seq as 8 bytes, then the Gorilla stream of the points."""
    return _U64.pack(frame.first_seq) + gorilla_encode(frame.times, frame.values)


def gorilla_frame_decode(data: bytes, count: int) -> GorillaFrame:
    """Invert :func:`gorilla_frame_encode`; the point count comes from outside the frame."""
    times, values = gorilla_decode(data[_U64.size :], count)
    return GorillaFrame(_U64.unpack_from(data)[0], times, values)
