"""The iotdata wire format: compact, safe frames for telemetry batches (msgpack + zstd).

>>> from iotdata.model import Batch
>>> from iotdata import codec
>>> batch = Batch.from_columns("pump-7", {"temp": ([0, 1_000_000], [21.5, 21.75], [0, 1])})
>>> codec.decode(codec.encode(batch)) == batch
True

Each column of each batch gets the smallest of a few lossless encodings (see
docs/format.md); the body is zstd-compressed when that pays, optionally with a trained
:class:`Dictionary` for small frames. :func:`decode` takes untrusted bytes: it raises only
:class:`~iotdata.DecodeError` and respects :class:`Limits`.
"""

from iotdata.codec._dictionary import Dictionary
from iotdata.codec._frame import (
    FORMAT_VERSION,
    Decoder,
    Encoder,
    Limits,
    decode,
    encode,
    train_dictionary,
)
from iotdata.errors import DecodeError, EncodeError

__all__ = [
    "FORMAT_VERSION",
    "DecodeError",
    "Decoder",
    "Dictionary",
    "EncodeError",
    "Encoder",
    "Limits",
    "decode",
    "encode",
    "train_dictionary",
]
