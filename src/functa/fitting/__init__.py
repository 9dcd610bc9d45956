"""Fitting: losses, batches, the inner loop, meta-learning of the base network and encoding of latents."""

from .encode import (Encoding, auto_batch_size, chunked_outputs, fit_latents, max_points_per_pass, point_chunks, predict,
                     rendered_fit_points)
from .inner import InnerLoop, field_outputs, inner_step, latent_grad, uses_fast_path
from .losses import AnalyticOutputGrad, BCEWithLogitsLoss, Loss, MSELoss, available_losses, get_loss
from .meta import MetaLearner, MetaLearningConfig, evaluate_reconstruction
from .metrics import MetricMeter, Metrics, PsnrMetrics, mse_per_item, psnr
from .allocator import HeapGuard, release_free_memory, tune_cpu_allocator
from .outer import OuterObjective, OuterResult, outer_loss
from .rendering import VolumeRenderer, ray_batch, ray_depths, ray_points
from .source import Batch, BatchSource, HeldOutSource, Renderer, SampledSource

__all__ = [
    "AnalyticOutputGrad",
    "BCEWithLogitsLoss",
    "Batch",
    "BatchSource",
    "Encoding",
    "HeldOutSource",
    "chunked_outputs",
    "InnerLoop",
    "Loss",
    "MSELoss",
    "MetaLearner",
    "MetaLearningConfig",
    "MetricMeter",
    "Metrics",
    "OuterObjective",
    "OuterResult",
    "PsnrMetrics",
    "Renderer",
    "SampledSource",
    "VolumeRenderer",
    "ray_batch",
    "ray_depths",
    "ray_points",
    "auto_batch_size",
    "available_losses",
    "evaluate_reconstruction",
    "field_outputs",
    "fit_latents",
    "max_points_per_pass",
    "point_chunks",
    "get_loss",
    "inner_step",
    "latent_grad",
    "mse_per_item",
    "outer_loss",
    "predict",
    "rendered_fit_points",
    "psnr",
    "HeapGuard",
    "release_free_memory",
    "tune_cpu_allocator",
    "uses_fast_path",
]
