"""One small training loop for every downstream model (classifiers, flows, diffusion).

The model-specific part is a loss function ``loss_fn(model, batch) -> scalar``. The loop draws
batches of rows from in-memory tensors with ``default_rng([seed, step])`` and seeds torch's RNG
(dropout, diffusion noise) from ``(seed, step)`` as well, so a run resumed from its checkpoint
follows exactly the uninterrupted run. It supports Adam/AdamW, the schedules of
:func:`functa.optim.lr_at`, gradient clipping, an EMA of the weights, periodic evaluation,
checkpoints and a progress bar; Ctrl-C saves before stopping. A checkpoint is one file,
``train_state.safetensors`` (the step, settings and history in its metadata), so a kill at any
moment leaves the previous or the new checkpoint; ``train_state.json`` is a readable copy.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import DivergenceError
from ..interrupts import whole_step
from ..validation import Int, Real, check_fields
from ..io import ArtefactError, load_tensors, read_train_state, sync_state_copy, write_train_state
from ..optim import EMA, Schedule, load_optimizer_tensors, lr_at, optimizer_tensors

__all__ = ["TrainConfig", "Trainer"]

LossFn = Callable[[nn.Module, tuple[Tensor, ...]], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of a downstream model."""

    steps: int = 5000
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw"] = "adamw"
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    ema_decay: float | None = None
    seed: int = 0
    eval_every: int = 1000
    save_every: int = 1000

    def __post_init__(self) -> None:
        check_fields(self, "train", steps=Int(0, 10**9), batch_size=Int(1, 2**20), lr=Real(0, 1e3, lo_open=True),
                     weight_decay=Real(0, 1e6), warmup_steps=Int(0, 10**9),
                     grad_clip=Real(0, math.inf, lo_open=True, optional=True),
                     ema_decay=Real(0, 1, hi_open=True, optional=True), seed=Int(0, 2**63 - 1),
                     eval_every=Int(1, 10**9), save_every=Int(1, 10**9))
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        lr_at(0, self.lr, self.schedule, self.warmup_steps, self.steps)  # validates the schedule
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)`` over rows of ``data`` tensors."""

    STATE_TENSORS = "train_state.safetensors"
    STATE_JSON = "train_state.json"

    def __init__(self, model: nn.Module, loss_fn: LossFn, config: TrainConfig) -> None:
        self.model, self.loss_fn, self.config = model, loss_fn, config
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt(params, lr=config.lr, weight_decay=config.weight_decay)
        self.ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
        self.step_count = 0
        self.history: list[dict] = []

    def eval_state(self) -> dict[str, Tensor]:
        """The weights to evaluate and ship: the EMA if enabled, else the current ones."""
        return self.ema.state_dict() if self.ema is not None else self.model.state_dict()

    def evaluation_model(self) -> nn.Module:
        """``model`` in eval mode with :meth:`eval_state` loaded (the training weights are kept)."""
        import copy

        m = copy.deepcopy(self.model)
        m.load_state_dict(self.eval_state())
        return m.eval()

    def train_step(self, batch: tuple[Tensor, ...]) -> float:
        cfg = self.config
        lr = lr_at(self.step_count, cfg.lr, cfg.schedule, cfg.warmup_steps, cfg.steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        loss = self.loss_fn(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # several processes: each had a share of the global batch
        distributed.average_gradients([p for p in self.model.parameters() if p.requires_grad])
        value = distributed.mean(float(loss.detach()))  # the global batch's loss, the same on every rank
        if not math.isfinite(value):
            advice = "lower train.lr" + (" or set train.grad_clip" if cfg.grad_clip is None else
                                         f" or train.grad_clip (now {cfg.grad_clip:g})")
            raise DivergenceError(f"non-finite loss at step {self.step_count}; {advice}")
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step_count += 1
        return value

    def fit(self, data: tuple[Tensor, ...], run_dir: str | Path | None = None,
            evaluate: Callable[[nn.Module], dict] | None = None,
            on_save: Callable[[Path], None] | None = None, progress: bool = True,
            desc: str = "training") -> list[dict]:
        """Train until ``config.steps``, resuming from ``run_dir`` if it holds a train state.

        ``data`` are tensors with the same first dimension (rows are sampled together).
        Every ``eval_every`` steps and at the end a row ``{step, time_s, train_loss}`` is appended
        to ``history``, extended by ``evaluate(model)`` on :meth:`evaluation_model` when given. ``on_save(run_dir)`` is
        called after each checkpoint.
        """
        cfg = self.config
        n = len(data[0])
        if any(len(t) != n for t in data):
            raise ValueError(f"data tensors have different lengths {[len(t) for t in data]}")
        if n == 0:
            raise ValueError("no training data")
        run_dir = Path(run_dir) if run_dir is not None else None
        if run_dir is not None and ((run_dir / self.STATE_TENSORS).exists() or (run_dir / self.STATE_JSON).exists()):
            sync_state_copy(run_dir / self.STATE_JSON, self.load_state(run_dir))
        bar = tqdm(total=cfg.steps, initial=self.step_count, desc=desc, disable=not (progress and distributed.is_main()),
                   dynamic_ncols=True)
        mine = distributed.shard(min(cfg.batch_size, n))  # under torchrun: this rank's share of each batch
        t0 = time.perf_counter()
        try:
            while self.step_count < cfg.steps:
                rng = np.random.default_rng([cfg.seed, self.step_count])
                idx = torch.from_numpy(rng.choice(n, size=min(cfg.batch_size, n), replace=False))[mine]
                torch.manual_seed(int(rng.integers(2**62)) + distributed.rank())  # dropout, noise: per rank
                with whole_step():  # Ctrl-C / SIGTERM wait for the step to finish
                    loss = self.train_step(tuple(t[idx] for t in data))
                bar.update(1)
                if self.step_count % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
                done = self.step_count >= cfg.steps
                if self.step_count % cfg.eval_every == 0 or done:
                    row = {"step": self.step_count, "time_s": time.perf_counter() - t0, "train_loss": loss}
                    if evaluate is not None:
                        with torch.no_grad():
                            row.update(evaluate(self.evaluation_model()))
                    self.history.append(row)
                    bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                if run_dir is not None and (self.step_count % cfg.save_every == 0 or done):
                    self.save_state(run_dir, on_save)
        except KeyboardInterrupt:
            if run_dir is not None:
                bar.write(f"interrupted at step {self.step_count}; saving a checkpoint to {run_dir}")
                self.save_state(run_dir, on_save)
            raise
        finally:
            bar.close()
        return self.history

    def save_state(self, run_dir: str | Path, on_save: Callable[[Path], None] | None = None) -> None:
        run_dir = Path(run_dir)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update(optimizer_tensors(self.optimizer))
        state = {"step": self.step_count, "config": asdict(self.config), "history": self.history}
        write_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON, tensors, state)
        if on_save is not None:
            on_save(run_dir)

    def load_state(self, run_dir: str | Path) -> dict:
        """Restore the training state saved in ``run_dir``; returns it (step, settings, history)."""
        run_dir = Path(run_dir)
        meta = read_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON, seed=self.config.seed)
        tensors = load_tensors(run_dir / self.STATE_TENSORS)
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        except RuntimeError as e:
            raise ArtefactError(f"{run_dir / self.STATE_TENSORS}: does not match this model ({e})") from None
        if self.ema is not None:
            self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        load_optimizer_tensors(self.optimizer, tensors)
        self.step_count = int(meta["step"])
        self.history = list(meta.get("history", []))
        return meta
