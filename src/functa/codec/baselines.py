"""Standard image codecs through Pillow, driven to a target rate (the COIN++ baseline protocol).

For each image and target rate, the codec's quality knob is binary-searched for the best image
whose file is at most ``target_bpp * H * W / 8`` bytes (COIN++ ``baseline_image.py``); when even
the lowest quality is larger, the lowest quality is used and its true rate is reported. Rates are
measured from the encoded bytes (headers included), PSNR on the decoded 8-bit image.

=========  ==========================  =================================
codec      Pillow plugin               quality knob searched
=========  ==========================  =================================
jpeg       libjpeg(-turbo), 4:2:0      ``quality`` 1..95
jpeg2000   OpenJPEG                    ``quality_layers=[ratio]`` 1..400
webp       libwebp (lossy, method 6)   ``quality`` 0..100
avif       libavif (speed 6)           ``quality`` 0..100
=========  ==========================  =================================
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

__all__ = ["STANDARD_CODECS", "CodecPoint", "available_codecs", "encode_image", "at_rate", "psnr_uint8"]


@dataclass(frozen=True)
class _Spec:
    plugin: str
    lo: float
    hi: float
    higher_is_better: bool  # larger knob -> larger file
    integer: bool = True


STANDARD_CODECS: dict[str, _Spec] = {
    "jpeg": _Spec("jpg", 1, 95, True),
    "jpeg2000": _Spec("jpg_2000", 1.0, 400.0, False, integer=False),  # compression ratio: larger -> smaller
    "webp": _Spec("webp", 0, 100, True),
    "avif": _Spec("avif", 0, 100, True),
}


@dataclass(frozen=True)
class CodecPoint:
    """One encoded image: its ``bytes``, ``bpp`` (bits per pixel) and ``psnr`` (dB), and the knob used."""

    codec: str
    knob: float
    bytes: int
    bpp: float
    psnr: float


def available_codecs() -> list[str]:
    """The standard codecs this Pillow build can encode."""
    return [name for name, spec in STANDARD_CODECS.items() if features.check(spec.plugin)]


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, data range 255) of two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def encode_image(image: np.ndarray, codec: str, knob: float) -> tuple[bytes, np.ndarray]:
    """Encode ``image (H, W, C)`` uint8 with ``codec`` at ``knob``; returns ``(file bytes, decoded uint8)``."""
    if codec not in STANDARD_CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(STANDARD_CODECS)}")
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


def _point(image: np.ndarray, codec: str, knob: float) -> CodecPoint:
    data, out = encode_image(image, codec, knob)
    h, w = image.shape[:2]
    return CodecPoint(codec, float(knob), len(data), 8.0 * len(data) / (h * w), psnr_uint8(out, image))


def at_rate(image: np.ndarray, codec: str, target_bpp: float, iterations: int = 12) -> CodecPoint:
    """The best-quality encoding of ``image`` with at most ``target_bpp`` (binary search on the knob)."""
    spec = STANDARD_CODECS[codec]
    budget = target_bpp * image.shape[0] * image.shape[1] / 8.0
    lo, hi = spec.lo, spec.hi

    def knob_of(t: float) -> float:  # t in [0, 1], 1 = largest file
        v = lo + t * (hi - lo) if spec.higher_is_better else hi - t * (hi - lo)
        return float(round(v)) if spec.integer else v

    best = _point(image, codec, knob_of(0.0))
    if best.bytes > budget:
        return best
    a, b = 0.0, 1.0
    for _ in range(iterations):
        mid = (a + b) / 2
        p = _point(image, codec, knob_of(mid))
        if p.bytes <= budget:
            a = mid
            if p.bytes > best.bytes or (p.bytes == best.bytes and p.psnr > best.psnr):
                best = p
        else:
            b = mid
        if spec.integer and abs(knob_of(a) - knob_of(b)) < 1:
            break
    top = _point(image, codec, knob_of(1.0))
    return top if top.bytes <= budget else best
