"""The optimised meta-learning path equals a plain autograd reference.

Optimisations under test: the explicit (hand-written) inner-loop backward with ``w0`` folded into
the weights, the ``(sin, cos)`` autograd function that reuses its outputs in the backward, the shared
zero-latent first inner step, gradient checkpointing and (slow, opt-in) ``torch.compile``.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from functa.fields import LatentModulatedSiren, SirenConfig
from functa.fitting import Batch, InnerLoop, OuterObjective, fit_latents, outer_loss

VARIANTS = {
    "shift_latent": dict(latent_dim=5),
    "shift_scale_latent": dict(latent_dim=5, modulate_scale=True),
    "shift_no_latent": dict(latent_dim=None),
    "scale_only": dict(latent_dim=4, modulate_shift=False, modulate_scale=True),
}


def _field(dtype=torch.float64, **kw) -> LatentModulatedSiren:
    torch.manual_seed(0)
    cfg = dict(in_dim=2, out_dim=2, width=8, depth=4, w0=5.0, bias_init="uniform", meta_sgd_init=(0.05, 0.2))
    cfg.update(kw)
    f = LatentModulatedSiren(SirenConfig(**cfg)).to(dtype)
    with torch.no_grad():  # non-trivial latent map bias (the shift shared by the first step)
        if f.latent_map is not None:
            f.latent_map.bias.uniform_(-0.3, 0.3)
    return f


def _data(batch=3, n=11, dtype=torch.float64, per_item_x=False):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch if per_item_x else 1, n, 2, generator=g, dtype=dtype) * 2 - 1
    y = torch.rand(batch, n, 2, generator=g, dtype=dtype)
    return x, y


def _reference_forward(f: LatentModulatedSiren, x, z):
    """Plain autograd SIREN, written independently of ``forward_points``."""
    c = f.config
    mods = f.latent_map(z) if f.latent_map is not None else z
    mods = mods.reshape(z.shape[0], -1, c.depth - 1, c.width)
    h = x
    for i, layer in enumerate(f.layers):
        lin = h @ layer.weight.T + layer.bias
        if c.modulate_scale:
            lin = lin * (1.0 + mods[:, -1, i, None, :])
        if c.modulate_shift:
            lin = lin + mods[:, 0, i, None, :]
        h = torch.sin(c.w0 * lin)
    return h @ f.output.weight.T + f.output.bias + c.output_offset


def _reference_outer_loss(f: LatentModulatedSiren, x, y, steps, weight=None):
    """MAML with ``autograd.grad(create_graph=True)`` (exact second order)."""
    z = torch.zeros(y.shape[0], f.config.code_dim, dtype=y.dtype, requires_grad=True)
    lrs = f.inner_lrs()
    for _ in range(steps):
        err = (_reference_forward(f, x, z) - y) ** 2
        if weight is None:
            inner = err.mean((1, 2)).sum()
        else:
            inner = ((err * weight).sum((1, 2)) / (weight.sum((1, 2)).clamp_min(1.0) * y.shape[2])).sum()
        (g,) = torch.autograd.grad(inner, z, create_graph=True)
        z = z - lrs * g
    pred = _reference_forward(f, x, z)
    return ((pred - y) ** 2).mean((1, 2)).mean(), z


def _params(f):
    return f.base_parameters() + list(f.inner_lrs.parameters())


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("per_item_x", [False, True])
def test_outer_gradients_match_autograd_reference(variant, shared, per_item_x):
    f = _field(**VARIANTS[variant])
    x, y = _data(per_item_x=per_item_x)
    ref_loss, ref_z = _reference_outer_loss(f, x, y, 3)
    ref = torch.autograd.grad(ref_loss, _params(f))
    res = outer_loss(f, InnerLoop(3, shared_first_step=shared), Batch(x, y))
    ours = torch.autograd.grad(res.loss, _params(f))
    torch.testing.assert_close(res.loss, ref_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(res.latents, ref_z, rtol=1e-9, atol=1e-12)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_checkpointed_gradients_equal_plain(shared):
    f = _field(**VARIANTS["shift_latent"])
    x, y = _data()
    plain = torch.autograd.grad(outer_loss(f, InnerLoop(3, shared_first_step=shared), Batch(x, y)).loss, _params(f))
    ckpt = torch.autograd.grad(
        outer_loss(f, InnerLoop(3, checkpoint=True, shared_first_step=shared), Batch(x, y)).loss, _params(f))
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shared_first_step_does_not_change_encoding(variant):
    f = _field(dtype=torch.float32, **VARIANTS[variant])
    x, y = _data(batch=5, dtype=torch.float32)
    weight = (torch.rand(5, x.shape[1], 1, generator=torch.Generator().manual_seed(2)) > 0.3).float()
    for w in (None, weight):
        a = fit_latents(f, Batch(x, y, w), 3, shared_first_step=True)
        b = fit_latents(f, Batch(x, y, w), 3, shared_first_step=False)
        torch.testing.assert_close(a.latents, b.latents, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-7)
        ta = fit_latents(f, Batch(x, y, w), 3, track_steps=True, shared_first_step=True)
        tb = fit_latents(f, Batch(x, y, w), 3, track_steps=True, shared_first_step=False)
        assert len(ta.history) == 4
        for za, zb in zip(ta.history, tb.history):
            torch.testing.assert_close(za, zb, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ta.latents, a.latents, rtol=1e-5, atol=1e-6)


def test_encoding_matches_reference_float64():
    f = _field(**VARIANTS["shift_latent"])
    x, y = _data()
    z = torch.zeros(y.shape[0], f.config.code_dim, dtype=y.dtype)
    lrs = f.inner_lrs().detach()
    for _ in range(3):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = ((_reference_forward(f, x, z) - y) ** 2).mean((1, 2)).sum()
            (g,) = torch.autograd.grad(loss, z)
        z = z - lrs * g
    enc = fit_latents(f, Batch(x, y), 3)
    torch.testing.assert_close(enc.latents, z.detach(), rtol=1e-9, atol=1e-12)


def test_weighted_inner_loop_matches_reference():
    f = _field(**VARIANTS["shift_latent"])
    x, y = _data()
    w = (torch.rand(3, x.shape[1], 1, generator=torch.Generator().manual_seed(3)) > 0.4).double()
    _, ref_z = _reference_outer_loss(f, x, y, 3, weight=w)
    z = InnerLoop(3)(f, Batch(x, y, w))
    torch.testing.assert_close(z, ref_z, rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile needs a C++ compiler")
def test_compiled_matches_eager():
    """Compiled: fused polynomial (sin, cos) and oneDNN matmuls (4 x 160 rows >= MIN_ROWS)."""
    f = _field(dtype=torch.float32, **VARIANTS["shift_latent"])
    x, y = _data(batch=4, n=160, dtype=torch.float32)
    inner = InnerLoop(3)
    eager = OuterObjective(f, inner)(Batch(x, y))
    ge = torch.autograd.grad(eager.loss, _params(f))
    comp = OuterObjective(f, inner, compile=True)(Batch(x, y))
    gc = torch.autograd.grad(comp.loss, _params(f))
    torch.testing.assert_close(comp.loss, eager.loss, rtol=1e-4, atol=1e-6)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b, rtol=2e-3, atol=1e-5)
    ea = fit_latents(f, Batch(x, y), 3)
    ec = fit_latents(f, Batch(x, y), 3, compile=True)
    torch.testing.assert_close(ec.latents, ea.latents, rtol=1e-4, atol=1e-5)
