"""Neural spline flow prior over latents (functa.tasks.flow)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from functa.tasks.flow import (FlowConfig, LatentFlow, LinearTailRQSTransform, bits_per_dim,
                               diagonal_gaussian_nll)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: intra-op threads only add contention (and on a busy 2-core box, a lot)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _perturbed(config: FlowConfig, scale: float = 0.3, seed: int = 0) -> LatentFlow:
    """A float64 flow whose zero-initialised read-outs are randomised (init is a permutation)."""
    torch.manual_seed(seed)
    model = LatentFlow(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def _data(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    u = 0.4 * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u[0, 0], u[1, -1] = 3.5, -2.7  # beyond bound=2: exercises the linear tails
    return u


@pytest.mark.parametrize("num_classes", [0, 3])
def test_invertible(num_classes):
    model = _perturbed(FlowConfig(dim=5, layers=3, hidden=(16, 16), num_classes=num_classes))
    u = _data(64, 5)
    labels = torch.arange(64) % 3 if num_classes else None
    z = model.to_base(u, labels)
    assert z.shape == u.shape
    assert not torch.allclose(z, u, atol=1e-2)
    torch.testing.assert_close(model.from_base(z, labels), u, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.to_base(model.from_base(u, labels), labels), u, atol=1e-5, rtol=0)


@pytest.mark.parametrize("num_classes", [0, 2])
def test_log_prob_is_change_of_variables(num_classes):
    cfg = FlowConfig(dim=4, layers=2, hidden=(8,), num_classes=num_classes, label_embed_dim=4)
    model = _perturbed(cfg)
    u = _data(5, 4)
    labels = torch.tensor([0, 1, 1, 0, 1]) if num_classes else None
    expected = []
    for i in range(len(u)):
        lab = labels[i:i + 1] if num_classes else None
        jac = torch.autograd.functional.jacobian(lambda x: model.to_base(x[None], lab)[0], u[i])
        z = model.to_base(u[i:i + 1], lab)[0]
        base = torch.distributions.Normal(0.0, cfg.base_std).log_prob(z).sum()
        expected.append(base + torch.linalg.slogdet(jac).logabsdet)
    got = model.log_prob(u, labels)
    assert got.shape == (5,)
    torch.testing.assert_close(got, torch.stack(expected).detach(), atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(model.loss(u, labels), -got.mean() / 4)


def test_initial_flow_is_base_gaussian():
    model = LatentFlow(FlowConfig(dim=6, layers=2, hidden=(8,))).double()
    u = _data(10, 6)
    expected = torch.distributions.Normal(0.0, 0.25).log_prob(u).sum(-1)
    torch.testing.assert_close(model.log_prob(u), expected)


def test_linear_tail_spline():
    torch.manual_seed(0)
    K, bound = 5, 1.5
    w, h, d = torch.randn(3 * K + 1, dtype=torch.float64).split([K, K, K + 1])
    t = LinearTailRQSTransform(w, h, d, bound=bound)
    x = torch.linspace(-3 * bound, 3 * bound, 601, dtype=torch.float64)
    y, ladj = t.call_and_ladj(x)
    assert (y.diff() > 0).all()  # monotonic on the whole line
    torch.testing.assert_close(t.inv(y), x, atol=1e-10, rtol=0)
    eps = 1e-6
    fd = (t(x + eps) - t(x - eps)) / (2 * eps)
    torch.testing.assert_close(ladj, fd.log(), atol=1e-5, rtol=0)  # also continuous slope at ±bound
    # outside: straight lines through (±bound, ±bound) with the learned edge slopes (not 1)
    slopes = t.derivatives[[0, -1]]
    assert not torch.allclose(slopes, torch.ones(2, dtype=torch.float64))
    far = torch.tensor([-2 * bound, 2 * bound], dtype=torch.float64)
    torch.testing.assert_close(t(far), torch.stack([-bound - slopes[0] * bound, bound + slopes[1] * bound]))


def test_diagonal_gaussian_nll_closed_form():
    train = torch.tensor([[0.0, 1.0], [2.0, 5.0]])  # means (1, 3), ML variances (1, 4)
    test = torch.tensor([[3.0, 3.0]])
    expected = 0.5 * math.log(2 * math.pi) + 0.5 * (4.0 / 1.0) / 2 + 0.5 * (math.log(4.0) + 0.0) / 2
    assert diagonal_gaussian_nll(train, test) == pytest.approx(expected, abs=1e-12)
    x = torch.randn(500, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 1.0, 2.0])
    var = x.double().var(0, unbiased=False)
    closed_form = 0.5 * (math.log(2 * math.pi) + 1) + 0.5 * float(var.log().mean())
    assert diagonal_gaussian_nll(x, x) == pytest.approx(closed_form)
    assert bits_per_dim(math.log(2.0)) == pytest.approx(1.0)
    assert bits_per_dim(2.0) == pytest.approx(2.0 / math.log(2.0))


def test_training_beats_diagonal_gaussian():
    torch.manual_seed(0)
    corr = torch.tensor([[1.0, 0.9, 0.8], [0.9, 1.0, 0.9], [0.8, 0.9, 1.0]])
    chol = torch.linalg.cholesky(0.0625 * corr)
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(2000, 3, generator=gen) @ chol.T
    test = torch.randn(1000, 3, generator=gen) @ chol.T
    true_nll = 0.5 * (math.log(2 * math.pi * math.e) + float(torch.logdet(0.0625 * corr)) / 3)
    diag = diagonal_gaussian_nll(train, test)
    assert diag - true_nll > 0.5  # the correlation is worth 0.55 nats/dim

    model = LatentFlow(FlowConfig(dim=3, layers=2, hidden=(16,)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        idx = torch.randint(0, len(train), (128,))
        loss = model.loss(train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        nll = model.loss(test).item()
    assert nll < diag - 0.4
    assert nll < true_nll + 0.1


def test_sampling():
    cfg = FlowConfig(dim=4, layers=2, hidden=(8,), num_classes=3, label_embed_dim=4)
    model = _perturbed(cfg)
    s = model.sample(6, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert s.shape == (6, 4) and s.dtype == torch.float64
    assert model.sample(5, labels=2).shape == (5, 4)
    labels = torch.tensor([0, 1, 2])
    zero = model.sample(3, labels=labels, temperature=0.0)
    torch.testing.assert_close(zero, model.from_base(torch.zeros(3, 4, dtype=torch.float64), labels))
    assert not torch.allclose(zero[0], zero[1])  # the label moves the mode
    a = model.sample(3, labels, generator=torch.Generator().manual_seed(7))
    b = model.sample(3, labels, generator=torch.Generator().manual_seed(7))
    c = model.sample(3, labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # temperature scales the base draw: same generator, z halved
    z1 = model.to_base(model.sample(3, labels, generator=torch.Generator().manual_seed(7)), labels)
    z05 = model.to_base(model.sample(3, labels, temperature=0.5, generator=torch.Generator().manual_seed(7)), labels)
    torch.testing.assert_close(z05, 0.5 * z1, atol=1e-8, rtol=0)
    u = _data(8, 4)
    assert not torch.allclose(model.log_prob(u, torch.zeros(8, dtype=torch.long)),
                              model.log_prob(u, torch.ones(8, dtype=torch.long)))
    unconditional = _perturbed(FlowConfig(dim=4, layers=1, hidden=(8,)))
    assert unconditional.sample(0).shape == (0, 4)
    assert unconditional.sample(10).shape == (10, 4)


def test_errors():
    cond = LatentFlow(FlowConfig(dim=4, layers=1, hidden=(8,), num_classes=3))
    uncond = LatentFlow(FlowConfig(dim=4, layers=1, hidden=(8,)))
    u = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="labels are required"):
        cond.log_prob(u)
    with pytest.raises(ValueError, match="labels are required"):
        cond.sample(2)
    with pytest.raises(ValueError, match="unconditional"):
        uncond.log_prob(u, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cond.log_prob(u, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cond.to_base(u, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="shape"):
        cond.log_prob(u, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        cond.log_prob(u, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        uncond.log_prob(torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        uncond.from_base(torch.zeros(4))
    with pytest.raises(ValueError, match="dim >= 2"):
        FlowConfig(dim=1)
    with pytest.raises(ValueError, match="dropout"):
        FlowConfig(dim=2, dropout=1.0)


def test_config_json_and_safetensors_round_trip(tmp_path):
    cfg = FlowConfig(dim=6, layers=3, hidden=(16, 8), num_classes=4, label_embed_dim=5, seed=3, bound=2.5)
    restored = FlowConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert restored == cfg and restored.hidden == (16, 8)

    model = _perturbed(cfg).float()
    state = model.state_dict()
    assert sum(k.endswith("permutation") for k in state) == cfg.layers
    path = tmp_path / "flow.safetensors"
    save_file(state, str(path))  # refuses shared / non-contiguous tensors
    fresh = LatentFlow(restored)
    fresh.load_state_dict(load_file(str(path)), strict=True)
    fresh.eval()
    u, labels = _data(16, 6).float(), torch.arange(16) % 4
    assert torch.equal(fresh.log_prob(u, labels), model.log_prob(u, labels))


def test_permutations_seeded_and_per_layer():
    def perms(seed):
        m = LatentFlow(FlowConfig(dim=16, layers=4, hidden=(8,), seed=seed))
        return [v for k, v in m.state_dict().items() if k.endswith("permutation")]

    a, b, c = perms(0), perms(0), perms(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert len({tuple(p.tolist()) for p in a}) == 4  # a different permutation in every layer


def test_dropout_only_in_train_mode():
    model = _perturbed(FlowConfig(dim=4, layers=2, hidden=(32,), dropout=0.5))
    u = _data(8, 4)
    model.train()
    assert not torch.allclose(model.log_prob(u), model.log_prob(u))
    model.eval()
    assert torch.equal(model.log_prob(u), model.log_prob(u))
    no_dropout = _perturbed(FlowConfig(dim=4, layers=2, hidden=(32,)))
    no_dropout.train()
    assert torch.equal(no_dropout.log_prob(u), no_dropout.log_prob(u))
