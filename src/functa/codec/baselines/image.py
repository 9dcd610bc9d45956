"""Image baselines through Pillow: JPEG, JPEG 2000, WebP and AVIF of an 8-bit image (grey or RGB)."""

from __future__ import annotations

import io
import math
from typing import Callable

import numpy as np
from PIL import Image, features

__all__ = ["PLUGINS", "available", "encode_image", "encode_item", "psnr_uint8"]

PLUGINS = {"jpeg": "jpg", "jpeg2000": "jpg_2000", "webp": "webp", "avif": "avif"}  # Pillow feature names


def available(codec: str) -> Callable[[], bool]:
    """Whether this Pillow build encodes ``codec`` (a function, asked when the registry is consulted)."""
    return lambda: bool(features.check(PLUGINS[codec]))


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, data range 255) of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def encode_image(image: np.ndarray, codec: str, knob: float) -> tuple[bytes, np.ndarray]:
    """Encode ``image (H, W, C)`` uint8 with ``codec`` at ``knob``; returns ``(file bytes, decoded uint8)``.

    Knobs: JPEG, WebP and AVIF ``quality``; JPEG 2000 the compression ratio of its one quality layer
    (irreversible 9/7 wavelet)."""
    if codec not in PLUGINS:
        raise ValueError(f"unknown image codec {codec!r}; choose from {sorted(PLUGINS)}")
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, format="JPEG", quality=int(knob))
    elif codec == "jpeg2000":
        img.save(buf, format="JPEG2000", quality_mode="rates", quality_layers=[float(knob)], irreversible=True)
    elif codec == "webp":
        img.save(buf, format="WEBP", quality=int(knob), method=6)
    else:
        img.save(buf, format="AVIF", quality=int(knob), speed=6)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as dec:
        out = np.asarray(dec.convert("L" if image.shape[-1] == 1 else "RGB"))
    return data, out.reshape(image.shape)


def encode_item(codec: str):
    """``encode(item, knob, modality)`` of the registry for an 8-bit image item ``(H, W, C)``."""

    def encode(item: np.ndarray, knob: float, modality) -> tuple[bytes, np.ndarray]:
        return encode_image(np.asarray(item, np.uint8), codec, knob)

    return encode
