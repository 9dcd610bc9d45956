"""Downstream building blocks: standardiser, schedules, EMA, trainer, classifiers, MAP inference."""

import math

import numpy as np
import pytest
import torch

from functa.fields import LatentModulatedSiren, SirenConfig
from functa.optim import EMA, lr_at
from functa.tasks.classify import (ConvClassifier, ConvConfig, MLPClassifier, MLPConfig, accuracy,
                                   classification_loss, count_parameters)
from functa.modalities import grid_mask
from functa.tasks.inference import map_fit
from functa.tasks.latents import Standardizer, interpolate, nearest_neighbours
from functa.tasks.train import TrainConfig, Trainer


def test_standardizer_round_trip_and_statistics():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 6, generator=g) * torch.arange(1, 7) + 3.0
    s = Standardizer.fit(z, norm_factor=4.0)
    u = s(z)
    assert torch.allclose(u.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(u.std(0), torch.full((6,), 0.25), atol=1e-5)  # std 1 / norm_factor
    assert torch.allclose(s.inverse(u), z, atol=1e-4)
    assert s.log_abs_det() == pytest.approx(-float(torch.log(z.double().std(0) * 4).sum()), rel=1e-6)
    s2 = Standardizer.from_tensors(s.tensors())
    assert torch.equal(s2(z), u)
    scalar = Standardizer.fit(z, per_dimension=False)
    assert torch.allclose(scalar.std, torch.full((6,), float(z.double().std())), rtol=1e-5)
    with pytest.raises(ValueError, match="5 dimensions"):
        s(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="norm_factor"):
        Standardizer.fit(z, norm_factor=0)


def test_lr_schedules():
    assert lr_at(0, 1.0, "rsqrt", 4) == pytest.approx(0.25)
    assert lr_at(3, 1.0, "rsqrt", 4) == pytest.approx(1.0)
    assert lr_at(15, 1.0, "rsqrt", 4) == pytest.approx(0.5)  # sqrt(4/16)
    assert lr_at(10, 2.0, "cosine", 0, 20) == pytest.approx(1.0)
    assert lr_at(20, 2.0, "cosine", 0, 20) == pytest.approx(0.0)
    assert lr_at(7, 3.0, "constant") == 3.0
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 1.0, "linear")


def test_ema_average():
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema = EMA(m, 0.5)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema.update(m)
    ema.update(m)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.75))
    with pytest.raises(ValueError):
        EMA(m, 1.0)


def _blobs(n=600, d=8, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * 3
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, d, generator=g), y


def test_mlp_learns_separable_toy_functaset():
    x, y = _blobs()
    model = MLPClassifier(MLPConfig(8, 3, width=32, depth=2, dropout=0.1))
    before = accuracy(model, x[500:], y[500:])
    trainer = Trainer(model, classification_loss(0.1), TrainConfig(steps=150, batch_size=64, lr=3e-3, ema_decay=0.9))
    trainer.fit((x[:500], y[:500]), progress=False)
    after = accuracy(trainer.evaluation_model(), x[500:], y[500:])
    assert after > 0.95 > before or after > 0.95 and after > before
    assert count_parameters(model) == 8 * 32 + 32 + 32 * 32 + 32 + 32 * 3 + 3
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        model(torch.zeros(2, 7))


def test_conv_baseline_shapes_and_loss_decreases():
    cfg = ConvConfig(1, 10, (28, 28), channels=(8, 16), width=32, dropout=0.0)
    model = ConvClassifier(cfg)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert ConvConfig.from_dict(cfg.to_dict()) == cfg
    x = torch.rand(64, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > x[:, 0, 14:].mean((1, 2))).long()
    loss = classification_loss()
    first = float(loss(model, (x, y)).detach())
    Trainer(model, loss, TrainConfig(steps=60, batch_size=64, lr=3e-3)).fit((x, y), progress=False)
    assert float(loss(model.eval(), (x, y)).detach()) < first
    with pytest.raises(ValueError, match="expected arrays"):
        model(torch.zeros(1, 3, 28, 28))
    legacy = {**cfg.to_dict(), "image_shape": [28, 28]}
    del legacy["grid_shape"]
    assert ConvConfig.from_dict(legacy) == cfg  # configs saved before 3-D grids


def test_conv_baseline_on_voxel_grids():
    cfg = ConvConfig(1, 2, (8, 8, 8), channels=(4, 8), width=16, dropout=0.0)
    model = ConvClassifier(cfg)
    assert isinstance(model.net[0], torch.nn.Conv3d) and model(torch.zeros(3, 1, 8, 8, 8)).shape == (3, 2)
    # 1*4*27+4 + 4*8*27+8 + (8*2*2*2)*16+16 + 16*2+2 parameters
    assert sum(p.numel() for p in model.parameters()) == 112 + 872 + 1040 + 34
    with pytest.raises(ValueError, match="1-D, 2-D or 3-D"):
        ConvConfig(1, 2, (8, 8, 8, 8))


def test_conv_baseline_on_waveforms():
    cfg = ConvConfig(1, 10, (4000,), channels=(32, 64, 128, 128), width=128, kernel=9, stride=4)
    model = ConvClassifier(cfg)
    assert isinstance(model.net[0], torch.nn.Conv1d) and model(torch.zeros(3, 1, 4000)).shape == (3, 10)
    # 4000 -> 1000 -> 250 -> 63 -> 16 samples (padding 4); conv k*c_in*c_out + c_out, then flatten 128*16
    convs = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128) + (9 * 128 * 128 + 128)
    assert count_parameters(model) == convs + (128 * 16 + 1) * 128 + (128 + 1) * 10 == 503818
    assert cfg.conv_output((4000,)) == (1000,) and ConvConfig(1, 2, (7,), kernel=4, stride=3).conv_output((7,)) == (3,)
    assert model.net[0].padding == (4,) and model.net[0].stride == (4,)
    even = ConvClassifier(ConvConfig(2, 3, (37,), channels=(4, 5), width=8, kernel=4, stride=3))
    assert even(torch.zeros(2, 2, 37)).shape == (2, 3)  # the computed flatten size matches torch's
    # round trip, and configs saved before kernel / stride existed load with the old 3 / 2
    assert ConvConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["kernel"] == 9
    old = ConvConfig(1, 10, (28, 28)).to_dict()
    del old["kernel"], old["stride"]
    assert ConvConfig.from_dict(old) == ConvConfig(1, 10, (28, 28), kernel=3, stride=2)
    with pytest.raises(ValueError, match="kernel"):
        ConvConfig(1, 2, (100,), kernel=0)
    with pytest.raises(ValueError, match="stride"):
        ConvConfig(1, 2, (100,), stride=1.5)
    with pytest.raises(ValueError, match="parameters"):  # 3-wide stride-2 convs on long clips: a huge flatten
        ConvConfig(1, 2, (2**22,), channels=(64,), width=512)


def test_trainer_resume_matches_uninterrupted(tmp_path):
    x, y = _blobs(200)

    def run(steps, run_dir):
        torch.manual_seed(1)
        model = MLPClassifier(MLPConfig(8, 3, width=16, depth=1, dropout=0.3))
        cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-2, ema_decay=0.9, save_every=5, schedule="rsqrt",
                          warmup_steps=3)
        Trainer(model, classification_loss(), cfg).fit((x, y), run_dir=run_dir, progress=False)
        return model

    full = run(20, None)
    run(10, tmp_path)
    resumed = run(20, tmp_path)  # picks up the state saved at step 10
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_trainer_rejects_mismatched_data():
    model = MLPClassifier(MLPConfig(8, 3, width=4, depth=1))
    with pytest.raises(ValueError, match="different lengths"):
        Trainer(model, classification_loss(), TrainConfig(steps=1)).fit((torch.zeros(5, 8), torch.zeros(4).long()),
                                                                        progress=False)
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"stpes": 3})


def test_grid_masks():
    m = grid_mask((4, 6), "left-half").reshape(4, 6)
    assert m[:, :3].all() and not m[:, 3:].any()
    assert grid_mask((4, 6), "top-half").reshape(4, 6)[:2].all()
    r = grid_mask((10, 10), "random", 0.3, seed=1)
    assert r.sum() == 30 and np.array_equal(r, grid_mask((10, 10), "random", 0.3, seed=1))
    box = grid_mask((10, 10), "centre-box", 0.36).reshape(10, 10)
    assert (~box).sum() == 36 and not box[5, 5] and box[0, 0]
    with pytest.raises(ValueError, match="unknown mask"):
        grid_mask((4, 4), "diagonal")


def test_interpolate_and_nearest_neighbours():
    a, b = torch.zeros(3), torch.ones(3)
    path = interpolate(a, b, 5)
    assert path.shape == (5, 3) and torch.equal(path[0], a) and torch.equal(path[-1], b)
    assert torch.allclose(path[2], torch.full((3,), 0.5))
    g = torch.Generator().manual_seed(0)
    ref, q = torch.randn(1000, 4, generator=g), torch.randn(7, 4, generator=g)
    d, i = nearest_neighbours(q, ref, chunk=128)
    full = torch.cdist(q, ref)
    assert torch.equal(i, full.argmin(1)) and torch.allclose(d, full.min(1).values)


def test_map_imputation_prior_beats_no_prior():
    """Noisy, sparse observations: a (true) Gaussian prior on the latents gives better imputations."""
    torch.manual_seed(0)
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=1, width=32, depth=4, latent_dim=16, w0=10.0))
    h = w = 12
    r = (torch.arange(h) + 0.5) / h
    x = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(1, -1, 2)
    g = torch.Generator().manual_seed(1)
    prior_std = 0.3
    z_true = torch.randn(48, 16, generator=g) * prior_std
    with torch.no_grad():
        clean, _ = field.forward_points(x, z_true)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    observed = torch.from_numpy(grid_mask((h, w), "random", 0.08, seed=0)).float()[None, :, None]

    def log_prior(z):
        return -0.5 * (z / prior_std).square().sum(1)

    def masked_mse(z):
        with torch.no_grad():
            pred, _ = field.forward_points(x, z)
        hidden = 1 - observed
        return float((((pred - clean) ** 2) * hidden).sum() / (hidden.sum() * len(z)))

    z_plain = map_fit(field, x, noisy, observed, steps=300, lr=3e-2)
    z_prior = map_fit(field, x, noisy, observed, log_prior=log_prior, prior_weight=0.2, steps=300, lr=3e-2)
    plain, prior = masked_mse(z_plain), masked_mse(z_prior)
    chunked = map_fit(field, x, noisy, observed, log_prior=log_prior, prior_weight=0.2, steps=300, lr=3e-2,
                      batch_size=7)  # memory-bounded chunks of items: same result
    assert torch.allclose(chunked, z_prior, atol=1e-5)
    assert prior < 0.9 * plain, (prior, plain)
    assert all(p.requires_grad for p in field.base_parameters())  # base network untouched
    with pytest.raises(ValueError, match="weight"):
        map_fit(field, x, noisy, observed[:, :10])
