import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from functa.codec import FactorizedModel, fit_entropy_model


def _symbols(n, d, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(d, s, generator=g) * 2
    return torch.distributions.Categorical(logits=logits).sample((n,))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 8), st.integers(1, 12), st.integers(2, 64), st.sampled_from(["histogram", "per_dimension"]),
       st.integers(0, 2**31 - 1))
def test_range_coder_round_trip_is_lossless(p, d, s, kind, seed):
    train = _symbols(200, d, s, seed)
    model = fit_entropy_model(kind, train, s)
    rng = np.random.default_rng(seed)
    msg = torch.from_numpy(rng.integers(0, s, size=(p, d)))  # includes symbols never seen in training
    data = model.encode(msg)
    assert torch.equal(model.decode(data, p, d), msg)


def test_measured_size_close_to_ideal_and_models_differ():
    s, d = 32, 16
    both = _symbols(4500, d, s, 0)
    train, test = both[:4000], both[4000:]
    sizes = {}
    for kind in ("histogram", "per_dimension"):
        model = fit_entropy_model(kind, train, s)
        data = model.encode(test)
        ideal = model.bits(test)
        assert len(data) * 8 <= ideal * 1.01 + 64  # a range coder is within a few bytes of the ideal length
        sizes[kind] = len(data)
    assert sizes["per_dimension"] < sizes["histogram"]  # the per-dimension tables are the better model here


def test_hand_computed_ideal_bits_and_smoothing():
    train = torch.tensor([[0, 1], [0, 1], [0, 0], [1, 1]])
    hist = fit_entropy_model("histogram", train, 4)
    assert hist.counts.tolist() == [[4, 4, 1, 1]]  # zero counts raised to one
    assert math.isclose(hist.bits(torch.tensor([[0, 3]])), -math.log2(0.4) - math.log2(0.1), rel_tol=1e-12)
    per = fit_entropy_model("per_dimension", train, 4)
    assert per.counts.tolist() == [[3, 1, 1, 1], [1, 3, 1, 1]]


def test_errors():
    with pytest.raises(ValueError, match="unknown entropy model"):
        fit_entropy_model("flow", torch.zeros(3, 2, dtype=torch.long), 4)
    m = fit_entropy_model("per_dimension", torch.zeros(3, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="fitted on 2"):
        m.encode(torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="symbols must lie"):
        m.encode(torch.full((1, 2), 4))
    with pytest.raises(ValueError, match="counts must be >= 1"):
        FactorizedModel("histogram", torch.zeros(1, 4, dtype=torch.long))
