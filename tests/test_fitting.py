import numpy as np
import pytest
import torch

from functa.fields import LatentModulatedSiren, SirenConfig
from functa.fitting import (Batch, InnerLoop, MetaLearner, MetaLearningConfig, MSELoss, fit_latents, outer_loss)


def tiny(dtype=torch.float64, **kw):
    torch.manual_seed(1)
    cfg = dict(in_dim=2, out_dim=1, width=12, depth=4, latent_dim=5, w0=5.0)
    cfg.update(kw)
    return LatentModulatedSiren(SirenConfig(**cfg)).to(dtype)


def grid(n=6, dtype=torch.float64):
    g = (torch.arange(n, dtype=dtype) + 0.5) / n
    return torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(1, -1, 2)


def reference_outer_loss(field, x, y, steps):
    """Textbook CAVIA/meta-SGD with autograd.grad(create_graph=True) — the oracle."""
    z = torch.zeros(y.shape[0], field.config.code_dim, dtype=y.dtype, requires_grad=True)
    lrs = field.inner_lrs()
    for _ in range(steps):
        pred = field(x, z)
        loss = ((pred - y) ** 2).mean((1, 2)).sum()
        g, = torch.autograd.grad(loss, z, create_graph=True)
        z = z - lrs * g
    pred = field(x, z)
    return ((pred - y) ** 2).mean((1, 2)).mean()


def test_second_order_gradient_matches_autograd_oracle_and_finite_differences():
    field = tiny()
    x, y = grid(), torch.rand(3, 36, 1, dtype=torch.float64)
    loss = outer_loss(field, InnerLoop(3), Batch(x, y)).loss
    params = list(field.parameters())
    ours = torch.autograd.grad(loss, params)
    ref = torch.autograd.grad(reference_outer_loss(field, x, y, 3), params)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    # central finite differences on a few coordinates of a hidden weight and of the meta-SGD rates
    for p, g in ((field.layers[1].weight, ours[2]), (field.inner_lrs.raw, ours[-1])):
        for idx in [(0, 0), (3, 5)] if p.ndim == 2 else [(0,), (4,)]:
            eps = 1e-6
            with torch.no_grad():
                p[idx] += eps
                up = outer_loss(field, InnerLoop(3), Batch(x, y)).loss
                p[idx] -= 2 * eps
                down = outer_loss(field, InnerLoop(3), Batch(x, y)).loss
                p[idx] += eps
            fd = (up - down) / (2 * eps)
            assert float(g[idx]) == pytest.approx(float(fd), rel=1e-5, abs=1e-10)


def test_checkpointed_equals_plain_gradients():
    field = tiny()
    x, y = grid(), torch.rand(2, 36, 1, dtype=torch.float64)
    params = list(field.parameters())
    a = torch.autograd.grad(outer_loss(field, InnerLoop(3), Batch(x, y)).loss, params)
    b = torch.autograd.grad(outer_loss(field, InnerLoop(3, checkpoint=True), Batch(x, y)).loss, params)
    for u, v in zip(a, b):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-14)


def test_first_order_drops_second_order_terms():
    field = tiny()
    x, y = grid(), torch.rand(2, 36, 1, dtype=torch.float64)
    w = field.layers[1].weight
    g2, = torch.autograd.grad(outer_loss(field, InnerLoop(3), Batch(x, y)).loss, [w])
    g1, = torch.autograd.grad(outer_loss(field, InnerLoop(3, first_order=True), Batch(x, y)).loss, [w])
    assert not torch.allclose(g1, g2)
    # first-order: the meta-SGD rates still get a gradient through the update lr * g
    lr_grad, = torch.autograd.grad(outer_loss(field, InnerLoop(3, first_order=True), Batch(x, y)).loss, [field.inner_lrs.raw])
    assert lr_grad.abs().sum() > 0


def test_inner_step_is_independent_of_batch_size():
    field = tiny()
    x, y = grid(), torch.rand(4, 36, 1, dtype=torch.float64)
    together = InnerLoop(3)(field, Batch(x, y))
    alone = InnerLoop(3)(field, Batch(x, y[:1]))
    assert torch.allclose(together[:1], alone, rtol=1e-12)


def test_mse_grad_is_gradient_of_per_item_mean():
    pred = torch.rand(2, 5, 3, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 5, 3, dtype=torch.float64)
    ref, = torch.autograd.grad(((pred - y) ** 2).mean((1, 2)).sum(), pred)
    assert torch.allclose(MSELoss().output_grad(pred, y), ref)
    w = torch.zeros(2, 5, 1, dtype=torch.float64)
    w[:, :2] = 1
    ref_w, = torch.autograd.grad((((pred - y) ** 2)[:, :2]).mean((1, 2)).sum(), pred)
    assert torch.allclose(MSELoss().output_grad(pred, y, w), ref_w)


def test_clamped_zero_lrs_freeze_latents():
    field = tiny()
    with torch.no_grad():
        field.inner_lrs.raw.fill_(-3.0)  # clamps to 0
    z = InnerLoop(3)(field, Batch(grid(), torch.rand(2, 36, 1, dtype=torch.float64)))
    assert torch.all(z == 0)


def test_fit_latents_tracks_steps_and_improves():
    field = tiny()
    x = grid()
    # smooth targets a 5-d latent can fit; every inner step must lower every item's loss
    y = (0.5 + 0.3 * torch.sin(3 * x[..., :1] + torch.arange(3.0, dtype=torch.float64)[:, None, None])).expand(3, -1, -1)
    enc = fit_latents(field, Batch(x, y.contiguous()), steps=3, track_steps=True)
    assert len(enc.history) == 4 and enc.history[0].abs().sum() == 0
    losses = torch.stack([MSELoss().per_item(field(x, z), y) for z in enc.history])  # (4, 3)
    assert torch.allclose(losses[-1], enc.loss)
    assert torch.all(losses[1:] < losses[:-1]), losses
    assert torch.all(losses[-1] < 0.5 * losses[0]), losses


class ArraySource:
    def __init__(self, y, coords):
        self.y, self.coords = y, coords
        self.num_points = coords.shape[0]

    def __len__(self):
        return len(self.y)

    def batch(self, idx):
        return Batch(self.coords[None], self.y[torch.as_tensor(idx)])


def _learner(steps, points=None):
    torch.manual_seed(0)
    field = LatentModulatedSiren(SirenConfig(width=16, depth=3, latent_dim=4))
    cfg = MetaLearningConfig(steps=steps, batch_size=4, outer_lr=1e-3, eval_every=1000, save_every=3,
                             points_per_step=points)
    return field, MetaLearner(field, cfg)


def test_point_subsampling_uses_matching_random_subsets():
    src = ArraySource(torch.rand(16, 36, 1), grid(dtype=torch.float32)[0])
    _, learner = _learner(3, points=10)
    seen = []

    def record(batch):
        seen.append((batch.x.clone(), batch.y.clone()))
        learner.step_count += 1
        return {"loss": 0.0, "metric": 0.0}

    learner.train_step = record
    learner.fit(src, progress=False)
    assert [tuple(x.shape) for x, _ in seen] == [(1, 10, 2)] * 3 and all(y.shape == (4, 10, 1) for _, y in seen)
    x0, y0 = seen[0]
    # the targets are the features of exactly the sampled coordinates
    pos = [int(torch.nonzero((src.coords == c).all(1))[0]) for c in x0[0]]
    rows = [int(torch.nonzero((src.y[:, pos] == y0[k]).all(1).all(1))[0]) for k in range(4)]
    assert torch.equal(src.y[rows][:, pos], y0)
    assert not torch.equal(seen[0][0], seen[1][0])  # a new subset every step
    with pytest.raises(ValueError, match="points_per_step"):
        MetaLearningConfig(points_per_step=0)


@pytest.mark.parametrize("points", [None, 20])
def test_resume_after_interruption_matches_uninterrupted(tmp_path, points):
    torch.manual_seed(5)
    src = ArraySource(torch.rand(16, 36, 1), grid(dtype=torch.float32)[0])
    f_full, full = _learner(6, points)
    full.fit(src, progress=False)
    f_a, a = _learner(6, points)

    class Stop(Exception):
        pass

    def stop_after_first_save(_):
        if a.step_count == 3:
            raise Stop

    with pytest.raises(Stop):
        a.fit(src, run_dir=tmp_path, on_save=stop_after_first_save, progress=False)
    f_b, b = _learner(6, points)  # a fresh process would rebuild everything and resume from disk
    b.fit(src, run_dir=tmp_path, progress=False)
    assert b.step_count == 6
    for p, q in zip(f_full.parameters(), f_b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_lr_schedule_warmup_and_cosine():
    cfg = MetaLearningConfig(steps=110, outer_lr=1.0, warmup_steps=10, schedule="cosine")
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(60) == pytest.approx(0.5)
    assert cfg.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    assert MetaLearningConfig(outer_lr=3e-6).lr_at(1000) == 3e-6


def test_non_finite_loss_raises():
    field, learner = _learner(1)
    y = torch.full((4, 36, 1), float("nan"))
    with pytest.raises(FloatingPointError, match="outer_lr"):
        learner.train_step(Batch(grid(dtype=torch.float32), y))


@pytest.mark.parametrize("masked", [False, True])
def test_fitting_in_point_chunks_equals_one_pass(masked):
    """``fit_latents(max_points=...)`` sums every step's gradient over point chunks, weighted by each chunk's
    share of the item's (observed) points: the latents and losses of one pass, in bounded memory."""
    from functa.fields import SpatialConfig, SpatialSiren
    from functa.fitting import Batch, fit_latents
    from functa.modalities.image import image_coordinates

    torch.manual_seed(0)
    f = SpatialSiren(SpatialConfig(width=16, depth=3, grid=3, channels=4, out_dim=3, interpolation="bilinear",
                                   periodic_input=True)).double()
    x = image_coordinates(12, 12)[None].double()
    y = torch.rand(2, 144, 3, dtype=torch.float64)
    mask = (torch.rand(2, 144, 1) > 0.3).double() if masked else None
    batch = Batch(x, y, mask)
    whole = fit_latents(f, batch, 3)
    parts = fit_latents(f, batch, 3, max_points=50)  # 50 + 50 + 44 points
    # equal up to rounding (the shared zero-latent first step, the order of the sums)
    torch.testing.assert_close(parts.latents, whole.latents, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(parts.loss, whole.loss, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(parts.outputs, whole.outputs, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(fit_latents(f, batch, 2).latents, whole.latents)
