"""Rate-distortion evaluation: one RD point per codec setting, averaged over a set of items, and
the Bjøntegaard delta rate between two curves.

Conventions (COIN++): the rate is the modality's :meth:`~functa.modalities.ModalityBase.rate` of the
file's bytes (bits per pixel ``8 * bytes / (H * W)`` for images, channels not counted; kbps for audio;
bits per voxel for volumes), averaged over items; distortion is the mean over items of the per-item
PSNR of the decoded item (:meth:`compare`: 8-bit images, the ``[0, 1]`` features of audio and volumes).
For functa both the whole ``.fta`` file and the payload alone (what the papers report: the codec's
tables and header are "part of the decoder") are recorded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .baselines import at_rate
from .coin import CoinCodec
from .container import unpack
from .model import EncodeSettings, FunctaCodec

__all__ = ["RDPoint", "bd_rate", "coin_point", "functa_point", "standard_point"]


@dataclass
class RDPoint:
    """Mean rate (the modality's unit) and distortion of one codec setting over ``count`` items;
    ``quality``: the means of every other measure of :meth:`compare` (e.g. ``snr_db`` for audio)."""

    codec: str
    label: str
    rate: float
    psnr: float
    count: int
    payload_rate: float | None = None
    encode_s_per_item: float | None = None
    decode_s_per_item: float | None = None
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def bpp(self) -> float:
        """The rate, named as for images (bits per pixel)."""
        return self.rate

    def to_dict(self) -> dict:
        return asdict(self)


def _batches(items: list[np.ndarray], batch: int):
    """Same-shape stacks of at most ``batch`` items ``(B, *shape)`` (items keep their order within a shape)."""
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for it in items:
        by_shape.setdefault(it.shape, []).append(it)
    for group in by_shape.values():
        for start in range(0, len(group), batch):
            yield np.stack(group[start:start + batch])


def _mean_quality(scores: list[dict[str, float]]) -> tuple[float, dict[str, float]]:
    psnr = float(np.mean([s["psnr_db"] for s in scores]))
    shared = set.intersection(*(set(s) for s in scores)) - {"psnr_db"}  # e.g. seam_ratio: large items only
    others = {k: float(np.mean([s[k] for s in scores])) for k in scores[0] if k in shared}
    return psnr, others


def _measure(items: list[np.ndarray], compress, decompress, batch: int, modality) -> dict:
    """Compress and decode every item; per-item rate, payload rate and quality, and total times."""
    rate, payload, scores, enc_s, dec_s = [], [], [], 0.0, 0.0
    for part in _batches(items, batch):
        t = time.perf_counter()
        files = compress(part)
        enc_s += time.perf_counter() - t
        t = time.perf_counter()
        decoded = decompress(files)
        dec_s += time.perf_counter() - t
        for f, item, out in zip(files, part, decoded):
            rate.append(modality.rate(len(f), item.shape))
            payload.append(modality.rate(len(unpack(f)[1]), item.shape))
            scores.append(modality.compare(out, item))
    n = len(items)
    psnr, quality = _mean_quality(scores)
    return dict(rate=float(np.mean(rate)), psnr=psnr, count=n, payload_rate=float(np.mean(payload)),
                encode_s_per_item=enc_s / n, decode_s_per_item=dec_s / n, quality=quality)


def functa_point(codec: FunctaCodec, items: list[np.ndarray] | np.ndarray, label: str,
                 settings: EncodeSettings | None = None, batch: int = 256) -> RDPoint:
    """Compress and decompress items (data units, any sizes: images ``(H, W, C)`` uint8, clips ``(L,)``,
    volumes ``(X, Y, Z)``) with ``codec``; one RD point."""
    m = _measure(list(items), lambda part: codec.compress_many(part, settings), codec.decompress_many, batch,
                 codec.modality)
    return RDPoint("functa", label, **m)


def standard_point(items: list[np.ndarray] | np.ndarray, codec: str, target: float, modality=None) -> RDPoint:
    """Each item binary-searched to at most ``target`` (the modality's rate unit; ``modality`` defaults
    to 8-bit images) with a standard codec; one RD point."""
    items = list(items)
    pts = [at_rate(it, codec, target, modality) for it in items]
    quality = {k: float(np.mean([p.quality[k] for p in pts])) for k in pts[0].quality} if pts else {}
    return RDPoint(codec, f"{codec}@{target:g}", float(np.mean([p.rate for p in pts])),
                   float(np.mean([p.psnr for p in pts])), len(pts), quality=quality)


def coin_point(images: list[np.ndarray] | np.ndarray, target_bpp: float, steps: int = 2000, lr: float = 1e-3,
               batch: int = 256) -> RDPoint:
    """COIN with the widest 2-hidden-layer SIREN within ``target_bpp`` (16-bit weights; sized for the
    smallest image); one RD point (images only)."""
    from ..modalities import get_modality

    images = list(images)
    h, w = min((img.shape[0] * img.shape[1], img.shape[:2]) for img in images)[1]
    codec = CoinCodec.for_rate(target_bpp, h, w, channels=images[0].shape[2], steps=steps, lr=lr)
    images_modality = get_modality("image")(height=h, width=w, channels=images[0].shape[2])  # rate, compare: any size
    m = _measure(images, codec.compress_many, lambda files: [codec.decompress(f) for f in files], batch, images_modality)
    c = codec.config
    return RDPoint("coin", f"COIN {c.hidden_layers}x{c.width}, {steps} steps", **m)


def _unique(rates: list[float], psnrs: list[float]) -> tuple[list[float], list[float]]:
    pairs = sorted(set(zip(map(float, rates), map(float, psnrs))))
    return [r for r, _ in pairs], [p for _, p in pairs]


def _frontier(rates: list[float], psnrs: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats (lower or equal rate, higher PSNR), by increasing PSNR."""
    keep: list[tuple[float, float]] = []
    for r, p in sorted(zip(rates, psnrs), key=lambda t: (t[0], -t[1])):
        if not keep or p > keep[-1][1]:
            keep.append((r, p))
    return np.array([p for _, p in keep]), np.log(np.array([r for r, _ in keep]))


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivatives of the monotone piecewise-cubic Hermite interpolant (Fritsch & Carlson, 1980)."""
    h, delta = np.diff(x), np.diff(y) / np.diff(x)
    if len(x) == 2:
        return np.array([delta[0], delta[0]])
    d = np.zeros_like(x)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = delta[:-1] * delta[1:] > 0
    d[1:-1][same] = (w1 + w2)[same] / (w1[same] / delta[:-1][same] + w2[same] / delta[1:][same])

    def edge(h0, h1, m0, m1):
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(e) != np.sign(m0):
            return 0.0
        return 3 * m0 if np.sign(m0) != np.sign(m1) and abs(e) > abs(3 * m0) else e

    d[0], d[-1] = edge(h[0], h[1], delta[0], delta[1]), edge(h[-1], h[-2], delta[-1], delta[-2])
    return d


def _pchip_mean(x: np.ndarray, y: np.ndarray, lo: float, hi: float, samples: int = 4001) -> float:
    """Mean over ``[lo, hi]`` of the monotone cubic through ``(x, y)`` (Simpson's rule)."""
    d = _pchip_slopes(x, y)
    t = np.linspace(lo, hi, samples)
    k = np.clip(np.searchsorted(x, t, side="right") - 1, 0, len(x) - 2)
    h = x[k + 1] - x[k]
    s = (t - x[k]) / h
    v = ((2 * s**3 - 3 * s**2 + 1) * y[k] + (s**3 - 2 * s**2 + s) * h * d[k]
         + (-2 * s**3 + 3 * s**2) * y[k + 1] + (s**3 - s**2) * h * d[k + 1])
    w = np.ones(samples)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return float((w * v).sum() / w.sum())


def bd_rate(rate_a: list[float], psnr_a: list[float], rate_b: list[float], psnr_b: list[float],
            method: str = "pchip") -> float | None:
    """Bjøntegaard delta rate of curve ``a`` against ``b``, in percent (negative: ``a`` needs fewer bits):
    the mean log-rate difference over the PSNR interval both curves cover.

    ``method = "pchip"`` (the default; the JVET / CompressAI practice): log-rate as the monotone
    piecewise-cubic Hermite interpolant of PSNR through each curve's efficient points (a point that
    another beats on both rate and PSNR is dropped); it follows short, uneven or flat curves without
    overshooting. ``"cubic"``: Bjøntegaard's original least-squares polynomial (cubic when there are
    4+ points), which can swing far between unevenly spaced points. ``None`` when the curves do not
    overlap in PSNR or have fewer than two distinct points.
    """
    # repeated points (a codec whose lowest quality is over several targets) carry no extra information
    (rate_a, psnr_a), (rate_b, psnr_b) = _unique(rate_a, psnr_a), _unique(rate_b, psnr_b)
    if method == "pchip":
        (xa, ya), (xb, yb) = _frontier(rate_a, psnr_a), _frontier(rate_b, psnr_b)
        if min(len(xa), len(xb)) < 2:
            return None
        lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
        if not hi > lo:
            return None
        return float((np.exp(_pchip_mean(xa, ya, lo, hi) - _pchip_mean(xb, yb, lo, hi)) - 1.0) * 100.0)
    if method != "cubic":
        raise ValueError(f"unknown BD-rate method {method!r}; choose pchip or cubic")
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
