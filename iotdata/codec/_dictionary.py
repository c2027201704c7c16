"""Dictionaries: what encoder and decoder agree on in advance, so that small frames stay small.

A frame of one reading is mostly names and a timestamp. A :class:`Dictionary` carries

* ``strings``: device ids and metric names, written in frames as 1-byte indexes;
* a timestamp grid ``ts_base + k * ts_step``: the timestamp of a column of one reading is
  written as its index ``k`` (or as ``[5, ts]`` when it lies off the grid);
* optionally a zstd dictionary trained on typical bodies, for the rest.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import attrs
import msgpack
import zstandard

from iotdata._checks import check_iterable
from iotdata.errors import DecodeError, InvalidInputError
from iotdata.model import _check_name

__all__ = ["SERIALIZATION_VERSION", "TS_OFF_GRID", "Dictionary"]

MAGIC = b"iTD"
#: The layout :meth:`Dictionary.to_bytes` writes (docs/format.md); the byte after the magic.
SERIALIZATION_VERSION = 2
#: A lone timestamp off the dictionary's grid is written ``[5, ts]``; on it, as its index ``k``.
TS_OFF_GRID = 5
#: Most strings a dictionary holds: indexes stay 1-byte msgpack integers.
MAX_STRINGS = 128
_MAX_ID = 2**32 - 1
#: Magic, version, then id, context length and zstd data length.
_HEADER = struct.Struct("<3sBIII")
_DIGEST = hashlib.sha256().digest_size
#: Magic, id and context length: the first layout, before version 2 (no checksum).
_FIRST_HEADER = struct.Struct("<3sII")
_CONVERT = "convert a file you trust once as docs/format.md (Dictionaries) shows, or train it again"


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(check_iterable("strings", value))


@attrs.frozen
class Dictionary:
    """Shared context for small frames; both encoder and decoder need the same one.

    Build one with :func:`iotdata.codec.train_dictionary`; share it with :meth:`to_bytes` and
    :meth:`from_bytes`. ``id`` (1 to 2**32-1) is written into every frame that uses it.
    """

    id: int
    #: A trained zstd dictionary, or empty.
    data: bytes = attrs.field(default=b"", repr=lambda data: f"<{len(data)} bytes>")
    #: Device ids and metric names, by index.
    strings: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    #: Lone timestamps equal to ``ts_base + k * ts_step`` are written as ``k``.
    ts_base: int = 0
    #: The grid step in microseconds; 0 for no grid.
    ts_step: int = 0
    _index: dict[str, int] = attrs.field(init=False, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if type(self.id) is not int or not 0 < self.id <= _MAX_ID:
            raise InvalidInputError(f"dictionary id must be in 1..2**32-1, got {self.id!r}")
        if type(self.data) is not bytes:
            raise InvalidInputError(
                f"data must be bytes (a zstd dictionary or b''): {self.data!r:.60}"
            )
        if len(self.strings) > MAX_STRINGS:
            raise InvalidInputError(f"a dictionary holds at most {MAX_STRINGS} strings")
        for name in self.strings:
            _check_name("dictionary string", name)
        if type(self.ts_step) is not int or self.ts_step < 0 or type(self.ts_base) is not int:
            raise InvalidInputError("ts_base and ts_step must be ints, ts_step >= 0")
        object.__setattr__(self, "_index", {s: i for i, s in enumerate(self.strings)})

    # ------------------------------------------------------------------ encoding side

    def name_ref(self, name: str) -> str | int:
        """The index of ``name`` if the dictionary holds it, else the name itself."""
        try:
            return self._index.get(name, name)
        except TypeError:  # unhashable: no name at all
            raise InvalidInputError(f"a name must be a str: {name!r:.60}") from None

    def ts_ref(self, ts: int) -> int | list[int]:
        """How a lone timestamp is written: its grid index, or ``[TS_OFF_GRID, ts]``."""
        if type(ts) is not int:
            raise InvalidInputError(f"ts must be an int (microseconds): {ts!r:.60}")
        if self.ts_step:
            k, rest = divmod(ts - self.ts_base, self.ts_step)
            if not rest and -(2**63) <= k < 2**64:
                return k
        return [TS_OFF_GRID, ts]

    # ------------------------------------------------------------------ decoding side

    def name(self, ref: Any) -> Any:
        """The string behind an index; other values pass through for the caller to check."""
        if type(ref) is not int:
            return ref
        if not 0 <= ref < len(self.strings):
            raise DecodeError(f"string index {ref} outside dictionary {self.id}")
        return self.strings[ref]

    def ts(self, encoded: Any) -> int:
        """The timestamp :meth:`ts_ref` wrote."""
        if type(encoded) is int and self.ts_step:
            ts = self.ts_base + encoded * self.ts_step
        elif (
            type(encoded) is list
            and len(encoded) == 2
            and type(encoded[0]) is int
            and encoded[0] == TS_OFF_GRID
        ):
            ts = encoded[1]
        else:
            raise DecodeError(f"bad lone timestamp {encoded!r} for dictionary {self.id}")
        if type(ts) is not int or not -(2**63) <= ts < 2**63:
            raise DecodeError("lone timestamp out of the 64-bit range")
        return ts

    # ------------------------------------------------------------------ storage

    def to_bytes(self) -> bytes:
        """The dictionary as bytes for :meth:`from_bytes` (layout version 2, docs/format.md).

        ``b"iTD"``, the version byte, then id, context length and zstd data length (4 bytes
        each, little-endian), the msgpack context, the zstd data, and the SHA-256 of all that.
        """
        context: bytes = msgpack.packb([list(self.strings), self.ts_base, self.ts_step])
        header = _HEADER.pack(MAGIC, SERIALIZATION_VERSION, self.id, len(context), len(self.data))
        content = header + context + self.data
        return content + hashlib.sha256(content).digest()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Dictionary:
        """Load what :meth:`to_bytes` wrote, checking its lengths and checksum first.

        Raises :class:`DecodeError` for anything else: other bytes, a truncated, extended or
        corrupted dictionary (one changed bit is always detected), another layout version, or
        a dictionary of the first layout, which had no checksum (docs/format.md says how to
        convert one).
        """
        try:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(type(data).__name__)
            data = bytes(data)
        except (TypeError, ValueError) as exc:  # ValueError: a released memoryview
            raise DecodeError(f"expected bytes for a dictionary, got {exc}") from None
        if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
            raise DecodeError("not an iotdata dictionary (bad magic)")
        if data[len(MAGIC)] != SERIALIZATION_VERSION or not _checked(data):
            raise DecodeError(_why_not(data))
        _, _, ident, size, _ = _HEADER.unpack_from(data)
        start = _HEADER.size
        strings, base, step = _context(data[start : start + size])
        try:
            return cls(ident, data[start + size : -_DIGEST], strings, base, step)
        except InvalidInputError as exc:
            raise DecodeError(f"invalid iotdata dictionary: {exc}") from None

    def zstd(self) -> zstandard.ZstdCompressionDict | None:
        """The zstd dictionary, if there is one."""
        return zstandard.ZstdCompressionDict(self.data) if self.data else None


def _checked(data: bytes) -> bool:
    """Whether ``data`` has the length its header declares and its SHA-256 matches."""
    if len(data) < _HEADER.size + _DIGEST:
        return False
    _, _, _, size, data_size = _HEADER.unpack_from(data)
    if len(data) != _HEADER.size + size + data_size + _DIGEST:
        return False
    return hashlib.sha256(data[:-_DIGEST]).digest() == data[-_DIGEST:]


def _why_not(data: bytes) -> str:
    version = data[len(MAGIC)]
    if _first_layout(data):
        return f"a dictionary of the first layout, without a checksum: {_CONVERT}"
    if version != SERIALIZATION_VERSION:
        return (
            f"dictionary layout version {version} is not supported: this iotdata reads "
            f"version {SERIALIZATION_VERSION}"
        )
    if len(data) < _HEADER.size + _DIGEST:
        return f"truncated iotdata dictionary: {len(data)} bytes"
    _, _, _, size, data_size = _HEADER.unpack_from(data)
    declared = _HEADER.size + size + data_size + _DIGEST
    if len(data) != declared:
        return f"iotdata dictionary of {len(data)} bytes where its header says {declared}"
    return "checksum mismatch: the iotdata dictionary is corrupt"


def _first_layout(data: bytes) -> bool:
    """Whether ``data`` parses as the first layout (what a corrupt dictionary rarely does)."""
    if len(data) < _FIRST_HEADER.size:
        return False
    _, _, size = _FIRST_HEADER.unpack_from(data)
    start = _FIRST_HEADER.size
    if start + size > len(data):
        return False
    try:
        _context(data[start : start + size])
    except DecodeError:
        return False
    return True


def _context(packed: bytes) -> tuple[list[Any], Any, Any]:
    """``[strings, ts_base, ts_step]`` from msgpack; the values are checked by the class."""
    try:
        context = msgpack.unpackb(packed, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack's errors for bad bytes have no common base
        raise DecodeError(f"invalid iotdata dictionary context: {exc}") from None
    if type(context) is not list or len(context) != 3:
        raise DecodeError("invalid iotdata dictionary: context must be [strings, ts_base, ts_step]")
    if type(context[0]) is not list:
        raise DecodeError("invalid iotdata dictionary: strings must be an array")
    return context[0], context[1], context[2]
