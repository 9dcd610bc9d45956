"""The fast kernels of the fields layer: oneDNN matmuls and the fused (sin, cos) polynomial."""

from __future__ import annotations

import math

import pytest
import torch

from functa.fields import matmul as mm
from functa.fields.sincos import sin_cos, sincos_poly

needs_onednn = pytest.mark.skipif(not mm._HAS_ONEDNN, reason="PyTorch built without oneDNN")


@pytest.fixture
def rows() -> int:
    return mm.MIN_ROWS + 37  # tall enough for the oneDNN path, not a multiple of any block size


@needs_onednn
def test_onednn_path_is_taken_only_for_tall_fp32_cpu(rows):
    assert mm._use_onednn(torch.zeros(rows, 4))
    assert not mm._use_onednn(torch.zeros(mm.MIN_ROWS - 1, 4))
    assert not mm._use_onednn(torch.zeros(rows, 4, dtype=torch.float64))
    previous = mm.set_matmul_backend("aten")
    try:
        assert not mm._use_onednn(torch.zeros(rows, 4))
    finally:
        mm.set_matmul_backend(previous)


@pytest.mark.parametrize("k, m", [(2, 16), (16, 16), (33, 1), (16, 3)])
def test_matmuls_equal_torch_with_gradients(rows, k, m):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, rows // 3 + 1, k, generator=g, requires_grad=True)
    w = torch.randn(m, k, generator=g, requires_grad=True)
    up = torch.randn(3, rows // 3 + 1, m, generator=g)
    out = mm.matmul_nt(h, w)
    ref = h @ w.t()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gh, gw = torch.autograd.grad((out * up).sum(), (h, w))
    rh, rw = torch.autograd.grad((ref * up).sum(), (h, w))
    torch.testing.assert_close(gh, rh, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-3)
    w2 = w.detach().t().contiguous().requires_grad_()  # (k, m) for h @ w2
    out2 = mm.matmul_nn(h, w2)
    torch.testing.assert_close(out2, h @ w2, rtol=1e-5, atol=1e-5)
    (g2,) = torch.autograd.grad((out2 * up).sum(), w2)
    torch.testing.assert_close(g2, rw.t(), rtol=1e-5, atol=1e-3)


def test_matmul_double_backward(rows):
    """The custom operator's backward is itself differentiable (second-order MAML by autograd)."""
    g = torch.Generator().manual_seed(1)
    h = torch.randn(rows, 4, generator=g, requires_grad=True)
    w = torch.randn(5, 4, generator=g, requires_grad=True)

    def hvp(fn):
        (gh,) = torch.autograd.grad(fn(h, w).sin().sum(), h, create_graph=True)
        return torch.autograd.grad(gh.square().sum(), w)[0]

    torch.testing.assert_close(hvp(mm.matmul_nt), hvp(lambda a, b: a @ b.t()), rtol=1e-4, atol=1e-3)


def test_float64_is_exactly_torch(rows):
    h = torch.randn(rows, 8, dtype=torch.float64)
    w = torch.randn(6, 8, dtype=torch.float64)
    assert torch.equal(mm.matmul_nt(h, w), h @ w.t())


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="matmul backend must be one of"):
        mm.set_matmul_backend("cublas")


def test_sincos_poly_accuracy_over_the_documented_range():
    x = torch.linspace(-(2.0**15), 2.0**15, 2_000_003)
    x = torch.cat([x, torch.tensor([0.0, math.pi / 4, -math.pi / 4, math.pi / 2, 3 * math.pi, 1e-30])])
    s, c = sincos_poly(x)
    xd = x.double()
    assert (s.double() - xd.sin()).abs().max() < 1e-6
    assert (c.double() - xd.cos()).abs().max() < 1e-6
    small = torch.linspace(-100.0, 100.0, 200_001)
    s, c = sincos_poly(small)
    assert (s.double() - small.double().sin()).abs().max() < 2e-7
    assert (c.double() - small.double().cos()).abs().max() < 2e-7


def test_sin_cos_backward_reuses_outputs():
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    s, c = sin_cos(x)
    gs, gc = torch.randn(50, dtype=torch.float64), torch.randn(50, dtype=torch.float64)
    (g,) = torch.autograd.grad((s * gs + c * gc).sum(), x)
    torch.testing.assert_close(g, gs * x.detach().cos() - gc * x.detach().sin())
    assert torch.autograd.gradcheck(lambda t: sin_cos(t)[0] * sin_cos(t)[1], (x,))
