"""GASP: generative adversarial stochastic processes (Dupont et al. 2022; thesis ch. 2). A hypernetwork
generator of function networks, trained against a point-cloud discriminator, with no meta-learning and
no functaset. This package does not use the meta-learning trainer."""

from .data import PointClouds, point_coordinates, sample_features, to_data
from .discriminator import DiscriminatorConfig, PointConvDiscriminator
from .generator import FunctionNetwork, GeneratorConfig, HyperGenerator, fourier_features
from .pointconv import AvgPool, Level, PointConv, farthest_point_sample, gather_points, knn
from .trainer import GaspTrainConfig, GaspTrainer, r1_penalty

__all__ = ["AvgPool", "DiscriminatorConfig", "FunctionNetwork", "GaspTrainConfig", "GaspTrainer", "GeneratorConfig",
           "HyperGenerator", "Level", "PointClouds", "PointConv", "PointConvDiscriminator", "farthest_point_sample",
           "fourier_features", "gather_points", "knn", "point_coordinates", "r1_penalty", "sample_features", "to_data"]
