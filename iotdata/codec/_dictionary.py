"""Dictionaries: what encoder and decoder agree on in advance, so that small frames stay small.

A frame of one reading is mostly names and a timestamp. A :class:`Dictionary` carries

* ``strings``: device ids and metric names, written in frames as 1-byte indexes;
* a timestamp grid ``ts_base + k * ts_step``: the timestamp of a column of one reading is
  written as its index ``k`` (or as ``[5, ts]`` when it lies off the grid);
* optionally a zstd dictionary trained on typical bodies, for the rest.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import msgpack
import zstandard

from iotdata.errors import DecodeError, InvalidInputError
from iotdata.model import _check_name

__all__ = ["TS_OFF_GRID", "Dictionary"]

MAGIC = b"iTD"
#: A lone timestamp off the dictionary's grid is written ``[5, ts]``; on it, as its index ``k``.
TS_OFF_GRID = 5
#: Most strings a dictionary holds: indexes stay 1-byte msgpack integers.
MAX_STRINGS = 128
_MAX_ID = 2**32 - 1
_HEADER = struct.Struct("<II")


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(value)


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
        return self._index.get(name, name)

    def ts_ref(self, ts: int) -> int | list[int]:
        """How a lone timestamp is written: its grid index, or ``[TS_OFF_GRID, ts]``."""
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
        """``b"iTD"``, id and context length (4 bytes each), msgpack context, zstd data."""
        context: bytes = msgpack.packb([list(self.strings), self.ts_base, self.ts_step])
        return MAGIC + _HEADER.pack(self.id, len(context)) + context + self.data

    @classmethod
    def from_bytes(cls, data: bytes) -> Dictionary:
        """Load what :meth:`to_bytes` wrote; raises :class:`DecodeError` for other bytes."""
        start = len(MAGIC) + _HEADER.size
        if len(data) < start or data[: len(MAGIC)] != MAGIC:
            raise DecodeError("not an iotdata dictionary")
        ident, size = _HEADER.unpack_from(data, len(MAGIC))
        try:
            strings, base, step = msgpack.unpackb(data[start : start + size], raw=False)
            return cls(ident, bytes(data[start + size :]), strings, base, step)
        except (InvalidInputError, ValueError, TypeError) as exc:
            raise DecodeError(f"corrupt iotdata dictionary: {exc}") from None

    def zstd(self) -> zstandard.ZstdCompressionDict | None:
        """The zstd dictionary, if there is one."""
        return zstandard.ZstdCompressionDict(self.data) if self.data else None
