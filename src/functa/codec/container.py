"""The ``.fta`` file: a compressed item with what is needed to decode it, and a checksum.

Byte layout (little endian; ``varint`` = unsigned LEB128, at most 5 bytes, no overlong forms):

====== ======= ==============================================================================
offset size    field
====== ======= ==============================================================================
0      4       magic ``b"FTAC"``
4      1       format version (1)
5      8       codec id: first 8 bytes of the codec model's SHA-256 (base network, quantiser
               statistics and entropy tables); decoding with another model is refused
13     1       modality code: the registered modality class's ``code`` (1 image, 2 sphere,
               3 voxel; :func:`functa.modalities.modality_by_code`)
14     1       quantiser id: bits (1-16) in the low 5 bits, bit 7 set for per-dimension statistics
15     1       entropy-model id (0 histogram, 1 per-dimension, 2 raw float16 (COIN),
               3 autoregressive, 4 context over a latent canvas; see :data:`ENTROPY_CODES`)
16     1       number of spatial axes ``k`` (1-4)
17     varint  ``k`` item sizes along the spatial axes (each 1 .. 2^20)
...    varint  payload length ``L``
...    L       payload: the range-coded quantised latents of all patches, in patch order
end-4  4       CRC-32 (zlib) of every preceding byte
====== ======= ==============================================================================

:func:`unpack` checks the length, magic, version, checksum and every field's range before
anything is decoded, and raises :class:`ContainerError` naming the problem. The checksum only
catches accidents (anyone can recompute it); decoders treat every field as untrusted and by
default refuse items of more than :data:`MAX_OUTPUT_POINTS` points (``2^25``, e.g. one 7680x4320
frame; ``max_output_points`` raises it).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from ..errors import CodecError
from ..modalities import get_modality, modality_by_code

__all__ = ["ContainerError", "Header", "pack", "unpack", "MAGIC", "VERSION", "ENTROPY_CODES",
           "MAX_AXIS", "MAX_POINTS", "MAX_OUTPUT_POINTS"]

MAGIC = b"FTAC"
VERSION = 1
ENTROPY_CODES = {"histogram": 0, "per_dimension": 1, "raw16": 2, "autoregressive": 3, "context": 4}
MAX_AXIS = 2**20
MAX_POINTS = 2**31  # what the format can describe
MAX_OUTPUT_POINTS = 2**25  # what decoders accept by default (an override raises it up to MAX_POINTS)
_FIXED = struct.Struct("<4sB8sBBBB")  # magic, version, codec id, modality, quantiser, entropy, axes


class ContainerError(CodecError):
    """A ``.fta`` byte string is truncated, corrupt, of another version, or for another codec."""


@dataclass(frozen=True)
class Header:
    codec_id: bytes  # 8 bytes
    modality: str
    bits: int
    per_dimension: bool
    entropy_model: str
    shape: tuple[int, ...]


def _varint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(5):
        if pos >= end:
            raise ContainerError(f"truncated file: {what} runs past the end")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if i and b == 0:
                raise ContainerError(f"malformed {what} (overlong encoding)")
            return value, pos
    raise ContainerError(f"malformed {what} (varint longer than 5 bytes)")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise ``header`` and ``payload`` (see the module docstring for the layout)."""
    if len(header.codec_id) != 8:
        raise ValueError("codec_id must be 8 bytes")
    code = get_modality(header.modality).code  # raises for unregistered modalities
    if not 1 <= header.bits <= 16:
        raise ValueError(f"bits must be in 1..16, got {header.bits}")
    if not 1 <= len(header.shape) <= 4 or not all(1 <= s <= MAX_AXIS for s in header.shape):
        raise ValueError(f"item shape {header.shape} outside the container's limits (1-4 axes of 1..{MAX_AXIS})")
    quant = header.bits | (0x80 if header.per_dimension else 0)
    out = bytearray(_FIXED.pack(MAGIC, VERSION, header.codec_id, code, quant,
                                ENTROPY_CODES[header.entropy_model], len(header.shape)))
    for s in header.shape:
        out += _varint(s)
    out += _varint(len(payload))
    out += payload
    out += struct.pack("<I", zlib.crc32(out))
    return bytes(out)


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Parse and validate a ``.fta`` byte string; returns the header and the payload."""
    data = bytes(data)
    if len(data) < _FIXED.size + 2 + 4:
        raise ContainerError(f"truncated file: {len(data)} bytes is shorter than any .fta file")
    if data[:4] != MAGIC:
        raise ContainerError(f"not a functa compressed file (magic {data[:4]!r}, expected {MAGIC!r})")
    if data[4] != VERSION:
        raise ContainerError(f"format version {data[4]} is not supported (this library reads version {VERSION})")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise ContainerError("checksum mismatch: the file is truncated or corrupted")
    _, _, codec_id, modality_code, quant, entropy_code, axes = _FIXED.unpack_from(body)
    try:
        modality = modality_by_code(modality_code).name
    except KeyError:
        modality = None
    entropy = {v: k for k, v in ENTROPY_CODES.items()}.get(entropy_code)
    bits = quant & 0x1F
    if modality is None:
        raise ContainerError(f"unknown modality code {modality_code}")
    if entropy is None:
        raise ContainerError(f"unknown entropy-model code {entropy_code}")
    if not 1 <= bits <= 16 or quant & 0x60:
        raise ContainerError(f"invalid quantiser id 0x{quant:02x}")
    if not 1 <= axes <= 4:
        raise ContainerError(f"invalid number of axes {axes}")
    pos, end = _FIXED.size, len(body)
    shape = []
    for i in range(axes):
        s, pos = _read_varint(body, pos, end, f"size of axis {i}")
        if not 1 <= s <= MAX_AXIS:
            raise ContainerError(f"axis {i} has size {s}, outside 1..{MAX_AXIS}")
        shape.append(s)
    if math.prod(shape) > MAX_POINTS:
        raise ContainerError(f"item shape {tuple(shape)} has more than {MAX_POINTS} points")
    length, pos = _read_varint(body, pos, end, "payload length")
    if pos + length != end:
        raise ContainerError(f"payload length {length} does not match the file ({end - pos} bytes remain)")
    header = Header(codec_id, modality, bits, bool(quant & 0x80), entropy, tuple(shape))
    return header, body[pos:]
