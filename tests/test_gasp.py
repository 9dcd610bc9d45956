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
            w = theta[b, start:start + n_in * n_out].reshape(n_in, n_out) / math.sqrt(n_in)
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
