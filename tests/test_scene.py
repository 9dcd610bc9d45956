"""NeRF scenes: the volume renderer (paper Listing 1), camera rays, the scene batch sources and
meta-learning through the renderer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from functa.data.scene_dataset import SceneDataset
from functa.fields import field_from_config
from functa.fitting import (Batch, InnerLoop, MetaLearner, MetaLearningConfig, VolumeRenderer, outer_loss, ray_batch,
                            ray_depths, ray_points)
from functa.modalities import SceneModality
from functa.data.scene_builder import look_at_poses
from functa.modalities.cameras import orbit_poses, pixel_rays


def listing_1(outputs: np.ndarray, z_vals: np.ndarray, white_background: bool = True) -> np.ndarray:
    """functa paper Listing 1 after the field call, transcribed to numpy: outputs (R, P, 4) -> (R, 3)."""
    rgb, density = outputs[..., :3], outputs[..., 3]
    density = np.where(density > 0, density, 0.1 * (np.exp(density) - 1)) + 0.1
    density = np.clip(density, 0.0, 10.0)
    distances = np.concatenate([z_vals[1:] - z_vals[:-1], 1e-3 * np.ones(1)])
    alpha = 1.0 - np.exp(-density * distances)
    trans = np.minimum(1.0, 1.0 - alpha + 1e-10)
    trans = np.concatenate([np.ones_like(trans[..., :1]), trans[..., :-1]], -1)
    weights = alpha * np.cumprod(trans, -1)
    rgb_map = np.sum(weights[..., None] * rgb, -2)
    if white_background:
        rgb_map = rgb_map + (1.0 - np.sum(weights, -1))[..., None]
    return rgb_map


def _field(width: int = 16, depth: int = 3, latent: int = 8, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    f = field_from_config({"name": "latent_modulated_siren", "in_dim": 3, "out_dim": 4, "width": width,
                           "depth": depth, "latent_dim": latent, "w0": 5.0, "output_offset": 0.5})
    return f.to(dtype)


def _scenes(s: int = 5, v: int = 8, h: int = 8, seed: int = 0) -> SceneDataset:
    rng = np.random.default_rng(seed)
    poses = np.stack([orbit_poses(v, 2.0, elevation_deg=10.0 + 5 * i) for i in range(s)])
    images = rng.integers(0, 256, (s, v, h, h, 3), dtype=np.uint8)
    return SceneDataset(images, None, {"near": 1.0, "far": 3.0, "source": "synthetic"}, poses=poses, focal=10.0)


def _modality(ds: SceneDataset, **kw) -> SceneModality:
    base = {k: v for k, v in SceneModality.from_dataset(ds).to_config().items() if k != "name"}
    return SceneModality(**{**base, "points_per_ray": 6, "views_per_step": 3, "pixels_per_view": 10,
                            "context_pixels": 20, **kw})


# ---------------------------------------------------------------------------- rays and the renderer

def test_rays_and_renderer_match_listing_1():
    """Rays through pixel corners (pixel_centres=False) and the compositing are those of Listing 1."""
    h, w, focal = 5, 7, 6.0
    pose = look_at_poses(np.array([[0.3, -2.0, 1.2]]))[0]
    i, j = np.meshgrid(np.arange(w), np.arange(h), indexing="xy")
    dirs = np.stack([(i - w * 0.5) / focal, -(j - h * 0.5) / focal, -np.ones_like(i)], -1)
    rays_d = np.sum(dirs[..., None, :] * pose[:3, :3], -1).reshape(-1, 3)
    o, d = pixel_rays(torch.from_numpy(pose)[None], torch.tensor([focal]), h, w, torch.arange(h * w)[None],
                      pixel_centres=False)
    np.testing.assert_allclose(d[0].numpy(), rays_d, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(o[0].numpy(), np.broadcast_to(pose[:3, 3], rays_d.shape), rtol=0, atol=0)
    # rays through pixel centres are half a pixel further along u and v
    _, dc = pixel_rays(torch.from_numpy(pose)[None], torch.tensor([focal]), h, w, torch.arange(h * w)[None])
    cam = dc[0].numpy() @ pose[:3, :3]  # back to camera space
    np.testing.assert_allclose(cam[0], [(0.5 - w / 2) / focal, -(0.5 - h / 2) / focal, -1.0], atol=1e-6)
    # compositing, with raw outputs large enough to reach the density clip
    g = np.random.default_rng(1)
    p, n = 9, h * w
    outputs = g.normal(0, 3, (1, n * p, 4))
    t = ray_depths(2.0, 6.0, p, (1, n)).double()
    batch = ray_batch(o.double(), d.double(), t, torch.zeros(1, n, 3, dtype=torch.float64), VolumeRenderer(p))
    np.testing.assert_allclose(batch.x[0, :p].numpy(), pose[:3, 3] + rays_d[0] * np.linspace(2, 6, p)[:, None],
                               rtol=1e-6, atol=1e-6)
    ours = VolumeRenderer(p)(torch.from_numpy(outputs), batch)[0].numpy()
    ref = listing_1(outputs.reshape(n, p, 4), np.linspace(2.0, 6.0, p))
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)
    black = VolumeRenderer(p, white_background=False)(torch.from_numpy(outputs), batch)[0].numpy()
    np.testing.assert_allclose(black, listing_1(outputs.reshape(n, p, 4), np.linspace(2.0, 6.0, p), False), rtol=1e-10)


def test_renderer_limits_depth_and_metric_deltas():
    p, n = 16, 3
    t = ray_depths(1.0, 4.0, p, (1, n))
    o, d = torch.zeros(1, n, 3), torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -2.0], [0.0, 0.0, -1.0]]])
    out = torch.zeros(1, n, p, 4)
    out[..., 3] = -50.0  # empty space: density elu(-50, 0.1) + 0.1 ~ 0
    out[0, 2, 7, 3] = 1e3  # ray 2 hits an opaque wall at sample 7 (density clipped at 10)
    out[0, 2, 7, :3] = torch.tensor([0.2, 0.4, 0.6])
    r = VolumeRenderer(p)
    batch = ray_batch(o, d, t, torch.zeros(1, n, 3), r)
    pixels = r(out.reshape(1, -1, 4), batch)
    torch.testing.assert_close(pixels[0, 0], torch.ones(3), atol=1e-6, rtol=0)  # white background
    _, depth, acc = r.render(out.reshape(1, -1, 4), batch)
    wall_alpha = 1 - np.exp(-10.0 * 3.0 / 15)  # density 10 over one step of 0.2
    assert acc[0, 2] == pytest.approx(wall_alpha, rel=1e-5)
    assert depth[0, 2] == pytest.approx(wall_alpha * float(t[0, 0, 7]) + (1 - wall_alpha) * 4.0, rel=1e-5)
    expected = wall_alpha * torch.tensor([0.2, 0.4, 0.6]) + (1 - wall_alpha)
    torch.testing.assert_close(pixels[0, 2], expected, rtol=1e-5, atol=1e-6)
    # metric deltas scale the deltas by |d|: ray 1 (|d| = 2) sees twice the optical depth of ray 0
    out2 = torch.zeros(1, n, p, 4)
    out2[..., 3] = 0.5
    rm = VolumeRenderer(p, metric_deltas=True)
    acc_metric = rm.render(out2.reshape(1, -1, 4), ray_batch(o, d, t, torch.zeros(1, n, 3), rm))[2]
    acc_plain = r.render(out2.reshape(1, -1, 4), batch)[2]
    torch.testing.assert_close(acc_metric[0, 0], acc_plain[0, 0])
    assert float(acc_metric[0, 1]) > float(acc_plain[0, 1]) + 0.05
    with pytest.raises(ValueError, match="outputs"):
        r(torch.zeros(1, n * p, 3), batch)


def test_stratified_depths_stay_in_their_intervals():
    g = torch.Generator().manual_seed(0)
    t = ray_depths(2.0, 6.0, 8, (2, 50), stratified=True, generator=g)
    assert t.shape == (2, 50, 8)
    assert float(t.min()) >= 2.0 and float(t.max()) <= 6.0
    assert bool((t[..., 1:] >= t[..., :-1]).all())
    grid = torch.linspace(2.0, 6.0, 8)
    assert float((t - grid).abs().max()) <= 4.0 / 7 / 2 + 1e-6 and float((t - grid).abs().mean()) > 0.05
    t2 = ray_depths(2.0, 6.0, 8, (2, 50), stratified=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(t, t2)


def test_renderer_is_twice_differentiable():
    p, n = 5, 3
    g = torch.Generator().manual_seed(2)
    o = torch.zeros(1, n, 3, dtype=torch.float64)
    d = torch.randn(1, n, 3, generator=g, dtype=torch.float64)
    t = ray_depths(1.0, 3.0, p, (1, n)).double()
    r = VolumeRenderer(p)
    batch = ray_batch(o, d, t, torch.zeros(1, n, 3, dtype=torch.float64), r)
    out = (0.3 * torch.randn(1, n * p, 4, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: r(x, batch), (out,))
    assert torch.autograd.gradgradcheck(lambda x: r(x, batch), (out,))


def test_meta_gradient_through_the_renderer_matches_finite_differences():
    ds = _scenes(3, 4, 6)
    m = _modality(ds, views_per_step=2, pixels_per_view=4, points_per_ray=4)
    f = _field(8, 3, 4, dtype=torch.float64)
    tr, _ = m.sources(ds, ds, patches=False, seed=0)
    batch = tr.sample(np.array([0, 2]), np.random.default_rng(0))
    batch = Batch(batch.x.double(), batch.y.double(), renderer=batch.renderer, aux={k: v.double() for k, v in batch.aux.items()})
    inner = InnerLoop(2)
    w = f.layers[1].weight
    loss = outer_loss(f, inner, batch).loss
    (g,) = torch.autograd.grad(loss, w)
    eps = 1e-6
    with torch.no_grad():
        w[0, 1] += eps
        up = float(outer_loss(f, inner, batch).loss)
        w[0, 1] -= 2 * eps
        down = float(outer_loss(f, inner, batch).loss)
        w[0, 1] += eps
    assert float(g[0, 1]) == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-10)
    # per-inner-step checkpointing: the same gradient
    (gc,) = torch.autograd.grad(outer_loss(f, InnerLoop(2, checkpoint=True), batch).loss, w)
    torch.testing.assert_close(gc, g, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------- sources

def test_training_draws_are_per_scene_and_without_replacement():
    ds = _scenes(6, 8, 8)
    m = _modality(ds, views_per_step=5, pixels_per_view=30)
    tr, _ = m.sources(ds, ds, patches=False, seed=0)
    idx = np.array([4, 1, 3])
    views, pixels = [], []
    rng = np.random.default_rng([0, 7])
    batch = tr.sample(idx, rng)
    assert batch.x.shape == (3, 5 * 30 * 6, 3) and batch.y.shape == (3, 150, 3)
    # recover the draw from the rays: every ray's colour is the pixel of its view in the data
    again = np.random.default_rng([0, 7])
    from functa.modalities.scene import _choose

    v = _choose(again, 3, 8, 5)
    p = _choose(again, 15, 64, 30).reshape(3, 5, 30)
    for b in range(3):
        assert len(set(v[b])) == 5
        for k in range(5):
            assert len(set(p[b, k])) == 30
        views.append(tuple(v[b]))
        pixels.append(tuple(p[b, 0]))
        colours = ds.data[idx[b], v[b]].reshape(5, 64, 3)[np.arange(5)[:, None], p[b]].reshape(-1, 3) / 255.0
        np.testing.assert_allclose(batch.y[b].numpy(), colours, rtol=0, atol=1e-7)
    assert len(set(views)) > 1 and len(set(pixels)) > 1  # scenes draw independently
    # the same generator state draws the same batch (resumed runs)
    torch.testing.assert_close(tr.sample(idx, np.random.default_rng([0, 7])).x, batch.x)
    # the official code's draw: one index set for the batch, with replacement
    shared, _ = _modality(ds, sampling="shared", views_per_step=5, pixels_per_view=30).sources(ds, ds, patches=False,
                                                                                             seed=0)
    sb = shared.sample(idx, np.random.default_rng(3))
    r = np.random.default_rng(3)
    sv, sp = r.integers(0, 8, 5), r.integers(0, 64, (5, 30))
    for b in range(3):
        colours = ds.data[idx[b], sv].reshape(5, 64, 3)[np.arange(5)[:, None], sp].reshape(-1, 3) / 255.0
        np.testing.assert_allclose(sb.y[b].numpy(), colours, rtol=0, atol=1e-7)


def test_rays_point_at_the_pixels_they_observe():
    """A ray through pixel (u, v) of a view projects back onto that pixel (pinhole, OpenGL camera)."""
    ds = _scenes(2, 4, 8)
    m = _modality(ds, pixels_per_view=64, views_per_step=4, points_per_ray=5)
    b = m.rays(torch.from_numpy(ds.poses[:1]), torch.from_numpy(ds.focal[:1]), torch.arange(64).expand(1, 4, 64))
    pts = b.x.reshape(4, 64, 5, 3)[:, :, 2]  # a sample on each ray
    for k in range(4):
        c2w = ds.poses[0, k].astype(np.float64)
        cam = (pts[k].double().numpy() - c2w[:3, 3]) @ c2w[:3, :3]
        u = cam[:, 0] / -cam[:, 2] * 10.0 + 4.0
        v = -cam[:, 1] / -cam[:, 2] * 10.0 + 4.0
        np.testing.assert_allclose(u, np.arange(64) % 8 + 0.5, atol=1e-4)
        np.testing.assert_allclose(v, np.arange(64) // 8 + 0.5, atol=1e-4)
    assert float(b.aux["t"].min()) == pytest.approx(1.0) and float(b.aux["t"].max()) == pytest.approx(3.0)


def test_evaluation_scores_novel_views_after_fitting_context_views():
    ds = _scenes(3, 10, 6)
    m = _modality(ds, context_views=(2,), context_pixels=None)
    assert m.default_novel_views() == (0, 4, 6, 9)  # four spread over the non-context views
    _, val = m.sources(ds, ds, patches=False, seed=0)
    ctx = val.batch(np.array([0, 1]))
    np.testing.assert_allclose(ctx.y[1].numpy(), ds.data[1, 2].reshape(-1, 3) / 255.0, atol=1e-7)
    held = val.heldout(np.array([1]))
    np.testing.assert_allclose(held.y[0].numpy(), ds.data[1, [0, 4, 6, 9]].reshape(-1, 3) / 255.0, atol=1e-7)
    # views are checked against the split they are used on (SRN: 50 training views, 251 test views)
    with pytest.raises(ValueError, match="beyond the 10 views"):
        _modality(ds, novel_views=(10,)).sources(ds, ds, patches=False, seed=0)
    more = _scenes(2, 14, 6)
    _, val14 = _modality(ds, context_views=(12,), novel_views=(1, 13)).sources(ds, more, patches=False, seed=0)
    held = val14.heldout(np.array([0]))
    np.testing.assert_allclose(held.y[0].numpy(), more.data[0, [1, 13]].reshape(-1, 3) / 255.0, atol=1e-7)
    assert m.default_novel_views(context=(0,)) == (1, 4, 6, 9)  # nvs --context 0: never the context view


def test_meta_learning_on_scenes_improves_novel_view_psnr_and_resumes(tmp_path):
    """Scenes of one colour each: after meta-learning, one context view predicts the novel views."""
    s, v, h = 12, 6, 6
    poses = np.stack([orbit_poses(v, 2.0, elevation_deg=20.0) for _ in range(s)])
    colours = np.random.default_rng(0).integers(30, 225, (s, 1, 1, 1, 3))
    images = np.broadcast_to(colours, (s, v, h, h, 3)).astype(np.uint8)
    ds = SceneDataset(images, None, {"near": 1.0, "far": 3.0}, poses=poses, focal=8.0)
    m = _modality(ds, views_per_step=2, pixels_per_view=12, points_per_ray=6)
    tr, val = m.sources(ds, ds, patches=False, seed=0)
    cfg = MetaLearningConfig(steps=60, batch_size=4, outer_lr=3e-3, eval_every=60, eval_items=6, save_every=30)
    f = _field(16, 3, 8)
    hist = MetaLearner(f, cfg).fit(tr, val, run_dir=tmp_path / "a", progress=False)
    ev = hist[-1]["val"]
    assert ev[-1]["psnr_of_mean_mse"] > ev[0]["psnr_of_mean_mse"] + 8.0
    assert ev[-1]["psnr_of_mean_mse"] > 20.0
    # interrupted after 30 steps and resumed: the same weights as the uninterrupted run
    g = _field(16, 3, 8)
    MetaLearner(g, MetaLearningConfig(**{**cfg.__dict__, "steps": 30})).fit(tr, None, run_dir=tmp_path / "b",
                                                                            progress=False)
    g2 = _field(16, 3, 8)
    MetaLearner(g2, cfg).fit(tr, val, run_dir=tmp_path / "b", progress=False)
    for a, b in zip(f.state_dict().values(), g2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_render_views_is_chunk_invariant(monkeypatch):
    ds = _scenes(2, 4, 6)
    m = _modality(ds)
    f = _field()
    z = torch.randn(2, 8) * 0.1
    poses = m.camera_path(3)
    rgb, depth, acc = m.render_views(f, z, poses, scale=2.0)
    assert rgb.shape == (2, 3, 12, 12, 3) and depth.shape == acc.shape == (2, 3, 12, 12)
    assert float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    import functa.modalities.scene as scene

    monkeypatch.setattr(scene, "max_points_per_pass", lambda field: 60)  # many small chunks
    rgb2, depth2, _ = m.render_views(f, z, poses, scale=2.0)
    torch.testing.assert_close(rgb2, rgb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(depth2, depth, rtol=1e-5, atol=1e-5)
    strip = m.render_values(f, z)
    assert strip.shape == (2, 6, 6 * m.preview_views, 3) and strip.max() <= 255.0


def test_orbit_poses_look_at_the_origin():
    poses = orbit_poses(8, 3.0, (0.0, 1.0, 0.0), elevation_deg=20.0)
    r = poses[:, :3, :3]
    np.testing.assert_allclose(np.einsum("kji,kjl->kil", r, r), np.tile(np.eye(3), (8, 1, 1)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(poses[:, :3, 3], axis=1), 3.0, rtol=1e-6)
    forward = -r[:, :, 2]  # the camera looks down -z
    np.testing.assert_allclose(forward, -poses[:, :3, 3] / 3.0, atol=1e-6)
    np.testing.assert_allclose(poses[:, 1, 3], 3.0 * np.sin(np.deg2rad(20.0)), rtol=1e-6)  # elevation along up
    assert (r[:, 1, 1] > 0).all()  # screen up has a positive world-up component
    with pytest.raises(ValueError, match="at least one view"):
        orbit_poses(0, 1.0)


def test_ray_points_shapes():
    o, d = torch.zeros(2, 3, 3), torch.ones(2, 3, 3)
    t = ray_depths(0.0, 1.0, 4, (1, 3))
    assert ray_points(o, d, t).shape == (2, 12, 3)


def test_shared_rays_with_per_item_targets_take_the_fast_path_exactly():
    """All items seen through the same rays (x of batch 1): the shared first step broadcasts, and the
    explicit path gives the autograd path's latents."""
    ds = _scenes(3, 4, 6)
    m = _modality(ds)
    one = m.rays(torch.from_numpy(ds.poses[:1, :2]), torch.from_numpy(ds.focal[:1, :2]),
                 torch.arange(20).expand(1, 2, 20))
    y = torch.rand(3, 40, 3, dtype=torch.float64)
    batch = Batch(one.x.double(), y, renderer=one.renderer, aux={k: v.double() for k, v in one.aux.items()})
    f = _field(8, 3, 4, dtype=torch.float64)
    from functa.fitting import fit_latents

    fast = fit_latents(f, batch, 3)
    slow = fit_latents(f, Batch(batch.x.expand(3, -1, -1), y, renderer=one.renderer, aux=batch.aux), 3,
                       shared_first_step=False)
    torch.testing.assert_close(fast.latents, slow.latents, rtol=1e-10, atol=1e-12)
    with torch.enable_grad():
        r = outer_loss(f, InnerLoop(2), batch)
        r_slow = outer_loss(f, InnerLoop(2, fast_path=False), batch)
    torch.testing.assert_close(r.loss, r_slow.loss, rtol=1e-12, atol=0)


def test_stratified_jitter_is_for_training_draws_only():
    ds = _scenes(2, 6, 6)
    m = _modality(ds, stratified=True)
    tr, val = m.sources(ds, ds, patches=False, seed=0)
    grid = torch.linspace(m.near, m.far, m.points_per_ray)
    a = tr.sample(np.array([0, 1]), np.random.default_rng(1)).aux["t"]
    assert a.shape[0] == 2 and float((a - grid).abs().max()) > 1e-3  # training rays are jittered
    torch.testing.assert_close(a, tr.sample(np.array([0, 1]), np.random.default_rng(1)).aux["t"])  # reproducibly
    for batch in (tr.batch(np.array([0])), val.batch(np.array([0])), val.heldout(np.array([0]))):
        torch.testing.assert_close(batch.aux["t"][0, 0], grid)  # encoding and evaluation are deterministic
        assert batch.aux["t"].shape[0] == 1


def test_depth_images_map_near_to_white_and_empty_rays_to_white():
    from functa.scenes import depth_image

    depth = torch.tensor([[1.0, 2.0, 3.0, 2.5]])
    opacity = torch.tensor([[1.0, 1.0, 1.0, 0.2]])
    img = depth_image(depth, opacity, near=1.0, far=3.0)
    assert img.dtype == np.uint8 and img.tolist() == [[255, 128, 0, 255]]  # near, middle, far, nothing hit
