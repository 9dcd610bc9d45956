"""GASP: generative adversarial stochastic processes (Dupont et al. 2022; thesis ch. 2). A hypernetwork
generator of function networks, trained against a point-cloud discriminator, with no meta-learning and
no functaset. This package does not use the meta-learning trainer."""

from .generator import FunctionNetwork, GeneratorConfig, HyperGenerator, fourier_features

__all__ = ["FunctionNetwork", "GeneratorConfig", "HyperGenerator", "fourier_features"]
