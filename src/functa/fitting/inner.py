"""The inner loop: fit per-datum latents with a few (meta-)SGD steps from zero.

Loss per item is the mean squared error over all its points and channels; the batch loss is the
*sum* over items, so each item's update is independent of the batch size (functa's ``vmap``; the
batch-mean loss of some ports scales steps by ``1/B``). Gradients with respect to the latents are
computed by :meth:`LatentModulatedSiren.backward_latents` (explicit backprop through the SIREN),
which keeps the whole loop a first-order graph: backpropagating the outer loss through it gives
the exact second-order MAML gradient. From zero latents the first step's forward pass is the same
for every item and is evaluated once per batch (``InnerLoop.shared_first_step``, same results).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..fields import LatentModulatedSiren

__all__ = ["InnerLoop", "inner_step", "mse_grad"]


def mse_grad(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Gradient of ``sum_b mean_{n,c} w (pred - target)^2`` with respect to ``pred (B, N, C)``.

    ``weight`` ``(B|1, N, 1)`` restricts the loss to observed points (values 0/1); the mean is
    then over observed points of each item.
    """
    n = pred.shape[1] * pred.shape[2]
    if weight is None:
        return (pred - target) * (2.0 / n)
    count = weight.sum(1, keepdim=True).clamp_min(1.0) * pred.shape[2]
    return (pred - target) * weight * (2.0 / count)


def inner_step(field: LatentModulatedSiren, x: Tensor, y: Tensor, latents: Tensor, lrs: Tensor,
               detach_grad: bool = False, weight: Tensor | None = None) -> Tensor:
    """One (meta-)SGD step on the latents ``(B, D)``; ``x (1|B, N, d)``, ``y (B, N, C)``.

    ``detach_grad=True`` treats the gradient as a constant (first-order MAML).
    """
    out, trace = field.forward_points(x, latents, keep_trace=True)
    g = field.backward_latents(trace, mse_grad(out, y, weight))
    if detach_grad:
        g = g.detach()
    return latents - lrs * g


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` (meta-)SGD steps from zero latents.

    Args:
        steps: number of inner steps (paper: 3).
        first_order: drop the second-order terms (first-order MAML; paper App. C: ~10 dB worse).
        checkpoint: recompute each step in the backward pass instead of storing it (less memory,
            one extra inner step of compute; gradients are unchanged).
        shared_first_step: when starting from zero latents, the shifts of the first step are the
            same for every item (``s = b'``), so its forward pass is evaluated once for the batch
            ``(1, N, W)`` and broadcast; only the per-item gradient is per item. Same numbers,
            ~1/(2 steps + 1) fewer forward FLOPs. Ignored when initial ``latents`` are given.
    """

    steps: int = 3
    first_order: bool = False
    checkpoint: bool = False
    shared_first_step: bool = True

    def __call__(self, field: LatentModulatedSiren, x: Tensor, y: Tensor, weight: Tensor | None = None,
                 latents: Tensor | None = None) -> Tensor:
        """Fit latents to targets ``y (B, N, C)`` at points ``x (1|B, N, d)``; returns ``(B, D)``."""
        lrs = field.inner_lrs()
        steps = self.steps
        if latents is None:
            if self.shared_first_step and steps > 0 and x.shape[0] == 1:
                latents = field.zero_latents(1)  # broadcast by the first step to (B, D)
            else:
                latents = field.zero_latents(y.shape[0])
        use_ckpt = self.checkpoint and torch.is_grad_enabled()
        for _ in range(steps):
            if use_ckpt:
                latents = checkpoint(inner_step, field, x, y, latents, lrs, self.first_order, weight,
                                     use_reentrant=False)
            else:
                latents = inner_step(field, x, y, latents, lrs, self.first_order, weight)
        return latents

    def history(self, field: LatentModulatedSiren, x: Tensor, y: Tensor, weight: Tensor | None = None) -> list[Tensor]:
        """Latents after each of ``0..steps`` steps (no graph), for per-step evaluation."""
        with torch.no_grad():
            zeros = field.zero_latents(y.shape[0])
            shared = self.shared_first_step and self.steps > 0 and x.shape[0] == 1
            latents = field.zero_latents(1) if shared else zeros
            lrs = field.inner_lrs()
            out = [zeros]
            for _ in range(self.steps):
                latents = inner_step(field, x, y, latents, lrs, True, weight)
                out.append(latents)
        return out
