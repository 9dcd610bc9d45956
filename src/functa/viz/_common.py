"""Checks shared by the mesh and view code."""

from __future__ import annotations

import numpy as np

__all__ = ["as_volume"]


def as_volume(values: np.ndarray) -> np.ndarray:
    """A finite, non-empty ``(X, Y, Z)`` float32 grid (``ValueError`` otherwise)."""
    vol = np.asarray(values, dtype=np.float32)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"values must be a non-empty (X, Y, Z) grid, got shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise ValueError("values contain NaN or infinity")
    return vol
