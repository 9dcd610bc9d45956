"""Meta-learning the shared base network (functa Algorithm 1: CAVIA with meta-SGD).

:class:`MetaLearner` runs the outer Adam loop over a :class:`BatchSource`. It knows nothing about
modalities: a batch source supplies coordinates ``(N, d)`` and features ``(B, N, C)``.
Training state (weights, Adam moments, step) is checkpointed to ``<run>/train_state.*`` so an
interrupted run resumes where it stopped; batches are drawn from ``default_rng([seed, step])``
so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..fields import LatentModulatedSiren, SirenConfig
from ..io import ArtefactError, load_tensors, read_json, save_tensors, write_json
from ..optim import load_optimizer_tensors, lr_at, optimizer_tensors
from .encode import auto_batch_size, fit_latents
from .inner import InnerLoop
from .metrics import PsnrMeter, psnr
from .outer import OuterObjective

__all__ = ["BatchSource", "MetaLearningConfig", "MetaLearner", "evaluate_reconstruction"]


class BatchSource(Protocol):
    """What the trainer needs from a dataset: shared coordinates and feature batches."""

    coords: Tensor  # (N, d)

    def __len__(self) -> int: ...

    def features(self, indices: np.ndarray) -> Tensor:  # (B, N, C) in [0, 1]
        ...


@dataclass(frozen=True)
class MetaLearningConfig:
    """Outer-loop settings. Paper defaults: Adam 3e-6 constant, 3 inner steps, no clipping.

    ``points_per_step`` trains every step on a random subset of that many points (the same
    subset for the inner and the outer loss, as ``subsample_num_points`` in COIN++), which makes
    steps on large grids (climate fields, big images) proportionally cheaper; evaluation always
    uses all points.

    ``outer_lr=3e-6`` is meant for runs of 10^5-10^6 steps; for short CPU runs use the
    recommended ``--preset cpu`` (``docs/benchmarks.md``, quality for time: higher lr with warm-up + cosine decay and
    gradient clipping).
    """

    steps: int = 10_000
    batch_size: int = 32
    inner_steps: int = 3
    outer_lr: float = 3e-6
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    first_order: bool = False
    checkpoint_inner: bool = False
    compile: bool = False
    seed: int = 0
    eval_every: int = 500
    eval_items: int = 256
    save_every: int = 500
    points_per_step: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.inner_steps < 0:
            raise ValueError("steps >= 0, batch_size >= 1 and inner_steps >= 0 are required")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.outer_lr <= 0:
            raise ValueError(f"outer_lr must be positive, got {self.outer_lr}")
        if self.points_per_step is not None and self.points_per_step < 1:
            raise ValueError(f"points_per_step must be >= 1 or None, got {self.points_per_step}")

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
        return lr_at(step, self.outer_lr, self.schedule, self.warmup_steps, self.steps)


def evaluate_reconstruction(field: LatentModulatedSiren, source: BatchSource, steps: int, batch_size: int | None = None,
                            limit: int | None = None, extra: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None,
                            progress: bool = False) -> dict:
    """PSNR after each inner step ``0..steps`` on (the first ``limit`` items of) ``source``.

    Returns ``{"per_step": [{"step", "psnr_of_mean_mse", "mean_psnr", "mse"}, ...], "count": n,
    **extra}`` where ``extra(pred, target)`` may add per-item metrics (averaged) for the final step.
    """
    n = len(source) if limit is None else min(limit, len(source))
    batch_size = batch_size or auto_batch_size(field, source.coords.shape[0])
    meters = [PsnrMeter() for _ in range(steps + 1)]
    sums: dict[str, float] = {}
    x = source.coords[None].to(field.device)
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        idx = np.arange(start, min(start + batch_size, n))
        y = source.features(idx).to(field.device)
        enc = fit_latents(field, x, y, steps, track_steps=True)
        for k, m in enumerate(meters):
            m.update(enc.mse_per_step[k])
        if extra is not None:
            with torch.no_grad():
                pred, _ = field.forward_points(x, enc.latents)
            for key, v in extra(pred, y).items():
                sums[key] = sums.get(key, 0.0) + float(v.double().sum())
    out = {"per_step": [{"step": k, **m.as_dict()} for k, m in enumerate(meters)], "count": n}
    out.update({k: v / max(n, 1) for k, v in sums.items()})
    return out


class MetaLearner:
    """Outer loop: Adam on the base network and the meta-SGD rates of ``field``."""

    STATE_TENSORS = "train_state.safetensors"
    STATE_JSON = "train_state.json"

    def __init__(self, field: LatentModulatedSiren, config: MetaLearningConfig) -> None:
        self.field, self.config = field, config
        self.inner = InnerLoop(config.inner_steps, config.first_order, config.checkpoint_inner)
        self.objective = OuterObjective(field, self.inner, compile=config.compile)
        self.params = field.base_parameters() + list(field.inner_lrs.parameters())
        self.optimizer = torch.optim.Adam(self.params, lr=config.outer_lr)
        self.step_count = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ one step
    def train_step(self, x: Tensor, y: Tensor) -> dict[str, float]:
        """One outer step on features ``y (B, N, C)`` at ``x (1, N, d)``; returns loss and PSNR.

        Inputs are moved to the field's device (a no-op on the CPU)."""
        x, y = x.to(self.field.device), y.to(self.field.device)
        lr = self.config.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        result = self.objective(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        grad_norm = float("nan")
        if self.config.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip))
        loss = float(result.loss.detach())
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite meta-learning loss at step {self.step_count}; "
                                     "lower train.outer_lr or set train.grad_clip")
        self.optimizer.step()
        self.step_count += 1
        return {"loss": loss, "psnr": float(psnr(result.mse.detach().mean())), "lr": lr, "grad_norm": grad_norm}

    # ------------------------------------------------------------------ loop
    def fit(self, train: BatchSource, val: BatchSource | None = None, run_dir: str | Path | None = None,
            on_save: Callable[[Path], None] | None = None, progress: bool = True,
            time_limit_s: float | None = None) -> list[dict]:
        """Meta-learn until ``config.steps`` (resuming from ``run_dir`` if it holds a train state).

        ``on_save(run_dir)`` is called after every checkpoint (the CLI saves the base network
        there). Ctrl-C saves a checkpoint before re-raising. ``time_limit_s`` stops early.
        Returns the evaluation history.
        """
        cfg = self.config
        run_dir = Path(run_dir) if run_dir is not None else None
        if run_dir is not None and (run_dir / self.STATE_JSON).exists():
            self.load_state(run_dir)
        if len(train) < cfg.batch_size:
            raise ValueError(f"training set has {len(train)} items, fewer than batch_size={cfg.batch_size}")
        x = train.coords[None]
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=self.step_count, desc="meta-learning", disable=not progress,
                   dynamic_ncols=True)
        try:
            while self.step_count < cfg.steps:
                rng = np.random.default_rng([cfg.seed, self.step_count])
                idx = rng.choice(len(train), size=cfg.batch_size, replace=False)
                xb, yb = x, train.features(idx)
                if cfg.points_per_step is not None and cfg.points_per_step < x.shape[1]:
                    pts = torch.from_numpy(np.sort(rng.choice(x.shape[1], cfg.points_per_step, replace=False)))
                    xb, yb = x[:, pts], yb[:, pts]
                stats = self.train_step(xb, yb)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.2e}", psnr=f"{stats['psnr']:.2f}")
                done = self.step_count >= cfg.steps
                out_of_time = time_limit_s is not None and time.perf_counter() - t0 > time_limit_s
                if val is not None and (self.step_count % cfg.eval_every == 0 or done or out_of_time):
                    ev = evaluate_reconstruction(self.field, val, cfg.inner_steps, limit=cfg.eval_items)
                    row = {"step": self.step_count, "time_s": time.perf_counter() - t0, "train_psnr": stats["psnr"],
                           "val": ev["per_step"]}
                    self.history.append(row)
                    bar.write(f"step {self.step_count}: val PSNR after {cfg.inner_steps} steps "
                              f"{ev['per_step'][-1]['psnr_of_mean_mse']:.2f} dB (of mean MSE), "
                              f"{ev['per_step'][-1]['mean_psnr']:.2f} dB (mean of items)")
                if run_dir is not None and (self.step_count % cfg.save_every == 0 or done or out_of_time):
                    self.save_state(run_dir, on_save)
                if out_of_time:
                    bar.write(f"time limit of {time_limit_s:.0f} s reached at step {self.step_count}")
                    break
        except KeyboardInterrupt:
            if run_dir is not None:
                bar.write(f"interrupted at step {self.step_count}; saving a checkpoint to {run_dir}")
                self.save_state(run_dir, on_save)
            raise
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, run_dir: str | Path, on_save: Callable[[Path], None] | None = None) -> None:
        """Write weights, Adam state and progress; the JSON is written last (it marks completion)."""
        run_dir = Path(run_dir)
        tensors = {f"model.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update(optimizer_tensors(self.optimizer, "adam."))
        save_tensors(run_dir / self.STATE_TENSORS, tensors)
        write_json(run_dir / self.STATE_JSON, {"step": self.step_count, "config": asdict(self.config),
                                                "field": self.field.config.to_dict(), "history": self.history})
        if on_save is not None:
            on_save(run_dir)

    def load_state(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        meta = read_json(run_dir / self.STATE_JSON)
        if SirenConfig.from_dict(meta.get("field", {})) != self.field.config:
            raise ArtefactError(f"{run_dir / self.STATE_JSON}: the saved run has a different field config; "
                                "use a new --out directory or the same settings to resume")
        tensors = load_tensors(run_dir / self.STATE_TENSORS)
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.field.load_state_dict(model)
        load_optimizer_tensors(self.optimizer, tensors, "adam.")
        self.step_count = int(meta["step"])
        self.history = list(meta.get("history", []))
