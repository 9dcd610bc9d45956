"""Observation masks on grids: which points of an item are observed (for imputation, paper §4).

Masks are boolean ``(N,)`` over the flattened row-major grid, ``True`` where a point is observed.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MASKS", "grid_mask"]


def _half(shape: tuple[int, ...], side: str) -> np.ndarray:
    h, w = shape[0], shape[1]
    m = np.zeros((h, w), bool)
    if side == "left":
        m[:, : w // 2] = True
    elif side == "right":
        m[:, w // 2:] = True
    elif side == "top":
        m[: h // 2] = True
    elif side == "bottom":
        m[h // 2:] = True
    return m


MASKS = ("left-half", "right-half", "top-half", "bottom-half", "random", "centre-box")


def grid_mask(shape: tuple[int, ...], kind: str, fraction: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of *observed* grid points ``shape`` (row-major, flattened ``(N,)``).

    ``kind``: ``left-half`` (observe the left half, impute the right), ``right-half``,
    ``top-half``, ``bottom-half``, ``random`` (observe a random ``fraction`` of points) or
    ``centre-box`` (hide a centred box covering ``fraction`` of the area). For lat/lon grids rows
    are latitudes, so ``top-half`` observes the northern hemisphere.
    """
    if len(shape) < 2:
        raise ValueError(f"grid masks need a 2-D grid, got shape {shape}")
    h, w = shape[0], shape[1]
    if kind.endswith("-half") and kind in MASKS:
        m = _half(shape, kind.split("-")[0])
    elif kind == "random":
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        m = np.zeros(h * w, bool)
        m[np.random.default_rng(seed).choice(h * w, int(round(fraction * h * w)), replace=False)] = True
        m = m.reshape(h, w)
    elif kind == "centre-box":
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        bh, bw = int(round(h * fraction**0.5)), int(round(w * fraction**0.5))
        m = np.ones((h, w), bool)
        m[(h - bh) // 2:(h - bh) // 2 + bh, (w - bw) // 2:(w - bw) // 2 + bw] = False
    else:
        raise ValueError(f"unknown mask {kind!r}; choose from {', '.join(MASKS)}")
    extra = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return np.repeat(m.reshape(-1), extra)
