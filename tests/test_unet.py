"""DDPM on spatial functa latent grids (spatial functa App. C): the cosine schedule, non-uniform
timestep sampling, the UNet denoiser, and ``functa diffusion train|sample`` end to end on grids."""

import json
import math

import numpy as np
import pytest
import torch

from functa.errors import ConfigError
from functa.tasks.diffusion import (DDPMSchedule, diffusion_loss, sample, sample_timesteps,
                                    timestep_probabilities)
from functa.tasks.unet import UNetConfig, UNetDenoiser


@pytest.fixture(autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(grid=(4, 4), c=3, **kw):
    return UNetConfig(grid, c, **{"channels": 8, "channel_mult": (1, 2), "blocks": 1, "attention": (4,), "heads": 2,
                                  "dropout": 0.0, **kw})


# --------------------------------------------------------------------------------- schedules


def test_cosine_schedule_matches_the_closed_form():
    T = 1000
    s = DDPMSchedule(schedule="cosine")
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 250, 500, 900, 990):
        assert float(s.alphas_cumprod[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
    assert float(s.betas.max()) == pytest.approx(0.999) and bool((s.betas <= 0.999).all())
    assert float(s.betas[-1]) == pytest.approx(0.999)  # 1 - ᾱ(1)/ᾱ(T-1) = 1 is clipped
    assert bool((s.betas > 0).all()) and bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    assert float(s.betas[0]) == pytest.approx(1 - f(1 / T) / f(0), rel=1e-9)  # ≈ 4e-5, far below linear's 1e-4
    lin = DDPMSchedule()
    assert float(s.alphas_cumprod[499]) > 5 * float(lin.alphas_cumprod[499])  # cosine keeps more signal mid-way (0.49 vs 0.079)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["schedule"] == "cosine" and DDPMSchedule.from_dict(d) == s
    old = {k: v for k, v in lin.to_dict().items() if k != "schedule"}  # saved before the cosine schedule
    assert DDPMSchedule.from_dict(old) == lin and torch.equal(DDPMSchedule.from_dict(old).betas, lin.betas)
    torch.testing.assert_close(lin.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), rtol=0, atol=0)
    with pytest.raises(ValueError, match="schedule"):
        DDPMSchedule(schedule="quadratic")
    short = DDPMSchedule(num_steps=10, schedule="cosine")  # the reverse step works with it
    x = short.step(torch.zeros(2, 3), torch.ones(2, 3), 9, noise=torch.zeros(2, 3))
    torch.testing.assert_close(x, torch.full((2, 3), 1 / math.sqrt(1 - 0.999)))


def test_timestep_sampling_uniform_and_linear_ratio():
    T, n = 1000, 200_000
    # ratio 1: exactly the old uniform stream
    a = sample_timesteps(T, 64, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, torch.randint(0, T, (64,), generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(timestep_probabilities(T, 1.0), torch.full((T,), 1 / T, dtype=torch.float64))
    for ratio in (3.0, 7.0):
        p = timestep_probabilities(T, ratio)
        assert float(p.sum()) == pytest.approx(1.0) and float(p[0] / p[-1]) == pytest.approx(ratio)
        assert bool((p[1:] < p[:-1]).all())  # decreases linearly
        torch.testing.assert_close(p[1:] - p[:-1], (p[1] - p[0]).expand(T - 1), rtol=1e-9, atol=1e-15)
        t = sample_timesteps(T, n, ratio, torch.Generator().manual_seed(0))
        assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) <= T - 1
        first, last = int((t < 100).sum()), int((t >= 900).sum())
        expected = float(p[:100].sum() / p[900:].sum())  # 2.64 for ratio 3, 4.08 for 7
        assert first / last == pytest.approx(expected, rel=0.05)  # uniform would give 1
    u = sample_timesteps(T, n, 1.0, torch.Generator().manual_seed(0))
    assert int((u < 100).sum()) / int((u >= 900).sum()) == pytest.approx(1.0, rel=0.05)
    with pytest.raises(ValueError, match="timestep_ratio"):
        timestep_probabilities(T, 0.0)

    seen = []

    def model(xt, t, labels=None):  # records the timesteps diffusion_loss draws
        seen.append(t)
        return torch.zeros_like(xt)

    diffusion_loss(model, DDPMSchedule(), torch.zeros(n, 1), generator=torch.Generator().manual_seed(1),
                   timestep_ratio=3.0)
    t = seen[0]
    assert int((t < 100).sum()) / int((t >= 900).sum()) == pytest.approx(2.64, rel=0.05)


# --------------------------------------------------------------------------------- UNet


@pytest.mark.parametrize("grid,mult", [((4, 4), (1,)), ((4, 4), (1, 2, 2)), ((8, 8), (1,)), ((8, 8), (1, 2, 2)),
                                       ((8,), (1, 2)), ((4, 4, 4), (1, 2))])
def test_unet_shapes_zero_at_init_and_parameter_count(grid, mult):
    torch.manual_seed(0)
    cfg = small(grid, 5, channel_mult=mult)
    m = UNetDenoiser(cfg)
    x, t = torch.randn(3, *grid, 5), torch.tensor([0, 500, 999])
    out = m(x, t)
    assert out.shape == (3, *grid, 5) and torch.equal(out, torch.zeros_like(out))
    assert m.sample_shape == (*grid, 5) and m.null_label is None and m.cond_drop == 0.2
    assert sum(p.numel() for p in m.parameters()) == cfg.num_parameters
    with torch.no_grad():  # with weights everywhere, every output cell depends on the input
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    y = m(x, t)
    assert y.abs().min() > 0 and not torch.allclose(y, m(x, t + 1))
    with pytest.raises(ValueError, match="expected x_t"):
        m(x.movedim(-1, 1), t)  # channels-first is refused


def test_unet_config_errors_and_round_trip():
    with pytest.raises(ConfigError, match="divisible by 4"):
        small((6, 6), channel_mult=(1, 2, 2))
    with pytest.raises(ConfigError, match="divisible by 8"):
        small((4, 4), channel_mult=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="heads"):
        small(heads=3)
    with pytest.raises(ConfigError, match="unet.dropout"):
        small(dropout=1.0)
    with pytest.raises(ConfigError, match="grid_shape"):
        small((2, 2, 2, 2))
    cfg = small(num_classes=3)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert UNetConfig.from_dict(d) == cfg  # lists back to tuples
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({**d, "width": 3})
    # GroupNorm: 32 groups, or the largest divisor of the width below that
    m = UNetDenoiser(UNetConfig((4, 4), 3, channels=48, heads=4))
    assert m.out_norm.num_groups == 24 and m.mid[0].norm1.num_groups == 32


def test_conditional_unet_labels_gradients_and_dropout():
    torch.manual_seed(0)
    m = UNetDenoiser(small(num_classes=3, dropout=0.3, cond_drop=0.3))
    assert m.null_label == 3 and m.num_classes == 3
    sched = DDPMSchedule(schedule="cosine")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x0 = torch.randn(32, 4, 4, 3)
    labels = torch.arange(32) % 3
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        opt.zero_grad()
        diffusion_loss(m, sched, x0, labels, generator=g, timestep_ratio=3.0).backward()
        nonzero = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        if step == 0:  # zero-initialised output conv: only it (and its bias) learn at first
            assert nonzero == {"output.weight", "output.bias"}
        opt.step()
    assert nonzero == {n for n, _ in m.named_parameters()}  # every parameter gets a gradient
    assert bool((m.label_embed.weight.grad.abs().sum(1) > 0).all())  # classes and the null label
    m.eval()
    x, t = torch.randn(4, 4, 4, 3), torch.full((4,), 100)
    cond = m(x, t, torch.tensor([0, 1, 2, 0]))
    null = m(x, t, torch.full((4,), 3))
    assert not torch.allclose(cond, null, atol=1e-6)  # the label changes the prediction
    assert torch.equal(cond, m(x, t, torch.tensor([0, 1, 2, 0])))  # eval: deterministic
    assert not torch.allclose(cond[0], m(x, t, torch.tensor([1, 1, 2, 0]))[0])  # per row
    m.train()
    assert not torch.allclose(m(x, t, labels[:4]), m(x, t, labels[:4]))  # dropout active in training
    with pytest.raises(ValueError, match="class-conditional"):
        m(x, t)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        m(x, t, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="unconditional"):
        UNetDenoiser(small())(x, t, labels[:4])


def test_tiny_unet_training_reduces_loss_and_samples_grids():
    """Two classes of 4x4x2 grids (a +1 / -1 checkerboard in channel 0): the conditional UNet learns
    them and guided samples follow the label."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    board = (torch.arange(4)[:, None] + torch.arange(4)[None]) % 2 * 2.0 - 1.0  # (4, 4) of ±1
    labels = torch.randint(0, 2, (512,), generator=g)
    data = torch.stack([board * (labels * 2.0 - 1.0)[:, None, None], 0.1 * torch.randn(512, 4, 4, generator=g)], -1)
    sched = DDPMSchedule(schedule="cosine")
    m = UNetDenoiser(small(c=2, channels=16, num_classes=2))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)

    def eval_loss():
        m.eval()
        with torch.no_grad():
            return float(diffusion_loss(m, sched, data, labels, generator=torch.Generator().manual_seed(9)))

    before = eval_loss()
    assert before == pytest.approx(1.0, abs=0.05)  # zero predictor: E ε² = 1
    m.train()
    for _ in range(60):
        idx = torch.randint(0, 512, (64,), generator=g)
        loss = diffusion_loss(m, sched, data[idx], labels[idx], generator=g, timestep_ratio=3.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.6 * before
    x = sample(m, sched, 16, 1, method="ddim", steps=20, eta=1.0, guidance_scale=5.0, generator=g)
    assert x.shape == (16, 4, 4, 2)
    corr = float((x[..., 0] * board).mean(dim=(1, 2)).mean())  # label 1: +board, label 0: -board
    x0 = sample(m, sched, 16, 0, method="ddim", steps=20, eta=1.0, guidance_scale=5.0, generator=g)
    assert corr > 0.3 and float((x0[..., 0] * board).mean()) < -0.3


# ------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def functasets(tmp_path_factory):
    """A spatial functaset (4x4x3 grids of 8x8 RGB images, two classes) and a vector one."""
    from PIL import Image

    from functa.cli import main

    tmp = tmp_path_factory.mktemp("unet")
    data = tmp / "imgs"
    rng = np.random.default_rng(0)
    for i in range(12):
        (data / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(data / "ab"[i % 2] / f"{i}.png")
    small_fit = ["--set", "field.width=8", "--set", "field.depth=3", "--set", "train.batch_size=4",
                 "--set", "train.eval_items=2"]
    assert main(["--quiet", "fit", str(data), "-o", str(tmp / "run"), "--field", "spatial", "--steps", "1",
                 "--set", "field.grid=4", "--set", "field.channels=3", *small_fit]) == 0
    assert main(["--quiet", "encode", str(data), "-m", str(tmp / "run"), "-o", str(tmp / "fs"), "--split", "all"]) == 0
    assert main(["--quiet", "fit", str(data), "-o", str(tmp / "vec"), "--field", "siren", "--steps", "1",
                 "--set", "field.latent_dim=6", *small_fit]) == 0
    assert main(["--quiet", "encode", str(data), "-m", str(tmp / "vec"), "-o", str(tmp / "vfs"), "--split", "all"]) == 0
    return tmp


UNET = ["--set", "train.steps=3", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1",
        "--set", "train.eval_every=3", "--set", "unet.channels=8", "--set", "unet.heads=2", "--set", "unet.blocks=1"]


def test_diffusion_train_and_sample_a_conditional_unet_on_grids(functasets, capsys):
    from functa.cli import main
    from functa.downstream import diffusion_sample
    from functa.functaset import Functaset
    from functa.tasks.checkpoint import load_task_model
    from functa.tasks.latents import Standardizer

    tmp = functasets
    assert Functaset(tmp / "fs").latent_shape == (4, 4, 3)
    out = tmp / "ddpm"
    assert main(["--quiet", "diffusion", "train", str(tmp / "fs"), "-o", str(out), *UNET, "--set", "conditional=true",
                 "--set", "statistics=channel", "--set", "norm_factor=2.5"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "unet-ddpm" and cfg["model"]["grid_shape"] == [4, 4] and cfg["model"]["in_channels"] == 3
    assert cfg["model"]["num_classes"] == 2 and cfg["model"]["cond_drop"] == 0.2
    assert cfg["schedule"]["schedule"] == "cosine" and cfg["timestep_ratio"] == 3.0  # the auto choices
    capsys.readouterr()
    assert main(["--quiet", "diffusion", "sample", str(out), "-o", str(tmp / "s"), "-n", "3", "--method", "ddim",
                 "--steps", "4", "--guidance", "5", "--label", "1", "--scale", "4"]) == 0
    res = json.loads((tmp / "s" / "metrics.json").read_text())
    assert res["kind"] == "unet-ddpm" and res["guidance_scale"] == 5.0 and res["samples"]["shape"] == [32, 32]
    npz = np.load(tmp / "s" / "sample.npz")
    assert npz["values"].shape == (3, 32, 32, 3)  # 4x the native 8x8 images
    assert npz["latents"].shape == (3, 4, 4, 3) and np.isfinite(npz["latents"]).all()
    assert np.load(tmp / "s" / "nearest_train.npz")["values"].shape == (3, 32, 32, 3)
    # the reloaded model gives the same samples for the same seed, through the library call too
    model, extra, _ = load_task_model(out)
    assert isinstance(model, UNetDenoiser)
    std = Standardizer.from_tensors(extra)
    sched = DDPMSchedule.from_dict(cfg["schedule"])

    def draw():
        u = sample(model, sched, 3, 1, method="ddim", steps=4, eta=1.0, guidance_scale=5.0,
                   generator=torch.Generator().manual_seed(0), clip_x0=cfg["x0_bound"])  # the CLI's "auto"
        return std.inverse(u.reshape(3, -1)).reshape(3, 4, 4, 3)

    first = draw()
    assert torch.equal(first, draw())
    assert cfg["x0_bound"] > 0 and res["clip_x0"] == cfg["x0_bound"]
    np.testing.assert_allclose(npz["latents"], first.numpy(), rtol=1e-5, atol=1e-5)
    r = diffusion_sample(out, tmp / "s2", n=3, method="ddim", steps=4, guidance_scale=5.0, label=1, scale=4,
                         neighbours=False, progress=False, seed=0)
    assert r["samples"]["shape"] == [32, 32]
    np.testing.assert_array_equal(np.load(tmp / "s2" / "sample.npz")["latents"], npz["latents"])
    r = diffusion_sample(out, tmp / "s3", n=3, method="ddim", steps=4, guidance_scale=5.0, label=1,
                         neighbours=False, progress=False, seed=1)
    assert not np.allclose(np.load(tmp / "s3" / "sample.npz")["latents"], npz["latents"])  # another seed


def test_denoiser_choice_on_vectors_and_grids(functasets, capsys):
    from functa.cli import main
    from functa.downstream import diffusion_train

    tmp = functasets
    capsys.readouterr()
    assert main(["diffusion", "train", str(tmp / "vfs"), "-o", str(tmp / "bad"), *UNET, "--set", "denoiser=unet"]) == 2
    err = capsys.readouterr().err
    assert "denoiser = 'unet' needs latent grids" in err and "[6]" in err
    with pytest.raises(ConfigError, match="needs latent grids"):
        diffusion_train(tmp / "vfs", tmp / "bad2", ["denoiser=unet"], progress=False)
    with pytest.raises(ConfigError, match="denoiser = 'conv'"):
        diffusion_train(tmp / "fs", tmp / "bad3", ["denoiser=conv"], progress=False)
    with pytest.raises(ConfigError, match="unknown diffusion unet settings"):
        diffusion_train(tmp / "fs", tmp / "bad4", ["unet.width=3"], progress=False)
    with pytest.raises(ConfigError, match="divisible by 8; the latent grid is 4x4"):
        diffusion_train(tmp / "fs", tmp / "bad5", ["unet.channel_mult=[1,2,2,2]", "unet.heads=1"], progress=False)
    with pytest.raises(ConfigError, match="timestep_ratio"):
        diffusion_train(tmp / "fs", tmp / "bad6", ["timestep_ratio=-1"], progress=False)
    # vectors: auto -> the MLP with the functa paper's linear schedule and uniform timesteps
    m = diffusion_train(tmp / "vfs", tmp / "mlp", ["train.steps=2", "train.batch_size=4", "train.warmup_steps=1",
                                                   "model.width=8", "model.blocks=1"], progress=False)
    assert (m["denoiser"], m["schedule"], m["timestep_ratio"]) == ("mlp", "linear", 1.0)
    assert json.loads((tmp / "mlp" / "config.json").read_text())["kind"] == "ddpm"
    # grids: denoiser=mlp is allowed, with explicit schedule and ratio
    m = diffusion_train(tmp / "fs", tmp / "gmlp", ["denoiser=mlp", "schedule=cosine", "timestep_ratio=2",
                                                   "train.steps=2", "train.batch_size=4", "train.warmup_steps=1",
                                                   "model.width=8", "model.blocks=1"], progress=False)
    assert (m["denoiser"], m["schedule"], m["timestep_ratio"]) == ("mlp", "cosine", 2.0)
    assert main(["--quiet", "diffusion", "sample", str(tmp / "gmlp"), "-o", str(tmp / "gs"), "-n", "2", "--method",
                 "ddim", "--steps", "3", "--no-neighbours"]) == 0
    assert np.load(tmp / "gs" / "sample.npz")["values"].shape == (2, 8, 8, 3)  # flat samples rendered as grids


def test_clipping_the_predicted_x0_bounds_samples_of_a_wrong_denoiser():
    """A denoiser whose ε̂ is off (a constant): with the cosine schedule the first steps amplify the error by
    1 / sqrt(ᾱ_t), and unclipped samples end far off; clipping the predicted x0 keeps them within the bound."""
    from functa.tasks.diffusion import DDPMSchedule, sample

    schedule = DDPMSchedule(schedule="cosine")
    wrong = lambda x, t, labels: torch.full_like(x, 0.5)  # noqa: E731
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    free = sample(wrong, schedule, 64, method="ddim", steps=50, eta=1.0, dim=(4, 4, 3), generator=g())
    clipped = sample(wrong, schedule, 64, method="ddim", steps=50, eta=1.0, dim=(4, 4, 3), generator=g(), clip_x0=3.0)
    assert free.abs().max() > 30
    assert clipped.abs().max() <= 3.0 + 1e-4  # the last step returns the clipped x0 (no noise at t = 0)
    exact = lambda x, t, labels: torch.zeros_like(x)  # noqa: E731  (x0 = x_t / sqrt(ᾱ))
    with pytest.raises(ValueError, match="clip_x0"):
        sample(exact, schedule, 2, dim=3, clip_x0=0.0)
