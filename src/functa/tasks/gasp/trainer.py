"""Adversarial training of GASP (thesis §2.3.4): a generator of functions against a point-cloud discriminator.

One step, on a batch of real point clouds ``(x, y)`` sharing coordinates ``x (1, N, d)``:

1. optionally keep ``max_num_points`` of the ``N`` points (one random subset for the whole batch);
2. **discriminator**: non-saturating GAN loss ``softplus(-l_real) + softplus(l_fake)`` (the BCE of the
   thesis on logits) plus the R1 penalty ``(r1_weight / 2) E ||grad_y D(x, y)||^2`` on the real
   features, with ``D`` the probability (the reference code's choice) or the logit (Mescheder et al.);
3. **generator**: ``softplus(-l_fake)`` on freshly drawn functions; then the EMA of the generator.

Adam for both with the thesis' rates (1e-4 generator, 4e-4 discriminator, betas (0.5, 0.999)). The
step's randomness (batch, latents, point subset) comes from ``(seed, step)``, so a run resumed from its
checkpoint (``train_state.safetensors``: both networks, the EMA, both optimisers, the history, in one
atomic file) follows the uninterrupted run bit for bit. A non-finite loss stops training with
:class:`~functa.errors.DivergenceError` (the last checkpoint is kept); a discriminator that wins outright
(mean ``D(real) > 0.99`` and ``D(fake) < 0.01`` for ``saturation_steps`` steps in a row: the generator's
gradient vanishes) is reported once per episode in the progress bar and in ``events``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ...errors import DivergenceError
from ...interrupts import whole_step
from ...io import ArtefactError, load_tensors, read_train_state, sync_state_copy, write_train_state
from ...optim import EMA, load_optimizer_tensors, optimizer_tensors
from ...validation import Choice, Int, Real, check_fields
from .data import PointClouds
from .discriminator import PointConvDiscriminator
from .generator import HyperGenerator

__all__ = ["GaspTrainConfig", "GaspTrainer", "r1_penalty"]


@dataclass(frozen=True)
class GaspTrainConfig:
    """Optimisation settings of GASP (defaults: the thesis' image experiments)."""

    steps: int = 10000
    batch_size: int = 64
    lr_generator: float = 1e-4
    lr_discriminator: float = 4e-4
    beta1: float = 0.5
    beta2: float = 0.999
    r1_weight: float = 10.0
    r1_on: Literal["probability", "logit"] = "probability"
    max_num_points: int | None = None
    ema_decay: float | None = 0.999
    seed: int = 0
    sample_every: int = 250
    save_every: int = 250
    saturation_steps: int = 100

    def __post_init__(self) -> None:
        check_fields(self, "train", steps=Int(0, 10**9), batch_size=Int(1, 2**16),
                     lr_generator=Real(0, 10, lo_open=True), lr_discriminator=Real(0, 10, lo_open=True),
                     beta1=Real(0, 1, hi_open=True), beta2=Real(0, 1, hi_open=True), r1_weight=Real(0, 1e6),
                     r1_on=Choice("probability", "logit"), max_num_points=Int(2, 2**31, optional=True),
                     ema_decay=Real(0, 1, hi_open=True, optional=True), seed=Int(0, 2**63 - 1),
                     sample_every=Int(1, 10**9), save_every=Int(1, 10**9), saturation_steps=Int(1, 10**9))


def r1_penalty(output: Tensor, features: Tensor) -> Tensor:
    """``E_b sum_{i,c} (d output_b / d features_{b,i,c})^2`` (summed over points and channels, mean over
    the batch), differentiable for the discriminator's update."""
    (grad,) = torch.autograd.grad(output.sum(), features, create_graph=True)
    return grad.square().sum(tuple(range(1, grad.ndim))).mean()


class GaspTrainer:
    """Train ``generator`` against ``discriminator`` on :class:`~.data.PointClouds`."""

    STATE_TENSORS = "train_state.safetensors"
    STATE_JSON = "train_state.json"

    def __init__(self, generator: HyperGenerator, discriminator: PointConvDiscriminator,
                 config: GaspTrainConfig) -> None:
        self.generator, self.discriminator, self.config = generator, discriminator, config
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr_generator, betas=betas)
        self.opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr_discriminator, betas=betas)
        self.ema = EMA(generator, config.ema_decay) if config.ema_decay is not None else None
        self.step_count = 0
        self.elapsed_s = 0.0  # training time over all sessions of this run
        self.history: list[dict] = []
        self.events: list[dict] = []
        self._saturated_for = 0
        self._interval: tuple[dict[str, float], int] = ({}, 0)  # sums and count of the open history row

    # ------------------------------------------------------------------ the maths of one step
    def discriminator_loss(self, coords: Tensor, real: Tensor, fake: Tensor) -> tuple[Tensor, dict]:
        cfg = self.config
        real = real.detach().requires_grad_(cfg.r1_weight > 0)
        l_real = self.discriminator(coords, real)
        l_fake = self.discriminator(coords, fake.detach())
        loss = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
        stats = {"d_real": float(torch.sigmoid(l_real.detach()).mean()),
                 "d_fake": float(torch.sigmoid(l_fake.detach()).mean())}
        if cfg.r1_weight > 0:
            r1 = r1_penalty(torch.sigmoid(l_real) if cfg.r1_on == "probability" else l_real, real)
            loss = loss + 0.5 * cfg.r1_weight * r1
            stats["r1"] = float(r1.detach())
        return loss, stats

    def generator_loss(self, coords: Tensor, z: Tensor) -> Tensor:
        return F.softplus(-self.discriminator(coords, self.generator(coords, z))).mean()

    def train_step(self, coords: Tensor, real: Tensor, rng: torch.Generator) -> dict:
        """One discriminator and one generator update on ``real (B, N, C)`` at ``coords (1, N, d)``
        (moved to the networks' device; ``rng`` is a CPU generator, so every device draws the same)."""
        cfg = self.config
        if cfg.max_num_points is not None and cfg.max_num_points < coords.shape[1]:
            keep = torch.randperm(coords.shape[1], generator=rng)[:cfg.max_num_points]
            coords, real = coords[:, keep], real[:, keep]
        b, latent = real.shape[0], self.generator.config.latent_dim
        device = self.generator.head.weight.device
        coords, real = coords.to(device), real.to(device)
        self.generator.train()
        self.discriminator.train()
        z_d = torch.randn(b, latent, generator=rng).to(device)
        z_g = torch.randn(b, latent, generator=rng).to(device)
        with torch.no_grad():
            fake = self.generator(coords, z_d)
        loss_d, stats = self.discriminator_loss(coords, real, fake)
        self._check_finite("discriminator", loss_d)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        self.discriminator.requires_grad_(False)  # the generator's step differentiates through D only
        try:
            loss_g = self.generator_loss(coords, z_g)
            self._check_finite("generator", loss_g)
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            self.discriminator.requires_grad_(True)
        self.opt_g.step()
        if self.ema is not None:
            self.ema.decay = min(cfg.ema_decay, (1 + self.step_count) / (10 + self.step_count))  # warm-up
            self.ema.update(self.generator)
        self.step_count += 1
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()), **stats}

    def _check_finite(self, which: str, loss: Tensor) -> None:
        if not torch.isfinite(loss.detach()):
            raise DivergenceError(f"non-finite {which} loss at step {self.step_count}; lower "
                                  f"train.lr_{which} or raise train.r1_weight (now {self.config.r1_weight:g}); "
                                  "the last checkpoint is kept")

    def eval_state(self) -> dict[str, Tensor]:
        """The generator weights to sample and ship: the EMA if enabled, else the current ones."""
        return self.ema.state_dict() if self.ema is not None else self.generator.state_dict()

    def sample_generator(self) -> HyperGenerator:
        """A copy of the generator with :meth:`eval_state` loaded, in eval mode."""
        import copy

        g = copy.deepcopy(self.generator)
        g.load_state_dict(self.eval_state())
        return g.eval()

    def _watch_saturation(self, stats: dict, bar) -> None:
        cfg = self.config
        saturated = stats["d_real"] > 0.99 and stats["d_fake"] < 0.01
        self._saturated_for = self._saturated_for + 1 if saturated else 0
        if self._saturated_for == cfg.saturation_steps:
            event = {"step": self.step_count, "event": "discriminator saturated",
                     "detail": f"D(real) > 0.99 and D(fake) < 0.01 for {cfg.saturation_steps} steps: the generator's "
                               "gradient vanishes (try a larger train.r1_weight or a lower train.lr_discriminator)"}
            self.events.append(event)
            bar.write(f"warning: step {self.step_count}: {event['event']}: {event['detail']}")

    # ------------------------------------------------------------------ the loop
    def fit(self, data: PointClouds, run_dir: str | Path | None = None,
            on_sample: Callable[[int, HyperGenerator], None] | None = None,
            on_save: Callable[[Path], None] | None = None, progress: bool = True,
            time_limit_s: float | None = None) -> list[dict]:
        """Train until ``config.steps`` (or ``time_limit_s`` of this call), resuming from ``run_dir`` if it
        holds a train state. Every ``sample_every`` steps a history row (the interval's mean losses and
        discriminator outputs) is added and ``on_sample(step, ema_generator)`` called; every
        ``save_every`` steps, at the end and on Ctrl-C a checkpoint is saved, then ``on_save(run_dir)``."""
        cfg = self.config
        n = len(data)
        if n == 0:
            raise ValueError("no training data")
        run_dir = Path(run_dir) if run_dir is not None else None
        if run_dir is not None and ((run_dir / self.STATE_TENSORS).exists() or (run_dir / self.STATE_JSON).exists()):
            sync_state_copy(run_dir / self.STATE_JSON, self.load_state(run_dir))
        coords = data.coords[None]
        bar = tqdm(total=cfg.steps, initial=self.step_count, desc="gasp", disable=not progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        base_elapsed = self.elapsed_s
        try:
            while self.step_count < cfg.steps:
                if time_limit_s is not None and time.perf_counter() - t0 >= time_limit_s:
                    bar.write(f"time limit of {time_limit_s:g} s reached at step {self.step_count}")
                    break
                rng = np.random.default_rng([cfg.seed, self.step_count])
                idx = rng.choice(n, size=min(cfg.batch_size, n), replace=False)
                gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
                with whole_step():
                    stats = self.train_step(coords, data.features(idx), gen)
                    self.elapsed_s = base_elapsed + time.perf_counter() - t0
                    sums, count = self._interval
                    self._interval = ({k: sums.get(k, 0.0) + v for k, v in stats.items()}, count + 1)
                    self._watch_saturation(stats, bar)
                bar.update(1)
                bar.set_postfix(d=f"{stats['loss_d']:.3f}", g=f"{stats['loss_g']:.3f}",
                                real=f"{stats['d_real']:.2f}", fake=f"{stats['d_fake']:.2f}")
                if self.step_count % cfg.sample_every == 0 or self.step_count == cfg.steps:
                    sums, count = self._interval
                    row = {"step": self.step_count, "time_s": self.elapsed_s,
                           **{k: v / count for k, v in sums.items()}}
                    self.history.append(row)
                    self._interval = ({}, 0)
                    bar.write(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
                    if on_sample is not None:
                        on_sample(self.step_count, self.sample_generator())
                if run_dir is not None and (self.step_count % cfg.save_every == 0 or self.step_count == cfg.steps):
                    self.save_state(run_dir, on_save)
        except KeyboardInterrupt:
            if run_dir is not None:
                bar.write(f"interrupted at step {self.step_count}; saving a checkpoint to {run_dir}")
                self.save_state(run_dir, on_save)
            raise
        finally:
            bar.close()
        if run_dir is not None and self.step_count < cfg.steps:  # stopped by the time limit
            self.save_state(run_dir, on_save)
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, run_dir: str | Path, on_save: Callable[[Path], None] | None = None) -> None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        tensors.update({f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()})
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        tensors.update(optimizer_tensors(self.opt_g, "optim_g."))
        tensors.update(optimizer_tensors(self.opt_d, "optim_d."))
        state = {"step": self.step_count, "config": asdict(self.config), "history": self.history,
                 "events": self.events, "elapsed_s": self.elapsed_s, "saturated_for": self._saturated_for,
                 "interval": {"sums": self._interval[0], "count": self._interval[1]}}
        write_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON, tensors, state)
        if on_save is not None:
            on_save(run_dir)

    def load_state(self, run_dir: str | Path) -> dict:
        """Restore the training state saved in ``run_dir``; returns it."""
        run_dir = Path(run_dir)
        meta = read_train_state(run_dir, self.STATE_TENSORS, self.STATE_JSON, seed=self.config.seed)
        tensors = load_tensors(run_dir / self.STATE_TENSORS)
        device = self.generator.head.weight.device

        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.generator.load_state_dict(part("generator."))
            self.discriminator.load_state_dict(part("discriminator."))
            if self.ema is not None:
                self.ema.load_state_dict(part("ema."))
            load_optimizer_tensors(self.opt_g, tensors, "optim_g.")
            load_optimizer_tensors(self.opt_d, tensors, "optim_d.")
        except (RuntimeError, KeyError, ValueError) as e:
            raise ArtefactError(f"{run_dir / self.STATE_TENSORS}: does not match these networks "
                                f"({' '.join(str(e).split())[:200]}); use a new output directory") from None
        self.step_count = int(meta["step"])
        self.elapsed_s = float(meta.get("elapsed_s", 0.0))
        self.history = list(meta.get("history", []))
        self.events = list(meta.get("events", []))
        self._saturated_for = int(meta.get("saturated_for", 0))
        interval = meta.get("interval") or {}
        self._interval = ({k: float(v) for k, v in (interval.get("sums") or {}).items()}, int(interval.get("count", 0)))
        return meta
