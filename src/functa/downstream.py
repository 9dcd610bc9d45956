"""Downstream stages on functasets (one command each): classify, flow, diffusion, impute,
interpolate. Like :mod:`functa.pipeline`, every stage reads self-describing artefacts and writes
a checkpoint directory (``model.safetensors`` + ``config.json``), PNG grids and ``metrics.json``.

Settings are nested dicts (``model``, ``train`` and task options) that start from the defaults
below and take ``section.key=value`` overrides, e.g. ``--set model.width=1024``.
"""

from __future__ import annotations

import functools
import math
import inspect
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from . import distributed
from .atomic import atomic_stream, output_lock
from .config import DataConfig, apply_overrides
from .data import read_array_file
from .functaset import Functaset
from .errors import ConfigError
from .validation import Real
from .io import ArtefactError, write_json
from .modalities import FieldDataset
from .fitting import Loss, MetricMeter, predict
from .pipeline import contact_sheet, load_model, model_loss, open_data, parse_indices
from .tasks.checkpoint import load_task_model, save_task_model
from .tasks.classify import (ConvClassifier, ConvConfig, MLPClassifier, MLPConfig, TransformerClassifier,
                             TransformerConfig, accuracy, classification_loss,
                             count_parameters)
from .tasks.latents import Standardizer, interpolate, nearest_neighbours
from .tasks.train import TrainConfig, Trainer

__all__ = ["BASELINE_GRID_DEFAULTS", "DEFAULTS", "classify_baseline", "classify_eval", "classify_train", "diffusion_sample", "diffusion_train",
           "fid_score", "flow_sample", "flow_train", "impute", "interpolate_items", "settings"]

DEFAULTS: dict[str, dict[str, Any]] = {
    # functa App. A.7 / spatial functa B.1, sized for CPU minutes.
    # classifier: "auto" = the Transformer for latent grids (and the patch latents of long items),
    # the MLP for vectors; transformer: its settings (spatial functa §5.1, sized for CPU minutes).
    "classify": {"model": {"width": 512, "depth": 3, "dropout": 0.2}, "classifier": "auto",
                 "transformer": {"width": 128, "depth": 4, "heads": 4, "mlp_ratio": 4, "dropout": 0.1},
                 "train": {"steps": 4000, "batch_size": 256, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.1,
                           "schedule": "cosine", "warmup_steps": 200, "ema_decay": 0.999, "eval_every": 1000},
                 "label_smoothing": 0.1, "norm_factor": 1.0, "per_dimension": True, "seeds": [0]},
    # model: for 2-D / 3-D grids; 1-D grids start from BASELINE_GRID_DEFAULTS[1] instead.
    # data: how DATA is read, as the data section of 'functa fit' (e.g. audio_length, audio_pad).
    "baseline": {"model": {"channels": [32, 64, 128], "width": 128, "dropout": 0.2, "kernel": 3, "stride": 2},
                 "train": {"steps": 4000, "batch_size": 256, "lr": 1e-3, "optimizer": "adamw", "weight_decay": 0.1,
                           "schedule": "cosine", "warmup_steps": 200, "ema_decay": 0.999, "eval_every": 1000},
                 "label_smoothing": 0.1, "seeds": [0], "data": {}},
    # functa App. A.4: base std 0.25 with norm_factor 4, warm-up to 3e-4 then 1/sqrt(t).
    "flow": {"model": {"layers": 8, "bins": 8, "hidden": [128, 128], "dropout": 0.1, "base_std": 0.25},
             "train": {"steps": 5000, "batch_size": 256, "lr": 3e-4, "optimizer": "adam", "schedule": "rsqrt",
                       "warmup_steps": 1000, "grad_clip": 5.0, "eval_every": 1000},
             "norm_factor": 4.0, "conditional": False},
    # functa App. A.5: T=1000, linear betas, residual-MLP denoiser, same schedule as the flow;
    # spatial functa App. C (latent grids): Dhariwal & Nichol's UNet, cosine schedule, timestep ratio >= 3.
    "diffusion": {"model": {"width": 512, "blocks": 4, "dropout": 0.1}, "denoiser": "auto",
                  "unet": {"channels": 64, "channel_mult": [1, 2], "blocks": 2, "attention": [4], "heads": 4,
                           "dropout": 0.1, "cond_drop": 0.2},
                  "train": {"steps": 5000, "batch_size": 256, "lr": 3e-4, "optimizer": "adam", "schedule": "rsqrt",
                            "warmup_steps": 1000, "grad_clip": 1.0, "ema_decay": 0.999, "eval_every": 1000},
                  "norm_factor": 1.0, "conditional": False, "statistics": "dimension",
                  "schedule": "auto", "timestep_ratio": "auto"},
}
# diffusion: statistics: "dimension" (per latent dimension; for latent grids, per position and channel:
# the spatial functa paper's array-valued standardisation), "channel" (grids only: per channel, shared
# over positions, vector-valued, the paper's choice for its UNet) or "scalar"; norm_factor is the paper's
# gamma. denoiser: "auto" = "unet" (settings: the unet section) for latent grids, "mlp" (the model
# section) for vectors and patch latents; schedule: "auto" = "cosine" for the UNet, "linear" for the
# MLP; timestep_ratio: p(t=0) / p(t=T-1) of the training timesteps, "auto" = 3 for the UNet, 1 (uniform)
# for the MLP (functa.tasks.diffusion.sample_timesteps).


# Baseline model defaults by grid dimension, where they differ from DEFAULTS["baseline"]["model"]
# (``--set model.KEY=...`` still wins). Waveforms are thousands of samples long: 3-wide stride-2
# convolutions and a flatten would give millions of parameters, kernel 9 / stride 4 give ~0.5M for
# 4000-sample clips (docs/tasks.md).
BASELINE_GRID_DEFAULTS: dict[int, dict[str, Any]] = {1: {"channels": [32, 64, 128, 128], "kernel": 9, "stride": 4}}
_DATA_KEYS = sorted(set(DataConfig.__dataclass_fields__) - {"patch"})  # the baseline reads whole items


def settings(task: str, overrides: list[str] | None = None, base: dict | None = None) -> dict:
    """Defaults of ``task`` (or ``base``) with ``section.key=value`` overrides applied and checked."""
    defaults = DEFAULTS[task]
    raw = apply_overrides(base if base is not None else defaults, overrides or [])
    unknown = set(raw) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {task} settings {sorted(unknown)}; known: {sorted(defaults)}")
    for section in ("model", "train", *(["data"] if "data" in defaults else [])):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{section} = {str(raw.get(section))[:40]!r} is not a section")
    if "data" in defaults:
        bad = set(raw["data"]) - set(_DATA_KEYS)
        if bad:
            raise ConfigError(f"unknown {task} data settings {sorted(bad)}; known: {_DATA_KEYS}")
        DataConfig(**raw["data"])  # types and ranges
    from .tasks.diffusion import DenoiserConfig
    from .tasks.flow import FlowConfig

    model_cls = {"classify": MLPConfig, "baseline": ConvConfig, "flow": FlowConfig, "diffusion": DenoiserConfig}[task]
    known = set(model_cls.__dataclass_fields__) - {"in_dim", "in_channels", "dim", "grid_shape", "num_classes"}
    bad = set(raw["model"]) - known
    if bad:
        raise ConfigError(f"unknown {task} model settings {sorted(bad)}; known: {sorted(known)}")
    if "transformer" in defaults:
        t = raw["transformer"]
        known_t = set(TransformerConfig.__dataclass_fields__) - {"tokens", "token_dim", "num_classes"}
        if not isinstance(t, dict) or set(t) - known_t:
            raise ConfigError(f"unknown {task} transformer settings {sorted(set(t) - known_t) if isinstance(t, dict) else t}; "
                              f"known: {sorted(known_t)}")
        TransformerConfig(1, 1, 2, **t)  # types and ranges
    if "unet" in defaults:
        _unet_config(raw["unet"], None)  # names, types and ranges (the grid is checked at training)
    TrainConfig.from_dict(raw["train"])  # validate early
    return raw


def _writes_out(fn: Callable) -> Callable:
    """Hold the advisory lock of the ``out`` directory while ``fn`` trains into it (a second
    ``train`` into the same directory raises :class:`~functa.errors.LockError`)."""
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        if not distributed.is_main():  # under torchrun: rank 0 writes ``out``; the others a private copy
            return _in_private_copy(fn, bound)
        with output_lock(bound.arguments["out"]):
            return fn(*args, **kwargs)

    return locked


def _in_private_copy(fn: Callable, bound: inspect.BoundArguments) -> Any:
    """Run ``fn`` with ``out`` replaced by a temporary copy of its train states (so a resumed run
    resumes on every rank), removed afterwards: what the rank writes is thrown away."""
    import shutil
    import tempfile

    out = Path(bound.arguments["out"])
    with tempfile.TemporaryDirectory(prefix=f"functa-rank{distributed.rank()}-") as tmp:
        if out.is_dir():
            for state in out.rglob("train_state.*"):
                dest = Path(tmp) / state.relative_to(out)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(state, dest)
        bound.arguments["out"] = tmp
        return fn(*bound.args, **bound.kwargs)


# ---------------------------------------------------------------------------- functasets

def load_latents(path: str | Path, sha256: str | None = None) -> tuple[dict[str, Tensor], Functaset]:
    """All columns of a complete functaset (optionally checked against a base-network hash)."""
    fs = Functaset(path)
    if not fs.complete:
        raise ArtefactError(f"{path}: functaset is incomplete ({len(fs)} of {fs.manifest.get('total')} items); "
                            "finish it with 'functa encode' first")
    if sha256 is not None:
        fs.check_base_network(sha256)
    if not len(fs):
        raise ArtefactError(f"{path}: the functaset holds no items")
    arrays = fs.arrays()
    # the vector tasks (classifier, flow, DDPM) see every latent flat: (M, prod(latent_shape)), e.g. the
    # (P, D) latents of items encoded patch by patch
    arrays["latents"] = arrays["latents"].reshape(len(arrays["latents"]), -1)
    return arrays, fs


def _pair(train: str | Path, test: str | Path | None):
    tr, fs_tr = load_latents(train)
    sha = fs_tr.header["base_network"]["sha256"]
    te = load_latents(test, sha)[0] if test is not None else None
    return tr, te, fs_tr


def _standardizer(latents: Tensor, fs: Functaset, norm_factor: float, statistics: str) -> Standardizer:
    """The latents' standardiser for ``statistics`` = ``dimension`` / ``channel`` / ``scalar``."""
    if statistics == "channel":
        shape = fs.latent_shape
        if len(shape) < 2:
            raise ConfigError(f"statistics = 'channel' is for latent grids; this functaset's latents are {list(shape)}")
        return Standardizer.fit(latents, norm_factor, channels=int(shape[-1]))
    if statistics not in ("dimension", "scalar"):
        raise ConfigError(f"statistics = {statistics!r} is invalid (allowed: 'dimension', 'channel', 'scalar')")
    return Standardizer.fit(latents, norm_factor, per_dimension=statistics == "dimension")


def _num_classes(*label_sets: Tensor) -> int:
    for lbl in label_sets:
        if len(lbl) == 0 or int(lbl.min()) < 0:
            raise ValueError("this task needs labels, but the functaset has unlabelled items (label -1)")
    return int(max(int(lbl.max()) for lbl in label_sets)) + 1


def _source(fs: Functaset, path: str | Path) -> dict:
    return {"path": str(Path(path).resolve()), "count": len(fs), "base_network": fs.header["base_network"]["sha256"],
            "base_network_path": fs.header["base_network"].get("path"), "latent_dim": fs.header["latent_dim"]}


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


# ---------------------------------------------------------------------------- classification

@_writes_out
def classify_train(train: str | Path, out: str | Path, test: str | Path | None = None,
                   overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Train a classifier on functaset latents (one model per seed); test accuracy with error bars.

    The MLP on vectors; on latent grids ``(*grid, c)`` (spatial functa, or the ``(P, D)`` patch latents
    of long items) the pre-LN Transformer with one token per cell and scalar standardisation, as the
    spatial functa paper does (``classifier = "mlp"`` / ``"transformer"`` chooses explicitly)."""
    s = settings("classify", overrides)
    tr, te, fs = _pair(train, test)
    shape = tuple(fs.latent_shape)
    kind = s["classifier"]
    if kind not in ("auto", "mlp", "transformer"):
        raise ConfigError(f"classifier = {kind!r} is invalid (allowed: 'auto', 'mlp', 'transformer')")
    if kind == "auto":
        kind = "transformer" if len(shape) >= 2 else "mlp"
    if kind == "transformer" and len(shape) < 2:
        raise ConfigError(f"the transformer classifier needs latent grids; this functaset's latents are {list(shape)}")
    per_dimension = s["per_dimension"] if kind == "mlp" else False  # the paper's scalar normalisation for grids
    std = Standardizer.fit(tr["latents"], s["norm_factor"], per_dimension)
    x_tr, y_tr = std(tr["latents"]), tr["labels"]
    classes = _num_classes(y_tr, *([te["labels"]] if te else []))
    out = Path(out)
    runs = []
    for seed in s["seeds"]:
        torch.manual_seed(seed)
        if kind == "mlp":
            model = MLPClassifier(MLPConfig(x_tr.shape[1], classes, **s["model"]))
        else:
            model = TransformerClassifier(TransformerConfig(math.prod(shape[:-1]), shape[-1], classes,
                                                            **s["transformer"]))
        tcfg = TrainConfig.from_dict({**s["train"], "seed": seed})
        evaluate = (lambda m: {"test_accuracy": accuracy(m, std(te["latents"]), te["labels"])}) if te else None
        run_dir = out / f"seed{seed}"
        trainer = Trainer(model, classification_loss(s["label_smoothing"]), tcfg)
        trainer.fit((x_tr, y_tr), run_dir=run_dir, evaluate=evaluate, progress=progress, desc=f"classifier seed {seed}")
        final = trainer.history[-1] if trainer.history else {}
        save_task_model(run_dir, f"{kind}-classifier", model, state=trainer.eval_state(), extra_tensors=std.tensors(),
                        train=s, functaset=_source(fs, train), history=trainer.history)
        runs.append({"seed": seed, "test_accuracy": final.get("test_accuracy"),
                     "train_accuracy": accuracy(trainer.evaluation_model(), x_tr, y_tr)})
    name = "functa MLP" if kind == "mlp" else "functa Transformer"
    return _classification_summary(out, name, runs, count_parameters(model), s, str(train), str(test))


def _classification_summary(out: Path, name: str, runs: list[dict], params: int, s: dict, train: str,
                            test: str | None) -> dict:
    accs = [r["test_accuracy"] for r in runs if r["test_accuracy"] is not None]
    summary = {"name": name, "train": train, "test": test, "parameters": params, "runs": runs, "settings": s}
    if accs:
        summary["test_accuracy_mean"], summary["test_accuracy_std"] = _mean_std(accs)
    write_json(out / "metrics.json", summary)
    return summary


def classify_eval(model_dir: str | Path, functaset: str | Path) -> dict:
    """Accuracy of a saved functa classifier on a functaset encoded with the same base network."""
    model, extra, cfg = load_task_model(model_dir, ("mlp-classifier", "transformer-classifier"))
    arr, _ = load_latents(functaset, cfg["functaset"]["base_network"])
    std = Standardizer.from_tensors(extra)
    return {"model": str(model_dir), "functaset": str(functaset), "count": len(arr["labels"]),
            "accuracy": accuracy(model, std(arr["latents"]), arr["labels"])}


def _arrays(data: str | Path, split: str, data_cfg: dict | None = None, progress: bool = True,
            audio_rms: float | None = None) -> tuple[Tensor, Tensor, dict]:
    """Labelled arrays for the conv baseline: images as ``(M, C, H, W)`` in ``[0, 1]``, voxel grids as
    ``(M, 1, X, Y, Z)`` occupancies, or audio clips as ``(M, 1, L)`` amplitudes divided by their RMS
    over the split (unit-RMS inputs: FSDD's raw RMS is ~0.056, too small for an unnormalised CNN to
    learn quickly) or by ``audio_rms``: pass the training split's, returned in ``meta["audio_rms"]``,
    for the test split."""
    ds = open_data(data, split, data_cfg, progress=progress)
    meta = ds.meta
    if ds.meta.get("kind") == "voxel":
        x = torch.from_numpy(np.asarray(ds.data[:]) >= 1).float()[:, None]
    elif ds.meta.get("kind") == "audio":
        clips = np.asarray(ds.data, dtype=np.float32)
        rms = audio_rms or max(float(np.sqrt(np.mean(np.square(clips, dtype=np.float64)))), 1e-12)
        meta = {**ds.meta, "audio_rms": rms}
        x = torch.from_numpy(clips).div(rms)[:, None]
    elif ds.data.ndim == 4:
        max_value = 255.0 if ds.data.dtype == np.uint8 else max(float(ds.data.max()), 1.0)
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).float().div_(max_value).permute(0, 3, 1, 2).contiguous()
    else:
        raise ValueError(f"{data}: the conv baseline needs images (M, H, W, C), voxel grids or audio clips, "
                         f"got {ds.data.shape}")
    if ds.labels is None:
        raise ValueError(f"{data}: no labels in split {split!r}")
    return x, torch.as_tensor(np.asarray(ds.labels), dtype=torch.long), meta


_BASELINE_NAMES = {"voxel": "voxel 3D CNN", "audio": "waveform 1D CNN"}  # else "pixel CNN"


@_writes_out
def classify_baseline(data: str | Path, out: str | Path, overrides: list[str] | None = None,
                      progress: bool = True) -> dict:
    """Train the array CNN baseline (1-D on audio waveforms, 2-D on pixels, 3-D on voxel grids) on the
    same items, with the same trainer and seeds. ``data.*`` settings read ``data`` as ``functa fit``
    does (e.g. ``data.audio_length``); 1-D grids start from :data:`BASELINE_GRID_DEFAULTS`."""
    s = settings("baseline", overrides)
    x_tr, y_tr, meta = _arrays(data, "train", s["data"], progress)
    x_te, y_te, _ = _arrays(data, "test", s["data"], progress, audio_rms=meta.get("audio_rms"))
    grid_defaults = BASELINE_GRID_DEFAULTS.get(x_tr.ndim - 2)
    if grid_defaults:  # the same overrides on this dimension's defaults
        base = DEFAULTS["baseline"]
        s = settings("baseline", overrides, base={**base, "model": {**base["model"], **grid_defaults}})
    classes = _num_classes(y_tr, y_te)
    name = _BASELINE_NAMES.get(meta.get("kind"), "pixel CNN")
    out = Path(out)
    runs = []
    for seed in s["seeds"]:
        torch.manual_seed(seed)
        mcfg = ConvConfig(x_tr.shape[1], classes, tuple(x_tr.shape[2:]), **{**s["model"],
                                                                             "channels": tuple(s["model"]["channels"])})
        model = ConvClassifier(mcfg)
        trainer = Trainer(model, classification_loss(s["label_smoothing"]),
                          TrainConfig.from_dict({**s["train"], "seed": seed}))
        trainer.fit((x_tr, y_tr), run_dir=out / f"seed{seed}", progress=progress, desc=f"{name} seed {seed}",
                    evaluate=lambda m: {"test_accuracy": accuracy(m, x_te, y_te, batch_size=1000)})
        save_task_model(out / f"seed{seed}", "conv-classifier", model, state=trainer.eval_state(), train=s,
                        data={"path": str(data)}, history=trainer.history)
        runs.append({"seed": seed, "test_accuracy": trainer.history[-1]["test_accuracy"]})
    return _classification_summary(out, name, runs, count_parameters(model), s, str(data), str(data))


# ---------------------------------------------------------------------------- generative models

def _conditioning(s: dict, tr: dict) -> tuple[int, Tensor | None]:
    if not s["conditional"]:
        return 0, None
    return _num_classes(tr["labels"]), tr["labels"]


@_writes_out
def flow_train(train: str | Path, out: str | Path, test: str | Path | None = None,
               overrides: list[str] | None = None, progress: bool = True) -> dict:
    """Fit a neural spline flow to standardised latents; reports test NLL against a diagonal Gaussian."""
    from .tasks.flow import FlowConfig, LatentFlow, bits_per_dim, diagonal_gaussian_nll

    s = settings("flow", overrides)
    tr, te, fs = _pair(train, test)
    std = Standardizer.fit(tr["latents"], s["norm_factor"])
    classes, labels = _conditioning(s, tr)
    u_tr = std(tr["latents"])
    cfg = FlowConfig.from_dict({"dim": u_tr.shape[1], **s["model"], "num_classes": classes})
    torch.manual_seed(0)
    flow = LatentFlow(cfg)
    data = (u_tr,) if labels is None else (u_tr, labels)
    shift = -std.log_abs_det() / u_tr.shape[1]  # nats/dim in latent units = u-space NLL + shift

    def loss(model, batch):
        return model.loss(batch[0], batch[1] if len(batch) > 1 else None)

    @torch.no_grad()
    def nll(model, arr) -> float:
        u = std(arr["latents"])
        lab = arr["labels"] if classes else None
        vals = [-model.log_prob(u[i:i + 4096], None if lab is None else lab[i:i + 4096]) for i in range(0, len(u), 4096)]
        return float(torch.cat(vals).double().mean()) / u.shape[1] + shift

    evaluate = (lambda m: {"test_nll_nats_per_dim": nll(m, te)}) if te else None
    trainer = Trainer(flow, loss, TrainConfig.from_dict(s["train"]))
    out = Path(out)
    trainer.fit(data, run_dir=out, evaluate=evaluate, progress=progress, desc="flow")
    model = trainer.evaluation_model()
    metrics: dict[str, Any] = {"train_nll_nats_per_dim": nll(model, tr)}
    if te:
        test_nll = nll(model, te)
        gauss = diagonal_gaussian_nll(tr["latents"], te["latents"])
        metrics.update(test_nll_nats_per_dim=test_nll, test_bits_per_dim=bits_per_dim(test_nll),
                       diagonal_gaussian_test_nll_nats_per_dim=gauss)
    save_task_model(out, "flow", flow, state=trainer.eval_state(), extra_tensors=std.tensors(), train=s,
                    functaset=_source(fs, train), metrics=metrics, history=trainer.history)
    write_json(out / "metrics.json", metrics)
    return metrics


def _unet_config(unet: Any, fs: Functaset | None, num_classes: int = 0):
    """The UNet config of the ``unet`` settings for ``fs``'s latent grids (``fs=None``: the settings
    alone, checked on a 2^levels grid)."""
    from .tasks.unet import UNetConfig

    known = set(UNetConfig.__dataclass_fields__) - {"grid_shape", "in_channels", "num_classes"}
    if not isinstance(unet, dict) or set(unet) - known:
        raise ConfigError(f"unknown diffusion unet settings {sorted(set(unet) - known) if isinstance(unet, dict) else unet}; "
                          f"known: {sorted(known)}")
    if fs is None:
        levels = len(unet.get("channel_mult", ())) if isinstance(unet.get("channel_mult"), (list, tuple)) else 1
        shape = (2 ** max(levels - 1, 0),) * 2 + (1,)
    else:
        shape = tuple(fs.latent_shape)
    return UNetConfig(grid_shape=shape[:-1], in_channels=shape[-1], **unet, num_classes=num_classes)


def _is_grid(fs: Functaset) -> bool:
    """Latents are one grid ``(*grid, c)`` per item (spatial functa), not vectors or patch latents."""
    return len(fs.latent_shape) >= 2 and "patches" not in fs.header


def _diffusion_choices(s: dict, fs: Functaset) -> tuple[str, str, float]:
    """``(denoiser, schedule, timestep_ratio)`` with the ``auto`` settings resolved for ``fs``."""
    kind = s["denoiser"]
    if kind not in ("auto", "mlp", "unet"):
        raise ConfigError(f"denoiser = {str(kind)[:40]!r} is invalid (allowed: 'auto', 'mlp', 'unet')")
    if kind == "auto":
        kind = "unet" if _is_grid(fs) else "mlp"
    if kind == "unet" and not _is_grid(fs):
        what = "patch latents (one per patch of an item)" if "patches" in fs.header else "vectors"
        raise ConfigError(f"denoiser = 'unet' needs latent grids (*grid, channels); this functaset's latents are "
                          f"{what} of shape {list(fs.latent_shape)}: use denoiser = 'mlp'")
    schedule = s["schedule"]
    if schedule not in ("auto", "linear", "cosine"):
        raise ConfigError(f"schedule = {str(schedule)[:40]!r} is invalid (allowed: 'auto', 'linear', 'cosine')")
    if schedule == "auto":
        schedule = "cosine" if kind == "unet" else "linear"
    ratio = s["timestep_ratio"]
    if ratio == "auto":
        ratio = 3.0 if kind == "unet" else 1.0
    ratio = Real(0, math.inf, lo_open=True)(ratio, "timestep_ratio")
    return kind, schedule, ratio


@_writes_out
def diffusion_train(train: str | Path, out: str | Path, overrides: list[str] | None = None,
                    progress: bool = True) -> dict:
    """Train a DDPM on standardised latents: the residual-MLP denoiser on vectors (functa), the UNet
    on latent grids ``(M, *grid, c)`` (spatial functa), as ``denoiser`` (default ``auto``) says."""
    from .tasks.diffusion import DDPMSchedule, DenoiserConfig, ResidualMLPDenoiser, diffusion_loss
    from .tasks.unet import UNetDenoiser

    s = settings("diffusion", overrides)
    tr, _, fs = _pair(train, None)
    kind, schedule_name, ratio = _diffusion_choices(s, fs)
    std = _standardizer(tr["latents"], fs, s["norm_factor"], s["statistics"])
    classes, labels = _conditioning(s, tr)
    u_tr = std(tr["latents"])
    schedule = DDPMSchedule(schedule=schedule_name)
    torch.manual_seed(0)
    if kind == "unet":
        model = UNetDenoiser(_unet_config(s["unet"], fs, classes))
        u_tr = u_tr.reshape(len(u_tr), *fs.latent_shape)
    else:
        model = ResidualMLPDenoiser(DenoiserConfig.from_dict({"dim": u_tr.shape[1], **s["model"], "num_classes": classes}))
    data = (u_tr,) if labels is None else (u_tr, labels)

    def loss(m, batch):
        return diffusion_loss(m, schedule, batch[0], batch[1] if len(batch) > 1 else None, timestep_ratio=ratio)

    trainer = Trainer(model, loss, TrainConfig.from_dict(s["train"]))
    out = Path(out)
    trainer.fit(data, run_dir=out, progress=progress, desc=f"diffusion ({kind})")
    metrics = {"denoiser": kind, "schedule": schedule_name, "timestep_ratio": ratio,
               "parameters": count_parameters(model),
               "final_train_loss": trainer.history[-1]["train_loss"] if trainer.history else None}
    save_task_model(out, "unet-ddpm" if kind == "unet" else "ddpm", model, state=trainer.eval_state(),
                    extra_tensors=std.tensors(), train=s, schedule=schedule.to_dict(), timestep_ratio=ratio,
                    x0_bound=float(u_tr.abs().max()), functaset=_source(fs, train), history=trainer.history)
    return metrics


def _base_network(cfg: dict, model: str | Path | None):
    """The base network a downstream model's functaset was encoded with (path recorded, or given)."""
    path = model or cfg["functaset"].get("base_network_path")
    if path is None or not Path(path).exists():
        raise ArtefactError(f"base network {path} not found; pass --model with the run directory used for encoding")
    field, modality, base_cfg = load_model(path)
    if base_cfg["sha256"] != cfg["functaset"]["base_network"]:
        raise ArtefactError(f"{path}: is not the base network this model was trained with "
                            f"({base_cfg['sha256'][:12]}… vs {cfg['functaset']['base_network'][:12]}…)")
    return field, modality, model_loss(base_cfg)


def render_latents(field, modality, loss: Loss, latents: Tensor, out: Path, prefix: str, scale: float = 1.0,
                   columns: int = 8) -> dict:
    """Render latents ``(B, *latent_shape)`` at ``scale`` × the native grid; one file per item and a grid PNG."""
    shape = tuple(int(round(d * scale)) for d in modality.shape)
    values = modality.render_values(field, latents, loss, shape)
    paths = modality.save(values, out / prefix, [f"{prefix}{i:04d}" for i in range(len(latents))])
    grid = contact_sheet(paths, out / f"{prefix}_grid.png", columns=columns)
    atomic_stream(out / f"{prefix}.npz", lambda f: np.savez(f, values=values.astype(np.float32), latents=latents.numpy()))
    return {"grid": str(grid), "shape": list(shape), "count": len(latents)}


def _memorisation(samples: Tensor, train_latents: Tensor, std: Standardizer) -> tuple[dict, Tensor]:
    """Nearest training latent of each sample, and how close training items are to each other."""
    d, idx = nearest_neighbours(std(samples), std(train_latents))
    probe = std(train_latents[: min(1000, len(train_latents))])
    ref = std(train_latents)
    dd = torch.cdist(probe, ref)
    dd[torch.arange(len(probe)), torch.arange(len(probe))] = float("inf")
    train_nn = dd.min(1).values
    return ({"sample_nn_distance_median": float(d.median()), "train_nn_distance_median": float(train_nn.median()),
             "note": "distances in standardised latent units; samples much closer to training items than "
                     "training items are to each other suggest memorisation"}, idx)


def _sample_outputs(kind: str, model_dir: Path, z: Tensor, cfg: dict, out: Path, scale: float,
                    model: str | Path | None, neighbours: bool, std: Standardizer, extra: dict) -> dict:
    field, modality, loss = _base_network(cfg, model)

    def shaped(latents: Tensor) -> Tensor:  # flat (B, D) -> the field's (B, *latent_shape), e.g. grids
        fshape = tuple(getattr(field, "latent_shape", ()))
        return latents.reshape(len(latents), *fshape) if fshape and latents[0].numel() == math.prod(fshape) else latents

    out.mkdir(parents=True, exist_ok=True)
    res = {"kind": kind, "model": str(model_dir), **extra,
           "samples": render_latents(field, modality, loss, shaped(z), out, "sample", scale)}
    if neighbours:
        train_path = cfg["functaset"]["path"]
        arr, _ = load_latents(train_path, cfg["functaset"]["base_network"])
        mem, idx = _memorisation(z, arr["latents"], std)
        res["memorisation"] = mem
        res["neighbours"] = render_latents(field, modality, loss, shaped(arr["latents"][idx]), out, "nearest_train",
                                           scale)
    write_json(out / "metrics.json", res)
    return res


def _labels_arg(label: int | None, n: int, num_classes: int) -> Tensor | None:
    if num_classes == 0:
        if label is not None:
            raise ValueError("this model is unconditional; do not pass --label")
        return None
    if label is None:
        return torch.arange(n) % num_classes
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} out of range for {num_classes} classes")
    return torch.full((n,), label, dtype=torch.long)


def flow_sample(model_dir: str | Path, out: str | Path, n: int = 64, temperature: float = 1.0,
                label: int | None = None, scale: float = 1.0, model: str | Path | None = None,
                neighbours: bool = True, seed: int = 0) -> dict:
    """Sample latents from a trained flow and render them (plus their nearest training items)."""
    flow, extra, cfg = load_task_model(model_dir, "flow")
    std = Standardizer.from_tensors(extra)
    labels = _labels_arg(label, n, flow.config.num_classes)
    with torch.no_grad():
        u = flow.sample(n, labels, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    return _sample_outputs("flow", Path(model_dir), std.inverse(u), cfg, Path(out), scale, model, neighbours, std,
                           {"temperature": temperature, "label": label})


def diffusion_sample(model_dir: str | Path, out: str | Path, n: int = 64, method: str = "ddpm",
                     steps: int | None = None, guidance_scale: float = 1.0, label: int | None = None,
                     scale: float = 1.0, model: str | Path | None = None, neighbours: bool = True,
                     seed: int = 0, progress: bool = True, eta: float = 1.0,
                     clip_x0: float | str | None = "auto") -> dict:
    """Sample latents from a trained DDPM (ancestral or DDIM) and render them.

    ``clip_x0`` (:func:`functa.tasks.diffusion.sample`): ``"auto"`` clips the predicted ``x_0`` to the
    largest standardised training value (recorded at training; models trained before have none, and
    are not clipped), a number to that bound, ``None`` not at all.

    ``eta`` (DDIM only) defaults to 1, the strided ancestral sampler: with the CPU-sized denoisers
    of ``docs/benchmarks.md`` the deterministic sampler (``eta=0``) drifts far off the data (sample
    norms 3x those of the data, also with 1000 steps) while ``eta=1`` at 50 steps matches full DDPM.
    """
    from .tasks.diffusion import DDPMSchedule, sample

    den, extra, cfg = load_task_model(model_dir, ("ddpm", "unet-ddpm"))
    std = Standardizer.from_tensors(extra)
    labels = _labels_arg(label, n, den.config.num_classes)
    if method == "ddim" and steps is None:
        steps = 50
    ddim_eta = eta if method == "ddim" else 0.0
    if clip_x0 == "auto":
        clip_x0 = cfg.get("x0_bound")
    u = sample(den, DDPMSchedule.from_dict(cfg["schedule"]), n, labels, method=method, steps=steps, eta=ddim_eta,
               guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed), progress=progress,
               clip_x0=None if clip_x0 is None else float(clip_x0))
    z = std.inverse(u.reshape(n, -1))  # UNet samples are grids; the statistics are kept flat
    return _sample_outputs(cfg["kind"], Path(model_dir), z, cfg, Path(out), scale, model, neighbours, std,
                           {"method": method, "steps": steps, "eta": ddim_eta if method == "ddim" else None,
                            "guidance_scale": guidance_scale, "label": label, "clip_x0": clip_x0})


# ---------------------------------------------------------------------------- inference

def impute(model: str | Path, data: str | Path, out: str | Path, prior: str | Path | None = None,
           split: str = "test", indices: str | None = None, mask: str = "left-half", fraction: float = 0.5,
           prior_weight: float = 1.0, steps: int = 300, lr: float = 1e-2, seed: int = 0,
           progress: bool = True) -> dict:
    """Fill in the hidden part of items from their observed part (paper §4, Eq. 2).

    ``mask`` names an observation of the modality (:meth:`Modality.observation_mask`: halves,
    random points, a box; for shapes also a single-view depth scan). Fits latents to the observed
    points with and without the flow ``prior`` and reports the modality's metrics (PSNR, or voxel
    accuracy and IoU) on the hidden and on the observed points for both; writes side-by-side grids.
    """
    from .tasks.inference import load_flow_prior, map_fit

    field, modality, base_cfg = load_model(model)
    loss, metrics = model_loss(base_cfg), modality.reconstruction_metrics()
    src = FieldDataset(open_data(data, split, base_cfg.get("data"), progress), modality)
    idx = parse_indices(indices, len(src))
    y = src.features(idx)
    observed = modality.observation_mask(mask, y, fraction, seed).float()[..., None]  # (1|B, N, 1)
    x = src.coords[None]
    fits = {"no_prior": map_fit(field, x, y, observed, loss=loss, steps=steps, lr=lr, progress=progress)}
    if prior is not None:
        log_prior = load_flow_prior(prior, base_cfg["sha256"])
        fits["prior"] = map_fit(field, x, y, observed, loss=loss, log_prior=log_prior, prior_weight=prior_weight,
                                steps=steps, lr=lr, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hidden = 1.0 - observed
    res: dict[str, Any] = {"mask": mask, "fraction": fraction, "prior_weight": prior_weight, "steps": steps,
                           "count": len(idx), "observed_fraction": float(observed.expand(len(idx), -1, -1).mean()),
                           "headline": metrics.headline}
    observed_view = modality.from_features(y * observed + modality.unobserved_fill * hidden)
    panels = [modality.save(modality.from_features(y), out / "original", [f"original{i:04d}" for i in range(len(idx))]),
              modality.save(observed_view, out / "observed", [f"observed{i:04d}" for i in range(len(idx))])]
    for name, z in fits.items():
        pred = predict(field, x, z, loss=loss)
        region = {}
        for part, weight in (("hidden", hidden), ("observed", observed)):
            meter = MetricMeter(metrics)
            meter.add(metrics.per_item(pred, y, weight))
            region[part] = meter.as_dict()
        # RMSE in the data's own units (grey levels, kelvin, ...) over the hidden points
        diff = (modality.from_features(pred) - modality.from_features(y)).reshape(len(idx), y.shape[1], -1)
        w = hidden.expand(len(idx), -1, -1).numpy()
        region["hidden_rmse_data_units"] = float(np.sqrt((diff**2 * w).sum() / max(w.sum() * diff.shape[2], 1.0)))
        res[name] = region
        panels.append(modality.save(modality.from_features(pred), out / name, [f"{name}{i:04d}" for i in range(len(idx))]))
    # one row per item: original | observed | no prior | with prior
    rows = [p for item in zip(*panels) for p in item]
    res["grid"] = str(contact_sheet(rows, out / "imputation_grid.png", columns=len(panels)))
    write_json(out / "metrics.json", res)
    return res


def interpolate_items(model: str | Path, functaset: str | Path, out: str | Path, a: int, b: int, steps: int = 8,
                      flow: str | Path | None = None, scale: float = 1.0) -> dict:
    """Render the path between items ``a`` and ``b`` in latent space (and in the flow's base space)."""
    field, modality, cfg = load_model(model)
    loss = model_loss(cfg)
    fs = Functaset(functaset)
    fs.check_base_network(cfg["sha256"])
    za, zb = fs.take([a, b])["latents"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"a": a, "b": b, "steps": steps, "latent": render_latents(field, modality, loss, interpolate(za, zb, steps),
                                                                   out, "latent_path", scale, columns=steps)}
    if flow is not None:
        fl, extra, fcfg = load_task_model(flow, "flow")
        if fcfg["functaset"]["base_network"] != cfg["sha256"]:
            raise ArtefactError(f"{flow}: the flow was trained on latents of another base network")
        if fl.config.num_classes:
            raise ValueError(f"{flow}: interpolation in base space needs an unconditional flow")
        std = Standardizer.from_tensors(extra)
        with torch.no_grad():
            base = fl.to_base(std(torch.stack([za, zb])))
            path = std.inverse(fl.from_base(interpolate(base[0], base[1], steps)))
        res["flow_base"] = render_latents(field, modality, loss, path, out, "flow_path", scale, columns=steps)
    write_json(out / "metrics.json", res)
    return res


def fid_score(weights: str | Path, reference: str | Path, samples: str | Path, split: str = "test",
              limit: int | None = None, batch_size: int = 64, progress: bool = True) -> dict:
    """FID between images of ``reference[split]`` and rendered ``samples`` (a ``sample.npz`` or any
    npz with ``values (N, H, W, C)`` in the data's units, as written by the sample/render commands).

    ``weights`` is the user's copy of pytorch-fid's Inception file (nothing is downloaded).
    """
    from .tasks.fid import InceptionFeatures, fid

    ref = open_data(reference, split, {"limit": limit}, progress)
    if ref.data.ndim != 4 or ref.data.dtype != np.uint8:
        raise ValueError(f"{reference}: FID needs 8-bit images (M, H, W, C), got {ref.data.dtype} {ref.data.shape}")
    path = Path(samples)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: samples file not found")
    values = read_array_file(path, "values")  # size-checked before decoding (functa.data.safeio)
    if values.ndim != 4 or values.shape[-1] != ref.data.shape[-1]:
        raise ValueError(f"{path}: values of shape {values.shape} do not match the reference images "
                         f"{ref.data.shape[1:]}")
    fake = np.clip(np.round(values), 0, 255).astype(np.uint8)
    net = InceptionFeatures.from_file(weights)
    score = fid(ref.data, fake, net, batch_size=batch_size)
    return {"fid": score, "reference": str(reference), "split": split, "reference_count": len(ref.data),
            "samples": str(samples), "sample_count": len(fake), "weights": str(weights)}
