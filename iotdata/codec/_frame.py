"""The frame: a small envelope around a msgpack body, zstd-compressed when that pays.

Layout (docs/format.md is the specification)::

    0   2 bytes   magic b"iT"
    2   1 byte    format version: major in the high nibble, minor in the low nibble
    3   1 byte    flags: bit 0 zstd-compressed body, bit 1 dictionary id follows
    4   varint    dictionary id (LEB128), only when flag bit 1 is set
    .   4 bytes   CRC-32 of the payload, little-endian
    .   payload   msgpack body, or a magic-less zstd frame holding it

Body: ``[device_id, [column, ...]]``; column: ``[metric, n, ts, seq, values]``. Newer minor
versions may append elements to either array; this decoder ignores them.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable
from typing import Any

import attrs
import msgpack
import zstandard

from iotdata.codec._ints import decode_ints, encode_ints
from iotdata.codec._values import decode_values, encode_values
from iotdata.errors import DecodeError, EncodeError, InvalidInputError
from iotdata.model import Batch, Column, _check_name, validate_device_id

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Decoder",
    "Dictionary",
    "Encoder",
    "Limits",
    "decode",
    "encode",
    "train_dictionary",
]

MAGIC = b"iT"
#: (major, minor) of the format this module writes.
FORMAT_VERSION = (1, 0)
FLAG_ZSTD = 0x01
FLAG_DICTIONARY = 0x02
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_DICTIONARY
_VERSION_BYTE = FORMAT_VERSION[0] << 4 | FORMAT_VERSION[1]
_MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
_MAX_DICTIONARY_ID = 2**32 - 1


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 1:
        raise InvalidInputError(f"{attribute.name} must be a positive int, got {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """Hard limits for one frame. Decoding rejects a frame past any of them before allocating.

    The defaults suit MQTT payloads and Kafka records; raise them on both sides for larger
    batches.
    """

    #: Largest frame accepted, in bytes (envelope included).
    max_frame_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    #: Largest body after decompression, in bytes.
    max_body_bytes: int = attrs.field(default=16 * 1024 * 1024, validator=_positive)
    #: Most readings in one batch.
    max_readings: int = attrs.field(default=100_000, validator=_positive)
    #: Most metrics (columns) in one batch.
    max_metrics: int = attrs.field(default=1024, validator=_positive)
    #: Longest string (device id, metric name, string value), in UTF-8 bytes.
    max_string_bytes: int = attrs.field(default=4096, validator=_positive)


_DEFAULT_LIMITS = Limits()


@attrs.frozen
class Dictionary:
    """A zstd dictionary trained on typical frames, with the id written into frame headers.

    Share it between encoders and decoders with :meth:`to_bytes` / :meth:`from_bytes`.
    """

    id: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    def __attrs_post_init__(self) -> None:
        if type(self.id) is not int or not 0 < self.id <= _MAX_DICTIONARY_ID:
            raise InvalidInputError(f"dictionary id must be in 1..2**32-1, got {self.id!r}")

    def to_bytes(self) -> bytes:
        """``b"iTD"``, the id as 4 little-endian bytes, then the zstd dictionary."""
        return MAGIC + b"D" + self.id.to_bytes(4, "little") + self.data

    @classmethod
    def from_bytes(cls, data: bytes) -> Dictionary:
        """Load what :meth:`to_bytes` wrote; raises :class:`DecodeError` for other bytes."""
        if len(data) < 8 or data[:3] != MAGIC + b"D":
            raise DecodeError("not an iotdata dictionary")
        try:
            return cls(int.from_bytes(data[3:7], "little"), bytes(data[7:]))
        except InvalidInputError as exc:
            raise DecodeError(str(exc)) from None

    def _zstd(self) -> zstandard.ZstdCompressionDict:
        return zstandard.ZstdCompressionDict(self.data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for offset in range(5):
        if pos + offset >= len(data):
            raise DecodeError("truncated frame: dictionary id")
        byte = data[pos + offset]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + offset + 1
    raise DecodeError("dictionary id longer than 5 bytes")


class Encoder:
    """Encodes batches into frames, reusing its msgpack and zstd contexts.

    Not thread-safe: use one encoder per thread (the module-level :func:`encode` does).

    Args:
        dictionary: compress with this trained dictionary; decoders need it too.
        level: zstd compression level (1 fastest, 22 smallest).
        limits: refuse batches a decoder with these limits would reject.
    """

    def __init__(
        self,
        *,
        dictionary: Dictionary | None = None,
        level: int = 3,
        limits: Limits | None = None,
    ) -> None:
        if dictionary is not None and not isinstance(dictionary, Dictionary):
            raise InvalidInputError("dictionary must be an iotdata.codec.Dictionary")
        self.dictionary = dictionary
        self.limits = limits or _DEFAULT_LIMITS
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=_MAGICLESS, write_checksum=0, write_content_size=1, write_dict_id=0
        )
        zdict = dictionary._zstd() if dictionary else None
        self._zstd = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
        self._header = MAGIC + bytes([_VERSION_BYTE])
        self._dict_id = _varint(dictionary.id) if dictionary else b""

    def encode(self, batch: Batch) -> bytes:
        """Encode one batch. Raises :class:`EncodeError` past the limits."""
        body = self.body(batch)
        flags = 0
        payload = body
        compressed = self._zstd.compress(body)
        if len(compressed) < len(body):
            payload, flags = compressed, FLAG_ZSTD
        if self._dict_id and flags:
            flags |= FLAG_DICTIONARY
            header = self._header + bytes([flags]) + self._dict_id
        else:
            header = self._header + bytes([flags])
        return header + zlib.crc32(payload).to_bytes(4, "little") + payload

    def body(self, batch: Batch) -> bytes:
        """The uncompressed msgpack body of a frame (what dictionaries are trained on)."""
        if not isinstance(batch, Batch):
            raise EncodeError(f"expected an iotdata Batch, got {type(batch).__name__}")
        limits = self.limits
        if len(batch.columns) > limits.max_metrics:
            raise EncodeError(f"{len(batch.columns)} metrics exceed max_metrics")
        if len(batch) > limits.max_readings:
            raise EncodeError(f"{len(batch)} readings exceed max_readings={limits.max_readings}")
        columns = [_encode_column(c) for c in batch.columns]
        try:
            body: bytes = self._packer.pack([batch.device_id, columns])
        except (OverflowError, ValueError, TypeError) as exc:
            self._packer.reset()
            raise EncodeError(f"cannot pack batch of {batch.device_id!r}: {exc}") from exc
        if len(body) > limits.max_body_bytes:
            raise EncodeError(f"body of {len(body)} bytes exceeds max_body_bytes")
        return body


def _encode_column(column: Column) -> list[Any]:
    return [
        column.metric,
        len(column.ts),
        encode_ints(column.ts),
        encode_ints(column.seq),
        encode_values(column.values),
    ]


class Decoder:
    """Decodes frames from untrusted bytes into batches.

    Raises only :class:`DecodeError` for bad input, and never allocates beyond ``limits``.
    Not thread-safe: use one decoder per thread (the module-level :func:`decode` does).

    Args:
        dictionaries: the dictionaries frames may name; an unknown id is a DecodeError.
        limits: hard limits on frame size, decompressed size, readings, metrics and strings.
    """

    def __init__(
        self, *, dictionaries: Iterable[Dictionary] = (), limits: Limits | None = None
    ) -> None:
        self.limits = limits or _DEFAULT_LIMITS
        self._contexts: dict[int | None, zstandard.ZstdDecompressor] = {
            None: zstandard.ZstdDecompressor(format=_MAGICLESS)
        }
        self._dictionaries: dict[int, Dictionary] = {}
        for dictionary in dictionaries:
            self.add_dictionary(dictionary)

    def add_dictionary(self, dictionary: Dictionary) -> None:
        """Accept frames compressed with ``dictionary`` from now on."""
        if not isinstance(dictionary, Dictionary):
            raise InvalidInputError("dictionaries must be iotdata.codec.Dictionary objects")
        known = self._dictionaries.get(dictionary.id)
        if known is not None and known.data != dictionary.data:
            raise InvalidInputError(f"two different dictionaries share the id {dictionary.id}")
        self._dictionaries[dictionary.id] = dictionary
        self._contexts[dictionary.id] = zstandard.ZstdDecompressor(
            dict_data=dictionary._zstd(), format=_MAGICLESS
        )

    def decode(self, data: bytes | bytearray | memoryview) -> Batch:
        """Decode one frame. Raises :class:`DecodeError` for anything but a valid frame."""
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise DecodeError(f"expected bytes, got {type(data).__name__}")
            data = bytes(data)
        try:
            return self._decode(data)
        except DecodeError:
            raise
        except Exception as exc:  # the one boundary: nothing else escapes for bad bytes
            raise DecodeError(f"malformed frame ({type(exc).__name__}: {exc})") from exc

    def _decode(self, data: bytes) -> Batch:
        limits = self.limits
        if len(data) > limits.max_frame_bytes:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_bytes")
        if len(data) < 8:
            raise DecodeError(f"truncated frame: {len(data)} bytes")
        if data[:2] != MAGIC:
            raise DecodeError("not an iotdata frame (bad magic)")
        major, minor = data[2] >> 4, data[2] & 0x0F
        if major != FORMAT_VERSION[0]:
            raise DecodeError(
                f"frame format {major}.{minor} is not supported: this decoder reads "
                f"{FORMAT_VERSION[0]}.x; upgrade iotdata"
            )
        flags = data[3]
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"unknown frame flags 0x{flags:02x}")
        pos, dict_id = 4, None
        if flags & FLAG_DICTIONARY:
            dict_id, pos = _read_varint(data, pos)
        if len(data) < pos + 4:
            raise DecodeError("truncated frame: checksum")
        payload = data[pos + 4 :]
        if zlib.crc32(payload) != int.from_bytes(data[pos : pos + 4], "little"):
            raise DecodeError("checksum mismatch: the frame is corrupt")
        if flags & FLAG_ZSTD:
            body = self._decompress(payload, dict_id)
        elif dict_id is not None:
            raise DecodeError("a dictionary id on an uncompressed frame")
        else:
            body = payload
        return self._batch(self._unpack(body))

    def _decompress(self, payload: bytes, dict_id: int | None) -> bytes:
        context = self._contexts.get(dict_id)
        if context is None:
            raise DecodeError(
                f"unknown dictionary id {dict_id}: pass that Dictionary to the Decoder"
            )
        try:
            params = zstandard.get_frame_parameters(payload, format=_MAGICLESS)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"corrupt zstd frame header: {exc}") from None
        size = params.content_size
        if size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise DecodeError("zstd frame without a content size")
        if size > self.limits.max_body_bytes:
            raise DecodeError(f"body of {size} bytes exceeds max_body_bytes")
        try:
            body: bytes = context.decompress(payload, max_output_size=size)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"corrupt zstd payload: {exc}") from None
        if len(body) != size:
            raise DecodeError("zstd payload shorter than its declared size")
        return body

    def _unpack(self, body: bytes) -> Any:
        limits = self.limits
        if len(body) > limits.max_body_bytes:
            raise DecodeError(f"body of {len(body)} bytes exceeds max_body_bytes")
        try:
            return msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=limits.max_string_bytes,
                max_bin_len=limits.max_body_bytes,
                max_array_len=limits.max_readings + 64,
                max_map_len=64,
                max_ext_len=0,
            )
        except Exception as exc:
            raise DecodeError(f"malformed msgpack body ({type(exc).__name__}: {exc})") from None

    def _batch(self, body: Any) -> Batch:
        if type(body) is not list or len(body) < 2 or type(body[1]) is not list:
            raise DecodeError("body must be [device_id, [columns]]")
        device_id = _name(validate_device_id, body[0])
        encoded_columns = body[1]
        if len(encoded_columns) > self.limits.max_metrics:
            raise DecodeError(f"{len(encoded_columns)} metrics exceed max_metrics")
        budget = self.limits.max_readings
        columns = []
        for encoded in encoded_columns:
            column = _decode_column(encoded, budget)
            budget -= len(column.ts)
            columns.append(column)
        if len({c.metric for c in columns}) != len(columns):
            raise DecodeError("a metric appears twice in the batch")
        return Batch._trusted(device_id, tuple(columns))


def _name(check: Any, value: Any) -> str:
    try:
        name: str = check(value)
    except InvalidInputError as exc:
        raise DecodeError(str(exc)) from None
    return name


def _decode_column(encoded: Any, budget: int) -> Column:
    if type(encoded) is not list or len(encoded) < 5:
        raise DecodeError("column must be [metric, n, ts, seq, values]")
    metric = _name(lambda m: _check_name("metric name", m), encoded[0])
    count = encoded[1]
    if type(count) is not int or count < 0:
        raise DecodeError(f"column {metric!r}: bad reading count {count!r}")
    if count > budget:
        raise DecodeError("readings exceed max_readings")
    ts = decode_ints(encoded[2], count)
    seq = decode_ints(encoded[3], count)
    if count and min(seq) < 0:
        raise DecodeError(f"column {metric!r}: negative seq")
    values = decode_values(encoded[4], count)
    return Column._trusted(metric, tuple(ts), tuple(values), tuple(seq))


def train_dictionary(
    samples: Iterable[Batch], *, size: int = 4096, dict_id: int | None = None
) -> Dictionary:
    """Train a zstd dictionary on typical batches, for small frames (one or a few readings).

    Give it a few hundred batches like the ones the devices will send. ``dict_id`` names the
    dictionary in frame headers (1 to 2**32-1); by default it is derived from the content and
    is at most 16383, so it costs at most 2 bytes per frame.
    """
    encoder = Encoder()
    bodies: list[bytes | bytearray | memoryview] = [encoder.body(b) for b in samples]
    try:
        trained = zstandard.train_dictionary(size, bodies)
    except zstandard.ZstdError as exc:
        raise InvalidInputError(
            f"cannot train a dictionary from {len(bodies)} samples ({exc}); "
            "give it more samples (a few hundred frames) or a smaller size"
        ) from None
    data = trained.as_bytes()
    return Dictionary(dict_id if dict_id is not None else zlib.crc32(data) % 16383 + 1, data)


_local = threading.local()


def encode(batch: Batch, *, dictionary: Dictionary | None = None) -> bytes:
    """Encode ``batch`` into one frame (a thread-local :class:`Encoder` per dictionary)."""
    encoders: dict[Dictionary | None, Encoder] = _local.__dict__.setdefault("encoders", {})
    encoder = encoders.get(dictionary)
    if encoder is None:
        encoder = encoders[dictionary] = Encoder(dictionary=dictionary)
    return encoder.encode(batch)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    dictionaries: Iterable[Dictionary] = (),
    limits: Limits | None = None,
) -> Batch:
    """Decode one frame from untrusted bytes; raises only :class:`DecodeError` for bad input."""
    dictionaries = tuple(dictionaries)
    if dictionaries or limits is not None:
        return Decoder(dictionaries=dictionaries, limits=limits).decode(data)
    decoder: Decoder | None = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = Decoder()
    return decoder.decode(data)
