import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from functa.codec import AutoregressiveConfig, AutoregressiveModel, fit_entropy_model


def _correlated(n, d=5, s=8, seed=0):
    """q_0 uniform-ish, every later dimension copies its predecessor up to a +-1 jitter."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(n, d, dtype=torch.long)
    q[:, 0] = torch.randint(0, s, (n,), generator=g)
    for j in range(1, d):
        q[:, j] = (q[:, j - 1] + torch.randint(-1, 2, (n,), generator=g)).clamp(0, s - 1)
    return q


@pytest.fixture(scope="module")
def trained():
    sym = _correlated(2000)
    model = fit_entropy_model("autoregressive", sym, 8, AutoregressiveConfig(hidden=(48, 48), components=3, steps=250))
    return model, sym


def test_tables_are_distributions_consistent_with_the_likelihood(trained):
    model, sym = trained
    batch = sym[:7]
    logp = torch.zeros(7, dtype=torch.float64)
    for d in range(model.dim):
        t = torch.from_numpy(model._tables(batch, d))
        assert t.shape == (7, 8) and torch.allclose(t.sum(1), torch.ones(7, dtype=torch.float64), atol=1e-5)
        logp += torch.log2(t.gather(1, batch[:, d:d + 1]))[:, 0]
    torch.testing.assert_close(logp, model.log2_prob(batch).double(), rtol=1e-4, atol=1e-3)


def test_learns_the_correlation(trained):
    model, sym = trained
    test = _correlated(500, seed=1)
    factorised = fit_entropy_model("per_dimension", sym, 8)
    assert model.bits(test) < 0.75 * factorised.bits(test)  # ~1.6 bits/dim of jitter vs ~3 bits/dim marginal


@settings(max_examples=8, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_round_trip_is_lossless(trained, patches, seed):
    model, _ = trained
    msg = torch.from_numpy(np.random.default_rng(seed).integers(0, 8, size=(patches, 5)))
    assert torch.equal(model.decode(model.encode(msg), patches, 5), msg)


def test_state_round_trip_and_errors(trained):
    model, sym = trained
    again = AutoregressiveModel.from_state(5, 8, model.config, model.state())
    data = model.encode(sym[:3])
    assert torch.equal(again.decode(data, 3, 5), sym[:3])
    with pytest.raises(ValueError, match="fitted on 5"):
        model.decode(data, 3, 6)
    with pytest.raises(ValueError, match="invalid autoregressive"):
        AutoregressiveConfig(components=0)
