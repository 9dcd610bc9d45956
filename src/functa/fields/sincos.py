"""``sin`` and ``cos`` of a SIREN pre-activation, computed together.

Every sine layer needs ``sin(pre)`` (its output) and ``cos(pre)`` (its derivative, used by the
explicit latent gradient and by autograd). :func:`sin_cos` computes both once and wraps them in an
autograd function whose backward reuses the two saved outputs (no transcendental in the backward).

Under ``torch.compile`` both come from :func:`sincos_poly`, one shared range reduction and two
short polynomials that inductor fuses with the surrounding elementwise work into a single
vectorised loop; the separate library ``sin`` and ``cos`` calls cost about as much as a
``width 128`` matmul each. Its error is below ``1e-6`` absolute for ``|pre| < 2^15`` (tested), far
under the error of the fp32 matmuls around it. Eager mode keeps ``torch.sin`` / ``torch.cos``
(a chain of small eager ops would be slower than the two library calls).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["sin_cos", "sincos_poly"]

# pi/2 split in three parts (Cody-Waite): k * _PIO2_1 is exact in fp32 for |k| < 2^15.
_PIO2_1 = 1.5703125
_PIO2_2 = 4.837512969970703125e-4
_PIO2_3 = 7.54978995489188216e-8
# Minimax coefficients on [-pi/4, pi/4] (Cephes sinf / cosf).
_S1, _S2, _S3 = -1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4
_C1, _C2, _C3 = 4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5


def sincos_poly(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(sin(x), cos(x))`` from one range reduction ``x = k pi/2 + r``, ``|r| <= pi/4``.

    Made of elementwise tensor ops only, so ``torch.compile`` turns it into one fused loop.
    Accurate to ~1e-7 absolute (fp32) for ``|x| < 2^15``.
    """
    k = torch.round(x * (2.0 / math.pi))
    r = x - k * _PIO2_1 - k * _PIO2_2 - k * _PIO2_3
    r2 = r * r
    s = r + r * r2 * (_S1 + r2 * (_S2 + r2 * _S3))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (_C1 + r2 * (_C2 + r2 * _C3))
    q = k - 4.0 * torch.floor(k * 0.25)  # quadrant 0..3
    swap = (q == 1.0) | (q == 3.0)
    sin = torch.where(swap, c, s) * torch.where(q >= 2.0, -1.0, 1.0)
    cos = torch.where(swap, s, c) * torch.where((q == 1.0) | (q == 2.0), -1.0, 1.0)
    return sin, cos


def _sincos(x: Tensor) -> tuple[Tensor, Tensor]:
    if torch.compiler.is_compiling():
        return sincos_poly(x)
    return torch.sin(x), torch.cos(x)


class _SinCos(torch.autograd.Function):
    """``(sin(pre), cos(pre))`` with a backward that reuses both outputs (no transcendental).

    ``d/dpre``: ``g_pre = g_sin * cos - g_cos * sin``. Saving the outputs instead of ``pre`` means
    the saved tensors are shared with the consumers (next matmul, explicit backward): no extra memory.
    The backward is written with differentiable ops, so double backward still works.
    """

    @staticmethod
    def forward(ctx, pre: Tensor) -> tuple[Tensor, Tensor]:
        s, c = _sincos(pre)
        ctx.save_for_backward(s, c)
        return s, c

    @staticmethod
    def backward(ctx, g_sin: Tensor | None, g_cos: Tensor | None) -> Tensor:
        s, c = ctx.saved_tensors
        if g_sin is None:
            return -(g_cos * s)
        g = g_sin * c
        return g if g_cos is None else torch.addcmul(g, g_cos, s, value=-1.0)


def sin_cos(pre: Tensor, need_cos: bool = True) -> tuple[Tensor, Tensor | None]:
    """``sin(pre)`` and (optionally) ``cos(pre)``, each shaped like ``pre``.

    Eager and without a graph, the results are written into ``pre`` where possible. With a graph
    the pair comes from an autograd function that saves both for the backward pass.
    """
    if torch.compiler.is_compiling():
        s, c = _SinCos.apply(pre) if torch.is_grad_enabled() else sincos_poly(pre)
        return s, (c if need_cos else None)
    if not need_cos:
        return (pre.sin_() if not torch.is_grad_enabled() else torch.sin(pre)), None
    if not torch.is_grad_enabled():
        s = torch.sin(pre)
        return s, pre.cos_()
    return _SinCos.apply(pre)
