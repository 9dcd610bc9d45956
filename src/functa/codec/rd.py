"""Rate-distortion evaluation: one RD point per codec setting, averaged over a set of images, and
the Bjøntegaard delta rate between two curves.

Conventions (COIN++): rate in bits per pixel, ``8 * file bytes / (H * W)`` (channels not counted),
averaged over images; distortion as the mean over images of the per-image PSNR of the decoded
8-bit image. For functa both the whole ``.fta`` file and the payload alone (what the papers report:
the codec's tables and header are "part of the decoder") are recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from .baselines import at_rate, psnr_uint8
from .coin import CoinCodec
from .container import unpack
from .model import EncodeSettings, FunctaCodec

__all__ = ["RDPoint", "bd_rate", "coin_point", "functa_point", "standard_point"]


@dataclass
class RDPoint:
    """Mean rate and distortion of one codec setting over ``count`` images."""

    codec: str
    label: str
    bpp: float
    psnr: float
    count: int
    payload_bpp: float | None = None
    encode_s_per_item: float | None = None
    decode_s_per_item: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(images: list[np.ndarray], batch: int):
    """Same-shape stacks of at most ``batch`` images ``(B, H, W, C)`` (images keep their order within a shape)."""
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for img in images:
        by_shape.setdefault(img.shape, []).append(img)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            yield np.stack(group[start:start + batch])


def _measure(images: list[np.ndarray], compress, decompress, batch: int) -> dict:
    """Compress and decode every image; per-image bpp, payload bpp and PSNR, and total times."""
    bpp, payload, psnrs, enc_s, dec_s = [], [], [], 0.0, 0.0
    for part in _batches(images, batch):
        t = time.perf_counter()
        files = compress(part)
        enc_s += time.perf_counter() - t
        t = time.perf_counter()
        decoded = decompress(files)
        dec_s += time.perf_counter() - t
        pixels = part.shape[1] * part.shape[2]
        for f, img, out in zip(files, part, decoded):
            bpp.append(8.0 * len(f) / pixels)
            payload.append(8.0 * len(unpack(f)[1]) / pixels)
            psnrs.append(psnr_uint8(np.clip(np.round(out), 0, 255).astype(np.uint8), img))
    n = len(images)
    return dict(bpp=float(np.mean(bpp)), psnr=float(np.mean(psnrs)), count=n, payload_bpp=float(np.mean(payload)),
                encode_s_per_item=enc_s / n, decode_s_per_item=dec_s / n)


def functa_point(codec: FunctaCodec, images: list[np.ndarray] | np.ndarray, label: str,
                 settings: EncodeSettings | None = None, batch: int = 256) -> RDPoint:
    """Compress and decompress images ``(H, W, C)`` uint8 (any sizes) with ``codec``; one RD point."""
    m = _measure(list(images), lambda part: codec.compress_many(part, settings), codec.decompress_many, batch)
    return RDPoint("functa", label, **m)


def standard_point(images: list[np.ndarray] | np.ndarray, codec: str, target_bpp: float) -> RDPoint:
    """Each image binary-searched to at most ``target_bpp`` with a standard codec; one RD point."""
    pts = [at_rate(img, codec, target_bpp) for img in images]
    return RDPoint(codec, f"{codec}@{target_bpp:g}", float(np.mean([p.bpp for p in pts])),
                   float(np.mean([p.psnr for p in pts])), len(pts))


def coin_point(images: list[np.ndarray] | np.ndarray, target_bpp: float, steps: int = 2000, lr: float = 1e-3,
               batch: int = 256) -> RDPoint:
    """COIN with the widest 2-hidden-layer SIREN within ``target_bpp`` (16-bit weights; sized for the
    smallest image); one RD point."""
    images = list(images)
    h, w = min((img.shape[0] * img.shape[1], img.shape[:2]) for img in images)[1]
    codec = CoinCodec.for_rate(target_bpp, h, w, channels=images[0].shape[2], steps=steps, lr=lr)
    m = _measure(images, codec.compress_many, lambda files: [codec.decompress(f) for f in files], batch)
    c = codec.config
    return RDPoint("coin", f"COIN {c.hidden_layers}x{c.width}, {steps} steps", **m)


def bd_rate(rate_a: list[float], psnr_a: list[float], rate_b: list[float], psnr_b: list[float]) -> float | None:
    """Bjøntegaard delta rate of curve ``a`` against ``b``, in percent (negative: ``a`` needs fewer bits).

    Fits log-rate as a polynomial (cubic when there are 4+ points) of PSNR for each curve and
    compares their integrals over the overlapping PSNR interval. ``None`` when the curves do not
    overlap in PSNR or have fewer than two points.
    """
    if min(len(rate_a), len(rate_b)) < 2:
        return None
    lo = max(min(psnr_a), min(psnr_b))
    hi = min(max(psnr_a), max(psnr_b))
    if not hi > lo:
        return None

    def integral(rates, psnrs):
        deg = min(3, len(rates) - 1)
        coef = np.polyfit(np.asarray(psnrs, float), np.log(np.asarray(rates, float)), deg)
        anti = np.polyint(coef)
        return (np.polyval(anti, hi) - np.polyval(anti, lo)) / (hi - lo)

    return float((np.exp(integral(rate_a, psnr_a) - integral(rate_b, psnr_b)) - 1.0) * 100.0)
