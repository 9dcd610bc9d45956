"""Matmuls of tall activations by small weight matrices, on the fastest fp32 CPU kernel available.

Every layer of a SIREN multiplies a tall activation ``(B*N, K)`` (all points of all items) by a
small weight ``(K, M)``. PyTorch sends fp32 ``torch.mm`` on the CPU to MKL, whose kernels for
these skinny shapes reach only part of the machine's matmul peak; oneDNN (also shipped inside
every CPU build of PyTorch) is faster for them. Measured on the 2-core AMD EPYC (Zen 4) development
VM, ``(25088, 128) @ (128, 128)``: MKL 7.4 ms, oneDNN 4.8 ms; a full C1 meta-learning step is ~23 %
faster (``docs/benchmarks.md``).

Backends (:func:`set_matmul_backend`, or the environment variable ``FUNCTA_MATMUL``):

- ``"auto"`` (default): oneDNN for float32 CPU tensors with at least :data:`MIN_ROWS` rows when
  PyTorch was built with it, ``torch.mm`` otherwise (float64, CUDA, small batches).
- ``"aten"``: always ``torch.mm``.

The oneDNN kernel is registered as the custom operator ``functa::mm_nt`` with an autograd formula
(weight gradients use ``torch.mm``, whose kernel is the faster one for ``(K, B*N) @ (B*N, M)``), so
it is differentiable (twice), traceable by ``torch.compile`` and numerically an fp32 matmul: results
agree with ``torch.mm`` to float32 rounding (different summation order).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

__all__ = ["MIN_ROWS", "matmul_backend", "matmul_nn", "matmul_nt", "set_matmul_backend"]

MIN_ROWS = 512
_BACKENDS = ("auto", "aten")
_backend = "auto"


def set_matmul_backend(name: str) -> str:
    """Choose the matmul backend (``"auto"`` or ``"aten"``) for this process; returns the previous one."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"matmul backend must be one of {_BACKENDS}, got {name!r}")
    previous, _backend = _backend, name
    return previous


def matmul_backend() -> str:
    return _backend


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_HAS_ONEDNN = _onednn_available()


@torch.library.custom_op("functa::mm_nt", mutates_args=())
def _mm_nt_onednn(h: Tensor, w: Tensor) -> Tensor:
    """``h (R, K) @ w (M, K).T -> (R, M)`` with oneDNN's inner-product kernel."""
    return torch.ops.mkldnn._linear_pointwise(h.contiguous(), w.contiguous(), None, "none", [], "")


@_mm_nt_onednn.register_fake
def _(h: Tensor, w: Tensor) -> Tensor:
    return h.new_empty(h.shape[0], w.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
    h, w = ctx.saved_tensors
    gh = _mm_nt_2d(grad, w.t()) if ctx.needs_input_grad[0] else None  # (R, M) @ (M, K)
    gw = grad.t() @ h if ctx.needs_input_grad[1] else None  # (M, R) @ (R, K)
    return gh, gw


_mm_nt_onednn.register_autograd(_backward, setup_context=_setup_context)


def _use_onednn(h: Tensor) -> bool:
    return (_backend == "auto" and _HAS_ONEDNN and h.device.type == "cpu" and h.dtype == torch.float32
            and h.shape[0] >= MIN_ROWS)


def _mm_nt_2d(h: Tensor, w: Tensor) -> Tensor:
    """``h (R, K) @ w (M, K).T``."""
    if _use_onednn(h):
        return _mm_nt_onednn(h, w)
    return h @ w.t()


def matmul_nt(h: Tensor, w: Tensor) -> Tensor:
    """``h @ w.T`` for activations ``h (..., K)`` and a weight ``w (M, K)``; returns ``(..., M)``."""
    out = _mm_nt_2d(h.reshape(-1, h.shape[-1]), w)
    return out.view(*h.shape[:-1], w.shape[0])


def matmul_nn(h: Tensor, w: Tensor) -> Tensor:
    """``h @ w`` for activations ``h (..., K)`` and a weight ``w (K, M)``; returns ``(..., M)``."""
    out = _mm_nt_2d(h.reshape(-1, h.shape[-1]), w.t())
    return out.view(*h.shape[:-1], w.shape[1])


_env = os.environ.get("FUNCTA_MATMUL")
if _env:
    set_matmul_backend(_env)
