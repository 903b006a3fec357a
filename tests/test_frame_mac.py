"""``framing.FrameMac`` (ADR 0049) is HMAC-SHA256 byte for byte: the frame tags
the transport seals and the peer reader checks are what ``hmac.digest`` makes,
so a frame tagged either way verifies either way."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from replicaio.runtime.framing import SHA256_BLOCK_BYTES, FrameMac
from replicaio.runtime.transport import frame_tag


@pytest.mark.parametrize("key_bytes", [0, 1, 31, 32, 33, SHA256_BLOCK_BYTES - 1,
                                       SHA256_BLOCK_BYTES, SHA256_BLOCK_BYTES + 1, 200])
def test_the_tag_is_hmac_sha256(key_bytes: int) -> None:
    rng = random.Random(key_bytes)
    key = rng.randbytes(key_bytes)
    mac = FrameMac(key)
    for size in (0, 1, 8, 63, 64, 65, 300, 5000):
        data = rng.randbytes(size)
        expected = hmac.digest(key, data, hashlib.sha256)
        assert mac.tag(data) == expected
        assert mac.tag(memoryview(data)) == expected
        cut = size // 3
        assert mac.tag(data[:cut], data[cut:]) == expected
        assert frame_tag(key, data[:cut], data[cut:]) == expected


def test_the_states_are_not_consumed() -> None:
    """Each tag starts from the key's states, not from the last frame's."""
    mac = FrameMac(b"k" * 32)
    first = mac.tag(b"frame one")
    mac.tag(b"frame two")
    assert mac.tag(b"frame one") == first


def test_another_key_or_frame_gives_another_tag() -> None:
    one, other = FrameMac(b"a" * 32), FrameMac(b"b" * 32)
    assert one.tag(b"frame") != other.tag(b"frame")
    assert one.tag(b"frame") != one.tag(b"framf")
