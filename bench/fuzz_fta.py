"""Fuzz target ``fta`` (``bench/fuzz.py``): compressed files decoded as ``functa decompress`` does.

:meth:`FtaTarget.make_seed` builds, in a few seconds, one tiny image codec per range-coded entropy
model (``histogram``, ``per_dimension``, ``autoregressive``): a random 8x8 SIREN base network, the
latents of 16 random 8x8 images fitted in 2 inner steps, 5-bit per-dimension quantiser. The codec
directories are saved under ``workdir/codecs`` and loaded back with :meth:`FunctaCodec.load` (as
the command line does) once; the seed is a directory holding only ``<model>.fta``, one 20x28 image
(12 patches) compressed by each, so the driver mutates ``.fta`` bytes and nothing else.

:meth:`FtaTarget.load` decodes each file with :func:`functa.compression.read_fta`, the function
behind ``functa decompress``, after doing what anyone can to a mutated file (:func:`repair`): make
its payload-length field match the bytes that follow and recompute its CRC-32. Without that, nearly
every input would stop at those two checks; with it, the header fields and the payload reach the
decoder, which must be safe without the checksum's help.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from functa.atomic import atomic_write_bytes
from functa.codec import AutoregressiveConfig, CodecConfig, FunctaCodec, QuantizerConfig
from functa.compression import read_fta
from functa.fields import LatentModulatedSiren, SirenConfig
from functa.fitting import Batch, fit_latents
from functa.io import load_base_network, save_base_network
from functa.modalities import get_modality

MODELS = ("histogram", "per_dimension", "autoregressive")


def _varint_end(data: bytes, pos: int) -> int | None:
    """Index just past the LEB128 varint at ``pos`` (``None`` if it runs past the end)."""
    while pos < len(data):
        pos += 1
        if not data[pos - 1] & 0x80:
            return pos
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def repair(data: bytes) -> bytes:
    """``data`` with its payload-length field set to the bytes that follow it (when the header up to
    it parses: 17 fixed bytes, ``data[16]`` in 1..4 axis-size varints) and its last 4 bytes set to
    the CRC-32 of all before them. Files shorter than 4 bytes are returned unchanged."""
    if len(data) < 4:
        return data
    body = data[:-4]
    if len(body) > 16 and 1 <= body[16] <= 4:
        pos: int | None = 17
        for _ in range(body[16]):
            pos = _varint_end(body, pos) if pos is not None else None
        end = _varint_end(body, pos) if pos is not None else None
        if end is not None:
            body = body[:pos] + _varint(len(body) - end) + body[end:]
    return body + struct.pack("<I", zlib.crc32(body))


class FtaTarget:
    name = "fta"

    def __init__(self) -> None:
        self.codecs: dict[str, FunctaCodec] = {}

    def make_seed(self, workdir: Path) -> Path:
        workdir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        modality = get_modality("image")(height=8, width=8, channels=3)
        field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, width=16, depth=3, latent_dim=6, w0=10.0))
        base = workdir / "codecs" / "base"
        save_base_network(base, field, modality=modality.to_config(), run={"train": {"inner_steps": 2}})
        field, base_config = load_base_network(base)
        train = rng.integers(0, 256, size=(16, 8, 8, 3), dtype=np.uint8)
        latents = fit_latents(field, Batch(modality.coordinates()[None], modality.to_features(train)), 2).latents
        image = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
        seed = workdir / "seed"
        seed.mkdir()
        for kind in MODELS:
            config = CodecConfig(QuantizerConfig(bits=5), kind,
                                 autoregressive=AutoregressiveConfig(hidden=(16, 16), components=2, steps=50))
            directory = workdir / "codecs" / kind
            FunctaCodec.build(field, modality, base_config, latents, config).save(directory, base)
            self.codecs[kind] = FunctaCodec.load(directory)
            atomic_write_bytes(seed / f"{kind}.fta", self.codecs[kind].compress(image))
        return seed

    def load(self, path: Path) -> None:
        for kind, codec in self.codecs.items():
            file = path / f"{kind}.fta"
            if file.is_file() and (data := file.read_bytes()) != (fixed := repair(data)):
                atomic_write_bytes(file, fixed)
            read_fta(codec, file)  # a missing file or a directory in its place raises too


TARGET = FtaTarget()
