"""Reconstruction metrics: per-item values, and the dataset summary made from their sums.

A :class:`Metrics` object belongs to a modality (images and fields report PSNR, shapes voxel
accuracy and IoU); the fitting code only accumulates what it returns (:class:`MetricMeter`), so
nothing in the trainer, the encoder or a functaset assumes a particular metric.

:class:`PsnrMetrics` names both PSNR conventions of the literature explicitly:

* ``psnr_of_mean_mse``: PSNR of the dataset-mean MSE (functa paper, Table 1 and A.3);
* ``mean_psnr``: mean over items of per-item PSNR (official functa eval loop, COIN++).

By Jensen's inequality ``mean_psnr >= psnr_of_mean_mse``. Features are in ``[0, 1]``, so
``PSNR = -10 log10(MSE)``; the MSE is averaged over all points *and* channels of an item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["Metrics", "MetricMeter", "PsnrMetrics", "mse_per_item", "psnr"]


def mse_per_item(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per item: ``(B, ...) , (B, ...) -> (B,)`` (mean over everything else)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    return (pred - target).square().reshape(pred.shape[0], -1).mean(1)


def psnr(mse: Tensor | float, data_range: float = 1.0) -> Tensor:
    """``10 log10(range^2 / mse)``, elementwise. ``mse == 0`` gives ``inf``."""
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


@runtime_checkable
class Metrics(Protocol):
    """Per-item reconstruction metrics of predicted features against targets, both ``(B, N, C)``.

    ``per_item`` returns ``(B,)`` tensors whose *sums* over a dataset are all ``summary`` needs,
    so summaries can be accumulated batch by batch and resumed from stored sums; ``mask``
    ``(1|B, N, 1)`` restricts them to some points (e.g. the hidden part in imputation). ``headline``
    is the summary key that progress bars and one-line reports show.
    """

    headline: str

    def per_item(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]: ...

    def summary(self, sums: dict[str, float], count: int) -> dict[str, float]: ...

    def describe(self, summary: dict[str, float]) -> str:
        """One line for people, e.g. ``"23.10 dB (PSNR of mean MSE), 24.02 dB (mean PSNR)"``."""
        ...


@dataclass(frozen=True)
class PsnrMetrics:
    """MSE and PSNR of features in ``[0, 1]``: per item ``mse`` and ``psnr``; summary
    ``psnr_of_mean_mse``, ``mean_psnr`` and ``mse`` (the dataset mean)."""

    headline: str = "psnr_of_mean_mse"

    def per_item(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        if mask is None:
            mse = mse_per_item(pred, target)
        else:
            count = mask.sum((1, 2)).clamp_min(1.0) * pred.shape[2]
            mse = ((pred - target).square() * mask).sum((1, 2)) / count
        return {"mse": mse, "psnr": psnr(mse.detach().double().clamp_min(1e-20))}

    def summary(self, sums: dict[str, float], count: int) -> dict[str, float]:
        if not count:
            return {"psnr_of_mean_mse": float("nan"), "mean_psnr": float("nan"), "mse": float("nan")}
        mean_mse = sums["mse"] / count
        return {"psnr_of_mean_mse": -10.0 * math.log10(max(mean_mse, 1e-20)), "mean_psnr": sums["psnr"] / count,
                "mse": mean_mse}

    def describe(self, summary: dict[str, float]) -> str:
        return (f"PSNR {summary['psnr_of_mean_mse']:.2f} dB (of mean MSE), "
                f"{summary['mean_psnr']:.2f} dB (mean of items)")


@dataclass
class MetricMeter:
    """Running sums of a :class:`Metrics`' per-item values; :meth:`as_dict` is the summary."""

    metrics: Metrics
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, values: dict[str, Tensor]) -> None:
        """Add per-item values ``{name: (B,)}`` (as returned by ``metrics.per_item``)."""
        n = None
        for k, v in values.items():
            v = v.detach().double().cpu()
            n = int(v.numel()) if n is None else n
            self.sums[k] = self.sums.get(k, 0.0) + float(v.sum())
        self.count += n or 0

    def update(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Measure a batch, add it, and return its per-item values."""
        values = self.metrics.per_item(pred, target)
        self.add(values)
        return values

    def as_dict(self) -> dict[str, float]:
        return {**self.metrics.summary(self.sums, self.count), "count": self.count}
