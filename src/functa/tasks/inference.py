"""Inference from partial observations (functa paper §4, Eq. 2): MAP fitting of latents.

``min_z  mse_observed(f_z) + prior_weight * (-log p(z)) / D`` per item, optimised with Adam on a
batch of latents ``(B, D)`` at once. The likelihood term is the mean squared error over the
observed points only; ``log_prior`` is any differentiable log-density of latents, usually a
normalizing flow composed with the functaset standardiser (:func:`flow_log_prior`). With
``prior_weight=0`` this is plain fitting of the observed points (the no-prior baseline). The
fitted latents are then rendered everywhere, which fills in the unobserved region.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..fields import LatentModulatedSiren
from ..fitting import auto_batch_size
from .latents import Standardizer

__all__ = ["MASKS", "flow_log_prior", "grid_mask", "map_fit"]

LogPrior = Callable[[Tensor], Tensor]


def flow_log_prior(flow, standardizer: Standardizer) -> LogPrior:
    """Log-density of latents ``z (B, D)`` under an unconditional ``flow`` trained on ``standardizer(z)``."""
    const = standardizer.log_abs_det()

    def log_prior(z: Tensor) -> Tensor:
        return flow.log_prob(standardizer(z)) + const

    return log_prior


def map_fit(field: LatentModulatedSiren, x: Tensor, y: Tensor, weight: Tensor, *,
            log_prior: LogPrior | None = None, prior_weight: float = 1.0, steps: int = 300, lr: float = 1e-2,
            init: Tensor | None = None, progress: bool = False, batch_size: int | None = None) -> Tensor:
    """MAP latents ``(B, D)`` for observations ``y (B, N, C)`` at ``x (1|B, N, d)``.

    ``weight (B|1, N, 1)`` is 1 on observed points and 0 elsewhere. ``init`` defaults to zero
    latents (the meta-learned starting point); samples from the prior are another choice.
    The base network is not changed. Items are independent (per-item loss, element-wise Adam),
    so they are fitted in memory-bounded chunks of ``batch_size`` (default
    :func:`functa.fitting.auto_batch_size`) with the same result.
    """
    if weight.shape[-1] != 1 or weight.shape[-2] != y.shape[1]:
        raise ValueError(f"weight must be (B|1, N, 1) with N={y.shape[1]}, got {tuple(weight.shape)}")
    if log_prior is None and prior_weight:
        prior_weight = 0.0
    b = y.shape[0]
    z0 = field.zero_latents(b) if init is None else init.detach().clone()
    chunk = batch_size or auto_batch_size(field, y.shape[1])
    params = list(field.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    out = []
    try:
        bar = tqdm(total=steps * ((b + chunk - 1) // chunk), desc="MAP fitting", disable=not progress, leave=False)
        for s in range(0, b, chunk):
            sl = slice(s, s + chunk)
            xs = x if x.shape[0] == 1 else x[sl]
            ws = weight if weight.shape[0] == 1 else weight[sl]
            out.append(_map_fit_chunk(field, xs, y[sl], ws, z0[sl], log_prior, prior_weight, steps, lr, bar))
        bar.close()
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return torch.cat(out)


def _map_fit_chunk(field, x, y, weight, z0, log_prior, prior_weight, steps, lr, bar) -> Tensor:
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    count = weight.sum(1).clamp_min(1.0).squeeze(-1) * y.shape[2]  # (B|1,)
    for _ in range(steps):
        pred, _ = field.forward_points(x, z)
        loss = (((pred - y) ** 2) * weight).sum((1, 2)) / count
        if prior_weight:
            loss = loss - prior_weight * log_prior(z) / z.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        bar.update(1)
    return z.detach()


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
