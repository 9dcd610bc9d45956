"""DDPM over latents: schedule math against independent formulas, sampling with the exact ε of a
Gaussian, the residual-MLP denoiser, classifier-free guidance and a tiny training run."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from functa.tasks.diffusion import (DDPMSchedule, DenoiserConfig, ResidualMLPDenoiser, ddim_timesteps,
                                    diffusion_loss, sample)


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: one thread is fastest and immune to contention on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np_schedule(T=1000, b0=1e-4, b1=0.02):
    betas = np.linspace(b0, b1, T, dtype=np.float64)
    return betas, np.cumprod(1.0 - betas)


# --------------------------------------------------------------------------------- schedule


def test_schedule_values_and_round_trip():
    s = DDPMSchedule()
    assert s.num_steps == 1000 and s.betas.dtype == torch.float64 and s.betas.shape == (1000,)
    assert float(s.betas[0]) == pytest.approx(1e-4, rel=1e-12)
    assert float(s.betas[-1]) == pytest.approx(0.02, rel=1e-12)
    assert float(s.betas[1] - s.betas[0]) == pytest.approx((0.02 - 1e-4) / 999, rel=1e-9)
    # ᾱ_T = Π (1 - β_t) for linspace(1e-4, 0.02, 1000) = 4.0358e-05 (also the numpy product)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(4.035829765e-05, rel=1e-6)
    assert float(s.alphas_cumprod[-1]) == pytest.approx(_np_schedule()[1][-1], rel=1e-10)
    assert torch.allclose(s.alphas, 1 - s.betas)
    assert float(s.alphas_cumprod[0]) == pytest.approx(1 - 1e-4)
    assert bool((s.alphas_cumprod[1:] < s.alphas_cumprod[:-1]).all())
    d = json.loads(json.dumps(s.to_dict()))
    assert DDPMSchedule.from_dict(d) == s
    s2 = DDPMSchedule.from_dict({**d, "num_steps": 10, "variance": "posterior"})
    assert s2.betas.shape == (10,) and s2.variance == "posterior"
    with pytest.raises(ValueError, match="unknown"):
        DDPMSchedule.from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match="variance"):
        DDPMSchedule(variance="large")
    with pytest.raises(ValueError, match="timesteps must lie"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1000]))
    with pytest.raises(ValueError, match="integers"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.5, 1.0]))


def test_forward_marginals_match_closed_form_and_composed_steps():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([1.5, -0.7, 0.0], dtype=torch.float64)
    acp = s.alphas_cumprod
    for t in (0, 9, 250, 999):
        xt = s.add_noise(x0.expand(n, 3), torch.randn(n, 3, generator=g, dtype=torch.float64),
                         torch.full((n,), t))
        mean_err = 4 * float((1 - acp[t]).sqrt()) / n ** 0.5  # 4 standard errors
        assert torch.allclose(xt.mean(0), acp[t].sqrt() * x0, atol=mean_err)
        assert torch.allclose(xt.var(0), (1 - acp[t]).expand(3), rtol=0.05)
    # composing q(x_t | x_{t-1}) = N(sqrt(α_t) x_{t-1}, β_t) from x0 matches q(x_t | x_0)
    steps = 30
    x = x0.expand(n, 3).clone()
    for t in range(steps):
        x = s.alphas[t].sqrt() * x + s.betas[t].sqrt() * torch.randn(n, 3, generator=g, dtype=torch.float64)
    closed = s.add_noise(x0.expand(n, 3), torch.randn(n, 3, generator=g, dtype=torch.float64),
                         torch.full((n,), steps - 1))
    var = float(1 - acp[steps - 1])
    assert torch.allclose(x.mean(0), acp[steps - 1].sqrt() * x0, atol=4 * (var / n) ** 0.5)
    assert torch.allclose(x.mean(0), closed.mean(0), atol=6 * (var / n) ** 0.5)
    assert torch.allclose(x.var(0), torch.full((3,), var, dtype=torch.float64), rtol=0.05)
    assert torch.allclose(x.var(0), closed.var(0), rtol=0.07)


def test_add_noise_is_exact_and_broadcasts_per_row():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(4)
    x0, noise = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    t = torch.tensor([0, 3, 500, 999])
    out = s.add_noise(x0, noise, t)
    _, acp = _np_schedule()
    for i, ti in enumerate(t.tolist()):
        ref = np.sqrt(acp[ti]) * x0[i].double().numpy() + np.sqrt(1 - acp[ti]) * noise[i].double().numpy()
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    assert out.dtype == torch.float32
    # predict_x0 inverts add_noise
    x0d, noised = x0.double(), noise.double()
    assert torch.allclose(s.predict_x0(s.add_noise(x0d, noised, t), noised, t), x0d, atol=1e-10)
    assert torch.allclose(s.predict_x0(out, noise, t), x0, atol=1e-3)  # float32: ÷ sqrt(ᾱ_T) ≈ 0.006


def test_posterior_matches_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) from the joint Gaussian of (x_{t-1}, x_t) given x_0, in float64."""
    s = DDPMSchedule()
    betas, acp = _np_schedule()
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 2, 10, 400, 998, 999])
    x0 = torch.randn(len(t), 4, generator=g, dtype=torch.float64)
    xt = torch.randn(len(t), 4, generator=g, dtype=torch.float64)
    mean, var = s.posterior(x0, xt, t)
    assert mean.shape == (len(t), 4) and var.shape == (len(t), 1)
    for i, ti in enumerate(t.tolist()):
        a_prev = acp[ti - 1] if ti > 0 else 1.0
        alpha = 1 - betas[ti]
        m_prev, v_prev = np.sqrt(a_prev) * x0[i].numpy(), 1 - a_prev     # x_{t-1} | x0
        m_t, v_t = np.sqrt(alpha) * m_prev, alpha * v_prev + betas[ti]   # x_t | x0
        cov = np.sqrt(alpha) * v_prev                                    # Cov(x_{t-1}, x_t | x0)
        ref_mean = m_prev + cov / v_t * (xt[i].numpy() - m_t)
        ref_var = v_prev - cov ** 2 / v_t
        assert v_t == pytest.approx(1 - acp[ti], rel=1e-10)
        np.testing.assert_allclose(mean[i].numpy(), ref_mean, rtol=1e-9, atol=1e-12)
        assert float(var[i]) == pytest.approx(ref_var, rel=1e-9, abs=1e-15)
    assert float(var[0]) == 0.0 and torch.allclose(mean[0], x0[0])  # t = 0: x_{t-1} is x_0


def test_step_and_ddim_step_consistency():
    s = DDPMSchedule()
    g = torch.Generator().manual_seed(2)
    x0, eps, z = (torch.randn(6, 3, generator=g, dtype=torch.float64) for _ in range(3))
    t = 500
    xt = s.add_noise(x0, eps, t)
    tt = torch.full((6,), t)
    # the ancestral mean equals the posterior mean at x̂_0 = predict_x0(x_t, ε)
    post_mean, post_var = s.posterior(s.predict_x0(xt, eps, tt), xt, tt)
    assert torch.allclose(s.step(eps, xt, t, noise=torch.zeros_like(xt)), post_mean, atol=1e-10)
    assert torch.allclose(s.step(eps, xt, t, noise=z), post_mean + s.betas[t].sqrt() * z, atol=1e-10)
    assert torch.allclose(s.step(eps, xt, t, noise=z, variance="posterior"), post_mean + post_var.sqrt() * z,
                          atol=1e-10)
    # DDIM with eta = 1 and consecutive steps is the ancestral step with variance β̃_t
    assert torch.allclose(s.ddim_step(eps, xt, t, t - 1, eta=1.0, noise=z),
                          s.step(eps, xt, t, noise=z, variance="posterior"), atol=1e-10)
    # σ_t(η) = η sqrt(β̃_t) for consecutive steps (Song et al. eq. 16)
    diff = s.ddim_step(eps, xt, t, t - 1, eta=0.5, noise=z) - s.ddim_step(eps, xt, t, t - 1, eta=0.5,
                                                                          noise=torch.zeros_like(z))
    assert torch.allclose(diff, 0.5 * post_var.sqrt() * z, atol=1e-10)
    # with the true ε, deterministic DDIM lands exactly on the same-noise point at t_prev
    assert torch.allclose(s.ddim_step(eps, xt, t, 100), s.add_noise(x0, eps, 100), atol=1e-10)
    assert torch.allclose(s.ddim_step(eps, xt, t, -1), x0, atol=1e-10)
    # t = 0 adds no noise
    assert torch.equal(s.step(eps, xt, 0, noise=z), s.step(eps, xt, 0, noise=torch.zeros_like(z)))
    with pytest.raises(ValueError, match="t_prev"):
        s.ddim_step(eps, xt, 5, 5)
    with pytest.raises(ValueError, match="timestep"):
        s.step(eps, xt, 1000)
    assert ddim_timesteps(1000, 50)[:2] == [999, 979] and ddim_timesteps(1000, 50)[-1] == 0
    assert ddim_timesteps(1000, 1) == [999] and ddim_timesteps(10, 10) == list(range(9, -1, -1))


# ------------------------------------------------------------ sampling with the exact ε oracle


class GaussianOracle:
    """Exact ε*(x_t, t) = E[ε | x_t] for x0 ~ N(mu, diag(s²)), any timestep."""

    def __init__(self, schedule, mu, s):
        self.acp = schedule.alphas_cumprod.float()
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, xt, t, labels=None):
        assert labels is None
        self.calls += 1
        a = self.acp[t][:, None]
        return (1 - a).sqrt() * (xt - a.sqrt() * self.mu) / (a * self.s ** 2 + 1 - a)


def _predicted_std(schedule, s, timesteps, ddim):
    """Std of the sampler's output for x0 ~ N(0, s²): both samplers are linear in (x_T, noise)."""
    betas, acp = _np_schedule(schedule.num_steps)
    v = 1.0
    for i, t in enumerate(timesteps):
        c = np.sqrt(1 - acp[t]) / (acp[t] * s * s + 1 - acp[t])  # ε* = c x
        if ddim:
            tp = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            ap = acp[tp] if tp >= 0 else 1.0
            m = np.sqrt(ap) * (1 - np.sqrt(1 - acp[t]) * c) / np.sqrt(acp[t]) + np.sqrt(1 - ap) * c
            v = m * m * v
        else:
            m = (1 - betas[t] / np.sqrt(1 - acp[t]) * c) / np.sqrt(1 - betas[t])
            v = m * m * v + (betas[t] if t > 0 else 0.0)
    return np.sqrt(v)


def test_ddpm_and_ddim_sampling_recover_gaussian_data():
    sched = DDPMSchedule()
    mu, s = torch.tensor([1.0, -0.5]), torch.tensor([0.5, 2.0])
    oracle = GaussianOracle(sched, mu, s)
    g = torch.Generator().manual_seed(3)
    n = 4000
    x = sample(oracle, sched, n, generator=g, dim=2)
    assert x.shape == (n, 2) and oracle.calls == 1000
    mean_tol = 4.5 * s / n ** 0.5  # 4.5 standard errors per dimension
    assert bool(((x.mean(0) - mu).abs() < mean_tol).all())
    assert torch.allclose(x.std(0), s, rtol=0.05)
    for j in range(2):  # and the analytic output std of this discretisation (≈ s to 0.2 %)
        pred = _predicted_std(sched, float(s[j]), range(999, -1, -1), False)
        assert pred == pytest.approx(float(s[j]), rel=0.005)
        assert float(x[:, j].std()) == pytest.approx(pred, rel=0.04)
    oracle.calls = 0
    xd = sample(oracle, sched, n, method="ddim", steps=50, eta=0.0, generator=g, dim=2)
    assert oracle.calls == 50
    assert bool(((xd.mean(0) - mu).abs() < mean_tol).all())
    # deterministic 50-step DDIM slightly under-disperses: its exact output std is 0.944 s for
    # s = 0.5 and 0.970 s for s = 2 (a discretisation error, → s as steps → T)
    ts = ddim_timesteps(1000, 50)
    for j in range(2):
        pred = _predicted_std(sched, float(s[j]), ts, True)
        assert pred == pytest.approx(float(s[j]), rel=0.06)
        assert float(xd[:, j].std()) == pytest.approx(pred, rel=0.04)
    assert float(xd[:, 1].std()) == pytest.approx(2.0, rel=0.06)


def test_sample_validation():
    sched = DDPMSchedule(num_steps=10)
    oracle = GaussianOracle(sched, torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="method"):
        sample(oracle, sched, 4, method="euler", dim=2)
    with pytest.raises(ValueError, match="steps"):
        sample(oracle, sched, 4, method="ddim", steps=11, dim=2)
    with pytest.raises(ValueError, match="ddim"):
        sample(oracle, sched, 4, method="ddpm", steps=5, dim=2)
    with pytest.raises(ValueError, match="dim="):
        sample(oracle, sched, 4)
    uncond = ResidualMLPDenoiser(DenoiserConfig(dim=2, width=8, blocks=1))
    cond = ResidualMLPDenoiser(DenoiserConfig(dim=2, width=8, blocks=1, num_classes=3))
    with pytest.raises(ValueError, match="unconditional"):
        sample(uncond, sched, 4, labels=torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="class-conditional"):
        sample(cond, sched, 4)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        sample(cond, sched, 4, labels=torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="shape"):
        sample(cond, sched, 4, labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="guidance"):
        sample(oracle, sched, 4, guidance_scale=2.0, dim=2)
    assert sample(cond, sched, 4, labels=cond.null_label).shape == (4, 2)  # null label: unconditional
    x = torch.randn(8, 2)
    with pytest.raises(ValueError, match="labels are required"):
        diffusion_loss(cond, sched, x)
    with pytest.raises(ValueError, match="labels must be None"):
        diffusion_loss(uncond, sched, x, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):  # the null label is not a training label
        diffusion_loss(cond, sched, x, torch.full((8,), 3))


# ------------------------------------------------------------------------------- denoiser


def test_denoiser_zero_at_init_shapes_and_modes():
    cfg = DenoiserConfig(dim=6, width=32, blocks=2, dropout=0.5, time_embed_dim=16)
    m = ResidualMLPDenoiser(cfg)
    x, t = torch.randn(5, 6), torch.tensor([0, 1, 10, 500, 999])
    out = m(x, t)
    assert out.shape == (5, 6) and torch.equal(out, torch.zeros(5, 6))
    with torch.no_grad():  # give the zero-initialised layers weights, then check dropout modes
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.eval()
    y1, y2 = m(x, t), m(x, t)
    assert torch.equal(y1, y2) and y1.abs().sum() > 0
    m.train()
    torch.manual_seed(0)
    assert not torch.allclose(m(x, t), m(x, t))  # dropout active
    assert not torch.allclose(y1[:, :], m.eval()(x, t + 1))  # depends on t
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        m(torch.randn(5, 7), t)
    with pytest.raises(ValueError, match="unconditional"):
        m(x, t, torch.zeros(5, dtype=torch.long))
    assert DenoiserConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown"):
        DenoiserConfig.from_dict({**cfg.to_dict(), "depth": 3})
    with pytest.raises(ValueError, match="dropout"):
        DenoiserConfig(dim=2, dropout=1.0)


def test_gradients_reach_every_parameter_after_a_few_steps():
    """Zero-init output layers: at step 0 only the output layer gets gradients; the residual
    Linear_0 layers open after one update, the inner layers after two."""
    torch.manual_seed(0)
    m = ResidualMLPDenoiser(DenoiserConfig(dim=3, width=16, blocks=2, dropout=0.1, time_embed_dim=8,
                                           num_classes=2, cond_drop=0.3))
    sched = DDPMSchedule()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x0 = torch.randn(64, 3)
    labels = torch.arange(64) % 2
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        opt.zero_grad()
        diffusion_loss(m, sched, x0, labels, generator=g).backward()
        nonzero = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        if step == 0:
            assert nonzero == {"output.weight", "output.bias"}
        opt.step()
    assert nonzero == {n for n, _ in m.named_parameters()}
    rows = m.label_embed.weight.grad.abs().sum(1)
    assert bool((rows > 0).all())  # both classes and the null label (cond_drop) get gradients


def test_conditional_denoiser_and_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = DenoiserConfig(dim=4, width=16, blocks=2, time_embed_dim=8, num_classes=3)
    m = ResidualMLPDenoiser(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.eval()
    x, t = torch.randn(4, 4), torch.tensor([3, 3, 3, 3])
    a = m(x, t, torch.tensor([0, 1, 2, 3]))
    b = m(x, t, torch.tensor([1, 1, 2, 3]))
    assert torch.equal(a[1:], b[1:]) and not torch.allclose(a[0], b[0])  # labels matter, per row
    with pytest.raises(ValueError, match="class-conditional"):
        m(x, t)
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        m(x, t, torch.tensor([0, 1, 2, 4]))
    save_file(m.state_dict(), tmp_path / "model.safetensors")
    cfg2 = DenoiserConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    m2 = ResidualMLPDenoiser(cfg2)
    m2.load_state_dict(load_file(tmp_path / "model.safetensors"))
    m2.eval()
    assert torch.equal(m2(x, t, torch.tensor([0, 1, 2, 3])), a)


# -------------------------------------------------------------------- classifier-free guidance


class ToyConditional:
    """ε depends on the label only: ε(x, t, y) = x * 0 + offset[y] (offset[null] for the null label)."""

    num_classes, null_label, dim = 2, 2, 3

    def __init__(self):
        self.offset = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]])
        self.seen = []

    def __call__(self, xt, t, labels):
        self.seen.append(labels.clone())
        return self.offset[labels] + 0 * xt


def _eps_used(sched, x_init, out):
    """Invert one deterministic DDIM step from t = T-1 to the end: out = x̂_0."""
    a = sched.alphas_cumprod[-1].float()
    return (x_init - a.sqrt() * out) / (1 - a).sqrt()


def test_classifier_free_guidance():
    sched = DDPMSchedule()
    toy = ToyConditional()
    x_init = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 0, 1])
    kw = dict(method="ddim", steps=1, x_init=x_init)
    out1 = sample(toy, sched, 4, labels, guidance_scale=1.0, **kw)
    assert len(toy.seen) == 1 and torch.equal(toy.seen[0], labels)  # s = 1: one conditional call
    assert torch.allclose(_eps_used(sched, x_init, out1), toy.offset[labels], atol=1e-3)
    toy.seen.clear()
    s = 3.0
    out3 = sample(toy, sched, 4, labels, guidance_scale=s, **kw)
    assert len(toy.seen) == 2 and bool((toy.seen[1] == 2).all())  # the null label for ε_uncond
    expected = toy.offset[2] + s * (toy.offset[labels] - toy.offset[2])
    assert torch.allclose(_eps_used(sched, x_init, out3), expected, atol=1e-3)
    out0 = sample(toy, sched, 4, labels, guidance_scale=0.0, **kw)
    assert torch.allclose(_eps_used(sched, x_init, out0), toy.offset[2].expand(4, 3), atol=1e-3)


def test_guidance_one_equals_conditional_sampling_and_restores_mode():
    torch.manual_seed(0)
    sched = DDPMSchedule(num_steps=20)
    m = ResidualMLPDenoiser(DenoiserConfig(dim=2, width=16, blocks=1, dropout=0.5, time_embed_dim=8,
                                           num_classes=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m.train()
    labels = torch.tensor([0, 1, 1, 2])
    x = sample(m, sched, 4, labels, generator=torch.Generator().manual_seed(5))
    assert m.training  # restored
    # manual ancestral loop in eval mode with the same noise stream
    g = torch.Generator().manual_seed(5)
    m.eval()
    xm = torch.randn(4, 2, generator=g)
    with torch.no_grad():
        for t in range(19, -1, -1):
            xm = sched.step(m(xm, torch.full((4,), t), labels), xm, t, generator=g)
    assert torch.allclose(x, xm, atol=1e-6)


# --------------------------------------------------------------------------------- training


def test_tiny_training_run_reduces_loss():
    torch.manual_seed(0)
    sched = DDPMSchedule()
    g = torch.Generator().manual_seed(0)
    # two well-separated clusters in 2D, labelled
    labels = torch.randint(0, 2, (2048,), generator=g)
    data = torch.stack([labels * 2.0 - 1.0, 0.3 * torch.randn(2048, generator=g)], 1)
    m = ResidualMLPDenoiser(DenoiserConfig(dim=2, width=64, blocks=2, dropout=0.0, time_embed_dim=16,
                                           num_classes=2, cond_drop=0.2))
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)

    def eval_loss():
        m.eval()
        with torch.no_grad():
            return float(diffusion_loss(m, sched, data, labels, generator=torch.Generator().manual_seed(99)))

    before = eval_loss()
    assert before == pytest.approx(1.0, abs=0.1)  # zero predictor: E ε² = 1
    m.train()
    for _ in range(300):
        idx = torch.randint(0, 2048, (256,), generator=g)
        loss = diffusion_loss(m, sched, data[idx], labels[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before  # ≈ 0.07 after 300 steps
    # the conditional model separates the clusters on the first coordinate
    x1 = sample(m, sched, 256, 1, method="ddim", steps=50, generator=g)
    x0 = sample(m, sched, 256, 0, method="ddim", steps=50, generator=g)
    assert float(x1[:, 0].mean()) > 0.3 and float(x0[:, 0].mean()) < -0.3
