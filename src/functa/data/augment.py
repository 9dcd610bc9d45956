"""Image augmentations for encoding several functa per training image (spatial functa App. B.1:
random horizontal flips and pad-and-crop). Vectorised over the batch; the random choices of a
whole dataset copy are drawn up front from ``default_rng([seed, copy])`` so they do not depend
on how the dataset is split into batches (an interrupted encoding resumes identically).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AUGMENTATIONS", "ImageAugmentation"]

AUGMENTATIONS = ("flip", "crop")


@dataclass(frozen=True)
class ImageAugmentation:
    """``kinds`` ⊆ {"flip", "crop"}; ``pad`` pixels of zero padding before a random crop."""

    kinds: tuple[str, ...] = ("flip", "crop")
    pad: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in AUGMENTATIONS]
        if bad or not self.kinds:
            raise ValueError(f"augmentations must be a non-empty subset of {AUGMENTATIONS}, got {self.kinds}")
        if self.pad < 0:
            raise ValueError(f"pad must be >= 0, got {self.pad}")

    def parameters(self, count: int, copy: int) -> np.ndarray:
        """Per-item choices ``(count, 3)``: flip (0/1), row offset, column offset."""
        rng = np.random.default_rng([self.seed, copy])
        flip = rng.integers(0, 2, count) if "flip" in self.kinds else np.zeros(count, np.int64)
        if "crop" in self.kinds:
            off = rng.integers(0, 2 * self.pad + 1, (count, 2))
        else:
            off = np.full((count, 2), self.pad)
        return np.column_stack([flip, off])

    def apply(self, images: np.ndarray, params: np.ndarray) -> np.ndarray:
        """Augment images ``(B, H, W, C)`` with rows of :meth:`parameters` ``(B, 3)``."""
        if images.ndim != 4:
            raise ValueError(f"augmentation needs images (B, H, W, C), got shape {images.shape}")
        b, h, w, _ = images.shape
        out = np.where(params[:, 0, None, None, None].astype(bool), images[:, :, ::-1], images)
        if "crop" in self.kinds and self.pad:
            p = self.pad
            padded = np.pad(out, ((0, 0), (p, p), (p, p), (0, 0)))
            rows = params[:, 1, None] + np.arange(h)[None]  # (B, H)
            cols = params[:, 2, None] + np.arange(w)[None]  # (B, W)
            out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return np.ascontiguousarray(out)
