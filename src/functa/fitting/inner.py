"""The inner loop: fit per-datum latents with a few (meta-)SGD steps from zero.

Each step is ``z <- z - lr * d loss(z) / dz`` with the field's inner rates ``lr`` (meta-SGD), where
``loss`` is the *sum over items* of each item's mean loss, so an item's update does not depend on
the batch size (functa's ``vmap``). The latent gradient comes from one of two places:

* **autograd** (any field, any loss, any renderer):
  ``torch.autograd.grad(loss, z, create_graph=not first_order)``;
* **the fast path**, used when the field offers an explicit latent gradient
  (:class:`functa.fields.LatentAdjoint`) and the loss has an analytic output gradient:
  ``field.backward_latents(trace, loss.output_grad(f, y))``. The whole loop is then
  an ordinary first-order graph: backpropagating the outer loss through it gives the exact
  second-order MAML gradient at lower cost, and ``torch.compile`` can fuse it. From zero latents
  the first step's forward pass is the same for every item and is evaluated once per batch
  (``shared_first_step``, same results). With a renderer between the field and the loss (volume
  rendering of rays), the output gradient is autograd's through the renderer alone
  (``create_graph`` keeps it differentiable, so the step stays exact at second order) and the
  field's part is still the explicit one.

Both paths compute the same numbers (``tests/test_inner_paths.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..fields import LatentAdjoint
from .losses import AnalyticOutputGrad, Loss, MSELoss
from .source import Batch

__all__ = ["InnerLoop", "field_outputs", "inner_step", "latent_grad", "uses_fast_path"]


def field_outputs(field: nn.Module, batch: Batch, latents: Tensor) -> Tensor:
    """What the loss compares with ``batch.y``: the field's outputs at ``batch.x``, rendered when the
    batch has a renderer. ``(B, N, C)``."""
    out = field(batch.x, latents)
    return out if batch.renderer is None else batch.renderer(out, batch)


def uses_fast_path(field: nn.Module, loss: Loss, batch: Batch) -> bool:
    """Whether the explicit latent gradient applies: the field has one and the loss has an analytic
    output gradient (a renderer between them is differentiated by autograd on its own)."""
    return isinstance(field, LatentAdjoint) and isinstance(loss, AnalyticOutputGrad)


def output_grad(loss: Loss, batch: Batch, outputs: Tensor, create_graph: bool) -> Tensor:
    """``d sum_b loss_b / d outputs`` of the field's outputs ``(B, M, C)``: the loss's analytic gradient,
    or with a renderer autograd's through the renderer and the loss (differentiable with ``create_graph``)."""
    if batch.renderer is None:
        return loss.output_grad(outputs, batch.y, batch.mask)
    with torch.enable_grad():
        o = outputs if outputs.requires_grad else outputs.detach().requires_grad_(True)
        o = o.expand(len(batch), *o.shape[1:])  # the shared first step's outputs (1, M, C): a gradient per item
        value = loss.per_item(batch.renderer(o, batch), batch.y, batch.mask).sum()
        (g,) = torch.autograd.grad(value, o, create_graph=create_graph)
    return g


def latent_grad(field: nn.Module, loss: Loss, batch: Batch, latents: Tensor, *, create_graph: bool,
                fast: bool) -> Tensor:
    """``d sum_b loss_b / d latents`` ``(B, *latent_shape)``.

    ``create_graph`` keeps the gradient differentiable (second order); ``fast`` uses the field's
    explicit adjoint (its graph is first order whatever ``create_graph`` says, and exact).
    ``latents`` may have batch 1 on the fast path (broadcast against the items).
    """
    if fast:
        out, trace = field.forward_points(batch.x, latents, keep_trace=True)
        g = field.backward_latents(trace, output_grad(loss, batch, out, create_graph))
        return g if create_graph else g.detach()
    with torch.enable_grad():
        z = latents if latents.requires_grad else latents.detach().requires_grad_(True)
        value = loss.per_item(field_outputs(field, batch, z), batch.y, batch.mask).sum()
        (g,) = torch.autograd.grad(value, z, create_graph=create_graph)
    return g


def inner_step(field: nn.Module, loss: Loss, batch: Batch, latents: Tensor, lrs: Tensor,
               first_order: bool = False, fast: bool = True) -> Tensor:
    """One (meta-)SGD step on the latents. ``first_order=True`` treats the gradient as a constant
    (first-order MAML)."""
    create_graph = torch.is_grad_enabled() and not first_order
    g = latent_grad(field, loss, batch, latents, create_graph=create_graph, fast=fast)
    return latents - lrs * g


@dataclass(frozen=True)
class InnerLoop:
    """``steps`` (meta-)SGD steps from zero latents on ``loss``.

    Args:
        steps: number of inner steps (paper: 3).
        loss: the reconstruction loss (default MSE).
        first_order: drop the second-order terms (first-order MAML; paper App. C: ~10 dB worse).
        checkpoint: recompute each step in the backward pass instead of storing it (less memory,
            one extra inner step of compute; gradients are unchanged).
        shared_first_step: on the fast path from zero latents with shared coordinates, evaluate
            the first step's forward pass once for the batch ``(1, N, W)`` and broadcast it; only
            the per-item gradient is per item. Same numbers, ~1/(2 steps + 1) fewer forward FLOPs.
        fast_path: use the field's explicit latent gradient where it applies (see the module
            docstring); ``False`` always uses autograd (same results, slower).
    """

    steps: int = 3
    loss: Loss = MSELoss()
    first_order: bool = False
    checkpoint: bool = False
    shared_first_step: bool = True
    fast_path: bool = True

    def is_fast(self, field: nn.Module, batch: Batch) -> bool:
        return self.fast_path and uses_fast_path(field, self.loss, batch)

    def _start(self, field: nn.Module, batch: Batch, fast: bool) -> Tensor:
        if fast and self.shared_first_step and self.steps > 0 and batch.shared:
            return field.zero_latents(1)  # broadcast by the first step to (B, *latent_shape)
        return field.zero_latents(len(batch))

    def __call__(self, field: nn.Module, batch: Batch, latents: Tensor | None = None, *,
                 fast: bool | None = None) -> Tensor:
        """Fit latents ``(B, *latent_shape)`` to ``batch`` (from zero, or from ``latents``).

        ``fast`` is :meth:`is_fast` unless given (compiled callers decide it outside the graph)."""
        fast = self.is_fast(field, batch) if fast is None else fast
        lrs = field.inner_lrs()
        if latents is None:
            latents = self._start(field, batch, fast)
        use_ckpt = self.checkpoint and torch.is_grad_enabled()
        for _ in range(self.steps):
            if use_ckpt:
                latents = checkpoint(inner_step, field, self.loss, batch, latents, lrs, self.first_order, fast,
                                     use_reentrant=False)
            else:
                latents = inner_step(field, self.loss, batch, latents, lrs, self.first_order, fast)
        return latents

    def history(self, field: nn.Module, batch: Batch) -> list[Tensor]:
        """Latents after each of ``0..steps`` steps (no graph), for per-step evaluation."""
        fast = self.is_fast(field, batch)
        with torch.no_grad():
            zeros = field.zero_latents(len(batch))
            latents = self._start(field, batch, fast)
            lrs = field.inner_lrs()
            out = [zeros]
            for _ in range(self.steps):
                latents = inner_step(field, self.loss, batch, latents, lrs, True, fast)
                out.append(latents)
        return out
