"""Inference from partial observations (functa paper §4, Eq. 2): MAP fitting of latents.

``min_z  loss_observed(f_z) + prior_weight * (-log p(z)) / D`` per item, optimised with Adam on a
batch of latents ``(B, D)`` at once. The likelihood term is the base network's reconstruction
loss (MSE, or BCE for occupancies) over the observed points only; ``log_prior`` is any differentiable log-density of latents, usually a
normalizing flow composed with the functaset standardiser (:func:`flow_log_prior`). With
``prior_weight=0`` this is plain fitting of the observed points (the no-prior baseline). The
fitted latents are then rendered everywhere, which fills in the unobserved region.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from torch import nn

from ..fields import field_device
from ..fitting import Batch, Loss, MSELoss, auto_batch_size, field_outputs
from .latents import Standardizer

__all__ = ["flow_log_prior", "load_flow_prior", "map_fit", "map_fit_batch"]

LogPrior = Callable[[Tensor], Tensor]


def flow_log_prior(flow, standardizer: Standardizer) -> LogPrior:
    """Log-density of latents ``z (B, D)`` under an unconditional ``flow`` trained on ``standardizer(z)``."""
    const = standardizer.log_abs_det()

    def log_prior(z: Tensor) -> Tensor:
        return flow.log_prob(standardizer(z)) + const

    return log_prior


def load_flow_prior(path, base_sha256: str, device: torch.device | str = "cpu") -> LogPrior:
    """The log-prior of the unconditional flow in directory ``path``, on ``device``; refused when it was
    trained on latents of another base network than ``base_sha256``, or is class-conditional."""
    from ..io import ArtefactError
    from .checkpoint import load_task_model

    flow, extra, cfg = load_task_model(path, "flow")
    if cfg["functaset"]["base_network"] != base_sha256:
        raise ArtefactError(f"{path}: the prior was trained on latents of another base network")
    if flow.config.num_classes:
        raise ValueError(f"{path}: class-conditional priors need labels; use an unconditional flow")
    return flow_log_prior(flow.to(device), Standardizer.from_tensors(extra))


def map_fit(field: nn.Module, x: Tensor, y: Tensor, weight: Tensor, *, loss: Loss = MSELoss(),
            log_prior: LogPrior | None = None, prior_weight: float = 1.0, steps: int = 300, lr: float = 1e-2,
            init: Tensor | None = None, progress: bool = False, batch_size: int | None = None) -> Tensor:
    """MAP latents ``(B, D)`` for observations ``y (B, N, C)`` at ``x (1|B, N, d)`` under ``loss``.

    ``weight (B|1, N, 1)`` is 1 on observed points and 0 elsewhere. ``init`` defaults to zero
    latents (the meta-learned starting point); samples from the prior are another choice.
    The base network is not changed. Items are independent (per-item loss, element-wise Adam),
    so they are fitted in memory-bounded chunks of ``batch_size`` (default
    :func:`functa.fitting.auto_batch_size`) with the same result. :func:`map_fit_batch` takes any
    :class:`~functa.fitting.Batch` (rays of scenes through their renderer, too).
    """
    if weight.shape[-1] != 1 or weight.shape[-2] != y.shape[1]:
        raise ValueError(f"weight must be (B|1, N, 1) with N={y.shape[1]}, got {tuple(weight.shape)}")
    return map_fit_batch(field, Batch(x, y, weight), loss=loss, log_prior=log_prior, prior_weight=prior_weight,
                         steps=steps, lr=lr, init=init, progress=progress, batch_size=batch_size)


def map_fit_batch(field: nn.Module, batch: Batch, *, loss: Loss = MSELoss(), log_prior: LogPrior | None = None,
                  prior_weight: float = 1.0, steps: int = 300, lr: float = 1e-2, init: Tensor | None = None,
                  progress: bool = False, batch_size: int | None = None) -> Tensor:
    """:func:`map_fit` on the observations of a :class:`~functa.fitting.Batch` (its ``mask`` marks the
    observed targets; a renderer maps the field's outputs to them)."""
    if log_prior is None and prior_weight:
        prior_weight = 0.0
    batch = batch.to(field_device(field))
    b = len(batch)
    z0 = field.zero_latents(b) if init is None else init.detach().clone()
    chunk = batch_size or auto_batch_size(field, batch.x.shape[1])
    params = list(field.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    out = []
    try:
        bar = tqdm(total=steps * ((b + chunk - 1) // chunk), desc="MAP fitting", disable=not progress, leave=False)
        for s in range(0, b, chunk):
            sl = slice(s, s + chunk)
            out.append(_map_fit_chunk(field, loss, batch.items(sl), z0[sl], log_prior, prior_weight, steps, lr, bar))
        bar.close()
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return torch.cat(out)


def _map_fit_chunk(field, loss, batch: Batch, z0, log_prior, prior_weight, steps, lr, bar) -> Tensor:
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    dim = z[0].numel()
    for _ in range(steps):
        objective = loss.per_item(field_outputs(field, batch, z), batch.y, batch.mask)
        if prior_weight:
            objective = objective - prior_weight * log_prior(z) / dim
        opt.zero_grad(set_to_none=True)
        objective.sum().backward()
        opt.step()
        bar.update(1)
    return z.detach()
