import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from functa.codec import ContainerError, Header, pack, unpack

H = Header(b"\x01\x02\x03\x04\x05\x06\x07\x08", "image", 5, True, "per_dimension", (32, 32))


def test_byte_exact_layout():
    data = pack(H, b"\xaa\xbb")
    expected = (b"FTAC" + bytes([1]) + bytes(range(1, 9)) + bytes([1, 0x85, 1, 2]) + bytes([32, 32]) + bytes([2])
                + b"\xaa\xbb")
    expected += struct.pack("<I", zlib.crc32(expected))
    assert data == expected
    assert unpack(data) == (H, b"\xaa\xbb")


def test_round_trip_large_shape_and_empty_payload():
    h = Header(b"abcdefgh", "sphere", 16, False, "histogram", (2**20, 3, 1))
    assert unpack(pack(h, b"")) == (h, b"")


def test_every_truncation_and_bit_flip_is_rejected():
    data = pack(H, bytes(range(40)))
    for n in range(len(data)):
        with pytest.raises(ContainerError):
            unpack(data[:n])
    for i in range(len(data)):
        for bit in (0, 3, 7):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(ContainerError):
                unpack(bytes(bad))


def _resealed(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b"JUNK" + b[4:], "not a functa compressed file"),
    (lambda b: b[:4] + bytes([9]) + b[5:], "format version 9"),
    (lambda b: b[:13] + bytes([77]) + b[14:], "unknown modality code"),
    (lambda b: b[:15] + bytes([9]) + b[16:], "unknown entropy-model code"),
    (lambda b: b[:14] + bytes([0x80]) + b[15:], "invalid quantiser id"),
    (lambda b: b[:16] + bytes([0]) + b[17:], "invalid number of axes"),
    (lambda b: b[:17] + bytes([0]) + b[18:], "axis 0 has size 0"),
    (lambda b: b[:-1], "payload length"),
    (lambda b: b[:17] + b"\xff\xff\xff\xff\xff\xff" + b[19:], "longer than 5 bytes"),
])
def test_named_errors(mutate, message):
    body = pack(H, b"xyz")[:-4]
    with pytest.raises(ContainerError, match=message):
        unpack(_resealed(mutate(body)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_never_crashes(blob):
    try:
        unpack(blob)
    except ContainerError:
        pass
    try:
        unpack(b"FTAC\x01" + blob)
    except ContainerError:
        pass
