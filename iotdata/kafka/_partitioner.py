"""Kafka's Java-compatible key partitioning: pure code, no I/O.

A keyed record goes to partition ``(murmur2(key) & 0x7fffffff) % partitions``, as the Java
producer's built-in partitioner (``BuiltInPartitioner.partitionForKey``) picks it. Records
written here land where a Java producer (or any client set to match it, such as librdkafka's
``murmur2_random`` partitioner) puts the same key, so per-device order holds whichever wrote them.
"""

from __future__ import annotations

import operator
import random
import struct
from collections import OrderedDict
from collections.abc import Callable, Sequence

import attrs

from iotdata.errors import InvalidInputError

__all__ = ["Partitioner", "murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995  # the multiplier (a literal in the hot loop: cheaper than a global lookup)
_POSITIVE = 0x7FFFFFFF

# Precompiled "n little-endian uint32" readers for keys up to 256 bytes: a list index is cheaper
# than struct's format-string cache on every call.
_WORDS: list[Callable[[bytes | bytearray], tuple[int, ...]]] = [
    struct.Struct(f"<{count}I").unpack_from for count in range(65)
]


def _key_error(key: object) -> InvalidInputError:
    hint = "; encode it first, e.g. key.encode()" if isinstance(key, str) else ""
    return InvalidInputError(f"a Kafka key must be bytes, not {type(key).__name__}{hint}")


def _hash32(data: bytes | bytearray) -> int:
    """murmur2 of ``data`` as an unsigned 32-bit int (Java's int bits, read as unsigned)."""
    if not isinstance(data, (bytes, bytearray)):
        raise _key_error(data)
    length = len(data)
    h = _SEED ^ length
    count = length >> 2
    words = _WORDS[count](data) if count <= 64 else struct.unpack_from(f"<{count}I", data)
    for word in words:
        # Java: k *= m; k ^= k >>> 24; k *= m; h *= m; h ^= k  (all mod 2**32)
        k = (word * 0x5BD1E995) & 0xFFFFFFFF
        h = ((h * 0x5BD1E995) ^ ((k ^ (k >> 24)) * 0x5BD1E995)) & 0xFFFFFFFF
    tail = length & 3
    if tail:
        h = ((h ^ int.from_bytes(data[length - tail :], "little")) * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data``, exactly as ``org.apache.kafka.common.utils.Utils.murmur2``.

    Returns the signed 32-bit value a Java ``int`` holds (``-2**31 <= result < 2**31``).
    ``data`` must be ``bytes`` (or ``bytearray``); anything else raises
    :class:`~iotdata.errors.InvalidInputError`.
    """
    return (_hash32(data) ^ 0x80000000) - 0x80000000


def _check_partitions(partitions: object) -> int:
    """``partitions`` as an int >= 1, or InvalidInputError."""
    if not isinstance(partitions, bool):
        try:
            count = operator.index(partitions)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if count >= 1:
                return count
    raise InvalidInputError(f"the partition count must be an int >= 1, got {partitions!r}")


def partition_for(key: bytes, partitions: int) -> int:
    """The partition (``0 <= p < partitions``) the Java producer picks for a record keyed ``key``.

    That is ``(murmur2(key) & 0x7fffffff) % partitions``. A bad count or a key that is not bytes
    raises :class:`~iotdata.errors.InvalidInputError`.
    """
    if type(partitions) is not int or partitions < 1:
        partitions = _check_partitions(partitions)
    return (_hash32(key) & _POSITIVE) % partitions


def _any_partition(all_partitions: Sequence[int], available: Sequence[int]) -> int:
    choices = available or all_partitions
    if not choices:
        raise InvalidInputError("the topic has no partitions to choose from")
    return random.choice(choices)


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"{attribute.name} must be an int >= 0, got {value!r}")


@attrs.define(kw_only=True)
class Partitioner:
    """:func:`partition_for` with a bounded cache of each key's hash.

    A device id seen before costs a dict lookup instead of hashing it again in Python. At most
    ``max_keys`` keys of at most ``max_key_bytes`` bytes each are kept (longer keys are hashed
    every time), so the cache's memory is bounded; when it is full the oldest entry goes first.
    ``max_keys=0`` turns the cache off.

    An instance is also an aiokafka partitioner:
    ``AIOKafkaProducer(..., partitioner=Partitioner())``. Meant for one thread or event loop
    (as a producer uses it); sharing it between threads at worst evicts an extra entry.
    """

    max_keys: int = attrs.field(default=100_000, validator=_non_negative)
    max_key_bytes: int = attrs.field(default=256, validator=_non_negative)
    _cache: OrderedDict[bytes, int] = attrs.field(init=False, factory=OrderedDict, repr=False)

    @property
    def cached_keys(self) -> int:
        """How many keys the cache holds now (never more than ``max_keys``)."""
        return len(self._cache)

    def partition(self, key: bytes, partitions: int) -> int:
        """Same as :func:`partition_for`, with the key's hash cached."""
        if type(partitions) is not int or partitions < 1:
            partitions = _check_partitions(partitions)
        try:
            return self._cache[key] % partitions
        except (KeyError, TypeError):  # TypeError: an unhashable key, such as a bytearray
            return self._learn(key) % partitions

    def __call__(
        self,
        key_bytes: bytes | None,
        all_partitions: Sequence[int],
        available_partitions: Sequence[int],
    ) -> int:
        """aiokafka's partitioner interface: pick one of ``all_partitions`` for a record.

        A keyed record goes where a Java producer puts it: partition ``hash % n`` for a topic
        of ``n`` partitions, which Kafka numbers ``0..n-1``; that is
        ``sorted(all_partitions)[hash % n]`` (the list aiokafka passes is not always sorted; for
        ids other than ``0..n-1``, which Kafka never passes, the pick is still one of them). A
        record without a key goes to a random available partition (any partition when none
        is available), as aiokafka's ``DefaultPartitioner`` does.
        """
        if key_bytes is None:
            return _any_partition(all_partitions, available_partitions)
        count = len(all_partitions)
        if not count:
            raise InvalidInputError("the topic has no partitions to choose from")
        try:
            index = self._cache[key_bytes] % count
        except (KeyError, TypeError):
            index = self._learn(key_bytes) % count
        if all_partitions[index] == index:  # the usual case, cheaper than sorting to find it
            return index
        return sorted(all_partitions)[index]

    def _learn(self, key: bytes) -> int:
        positive = _hash32(key) & _POSITIVE  # validates the key
        if type(key) is bytes and len(key) <= self.max_key_bytes and self.max_keys:
            cache = self._cache
            if len(cache) >= self.max_keys:
                cache.popitem(last=False)
            cache[key] = positive
        return positive
