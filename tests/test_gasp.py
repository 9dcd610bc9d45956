"""GASP generator: batched function networks against a per-item reference, shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from functa.errors import ConfigError
from functa.tasks.gasp import FunctionNetwork, GeneratorConfig, HyperGenerator, fourier_features

SMALL = GeneratorConfig(in_dim=2, out_dim=3, latent_dim=8, function_hidden=(16, 16), hyper_hidden=(32,),
                        fourier_features=8, fourier_scale=2.0)


def _reference(function: FunctionNetwork, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """One item at a time, weights sliced by hand from the flat vector (the public code's loop)."""
    outs = []
    for b in range(theta.shape[0]):
        xb = x[0] if x.shape[0] == 1 else x[b]
        h = torch.cat([torch.cos(2 * math.pi * xb @ function.frequencies.t()),
                       torch.sin(2 * math.pi * xb @ function.frequencies.t())], -1)
        start = 0
        for k, (n_in, n_out) in enumerate(function.layer_shapes):
            w = theta[b, start:start + n_in * n_out].reshape(n_in, n_out)
            start += n_in * n_out
            bias = theta[b, start:start + n_out]
            start += n_out
            h = h @ w + bias
            h = torch.tanh(h) if k == len(function.layer_shapes) - 1 else F.leaky_relu(h, 0.1)
        outs.append(h)
    return torch.stack(outs)


def test_batched_functions_match_a_per_item_loop():
    torch.manual_seed(0)
    g = HyperGenerator(SMALL).double()
    z = torch.randn(5, 8, dtype=torch.float64)
    theta = g.weights(z)
    assert theta.shape == (5, g.function.num_parameters)
    assert g.function.num_parameters == (16 * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)
    shared = torch.rand(1, 30, 2, dtype=torch.float64) * 2 - 1
    per_item = torch.rand(5, 30, 2, dtype=torch.float64) * 2 - 1
    for x in (shared, per_item):
        torch.testing.assert_close(g(x, z), _reference(g.function, x, theta), rtol=1e-12, atol=1e-12)
    out = g(shared, z)
    assert out.shape == (5, 30, 3) and float(out.detach().abs().max()) < 1.0  # tanh: features in (-1, 1)
    # a function is defined everywhere: any set of coordinates, any resolution
    fine = torch.rand(1, 1000, 2, dtype=torch.float64) * 2 - 1
    assert g(fine, z).shape == (5, 1000, 3)


def test_generator_gradients_reach_every_hypernetwork_weight():
    torch.manual_seed(1)
    g = HyperGenerator(SMALL)
    loss = g(torch.rand(1, 20, 2) * 2 - 1, torch.randn(4, 8)).square().mean()
    loss.backward()
    for name, p in g.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert not any(n == "function.frequencies" for n, _ in g.named_parameters())  # B is a fixed buffer


def test_fourier_features_and_fixed_frequencies():
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    gamma = fourier_features(torch.tensor([[0.25, 0.125]]), b)
    torch.testing.assert_close(gamma, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), atol=1e-6, rtol=0)
    f1, f2 = FunctionNetwork(SMALL), FunctionNetwork(SMALL)
    torch.testing.assert_close(f1.frequencies, f2.frequencies)  # drawn from config.seed
    assert float(f1.frequencies.std()) == pytest.approx(2.0, rel=0.5)


def test_generator_config_and_inputs_are_checked():
    with pytest.raises(ConfigError, match="model.latent_dim"):
        GeneratorConfig(latent_dim=0)
    g = HyperGenerator(SMALL)
    with pytest.raises(ValueError, match="coordinates"):
        g(torch.rand(1, 5, 3), torch.randn(2, 8))
    with pytest.raises(ValueError, match="theta"):
        g.function(torch.rand(1, 5, 2), torch.randn(2, 7))


# ------------------------------------------------------------------------------------------ PointConv
import json
from types import SimpleNamespace

import numpy as np
from PIL import Image

from functa.errors import DivergenceError
from functa.io import ArtefactError
from functa.tasks.gasp import (DiscriminatorConfig, GaspTrainConfig, GaspTrainer, PointClouds, PointConv,
                               PointConvDiscriminator, farthest_point_sample, gather_points, knn,
                               point_coordinates, r1_penalty)
from functa.tasks.gasp.pointconv import level


def _fps_reference(points: np.ndarray, m: int) -> list[int]:
    chosen, dist = [0], np.linalg.norm(points - points[0], axis=1)
    while len(chosen) < m:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(points - points[chosen[-1]], axis=1))
    return chosen


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_knn_matches_a_full_sort_and_chunking_changes_nothing(p):
    g = torch.Generator().manual_seed(0)
    q, pts = torch.rand(3, 40, 2, generator=g), torch.rand(3, 70, 2, generator=g)
    idx = knn(q, pts, 5, p=p)
    ref = torch.cdist(q, pts, p=p).argsort(-1)[..., :5]
    assert idx.shape == (3, 40, 5) and torch.equal(idx, ref)
    assert torch.equal(knn(q, pts, 5, p=p, max_elements=3 * 70 * 7), idx)  # 7 queries per chunk
    with pytest.raises(ValueError, match="k = 71"):
        knn(q, pts, 71)


def test_farthest_point_sampling_matches_the_definition():
    pts = torch.rand(2, 50, 3, generator=torch.Generator().manual_seed(1))
    idx = farthest_point_sample(pts, 12)
    for b in range(2):
        assert idx[b].tolist() == _fps_reference(pts[b].numpy(), 12)
    assert torch.equal(farthest_point_sample(pts, 50), torch.arange(50).expand(2, 50))


def test_gather_points_shared_and_per_item_indices():
    v = torch.randn(3, 10, 4)
    shared = torch.randint(0, 10, (1, 6, 2))
    assert torch.equal(gather_points(v, shared), v[:, shared[0]])
    per_item = torch.randint(0, 10, (3, 6, 2))
    assert torch.equal(gather_points(v, per_item), torch.stack([v[b, per_item[b]] for b in range(3)]))


def test_pointconv_is_the_sum_over_neighbours_of_kernel_times_features():
    torch.manual_seed(0)
    conv = PointConv(2, 3, 5, (8, 4), batchnorm=False, negative_slope=0.2).double()
    x = torch.rand(1, 30, 2, dtype=torch.float64)
    f = torch.randn(2, 30, 3, dtype=torch.float64)
    lv = level(x, 10, 4)
    out = conv(f, lv)
    # f_out(c) = sum_i W(x_i - c) f_i with W(d) = linear weights (C_out, C_in, mid) contracted with the MLP of d
    lin = conv.linear.weight.view(5, 3, 4)
    for b in range(2):
        for m in range(10):
            total = conv.linear.bias.clone()
            for i in lv.neighbours[0, m].tolist():
                w = conv.weight_net(x[0, i] - lv.coords[0, m])  # (mid,)
                total = total + (lin * w).sum(-1) @ f[b, i]
            torch.testing.assert_close(out[b, m], total)


SMALL_D = DiscriminatorConfig(coord_dim=2, feature_dim=1, grid_dim=2, channels=(4, 8), weight_hidden=(4, 4))


def test_discriminator_takes_any_number_of_points_and_caches_its_plan():
    torch.manual_seed(0)
    d = PointConvDiscriminator(SMALL_D)
    for n in (784, 300, 20):
        x = torch.rand(1, n, 2) * 2 - 1
        out = d(x, torch.randn(3, n, 1))
        assert out.shape == (3,) and torch.isfinite(out).all()
        levels = d.plan(x)
        assert [lv.coords.shape[1] for lv in levels] == [n, math.ceil(n / 4), math.ceil(n / 4),
                                                         math.ceil(math.ceil(n / 4) / 4), 1]
        assert levels[-1].neighbours.shape[-1] == levels[-2].coords.shape[1]  # the head sees every point
        assert d.plan(x.clone()) is levels  # same coordinates: the cached levels
    with pytest.raises(ValueError, match="expected features"):
        d(torch.rand(1, 10, 2), torch.randn(3, 11, 1))


def test_discriminator_per_item_coordinates_equal_one_item_at_a_time():
    torch.manual_seed(0)
    d = PointConvDiscriminator(DiscriminatorConfig(channels=(4,), weight_hidden=(4,), batchnorm=False)).double()
    x = torch.rand(3, 40, 2, dtype=torch.float64)
    f = torch.randn(3, 40, 1, dtype=torch.float64)
    both = d(x, f)
    for b in range(3):
        torch.testing.assert_close(both[b:b + 1], d(x[b:b + 1], f[b:b + 1]))


def test_discriminator_gradients_match_finite_differences():
    torch.manual_seed(0)
    d = PointConvDiscriminator(SMALL_D).double()
    x = torch.rand(1, 20, 2, dtype=torch.float64)
    f = torch.randn(2, 20, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: d(x, y), (f,))
    assert torch.autograd.gradgradcheck(lambda y: d(x, y), (f,))  # what R1's update differentiates


def test_r1_penalty_value_and_gradient():
    y = torch.randn(4, 6, 2, requires_grad=True)
    scale = torch.tensor(1.5, requires_grad=True)
    out = scale * y.square().sum((1, 2))  # grad_y = 2 scale y
    pen = r1_penalty(out, y)
    torch.testing.assert_close(pen, (4 * 1.5**2 * y.square()).sum((1, 2)).mean())
    (g,) = torch.autograd.grad(pen, scale)
    torch.testing.assert_close(g, (8 * 1.5 * y.square()).sum((1, 2)).mean())


# ------------------------------------------------------------------------------------------ training
class _Items:
    """The part of an ArrayDataset that PointClouds uses: ``len`` and ``take``."""

    def __init__(self, items: np.ndarray) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def take(self, idx) -> np.ndarray:
        return self.items[np.asarray(idx)]


def _clouds(n=12, side=6, items=None):
    from functa.modalities.image import ImageModality

    if items is None:
        items = np.random.default_rng(0).integers(0, 256, (n, side, side, 1)).astype(np.uint8)
    return PointClouds(_Items(items), ImageModality(height=side, width=side, channels=1))


TINY_G = GeneratorConfig(in_dim=2, out_dim=1, latent_dim=4, function_hidden=(8,), hyper_hidden=(8,),
                         fourier_features=4, fourier_scale=1.0)


def _trainer(**train):
    torch.manual_seed(0)
    cfg = GaspTrainConfig(**{"batch_size": 4, "steps": 4, "sample_every": 2, "save_every": 2, **train})
    return GaspTrainer(HyperGenerator(TINY_G), PointConvDiscriminator(SMALL_D), cfg)


def test_point_clouds_are_in_minus_one_one():
    c = _clouds()
    assert c.coords.shape == (36, 2)
    assert c.coords.min() == pytest.approx(-5 / 6) and c.coords.max() == pytest.approx(5 / 6)  # pixel centres
    f = c.features(np.arange(3))
    assert f.shape == (3, 36, 1) and f.min() >= -1 and f.max() <= 1
    np.testing.assert_allclose(c.to_data(f), c.data.take(np.arange(3)), atol=1e-3)
    with pytest.raises(ConfigError, match="coordinate grid"):
        point_coordinates(SimpleNamespace(name="scene", coordinate_box=lambda: None))


def test_losses_are_the_non_saturating_gan_with_r1_on_the_probability():
    t = _trainer()
    c = _clouds()
    coords, real = c.coords[None], c.features(np.arange(4))
    fake = torch.rand(4, 36, 1) * 2 - 1
    loss, stats = t.discriminator_loss(coords, real, fake)
    y = real.clone().requires_grad_(True)
    t.discriminator.train()
    p_real, p_fake = torch.sigmoid(t.discriminator(coords, y)), torch.sigmoid(t.discriminator(coords, fake))
    (g,) = torch.autograd.grad(p_real.sum(), y)
    expected = (F.binary_cross_entropy(p_real, torch.ones(4)) + F.binary_cross_entropy(p_fake, torch.zeros(4))
                + 0.5 * 10.0 * g.square().sum((1, 2)).mean())
    torch.testing.assert_close(loss, expected)
    assert stats["d_real"] == pytest.approx(float(p_real.detach().mean()), rel=1e-5)


def test_resumed_training_is_bit_identical(tmp_path):
    whole = _trainer()
    whole.fit(_clouds(), tmp_path / "a", progress=False)
    first = _trainer(steps=2)
    first.fit(_clouds(), tmp_path / "b", progress=False)
    second = _trainer()
    second.fit(_clouds(), tmp_path / "b", progress=False)
    assert second.step_count == 4 and [r["step"] for r in second.history] == [2, 4]
    for a, b in zip(whole.generator.state_dict().values(), second.generator.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(whole.discriminator.state_dict().values(), second.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(whole.sample_generator().head.weight, second.sample_generator().head.weight)
    with pytest.raises(ArtefactError, match="another seed"):
        _trainer(seed=1).fit(_clouds(), tmp_path / "b", progress=False)


def test_non_square_grids_keep_their_aspect():
    from functa.modalities.image import ImageModality

    c = PointClouds(_Items(np.zeros((2, 4, 8, 1), np.uint8)), ImageModality(height=4, width=8, channels=1))
    rows, cols = c.coords[:, 0].unique(), c.coords[:, 1].unique()
    assert cols.min() == pytest.approx(-7 / 8) and rows.min() == pytest.approx(-3 / 8)  # one spacing, 1/4
    torch.testing.assert_close(rows.diff(), torch.full((3,), 0.25))
    torch.testing.assert_close(cols.diff(), torch.full((7,), 0.25))


def test_an_interrupt_mid_step_saves_a_whole_step_and_resumes_bit_identically(tmp_path):
    import os
    import signal

    whole = _trainer(sample_every=4)
    whole.fit(_clouds(), tmp_path / "a", progress=False)
    cut = _trainer(sample_every=4)
    loss = cut.generator_loss

    def interrupting(coords, z):
        if cut.step_count == 2:
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the D and the G update of step 3
        return loss(coords, z)

    cut.generator_loss = interrupting
    with pytest.raises(KeyboardInterrupt):
        cut.fit(_clouds(), tmp_path / "b", progress=False)
    assert json.loads((tmp_path / "b" / "train_state.json").read_text())["step"] == 3
    resumed = _trainer(sample_every=4)
    resumed.fit(_clouds(), tmp_path / "b", progress=False)
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in resumed.history] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in whole.history]  # the row averages all 4 steps
    for a, b in zip(whole.discriminator.state_dict().values(), resumed.discriminator.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("options", [{"max_num_points": 20}, {"r1_on": "logit"}])
def test_resume_is_bit_identical_with_options(tmp_path, options):
    whole = _trainer(**options)
    whole.fit(_clouds(), tmp_path / "a", progress=False)
    _trainer(**{**options, "steps": 2}).fit(_clouds(), tmp_path / "b", progress=False)
    resumed = _trainer(**options)
    resumed.fit(_clouds(), tmp_path / "b", progress=False)
    for a, b in zip(whole.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_subsampled_points_train():
    t = _trainer(max_num_points=20)
    hist = t.fit(_clouds(), progress=False)
    assert len(hist) == 2 and all(math.isfinite(r["loss_d"]) for r in hist)
    with pytest.raises(ValueError, match="pools 10 points down to 1"):
        _trainer(max_num_points=10).fit(_clouds(), progress=False)


def test_a_nan_stops_training_with_a_clear_error():
    t = _trainer()
    c = _clouds()
    with torch.no_grad():
        t.generator.head.bias.fill_(float("nan"))
    with pytest.raises(DivergenceError, match="non-finite discriminator loss at step 0"):
        t.fit(c, progress=False)


class _Separating(torch.nn.Module):
    """A discriminator that tells all-white items (real) from anything else at once."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.config = SMALL_D

    def forward(self, coords, features):
        return 60 * (features.mean((1, 2)) - 0.9) + 0 * self.p


def test_a_saturated_discriminator_is_reported_once():
    torch.manual_seed(0)
    t = GaspTrainer(HyperGenerator(TINY_G), _Separating(),
                    GaspTrainConfig(batch_size=4, steps=6, saturation_steps=3, r1_weight=0.0))
    t.fit(_clouds(items=np.full((12, 6, 6, 1), 255, np.uint8)), progress=False)
    assert [e["step"] for e in t.events] == [3] and t.events[0]["event"] == "discriminator saturated"


# ------------------------------------------------------------------------------------------ defaults
def _modality(name, shape, channels=1):
    return SimpleNamespace(name=name, shape=shape, out_channels=channels)


def test_defaults_follow_the_thesis():
    from functa.gasp import defaults

    mnist = defaults(_modality("image", (28, 28)))
    assert mnist["discriminator"]["channels"] == [64, 128, 256] and mnist["generator"]["fourier_scale"] == 1.0
    assert mnist["train"]["batch_size"] == 128
    celeb = defaults(_modality("image", (64, 64), 3))
    assert celeb["discriminator"]["channels"] == [64, 128, 256, 512] and celeb["generator"]["fourier_scale"] == 2.0
    celeb128 = defaults(_modality("image", (128, 128), 3))
    assert celeb128["discriminator"]["channels"][-1] == 1024 and celeb128["generator"]["fourier_scale"] == 3.0
    assert celeb128["train"]["batch_size"] == 22
    vox = defaults(_modality("voxel", (32, 32, 32)))
    assert vox["discriminator"]["channels"] == [64, 128, 256] and vox["generator"]["fourier_features"] == 0
    assert vox["train"] == {"batch_size": 24, "lr_generator": 2e-5, "lr_discriminator": 8e-5, "max_num_points": 4096}
    era5 = defaults(_modality("sphere", (46, 90)))
    assert era5["discriminator"]["channels"] == [64, 128, 256, 512] and era5["train"]["batch_size"] == 64


def test_default_settings_are_valid_for_every_grid_modality():
    from functa.gasp import settings

    for name, shape in (("image", (28, 28)), ("image", (128, 128)), ("voxel", (32, 32, 32)), ("sphere", (64, 128)),
                        ("audio", (16000,)), ("volume", (256, 256, 128))):
        mod = SimpleNamespace(name=name, shape=shape, out_channels=1, in_dim=3 if name == "sphere" else len(shape))
        s = settings(mod)  # builds and checks all three configs
        assert s["discriminator"]["channels"][0] == 64
    audio = settings(SimpleNamespace(name="audio", shape=(16000,), out_channels=1, in_dim=1))
    assert max(audio["discriminator"]["channels"]) == 512 and audio["train"]["max_num_points"] == 4096


# ------------------------------------------------------------------------------------------ command line
def _fashion_like(root, n=16, size=8):
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 6)):
        for i in range(count):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L").save(d / f"{i}.png")
    return root


GASP_TINY = ["--set", "train.steps=4", "--set", "train.batch_size=4", "--set", "train.sample_every=2",
             "--set", "train.save_every=2", "--set", "discriminator.channels=[4,8]",
             "--set", "discriminator.weight_hidden=[4,4]", "--set", "generator.function_hidden=[8,8]",
             "--set", "generator.hyper_hidden=[16]", "--set", "generator.fourier_features=8"]


def test_gasp_train_resume_and_sample_at_four_times_the_resolution(tmp_path, capsys):
    from functa.cli import main

    data = _fashion_like(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(run), *GASP_TINY, "--set", "train.steps=2"]) == 0
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(run), *GASP_TINY]) == 0  # resumes at step 2
    state = json.loads((run / "train_state.json").read_text())
    assert state["step"] == 4 and [r["step"] for r in state["history"]] == [2, 4]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "gasp" and cfg["modality"]["name"] == "image" and cfg["step"] == 4
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["real.png", "step_0000002.png",
                                                                       "step_0000004.png"]
    capsys.readouterr()
    out = tmp_path / "s"
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(out), "-n", "5", "--scale", "4"]) == 0
    values = np.load(out / "sample.npz")["values"]
    assert values.shape == (5, 32, 32, 1) and 0 <= values.min() and values.max() <= 255
    with Image.open(out / "sample" / "sample0000.png") as im:
        assert im.size == (32, 32)
    m = json.loads((out / "metrics.json").read_text())["memorisation"]
    assert m["train_items"] == 16 and m["test_items"] == 6 and m["sample_nn_distance_median"] > 0
    assert "nearest training item" in capsys.readouterr().out
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(tmp_path / "t"), "-n", "2", "--shape", "5", "7",
                 "--no-neighbours"]) == 0
    assert np.load(tmp_path / "t" / "sample.npz")["values"].shape == (2, 5, 7, 1)


def test_gasp_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    from functa.cli import main

    data = _fashion_like(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(run), *GASP_TINY, "--set", "train.steps=2"]) == 0
    capsys.readouterr()
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(run), *GASP_TINY,
                 "--set", "train.r1_weight=1"]) == 2  # other settings than the run's
    assert "started with other data or settings" in capsys.readouterr().err
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(tmp_path / "x"), "--set", "train.lr_g=1"]) == 2
    assert "unknown gasp train settings ['lr_g']" in capsys.readouterr().err
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(tmp_path / "x"),
                 "--set", "discriminator.channels=[0]"]) == 2
    assert "discriminator.channels" in capsys.readouterr().err
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(tmp_path / "s"), "--shape", "5"]) == 2
    assert "--shape needs 2 sizes" in capsys.readouterr().err
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(tmp_path / "s"), "-n", "1000", "--shape",
                 "8000", "8000"]) == 2
    assert "1000 samples on a 8000x8000 grid" in capsys.readouterr().err
    assert main(["--quiet", "gasp", "sample", str(tmp_path / "nothing"), "-o", str(tmp_path / "s")]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_oversized_networks_are_refused_before_allocation():
    with pytest.raises(ConfigError, match="generator: a hypernetwork"):
        GeneratorConfig(function_hidden=(4096,) * 8)
    with pytest.raises(ConfigError, match="discriminator: widths"):
        DiscriminatorConfig(channels=(8192,) * 6, weight_hidden=(1024,))


def test_sampling_a_run_whose_data_moved_skips_the_memorisation_check(tmp_path):
    from functa.cli import main

    data = _fashion_like(tmp_path / "data")
    run = tmp_path / "run"
    assert main(["--quiet", "gasp", "train", str(data), "-o", str(run), *GASP_TINY, "--set", "train.steps=2"]) == 0
    data.rename(tmp_path / "moved")
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(tmp_path / "s"), "-n", "2"]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())["memorisation"]
    assert "is not there any more" in m["skipped"]


def test_generated_functions_vary_over_their_inputs_at_initialisation():
    torch.manual_seed(0)
    g = HyperGenerator(GeneratorConfig(fourier_scale=1.0))  # the thesis' sizes
    x = torch.cartesian_prod(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28))[None]
    y = g(x, g.sample_latents(8))
    assert y.std(1).mean() > 0.1  # not constant images (a 1/sqrt(n_in) scale of the weights gave 2e-5)
    assert (y.abs() > 0.99).float().mean() < 0.05  # and mostly not saturated at the tanh


@pytest.mark.parametrize("name, path, shape, in_dim", [
    ("mnist", "mnist", (28, 28, 1), 2), ("cifar10", "cifar10", (32, 32, 3), 2),
    ("voxels", "modelnet10_vox32/modelnet10_chair_monitor_vox32.npz", (32, 32, 32), 3),
    ("sphere", "climate_temperature/ccsm_b003_ts_monthly_t42.npz", (64, 128), 3)])
def test_gasp_reads_every_kind_of_shared_data(shared_data, tmp_path, name, path, shape, in_dim):
    from functa.cli import main

    run = tmp_path / name
    assert main(["--quiet", "gasp", "train", str(shared_data / path), "-o", str(run), *GASP_TINY,
                 "--set", "train.steps=1", "--set", "data.limit=8", "--set", "train.max_num_points=512"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["step"] == 1 and cfg["model"]["in_dim"] == in_dim
    assert main(["--quiet", "gasp", "sample", str(run), "-o", str(tmp_path / "s"), "-n", "2", "--no-neighbours"]) == 0
    assert np.load(tmp_path / "s" / "sample.npz")["values"].shape[1:] == shape
