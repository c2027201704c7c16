"""The frame: a small envelope around a msgpack body, zstd-compressed when that pays.

Layout (docs/format.md is the specification)::

    0   2 bytes   magic b"iT"
    2   1 byte    major format version (high nibble) and flags (low nibble):
                  bit 0 zstd-compressed payload, bit 1 a dictionary id follows
    3   varint    dictionary id (LEB128), only when flag bit 1 is set
    .   4 bytes   CRC-32 of the header bytes before it and of the payload, little-endian
    .   payload   msgpack body, or a magic-less zstd frame holding it

Body: ``[device_id, [column, ...]]``; column: ``[metric, n, ts, seq, values]``. Newer minor
versions may append elements to either array; this decoder ignores them.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections import Counter, OrderedDict
from collections.abc import Iterable
from typing import Any

import attrs
import msgpack
import zstandard

from iotdata._checks import check_instance, check_int, check_iterable, each
from iotdata.codec._dictionary import MAX_STRINGS, Dictionary
from iotdata.codec._ints import decode_ints, encode_ints
from iotdata.codec._values import decode_values, encode_values
from iotdata.errors import DecodeError, EncodeError, InvalidInputError
from iotdata.model import MAX_STRING_LENGTH, Batch, Column, _check_name, validate_device_id

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Decoder",
    "Encoder",
    "Limits",
    "decode",
    "encode",
    "train_dictionary",
]

MAGIC = b"iT"
#: (major, minor) of the format this module writes. Only the major version is in the envelope:
#: minor versions only add what older decoders may ignore.
FORMAT_VERSION = (1, 0)
FLAG_ZSTD = 0x01
FLAG_DICTIONARY = 0x02
_KNOWN_FLAGS = FLAG_ZSTD | FLAG_DICTIONARY
_VERSION = FORMAT_VERSION[0] << 4
_MAGICLESS = zstandard.FORMAT_ZSTD1_MAGICLESS
log = logging.getLogger("iotdata.codec")
# The longest string the model allows, in UTF-8 bytes.
_LONGEST_STRING = 4 * MAX_STRING_LENGTH


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
#: Largest zstd dictionary train_dictionary makes (zstd's own are about 100 KB).
_MAX_DICTIONARY_BYTES = 16 * 1024 * 1024
#: zstd's compression levels: negative ones are its fast modes.
_MIN_LEVEL, _MAX_LEVEL = -(2**17), 22


def _limits(limits: object) -> Limits:
    if limits is None:
        return _DEFAULT_LIMITS
    return check_instance("limits", limits, Limits)


def _dictionaries(dictionaries: object) -> list[Dictionary]:
    return each("dictionaries", dictionaries, check_instance, kind=Dictionary)


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
        check_int("level", level, minimum=_MIN_LEVEL, maximum=_MAX_LEVEL)
        self.dictionary = dictionary
        self.limits = _limits(limits)
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=_MAGICLESS, write_checksum=0, write_content_size=1, write_dict_id=0
        )
        zdict = dictionary.zstd() if dictionary else None
        self._zstd = zstandard.ZstdCompressor(dict_data=zdict, compression_params=params)
        self._dict_id = _varint(dictionary.id) if dictionary else b""

    def encode(self, batch: Batch) -> bytes:
        """Encode one batch. Raises :class:`EncodeError` past the limits."""
        body = self.body(batch)
        flags = FLAG_DICTIONARY if self._dict_id else 0
        payload = body
        compressed = self._zstd.compress(body)
        if len(compressed) < len(body):
            payload, flags = compressed, flags | FLAG_ZSTD
        header = MAGIC + bytes([_VERSION | flags]) + self._dict_id
        checksum = zlib.crc32(payload, zlib.crc32(header)).to_bytes(4, "little")
        frame = header + checksum + payload
        if len(frame) > self.limits.max_frame_bytes:
            raise EncodeError(f"frame of {len(frame)} bytes exceeds max_frame_bytes")
        return frame

    def body(self, batch: Batch) -> bytes:
        """The uncompressed msgpack body of a frame (what dictionaries are trained on)."""
        if not isinstance(batch, Batch):
            raise EncodeError(f"expected an iotdata Batch, got {type(batch).__name__}")
        limits = self.limits
        if len(batch.columns) > limits.max_metrics:
            raise EncodeError(f"{len(batch.columns)} metrics exceed max_metrics")
        if len(batch) > limits.max_readings:
            raise EncodeError(f"{len(batch)} readings exceed max_readings={limits.max_readings}")
        if limits.max_string_bytes < _LONGEST_STRING:
            _check_strings(batch, limits.max_string_bytes)
        context = self.dictionary
        device = batch.device_id if context is None else context.name_ref(batch.device_id)
        columns = [_encode_column(c, context) for c in batch.columns]
        try:
            body: bytes = self._packer.pack([device, columns])
        except (OverflowError, ValueError, TypeError) as exc:
            self._packer.reset()
            raise EncodeError(f"cannot pack batch of {batch.device_id!r}: {exc}") from exc
        if len(body) > limits.max_body_bytes:
            raise EncodeError(f"body of {len(body)} bytes exceeds max_body_bytes")
        return body


def _check_strings(batch: Batch, limit: int) -> None:
    """Refuse strings a decoder with the same limits would refuse (only for lowered limits)."""
    names = [batch.device_id, *(c.metric for c in batch.columns)]
    values = [v for c in batch.columns for v in c.values if type(v) is str]
    longest = max((len(text.encode()) for text in names + values), default=0)
    if longest > limit:
        raise EncodeError(f"a {longest}-byte string exceeds max_string_bytes={limit}")


def _encode_column(column: Column, context: Dictionary | None = None) -> list[Any]:
    if context is None:
        metric: str | int = column.metric
        ts = encode_ints(column.ts)
    else:
        metric = context.name_ref(column.metric)
        ts = context.ts_ref(column.ts[0]) if len(column.ts) == 1 else encode_ints(column.ts)
    return [
        metric,
        len(column.ts),
        ts,
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
        self.limits = _limits(limits)
        self._contexts: dict[int | None, zstandard.ZstdDecompressor] = {
            None: zstandard.ZstdDecompressor(format=_MAGICLESS)
        }
        self._dictionaries: dict[int, Dictionary] = {}
        for dictionary in _dictionaries(dictionaries):
            self.add_dictionary(dictionary)

    def add_dictionary(self, dictionary: Dictionary) -> None:
        """Accept frames compressed with ``dictionary`` from now on."""
        if not isinstance(dictionary, Dictionary):
            raise InvalidInputError("dictionaries must be iotdata.codec.Dictionary objects")
        known = self._dictionaries.get(dictionary.id)
        if known is not None and known.data != dictionary.data:
            raise InvalidInputError(f"two different dictionaries share the id {dictionary.id}")
        self._dictionaries[dictionary.id] = dictionary
        try:
            context = zstandard.ZstdDecompressor(dict_data=dictionary.zstd(), format=_MAGICLESS)
        except zstandard.ZstdError as exc:
            raise InvalidInputError(f"dictionary {dictionary.id} is corrupt: {exc}") from None
        self._contexts[dictionary.id] = context

    def decode(self, data: bytes | bytearray | memoryview) -> Batch:
        """Decode one frame. Raises :class:`DecodeError` for anything but a valid frame."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        try:
            size = data.nbytes if isinstance(data, memoryview) else len(data)
            if size > self.limits.max_frame_bytes:  # before copying a buffer
                raise DecodeError(f"frame of {size} bytes exceeds max_frame_bytes")
            return self._decode(data if type(data) is bytes else bytes(data))
        except DecodeError:
            raise
        except Exception as exc:  # the one boundary: nothing else escapes for bad bytes
            raise DecodeError(f"malformed frame ({type(exc).__name__}: {exc})") from exc

    def _decode(self, data: bytes) -> Batch:
        limits = self.limits
        if len(data) > limits.max_frame_bytes:
            raise DecodeError(f"frame of {len(data)} bytes exceeds max_frame_bytes")
        if len(data) < 7:
            raise DecodeError(f"truncated frame: {len(data)} bytes")
        if data[:2] != MAGIC:
            raise DecodeError("not an iotdata frame (bad magic)")
        major, flags = data[2] >> 4, data[2] & 0x0F
        if major != FORMAT_VERSION[0]:
            raise DecodeError(
                f"frame format version {major} is not supported: this decoder reads version "
                f"{FORMAT_VERSION[0]}; upgrade iotdata"
            )
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"unknown frame flags 0x{flags:x}")
        pos, dictionary = 3, None
        if flags & FLAG_DICTIONARY:
            dict_id, pos = _read_varint(data, pos)
            dictionary = self._dictionaries.get(dict_id)
            if dictionary is None:
                raise DecodeError(
                    f"unknown dictionary id {dict_id}: pass that Dictionary to the Decoder"
                )
        if len(data) < pos + 4:
            raise DecodeError("truncated frame: checksum")
        payload = data[pos + 4 :]
        if zlib.crc32(payload, zlib.crc32(data[:pos])) != int.from_bytes(
            data[pos : pos + 4], "little"
        ):
            raise DecodeError("checksum mismatch: the frame is corrupt")
        if flags & FLAG_ZSTD:
            payload = self._decompress(payload, dictionary.id if dictionary else None)
        return self._batch(self._unpack(payload), dictionary)

    def _decompress(self, payload: bytes, dict_id: int | None) -> bytes:
        context = self._contexts[dict_id]
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
            stream = context.decompressobj()
            body: bytes = stream.decompress(payload)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"corrupt zstd payload: {exc}") from None
        if stream.unused_data:
            raise DecodeError("bytes after the zstd frame")
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
                list_hook=_ItemBudget(limits),
                max_str_len=limits.max_string_bytes,
                max_bin_len=limits.max_body_bytes,
                max_array_len=limits.max_readings + 64,
                max_map_len=64,
                max_ext_len=0,
            )
        except DecodeError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {_name_the_limit(str(exc))}"
            raise DecodeError(f"malformed msgpack body ({reason})") from None

    def _batch(self, body: Any, dictionary: Dictionary | None) -> Batch:
        if type(body) is not list or len(body) < 2 or type(body[1]) is not list:
            raise DecodeError("body must be [device_id, [columns]]")
        device = dictionary.name(body[0]) if dictionary else body[0]
        device_id = _name(validate_device_id, device)
        encoded_columns = body[1]
        if len(encoded_columns) > self.limits.max_metrics:
            raise DecodeError(f"{len(encoded_columns)} metrics exceed max_metrics")
        budget = self.limits.max_readings
        columns = []
        for encoded in encoded_columns:
            column = _decode_column(encoded, budget, dictionary)
            budget -= len(column.ts)
            columns.append(column)
        if len({c.metric for c in columns}) != len(columns):
            raise DecodeError("a metric appears twice in the batch")
        return Batch._trusted(device_id, tuple(columns))


class _ItemBudget:
    """msgpack ``list_hook``: stop a body with more arrays or items than a valid one can hold.

    Without it a small zstd frame could expand into millions of empty arrays, each a Python
    list, before any check on metrics or readings runs.
    """

    __slots__ = ("arrays", "items")

    def __init__(self, limits: Limits) -> None:
        self.arrays = 16 * limits.max_metrics + 16
        self.items = 4 * limits.max_readings + 16 * limits.max_metrics + 64

    def __call__(self, items: list[Any]) -> list[Any]:
        self.arrays -= 1
        self.items -= len(items)
        if self.arrays < 0 or self.items < 0:
            raise DecodeError("body holds more arrays or items than max_readings allows")
        return items


def _name_the_limit(message: str) -> str:
    for msgpack_name, ours in (
        ("max_array_len", "max_readings"),
        ("max_str_len", "max_string_bytes"),
        ("max_bin_len", "max_body_bytes"),
    ):
        if msgpack_name in message:
            return f"{message} (the decoder's {ours} limit)"
    return message


def _name(check: Any, value: Any) -> str:
    try:
        name: str = check(value)
    except InvalidInputError as exc:
        raise DecodeError(str(exc)) from None
    return name


def _metric(value: Any) -> str:
    return _check_name("metric name", value)


def _decode_column(encoded: Any, budget: int, dictionary: Dictionary | None) -> Column:
    if type(encoded) is not list or len(encoded) < 5:
        raise DecodeError("column must be [metric, n, ts, seq, values]")
    metric = _name(_metric, dictionary.name(encoded[0]) if dictionary else encoded[0])
    count = encoded[1]
    if type(count) is not int or count < 0:
        raise DecodeError(f"column {metric!r}: bad reading count {count!r}")
    if count > budget:
        raise DecodeError("readings exceed max_readings")
    ts = _decode_ts(encoded[2], count, dictionary)
    seq = decode_ints(encoded[3], count)
    if count and min(seq) < 0:
        raise DecodeError(f"column {metric!r}: negative seq")
    values = decode_values(encoded[4], count)
    return Column._trusted(metric, tuple(ts), tuple(values), tuple(seq))


def _decode_ts(encoded: Any, count: int, dictionary: Dictionary | None) -> list[int]:
    if dictionary is not None and count == 1:
        return [dictionary.ts(encoded)]
    return decode_ints(encoded, count)


def train_dictionary(
    samples: Iterable[Batch], *, size: int = 4096, dict_id: int | None = None
) -> Dictionary:
    """Learn a :class:`Dictionary` from typical batches, for small frames (a few readings).

    It keeps the most frequent device ids and metric names, the grid the timestamps lie on,
    and, given enough samples (a few hundred frames), a zstd dictionary of ``size`` bytes
    (256 to 16 MiB) trained on their bodies; with fewer it goes without. ``dict_id`` names the
    dictionary in frame headers (1 to 2**32-1); by default it is derived from the content and
    below 128, so that it costs one byte per frame.

    Raises:
        InvalidInputError: no batches, or ``size`` or ``dict_id`` out of range.
    """
    batches = check_iterable("samples", samples)
    if not batches or not all(isinstance(b, Batch) for b in batches):
        raise InvalidInputError("train_dictionary needs at least one Batch")
    check_int("size", size, minimum=256, maximum=_MAX_DICTIONARY_BYTES)
    if dict_id is not None:
        check_int("dict_id", dict_id, minimum=1, maximum=2**32 - 1)
    names = Counter(b.device_id for b in batches)
    names.update(c.metric for b in batches for c in b.columns)
    strings = tuple(name for name, _ in names.most_common(MAX_STRINGS))
    stamps = [ts for b in batches for c in b.columns for ts in c.ts]
    base = max(stamps, default=0)
    step = math.gcd(*[base - ts for ts in stamps]) or 1
    context = Dictionary(dict_id or 1, b"", strings, base, step)
    encoder = Encoder(dictionary=context)
    bodies: list[bytes | bytearray | memoryview] = [encoder.body(b) for b in batches]
    try:
        data = zstandard.train_dictionary(size, bodies).as_bytes()
    except zstandard.ZstdError as exc:
        log.debug("no zstd dictionary from %d samples: %s", len(bodies), exc)
        data = b""
    content = context.to_bytes() + data
    return attrs.evolve(context, id=dict_id or zlib.crc32(content) % 127 + 1, data=data)


_local = threading.local()
#: Encoders :func:`encode` keeps per thread, one per dictionary, the least recently used
#: dropped first (each holds a zstd context of about 100 KB with its dictionary).
_ENCODERS_PER_THREAD = 16


def encode(batch: Batch, *, dictionary: Dictionary | None = None) -> bytes:
    """Encode ``batch`` into one frame (a thread-local :class:`Encoder` for each of the last
    16 dictionaries used)."""
    encoders: OrderedDict[Dictionary | None, Encoder]
    encoders = _local.__dict__.setdefault("encoders", OrderedDict())
    if dictionary is not None and not isinstance(dictionary, Dictionary):
        raise InvalidInputError("dictionary must be an iotdata.codec.Dictionary")
    encoder = encoders.get(dictionary)
    if encoder is None:
        if len(encoders) >= _ENCODERS_PER_THREAD:
            encoders.popitem(last=False)
        encoder = encoders[dictionary] = Encoder(dictionary=dictionary)
    else:
        encoders.move_to_end(dictionary)
    return encoder.encode(batch)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    dictionaries: Iterable[Dictionary] = (),
    limits: Limits | None = None,
) -> Batch:
    """Decode one frame from untrusted bytes; raises only :class:`DecodeError` for bad input
    (and :class:`~iotdata.InvalidInputError` for ``dictionaries`` or ``limits`` of the wrong
    type)."""
    if type(dictionaries) is not tuple or dictionaries:
        dictionaries = tuple(_dictionaries(dictionaries))
    if dictionaries or limits is not None:
        return Decoder(dictionaries=dictionaries, limits=limits).decode(data)
    decoder: Decoder | None = getattr(_local, "decoder", None)
    if decoder is None:
        decoder = _local.decoder = Decoder()
    return decoder.decode(data)
