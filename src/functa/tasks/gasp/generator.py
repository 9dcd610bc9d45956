"""The GASP generator: a hypernetwork maps ``z ~ N(0, I)`` to *all* weights and biases of a function
network, which maps coordinates to features (thesis ch. 2, Figure 2.3; reference-study §1.13).

* **Function network** ``f_theta``: random Fourier features ``gamma(x) = (cos 2pi Bx, sin 2pi Bx)`` with a
  fixed ``B (m, d)`` drawn from ``N(0, sigma^2)`` (``m = 0``: the raw coordinates, as the thesis' voxel
  model), then an MLP (thesis: 3 hidden layers of 128, LeakyReLU
  0.1) and ``tanh``: features in ``[-1, 1]``, coordinates in ``[-1, 1]^d``.
* **Hypernetwork** ``g_phi``: an MLP (thesis: hidden 256, 512, LeakyReLU 0.1) from the latent (64-d) to the
  flat parameter vector ``theta (P,)`` of ``f_theta``, used as the weights and biases as it is, with
  PyTorch's default initialisation of the hypernetwork (as the public code: at initialisation the
  generated pre-activations have about unit scale and the functions vary over their inputs).

The function networks of a batch are evaluated at once with batched matmuls (``torch.baddbmm``): one
call per layer for all ``B`` items, with coordinates shared ``(1, N, d)`` or per item ``(B, N, d)``; no
Python loop over the batch (the public code loops over it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...validation import MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total

__all__ = ["GeneratorConfig", "FunctionNetwork", "HyperGenerator", "fourier_features"]


@dataclass(frozen=True)
class GeneratorConfig:
    """Sizes of the GASP generator (defaults: the thesis' experiments, all datasets)."""

    in_dim: int = 2
    out_dim: int = 1
    latent_dim: int = 64
    function_hidden: tuple[int, ...] = (128, 128, 128)
    hyper_hidden: tuple[int, ...] = (256, 512)
    fourier_features: int = 128
    fourier_scale: float = 2.0  # sigma of B (thesis: 1 MNIST, 2 CelebA-HQ 64 and ERA5, 3 CelebA-HQ 128)
    negative_slope: float = 0.1
    seed: int = 0  # draws B

    def __post_init__(self) -> None:
        check_fields(self, "model", in_dim=Int(1, 16), out_dim=Int(1, 64), latent_dim=Int(1, 4096),
                     function_hidden=IntSeq(1, 4096, min_len=1, max_len=16),
                     hyper_hidden=IntSeq(1, 16384, min_len=1, max_len=16), fourier_features=Int(0, 4096),
                     fourier_scale=Real(0, 1e4, lo_open=True), negative_slope=Real(0, 1),
                     seed=Int(0, 2**63 - 1))
        widths = [2 * self.fourier_features or self.in_dim, *self.function_hidden, self.out_dim]
        function = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
        hyper = [self.latent_dim, *self.hyper_hidden]
        n = sum(a * b + b for a, b in zip(hyper[:-1], hyper[1:])) + (hyper[-1] + 1) * function
        check_total("generator", n, MAX_PARAMETERS, f"a hypernetwork {hyper} generating {function} function weights")


def fourier_features(x: Tensor, frequencies: Tensor) -> Tensor:
    """``(cos 2pi x B^T, sin 2pi x B^T)``: coordinates ``(..., d)`` and ``B (m, d)`` -> ``(..., 2m)``."""
    proj = 2 * math.pi * (x @ frequencies.t())
    return torch.cat([torch.cos(proj), torch.sin(proj)], -1)


class FunctionNetwork(nn.Module):
    """The function networks ``f_theta`` of a batch: ``forward(x (1|B, N, d), theta (B, P)) -> (B, N, out_dim)``.

    ``theta`` is the flat vector of every layer's ``(n_in, n_out)`` weights then ``(n_out,)`` biases, layer
    by layer (:attr:`layer_shapes`, :attr:`num_parameters`)."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(config.seed)
        self.register_buffer("frequencies", torch.randn(config.fourier_features, config.in_dim, generator=g)
                             * config.fourier_scale)
        widths = [2 * config.fourier_features or config.in_dim, *config.function_hidden, config.out_dim]
        self.layer_shapes = list(zip(widths[:-1], widths[1:]))
        self.num_parameters = sum(i * o + o for i, o in self.layer_shapes)

    def unpack(self, theta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``theta (B, P)`` -> per layer ``W (B, n_in, n_out)`` and ``b (B, 1, n_out)``."""
        if theta.ndim != 2 or theta.shape[1] != self.num_parameters:
            raise ValueError(f"expected theta (B, {self.num_parameters}), got {tuple(theta.shape)}")
        out, start = [], 0
        for n_in, n_out in self.layer_shapes:
            w = theta[:, start:start + n_in * n_out].reshape(-1, n_in, n_out)
            start += n_in * n_out
            b = theta[:, start:start + n_out].reshape(-1, 1, n_out)
            start += n_out
            out.append((w, b))
        return out

    def forward(self, x: Tensor, theta: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[-1] != self.config.in_dim or x.shape[0] not in (1, theta.shape[0]):
            raise ValueError(f"expected coordinates (1|{theta.shape[0]}, N, {self.config.in_dim}), got {tuple(x.shape)}")
        h = fourier_features(x, self.frequencies) if self.config.fourier_features else x
        h = h.expand(theta.shape[0], -1, -1)
        layers = self.unpack(theta)
        for k, (w, b) in enumerate(layers):
            h = torch.baddbmm(b, h, w)
            h = torch.tanh(h) if k == len(layers) - 1 else F.leaky_relu(h, self.config.negative_slope)
        return h


class HyperGenerator(nn.Module):
    """``z (B, latent_dim)`` -> ``theta (B, P)`` through an MLP; ``forward(x, z)`` evaluates the generated
    functions at coordinates ``x (1|B, N, d)``: features ``(B, N, out_dim)`` in ``[-1, 1]``."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.function = FunctionNetwork(config)
        widths = [config.latent_dim, *config.hyper_hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(widths[-1], self.function.num_parameters)

    def weights(self, z: Tensor) -> Tensor:
        """The flat function parameters ``theta (B, P)`` of latents ``z (B, latent_dim)``."""
        h = z
        for layer in self.hidden:
            h = F.leaky_relu(layer(h), self.config.negative_slope)
        return self.head(h)

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.config.latent_dim, generator=generator, device=self.head.weight.device)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.function(x, self.weights(z))
