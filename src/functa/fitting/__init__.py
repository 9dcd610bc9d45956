"""Fitting: inner loop, meta-learning of the base network and encoding of latents."""

from .encode import Encoding, auto_batch_size, fit_latents
from .inner import InnerLoop, inner_step, mse_grad
from .meta import BatchSource, MetaLearner, MetaLearningConfig, evaluate_reconstruction
from .metrics import PsnrMeter, mse_per_item, psnr
from .outer import OuterObjective, OuterResult, outer_loss, tune_cpu_allocator

__all__ = [
    "BatchSource",
    "Encoding",
    "auto_batch_size",
    "InnerLoop",
    "MetaLearner",
    "MetaLearningConfig",
    "OuterObjective",
    "OuterResult",
    "PsnrMeter",
    "evaluate_reconstruction",
    "fit_latents",
    "inner_step",
    "mse_grad",
    "mse_per_item",
    "outer_loss",
    "psnr",
    "tune_cpu_allocator",
]
