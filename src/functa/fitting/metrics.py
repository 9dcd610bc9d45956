"""Reconstruction metrics with the two PSNR conventions used in the literature, named explicitly.

* ``psnr_of_mean_mse``: PSNR of the dataset-mean MSE (functa paper, Table 1 and A.3).
* ``mean_psnr``: mean over items of per-item PSNR (official functa eval loop, COIN++).

By Jensen's inequality ``mean_psnr >= psnr_of_mean_mse``. Features are assumed in ``[0, 1]``, so
``PSNR = -10 log10(MSE)``; MSE is averaged over all points *and* channels of an item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["mse_per_item", "psnr", "PsnrMeter"]


def mse_per_item(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per item: ``(B, ...) , (B, ...) -> (B,)`` (mean over everything else)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    return (pred - target).square().reshape(pred.shape[0], -1).mean(1)


def psnr(mse: Tensor | float, data_range: float = 1.0) -> Tensor:
    """``10 log10(range^2 / mse)``, elementwise. ``mse == 0`` gives ``inf``."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


@dataclass
class PsnrMeter:
    """Accumulates per-item MSEs and reports both PSNR conventions."""

    sum_mse: float = 0.0
    sum_psnr: float = 0.0
    count: int = 0

    def update(self, mse: Tensor) -> None:
        """Add per-item MSEs ``(B,)``."""
        mse = mse.detach().double().cpu()
        self.sum_mse += float(mse.sum())
        self.sum_psnr += float(psnr(mse.clamp_min(1e-20)).sum())
        self.count += int(mse.numel())

    @property
    def mean_mse(self) -> float:
        return self.sum_mse / max(self.count, 1)

    @property
    def psnr_of_mean_mse(self) -> float:
        return -10.0 * math.log10(max(self.mean_mse, 1e-20)) if self.count else float("nan")

    @property
    def mean_psnr(self) -> float:
        return self.sum_psnr / self.count if self.count else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {"psnr_of_mean_mse": self.psnr_of_mean_mse, "mean_psnr": self.mean_psnr, "mse": self.mean_mse, "count": self.count}
