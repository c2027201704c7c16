"""The checkpoint record: a damaged one is refused (it would resume a partition at another
offset or with other state), and the first format, still stored by running pipelines, reads."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdata.errors import DecodeError
from iotdata.stream import Checkpoint
from iotdata.stream._checkpoint import decode_checkpoint, encode_checkpoint

checkpoints = st.builds(
    Checkpoint,
    st.text(min_size=1, max_size=20),
    st.integers(0, 1000),
    st.integers(0, 2**62),
    st.binary(max_size=3000),  # over 1 KiB: compressed
)


@given(checkpoints)
def test_a_checkpoint_round_trips(checkpoint: Checkpoint) -> None:
    assert decode_checkpoint(encode_checkpoint(checkpoint)) == checkpoint


@given(checkpoints, st.data())
def test_any_flipped_bit_is_refused_or_harmless(
    checkpoint: Checkpoint, data: st.DataObject
) -> None:
    encoded = bytearray(encode_checkpoint(checkpoint))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << bit % 8
    try:
        decoded = decode_checkpoint(bytes(encoded))
    except DecodeError:
        return
    assert decoded == checkpoint  # only a flip msgpack cannot see (none in practice)


def test_the_first_format_still_reads() -> None:
    first = msgpack.packb([1, "t", 3, 42, False, b"state"], use_bin_type=True)
    assert decode_checkpoint(first) == Checkpoint("t", 3, 42, b"state")


@pytest.mark.parametrize(
    "data", [b"", b"\xc1", msgpack.packb([3, b"", 0]), msgpack.packb({"a": 1}), msgpack.packb([])]
)
def test_what_is_not_a_checkpoint_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_checkpoint(data)
