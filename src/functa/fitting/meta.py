"""Meta-learning the shared base network (functa Algorithm 1: CAVIA with meta-SGD).

:class:`MetaLearner` runs the outer Adam loop over a :class:`~functa.fitting.source.BatchSource`.
It knows nothing about modalities: a source supplies :class:`~functa.fitting.source.Batch` es,
a :class:`~functa.fitting.losses.Loss` says what is fitted and a
:class:`~functa.fitting.metrics.Metrics` what is reported.
Training state (weights, Adam moments, step) is checkpointed to ``<run>/train_state.*`` so an
interrupted run resumes where it stopped; batches are drawn from ``default_rng([seed, step])``
so a resumed run sees the same batches as an uninterrupted one. A checkpoint is one file,
``train_state.safetensors``: its metadata holds the step, settings and history with the tensors,
so a kill at any moment leaves either the previous checkpoint or the new one
(``train_state.json`` is a readable copy written after it).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import DivergenceError
from ..interrupts import whole_step
from ..fields import field_device
from ..io import ArtefactError, load_tensors, read_train_state, sync_state_copy, write_train_state
from ..validation import MAX_GRID_POINTS, MAX_INNER_STEPS, Bool, Choice, Int, Real, check_fields
from ..optim import load_optimizer_tensors, lr_at, optimizer_tensors
from .encode import auto_batch_size, chunked_outputs, fit_latents, rendered_fit_points
from .inner import InnerLoop, field_outputs
from .losses import Loss, MSELoss
from .metrics import MetricMeter, Metrics, PsnrMetrics
from .outer import OuterObjective
from .source import Batch, BatchSource, HeldOutSource, SampledSource

__all__ = ["MetaLearningConfig", "MetaLearner", "evaluate_reconstruction"]


@dataclass(frozen=True)
class MetaLearningConfig:
    """Outer-loop settings. Paper defaults: Adam 3e-6 constant, 3 inner steps, no clipping.

    ``points_per_step`` trains every step on a random subset of that many points (the same
    subset for the inner and the outer loss, as ``subsample_num_points`` in COIN++), which makes
    steps on large grids (climate fields, big images) proportionally cheaper; evaluation always
    uses all points.

    ``divergence_factor``: training stops with :class:`~functa.errors.DivergenceError`, without
    saving, when a running mean of the training loss, or the validation loss after the inner
    steps, exceeds this factor times its best value so far (``None``: never); the run directory
    keeps the last good checkpoint.

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
    divergence_factor: float | None = 10.0

    def __post_init__(self) -> None:
        # types and (generous) ranges; ConfigError names the setting, the value and the range
        check_fields(self, "train", steps=Int(0, 10**9), batch_size=Int(1, 65536), inner_steps=Int(0, MAX_INNER_STEPS),
                     outer_lr=Real(0, 1e3, lo_open=True), schedule=Choice("constant", "cosine"),
                     warmup_steps=Int(0, 10**9), grad_clip=Real(0, math.inf, lo_open=True, optional=True),
                     first_order=Bool(), checkpoint_inner=Bool(), compile=Bool(), seed=Int(0, 2**63 - 1),
                     eval_every=Int(1, 10**9), eval_items=Int(1, 2**31), save_every=Int(1, 10**9),
                     points_per_step=Int(1, MAX_GRID_POINTS, optional=True),
                     divergence_factor=Real(1, math.inf, lo_open=True, optional=True))

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): linear warm-up, then constant or cosine to 0."""
        return lr_at(step, self.outer_lr, self.schedule, self.warmup_steps, self.steps)


def evaluate_reconstruction(field: nn.Module, source: BatchSource, steps: int, *, loss: Loss = MSELoss(),
                            metrics: Metrics = PsnrMetrics(), batch_size: int | None = None, limit: int | None = None,
                            extra: Callable[[Tensor, Tensor], dict[str, Tensor]] | None = None,
                            progress: bool = False) -> dict:
    """Reconstruction metrics after each inner step ``0..steps`` on (the first ``limit`` items of) ``source``.

    Returns ``{"per_step": [{"step", **metrics summary, "count", "loss"}, ...], "count": n, **extra}``: the
    summary of ``metrics`` (e.g. ``psnr_of_mean_mse``, ``mean_psnr``) and the mean per-item loss
    after every step, and the
    means of ``extra(pred, target)`` (more per-item metrics) after the last one. Predictions are the
    loss's (``loss.predict``: sigmoid of logits for BCE).
    """
    n = len(source) if limit is None else min(limit, len(source))
    batch_size = batch_size or auto_batch_size(field, source.num_points)
    meters = [MetricMeter(metrics) for _ in range(steps + 1)]
    losses = [0.0] * (steps + 1)
    sums: dict[str, float] = {}
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        idx = np.arange(start, min(start + batch_size, n))
        batch = source.batch(idx).to(field_device(field))
        enc = fit_latents(field, batch, steps, loss=loss, track_steps=True,
                          max_points=rendered_fit_points(field, batch))
        scored = source.heldout(idx).to(field_device(field)) if isinstance(source, HeldOutSource) else batch
        with torch.no_grad():
            for k, (meter, z) in enumerate(zip(meters, enc.history)):
                out = field_outputs(field, scored, z) if scored.renderer is None else chunked_outputs(field, scored, z)
                losses[k] += float(loss.per_item(out, scored.y, scored.mask).double().sum())
                pred = loss.predict(out)
                meter.update(pred, scored.y)
        if extra is not None:
            for key, v in extra(pred, scored.y).items():
                sums[key] = sums.get(key, 0.0) + float(v.double().sum())
    out = {"per_step": [{"step": k, **m.as_dict(), "loss": losses[k] / max(n, 1)} for k, m in enumerate(meters)],
           "count": n}
    out.update({k: v / max(n, 1) for k, v in sums.items()})
    return out


class DivergenceWatch:
    """Stops a run whose loss blows up: a running mean of the training loss (decay 0.9) above
    ``factor`` times its best so far (the first loss counts, so a run that blows up in its first
    steps is caught too), or a validation loss above ``factor`` times its best, raises
    :class:`DivergenceError`.

    It is called before the checkpoint of a step is written, so a diverged state is never saved.
    """

    DECAY = 0.9
    WARMUP = 10  # training steps before the running mean is trusted

    def __init__(self, factor: float | None, run_dir: Path | None, step: int, grad_clip: float | None) -> None:
        self.factor, self.run_dir, self.grad_clip = factor, run_dir, grad_clip
        self.last_saved = step if step > 0 else None
        self.mean: float | None = None
        self.seen = 0
        self.best_train = self.best_val = math.inf
        self.best_val_step = 0

    def train_loss(self, value: float, step: int) -> None:
        if self.factor is None:
            return
        if self.mean is None:  # the first loss seen (the untrained network's, in a new run) is the reference
            self.mean = self.best_train = value
        self.mean = self.DECAY * self.mean + (1 - self.DECAY) * value
        self.seen += 1
        if self.seen < self.WARMUP:
            return
        if self.mean > self.factor * max(self.best_train, 1e-12):
            self._fail(step, f"the running mean of the training loss is {self.mean:.4g}, over {self.factor:g}x its "
                             f"best {self.best_train:.4g}")
        self.best_train = min(self.best_train, self.mean)

    def val_loss(self, value: float, step: int) -> None:
        if self.factor is None:
            return
        if not math.isfinite(value) or value > self.factor * max(self.best_val, 1e-12):
            self._fail(step, f"the validation loss is {value:.4g}, over {self.factor:g}x its best {self.best_val:.4g} "
                             f"(step {self.best_val_step})")
        if value < self.best_val:
            self.best_val, self.best_val_step = value, step

    def saved(self, step: int) -> None:
        self.last_saved = step

    def _fail(self, step: int, why: str) -> None:
        kept = (f"{self.run_dir} keeps the checkpoint of step {self.last_saved}" if self.run_dir is not None and
                self.last_saved is not None else "nothing was saved")
        advice = "lower train.outer_lr" + (" or set train.grad_clip" if self.grad_clip is None else
                                           f" or train.grad_clip (now {self.grad_clip:g})")
        raise DivergenceError(f"meta-learning diverged at step {step}: {why}; {kept}; {advice} "
                              "(train.divergence_factor=null turns this check off)")


class MetaLearner:
    """Outer loop: Adam on the base network and the meta-SGD rates of ``field``."""

    STATE_TENSORS = "train_state.safetensors"
    STATE_JSON = "train_state.json"

    def __init__(self, field: nn.Module, config: MetaLearningConfig, loss: Loss = MSELoss(),
                 metrics: Metrics = PsnrMetrics()) -> None:
        self.field, self.config, self.loss, self.metrics = field, config, loss, metrics
        self.inner = InnerLoop(config.inner_steps, loss, config.first_order, config.checkpoint_inner)
        self.objective = OuterObjective(field, self.inner, compile=config.compile)
        self.params = field.base_parameters() + field.meta_parameters()
        self.optimizer = torch.optim.Adam(self.params, lr=config.outer_lr)
        self.step_count = 0
        self.history: list[dict] = []

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Batch) -> dict[str, float]:
        """One outer step on a batch; returns the loss, the headline metric on the batch
        (``metric``), the learning rate and the gradient norm (with clipping).

        The batch is moved to the field's device (a no-op on the CPU)."""
        batch = batch.to(field_device(self.field))
        lr = self.config.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        result = self.objective(batch)
        self.optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        distributed.average_gradients(self.params)  # several processes: each had a share of the global batch
        grad_norm = float("nan")
        if self.config.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip))
        loss = distributed.mean(float(result.loss.detach()))  # the global batch's loss, the same on every rank
        if not math.isfinite(loss):
            advice = "lower train.outer_lr" + (" or set train.grad_clip" if self.config.grad_clip is None else
                                               f" or train.grad_clip (now {self.config.grad_clip:g})")
            raise DivergenceError(f"non-finite meta-learning loss at step {self.step_count}; {advice}")
        self.optimizer.step()
        self.step_count += 1
        with torch.no_grad():
            meter = MetricMeter(self.metrics)
            meter.update(self.loss.predict(result.outputs.detach()), batch.y)
        metric = distributed.mean(meter.as_dict()[self.metrics.headline])  # the mean of the ranks' shares
        return {"loss": loss, "metric": metric, "lr": lr, "grad_norm": grad_norm}

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
        if run_dir is not None and ((run_dir / self.STATE_TENSORS).exists() or (run_dir / self.STATE_JSON).exists()):
            sync_state_copy(run_dir / self.STATE_JSON, self.load_state(run_dir))
        if len(train) < cfg.batch_size:
            raise ValueError(f"training set has {len(train)} items, fewer than batch_size={cfg.batch_size}")
        t0 = time.perf_counter()
        headline = self.metrics.headline
        watch = DivergenceWatch(cfg.divergence_factor, run_dir, self.step_count, cfg.grad_clip)
        main = distributed.is_main()  # with several processes: rank 0 evaluates, saves and shows progress
        mine = distributed.shard(cfg.batch_size)
        bar = tqdm(total=cfg.steps, initial=self.step_count, desc="meta-learning", disable=not (progress and main),
                   dynamic_ncols=True)
        try:
            while self.step_count < cfg.steps:
                rng = np.random.default_rng([cfg.seed, self.step_count])
                idx = rng.choice(len(train), size=cfg.batch_size, replace=False)
                batch = train.sample(idx, rng) if isinstance(train, SampledSource) else train.batch(idx)
                if cfg.points_per_step is not None and cfg.points_per_step < batch.num_targets:
                    pts = np.sort(rng.choice(batch.num_targets, cfg.points_per_step, replace=False))
                    batch = batch.points(torch.from_numpy(pts))
                with whole_step():  # Ctrl-C / SIGTERM wait for the step to finish
                    stats = self.train_step(batch if distributed.world_size() == 1 else batch.items(mine))
                watch.train_loss(stats["loss"], self.step_count)
                bar.update(1)
                bar.set_postfix({"loss": f"{stats['loss']:.2e}", headline: f"{stats['metric']:.4g}"})
                done = self.step_count >= cfg.steps
                out_of_time = distributed.any_rank(time_limit_s is not None and time.perf_counter() - t0 > time_limit_s)
                if val is not None and (self.step_count % cfg.eval_every == 0 or done or out_of_time):
                    val_loss = float("nan")
                    if main:
                        ev = evaluate_reconstruction(self.field, val, cfg.inner_steps, loss=self.loss,
                                                     metrics=self.metrics, limit=cfg.eval_items)
                        row = {"step": self.step_count, "time_s": time.perf_counter() - t0,
                               f"train_{headline}": stats["metric"], "train_loss": stats["loss"], "val": ev["per_step"]}
                        self.history.append(row)
                        bar.write(f"step {self.step_count}: validation after {cfg.inner_steps} inner steps: "
                                  f"{self.metrics.describe(ev['per_step'][-1])}")
                        val_loss = ev["per_step"][-1]["loss"]
                    watch.val_loss(distributed.broadcast(val_loss), self.step_count)
                if run_dir is not None and (self.step_count % cfg.save_every == 0 or done or out_of_time):
                    if main:
                        self.save_state(run_dir, on_save)
                    distributed.barrier()
                    watch.saved(self.step_count)
                if out_of_time:
                    bar.write(f"time limit of {time_limit_s:.0f} s reached at step {self.step_count}")
                    break
        except KeyboardInterrupt:
            if run_dir is not None and main:
                bar.write(f"interrupted at step {self.step_count}; saving a checkpoint to {run_dir}")
                self.save_state(run_dir, on_save)
            raise
        finally:
            bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, run_dir: str | Path, on_save: Callable[[Path], None] | None = None) -> None:
        """Write weights, Adam state and progress as one file (the progress in its metadata), then
        its readable copy ``train_state.json``."""
        run_dir = Path(run_dir)
        tensors = {f"model.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update(optimizer_tensors(self.optimizer, "adam."))
        state = {"step": self.step_count, "config": asdict(self.config), "field": self.field.to_config(),
                 "loss": self.loss.name, "history": self.history}
        write_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON, tensors, state)
        if on_save is not None:
            on_save(run_dir)

    def load_state(self, run_dir: str | Path) -> dict:
        """Restore weights, Adam state, step and history from ``run_dir``; returns the saved state
        (step, settings, history)."""
        run_dir = Path(run_dir)
        meta = read_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON)
        saved = dict(meta.get("field", {}))
        saved.setdefault("name", self.field.to_config()["name"])
        if json.loads(json.dumps(saved)) != json.loads(json.dumps(self.field.to_config())) or \
                meta.get("loss", "mse") != self.loss.name:
            raise ArtefactError(f"{run_dir / self.STATE_JSON}: the saved run has a different field config or loss; "
                                "use a new --out directory or the same settings to resume")
        tensors = load_tensors(run_dir / self.STATE_TENSORS)
        model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        self.field.load_state_dict(model)
        load_optimizer_tensors(self.optimizer, tensors, "adam.")
        self.step_count = int(meta["step"])
        self.history = list(meta.get("history", []))
        return meta
