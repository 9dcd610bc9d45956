"""One fitting core for every field, loss and batch: the autograd inner loop and the fast path agree.

* the SIREN's explicit latent gradient (fast path) equals ``autograd.grad`` in latents and in outer
  gradients for every field configuration, loss, coordinate sharing and mask;
* a field without a fast path (defined here) meta-learns through autograd;
* a renderer between the field and the loss is differentiated to second order;
* finite differences confirm the outer gradients of both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from functa.fields import (Field, LatentAdjoint, LatentModulatedSiren, SirenConfig, field_from_config,
                           register_field)
from functa.fitting import (BCEWithLogitsLoss, Batch, InnerLoop, MetaLearner, MetaLearningConfig, MSELoss,
                            fit_latents, get_loss, outer_loss, uses_fast_path)

VARIANTS = {
    "shift_latent": dict(latent_dim=5),
    "shift_scale_latent": dict(latent_dim=5, modulate_scale=True),
    "shift_no_latent": dict(latent_dim=None),
    "scale_only": dict(latent_dim=4, modulate_shift=False, modulate_scale=True),
    "no_meta_sgd": dict(latent_dim=5, meta_sgd=False, inner_lr=0.05),
}
LOSSES = {"mse": MSELoss(), "bce": BCEWithLogitsLoss()}


def siren(dtype=torch.float64, **kw) -> LatentModulatedSiren:
    torch.manual_seed(0)
    cfg = dict(in_dim=2, out_dim=2, width=8, depth=4, w0=5.0, bias_init="uniform", meta_sgd_init=(0.05, 0.2))
    cfg.update(kw)
    f = LatentModulatedSiren(SirenConfig(**cfg)).to(dtype)
    with torch.no_grad():
        if f.latent_map is not None:
            f.latent_map.bias.uniform_(-0.3, 0.3)
    return f


def data(batch=3, n=11, per_item_x=False, binary=False, mask=False):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch if per_item_x else 1, n, 2, generator=g, dtype=torch.float64) * 2 - 1
    y = torch.rand(batch, n, 2, generator=g, dtype=torch.float64)
    if binary:
        y = (y > 0.6).double()
    m = (torch.rand(batch, n, 1, generator=g) > 0.3).double() if mask else None
    return Batch(x, y, m)


def params(f):
    return f.base_parameters() + f.meta_parameters()


def outer_grads(f, inner, batch):
    r = outer_loss(f, inner, batch)
    return r, torch.autograd.grad(r.loss, params(f))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("per_item_x", [False, True])
@pytest.mark.parametrize("mask", [False, True])
def test_fast_path_equals_autograd_path(variant, loss, per_item_x, mask):
    f = siren(**VARIANTS[variant], output_offset=LOSSES[loss].output_offset)
    batch = data(per_item_x=per_item_x, binary=loss == "bce", mask=mask)
    assert uses_fast_path(f, LOSSES[loss], batch)
    fast, g_fast = outer_grads(f, InnerLoop(3, LOSSES[loss]), batch)
    slow, g_slow = outer_grads(f, InnerLoop(3, LOSSES[loss], fast_path=False), batch)
    torch.testing.assert_close(fast.latents, slow.latents, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-10, atol=0)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    # encoding (no graph, first order) gives the same latents on both paths
    with torch.no_grad():
        enc_fast = InnerLoop(3, LOSSES[loss], first_order=True)(f, batch)
        enc_slow = InnerLoop(3, LOSSES[loss], first_order=True, fast_path=False)(f, batch)
    torch.testing.assert_close(enc_fast, enc_slow, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fast_path", [True, False])
def test_first_order_paths_agree_and_drop_second_order_terms(fast_path):
    f = siren(**VARIANTS["shift_latent"])
    batch = data()
    _, g1 = outer_grads(f, InnerLoop(3, first_order=True, fast_path=fast_path), batch)
    _, g1_ref = outer_grads(f, InnerLoop(3, first_order=True, fast_path=not fast_path), batch)
    _, g2 = outer_grads(f, InnerLoop(3, fast_path=fast_path), batch)
    for a, b in zip(g1, g1_ref):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(g1[2], g2[2])  # a hidden weight: second-order terms matter


@pytest.mark.parametrize("fast_path", [True, False])
def test_checkpointed_inner_loop_has_the_same_gradients(fast_path):
    f = siren(**VARIANTS["shift_latent"])
    batch = data()
    _, plain = outer_grads(f, InnerLoop(3, fast_path=fast_path), batch)
    _, ckpt = outer_grads(f, InnerLoop(3, checkpoint=True, fast_path=fast_path), batch)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def _finite_difference_check(f, inner, batch, probes):
    r, grads = outer_grads(f, inner, batch)
    by_param = dict(zip(map(id, params(f)), grads))
    for p, idx in probes:
        eps = 1e-6
        with torch.no_grad():
            p[idx] += eps
            up = outer_loss(f, inner, batch).loss
            p[idx] -= 2 * eps
            down = outer_loss(f, inner, batch).loss
            p[idx] += eps
        fd = float((up - down) / (2 * eps))
        assert float(by_param[id(p)][idx]) == pytest.approx(fd, rel=1e-5, abs=1e-10)


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_outer_gradients_match_finite_differences(fast_path, loss):
    f = siren(**VARIANTS["shift_latent"], output_offset=LOSSES[loss].output_offset)
    probes = [(f.layers[1].weight, (0, 0)), (f.layers[2].weight, (3, 5)), (f.inner_lrs.raw, (4,)),
              (f.latent_map.weight, (2, 1))]
    _finite_difference_check(f, InnerLoop(3, LOSSES[loss], fast_path=fast_path), data(binary=loss == "bce"), probes)


def test_bce_output_gradient_is_the_gradient_of_its_per_item_value():
    out = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 7, 3, dtype=torch.float64) > 0.5).double()
    m = (torch.rand(2, 7, 1) > 0.4).double()
    bce = get_loss("bce")
    for mask in (None, m):
        ref, = torch.autograd.grad(bce.per_item(out, y, mask).sum(), out)
        torch.testing.assert_close(bce.output_grad(out, y, mask), ref)
    # the per-item value is the mean binary cross-entropy of sigmoid(logits)
    p = torch.sigmoid(out.detach())
    manual = -(y * p.log() + (1 - y) * (1 - p).log()).mean((1, 2))
    torch.testing.assert_close(bce.per_item(out.detach(), y), manual)
    assert bce.output_offset == 0.0 and torch.allclose(bce.predict(out.detach()), p)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("hinge")


# ---------------------------------------------------------------------------- a field with no fast path

@dataclass(frozen=True)
class TinyConfig:
    in_dim: int = 2
    out_dim: int = 1
    width: int = 16
    latent_dim: int = 3


@register_field
class ConcatField(nn.Module):
    """An MLP on ``[x, z]`` (latent concatenated to the coordinates): no explicit latent gradient."""

    name: ClassVar[str] = "test_concat_field"
    config_class: ClassVar[type] = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_shape = (config.latent_dim,)
        self.in_dim, self.out_dim = config.in_dim, config.out_dim
        self.net = nn.Sequential(nn.Linear(config.in_dim + config.latent_dim, config.width), nn.Tanh(),
                                 nn.Linear(config.width, config.out_dim))
        self.log_lr = nn.Parameter(torch.full((config.latent_dim,), -1.0))

    def forward(self, x, z):
        x = x.expand(z.shape[0], -1, -1)
        return self.net(torch.cat([x, z[:, None, :].expand(-1, x.shape[1], -1)], -1)) + 0.5

    def zero_latents(self, batch):
        return torch.zeros(batch, *self.latent_shape, dtype=self.log_lr.dtype)

    def inner_lrs(self):
        return self.log_lr.exp()

    def base_parameters(self):
        return list(self.net.parameters())

    def meta_parameters(self):
        return [self.log_lr]

    def activation_floats_per_point(self):
        return self.config.width

    def to_config(self):
        return {"name": self.name, **self.config.__dict__}

    @classmethod
    def from_config(cls, config):
        return cls(TinyConfig(**{k: v for k, v in config.items() if k != "name"}))


class Waves:
    """16 smooth 1-channel fields on a 6x6 grid: a batch source."""

    def __init__(self):
        g = (torch.arange(6.0) + 0.5) / 6
        self.coords = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
        phase = torch.linspace(0, 3, 16)[:, None]
        self.y = (0.5 + 0.4 * torch.sin(4 * self.coords[None, :, 0] + phase))[..., None]
        self.num_points = 36

    def __len__(self):
        return 16

    def batch(self, idx):
        return Batch(self.coords[None], self.y[torch.as_tensor(idx)])


def test_a_field_without_fast_path_meta_learns_through_autograd(tmp_path):
    torch.manual_seed(0)
    field = field_from_config({"name": "test_concat_field", "width": 16})
    assert isinstance(field, Field) and not isinstance(field, LatentAdjoint)
    src = Waves()
    batch = src.batch(np.arange(8))
    assert not InnerLoop(3).is_fast(field, batch)
    before = float(outer_loss(field, InnerLoop(3), batch).loss.detach())
    learner = MetaLearner(field, MetaLearningConfig(steps=60, batch_size=8, outer_lr=1e-2, eval_every=1000,
                                                    save_every=1000))
    learner.fit(src, progress=False)
    after = float(outer_loss(field, InnerLoop(3), batch).loss.detach())
    assert after < 0.5 * before, (before, after)
    # the second-order outer gradient of the autograd path matches finite differences
    field64 = field.double()
    probes = [(field64.net[0].weight, (1, 3)), (field64.net[2].weight, (0, 5)), (field64.log_lr, (1,))]
    _finite_difference_check(field64, InnerLoop(3), Batch(src.coords[None].double(), src.y[:4].double()), probes)


def test_latents_of_a_shaped_field_keep_their_shape():
    field = ConcatField(TinyConfig())
    enc = fit_latents(field, Waves().batch(np.arange(5)), 2, track_steps=True)
    assert enc.latents.shape == (5, 3) and len(enc.history) == 3 and enc.outputs.shape == (5, 36, 1)


# ---------------------------------------------------------------------------- a renderer between field and loss

class WeightedSum:
    """Composites ``P`` samples per ray: softmax weights from channel 1, values from channel 0
    (a stand-in for volume rendering: nonlinear in the outputs, ``(B, N*P, 2) -> (B, N, 1)``)."""

    def __init__(self, samples: int) -> None:
        self.samples = self.samples_per_target = samples

    def __call__(self, outputs, batch):
        b, m, _ = outputs.shape
        o = outputs.reshape(b, m // self.samples, self.samples, -1)
        w = torch.softmax(o[..., 1] * batch.aux["sharpness"], -1)
        return (w * torch.sigmoid(o[..., 0])).sum(-1, keepdim=True)


def test_renderer_is_differentiated_to_second_order():
    f = siren(**VARIANTS["shift_latent"])
    g = torch.Generator().manual_seed(3)
    rays, samples = 5, 4
    x = torch.rand(3, rays * samples, 2, generator=g, dtype=torch.float64)  # per-item sample points
    y = torch.rand(3, rays, 1, generator=g, dtype=torch.float64)
    batch = Batch(x, y, renderer=WeightedSum(samples), aux={"sharpness": torch.tensor(2.0, dtype=torch.float64)})
    inner = InnerLoop(3)
    assert inner.is_fast(f, batch)  # the field's explicit gradient, autograd through the renderer alone
    # an independent reference: the inner loop written out with create_graph=True
    z = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    lrs = f.inner_lrs()
    for _ in range(3):
        rendered = WeightedSum(samples)(f(x, z), batch)
        (gz,) = torch.autograd.grad(((rendered - y) ** 2).mean((1, 2)).sum(), z, create_graph=True)
        z = z - lrs * gz
    ref = ((WeightedSum(samples)(f(x, z), batch) - y) ** 2).mean((1, 2)).mean()
    ref_grads = torch.autograd.grad(ref, params(f))
    r, grads = outer_grads(f, inner, batch)
    torch.testing.assert_close(r.loss, ref, rtol=1e-12, atol=0)
    assert r.outputs.shape == (3, rays, 1)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
    _finite_difference_check(f, inner, batch, [(f.layers[1].weight, (2, 2)), (f.inner_lrs.raw, (0,))])
    # the all-autograd path gives the same loss and meta-gradient
    slow = InnerLoop(3, fast_path=False)
    assert not slow.is_fast(f, batch)
    r_slow, grads_slow = outer_grads(f, slow, batch)
    torch.testing.assert_close(r_slow.loss, ref, rtol=1e-12, atol=0)
    for a, b in zip(grads_slow, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-13)
    # encoding with a renderer works without a graph; subsets of rays take their P points each
    enc = fit_latents(f, batch, 3)
    torch.testing.assert_close(enc.latents, r.latents.detach(), rtol=1e-9, atol=1e-12)
    sub = batch.points(torch.tensor([1, 4]))
    assert sub.x.shape == (3, 2 * samples, 2) and sub.aux["sharpness"].ndim == 0
    with torch.no_grad():
        full = WeightedSum(samples)(f(x, r.latents), batch)
        torch.testing.assert_close(WeightedSum(samples)(f(sub.x, r.latents), sub), full[:, [1, 4]])
    # chunked fitting of rays (as encoding does for whole scenes) gives the same latents
    chunked = fit_latents(f, batch, 3, max_points=2 * samples)
    torch.testing.assert_close(chunked.latents, enc.latents, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(chunked.outputs, enc.outputs, rtol=1e-9, atol=1e-12)
    tracked = fit_latents(f, batch, 3, max_points=2 * samples, track_steps=True)  # evaluation: every step, chunked
    whole = fit_latents(f, batch, 3, track_steps=True)
    assert len(tracked.history) == len(whole.history) == 4
    for a, b in zip(tracked.history, whole.history):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_batch_validates_its_shapes():
    with pytest.raises(ValueError, match="coordinates for 2 items"):
        Batch(torch.rand(2, 4, 2), torch.rand(3, 4, 1))
    with pytest.raises(ValueError, match="without a renderer"):
        Batch(torch.rand(1, 8, 2), torch.rand(3, 4, 1))
    b = Batch(torch.rand(1, 6, 2), torch.rand(3, 6, 1), torch.ones(1, 6, 1))
    sub = b.points(torch.tensor([0, 5]))
    assert sub.x.shape == (1, 2, 2) and sub.y.shape == (3, 2, 1) and sub.mask.shape == (1, 2, 1)
