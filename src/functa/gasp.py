"""``functa gasp``: learn a distribution over functions with GASP and sample it at any resolution.

GASP (thesis ch. 2) needs no meta-learning and no functaset: a hypernetwork generator of function
networks (:mod:`functa.tasks.gasp.generator`) is trained adversarially against a point-cloud
discriminator (:mod:`functa.tasks.gasp.discriminator`) on the dataset's items seen as point clouds
through their modality (images, voxel shapes, fields on the sphere, audio, volumes).

A run directory holds ``settings.json`` (everything that defines the run), the checkpoint
``train_state.safetensors`` (resumed by running the same command again), the EMA generator as a
self-describing model (``model.safetensors`` + ``config.json``: the modality, so ``gasp sample``
needs nothing else) and ``samples/step_*.png`` grids written during training.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_stream, output_lock
from .config import DataConfig, apply_overrides
from .device import resolve_device
from .errors import ConfigError
from .io import ArtefactError, read_json_object, write_json
from .modalities import detect_modality, modality_from_config
from .pipeline import contact_sheet, open_data
from .tasks.checkpoint import load_task_model, save_task_model
from .tasks.gasp import (DiscriminatorConfig, GaspTrainConfig, GaspTrainer, GeneratorConfig, HyperGenerator,
                         PointClouds, PointConvDiscriminator, point_coordinates, sample_features, to_data)
from .tasks.latents import nearest_neighbours
from .validation import MAX_GRID_POINTS, check_total

__all__ = ["defaults", "gasp_sample", "gasp_train", "settings"]

DATA_KEYS = sorted(set(DataConfig.__dataclass_fields__) - {"patch"})
SETTINGS_FILE = "settings.json"
PREVIEW_COUNT = 16
RESUMABLE = {"steps", "sample_every", "save_every"}  # train settings a resumed run may change


def discriminator_depth(num_points: int, grid_dim: int) -> int:
    """Pooling stages that bring ``num_points`` to about 16 points (by ``2^g`` each): 3 for 28², 4 for 64²
    and for ERA5's 46×90, 5 for 128², 3 for 4096 voxels: the thesis' discriminators."""
    return max(1, round(math.log(max(num_points, 2) / 16, 2 ** grid_dim)))


def defaults(modality: Any) -> dict:
    """The thesis' settings (App. 2.A.2) for data of ``modality`` on its native grid.

    Images: Fourier scale 1 and batch 128 for single-channel images (MNIST); 2 and batch 64 up to 64²
    (CelebA-HQ 64); 3 and batch 22 above (CelebA-HQ 128). Voxels and volumes: no Fourier features,
    4096 points per step, learning rates 2e-5 / 8e-5, batch 24. The sphere: scale 2, batch 64 (ERA5).
    Discriminator widths double from 64 over :func:`discriminator_depth` stages (3-D: 64, 128, 256 on
    4096 points, the thesis' voxel widths without its first 32-wide convolution at full resolution).
    1-D data (audio; not in the thesis): 4096 points per step and widths capped at 512."""
    grid_dim = len(modality.shape)
    n = math.prod(modality.shape)
    subsampled = grid_dim != 2  # voxels, volumes and audio: thousands of points per item
    points = min(n, 4096) if subsampled else n
    image = modality.name == "image"
    gray = getattr(modality, "out_channels", 1) == 1 and image
    large = max(modality.shape) > 64
    scale = 1.0 if gray else 3.0 if image and large else 2.0
    cap = 512 if grid_dim == 1 else 2**20
    gen = {"latent_dim": 64, "function_hidden": [128, 128, 128], "hyper_hidden": [256, 512],
           "fourier_features": 0 if grid_dim == 3 else 128, "fourier_scale": scale}
    disc = {"channels": [min(64 * 2**i, cap) for i in range(discriminator_depth(points, grid_dim))],
            "weight_hidden": [16, 16, 16, 16], "batchnorm": True}
    train = {"batch_size": 128 if gray else 24 if grid_dim == 3 else 22 if image and large else 64,
             "lr_generator": 2e-5 if grid_dim == 3 else 1e-4, "lr_discriminator": 8e-5 if grid_dim == 3 else 4e-4,
             "max_num_points": 4096 if subsampled and n > 4096 else None}
    return {"generator": gen, "discriminator": disc, "train": train, "data": {}}


def settings(modality: Any, overrides: list[str] | None = None) -> dict:
    """:func:`defaults` with ``section.key=value`` overrides applied and checked (unknown keys refused)."""
    raw = apply_overrides(defaults(modality), overrides or [])
    sections = {"generator": set(GeneratorConfig.__dataclass_fields__) - {"in_dim", "out_dim"},
                "discriminator": set(DiscriminatorConfig.__dataclass_fields__) - {"coord_dim", "feature_dim", "grid_dim"},
                "train": set(GaspTrainConfig.__dataclass_fields__), "data": set(DATA_KEYS)}
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"unknown gasp settings {sorted(unknown)}; known sections: {sorted(sections)}")
    for name, known in sections.items():
        if not isinstance(raw.get(name), dict):
            raise ConfigError(f"{name} = {str(raw.get(name))[:40]!r} is not a section")
        bad = set(raw[name]) - known
        if bad:
            raise ConfigError(f"unknown gasp {name} settings {sorted(bad)}; known: {sorted(known)}")
    _configs(raw, modality)  # types and ranges
    return raw


def _configs(raw: dict, modality: Any) -> tuple[GeneratorConfig, DiscriminatorConfig, GaspTrainConfig]:
    try:
        DataConfig(**raw["data"])
        g = GeneratorConfig(**raw["generator"], in_dim=modality.in_dim, out_dim=modality.out_channels)
        d = DiscriminatorConfig(**raw["discriminator"], coord_dim=modality.in_dim, feature_dim=modality.out_channels,
                                grid_dim=len(modality.shape))
        t = GaspTrainConfig(**raw["train"])  # keys checked by settings(); lists become tuples in check_fields
    except (TypeError, ValueError) as e:
        raise ConfigError(f"gasp settings: {' '.join(str(e).split())[:300]}") from None
    return g, d, t


def _check_resume(out: Path, record: dict) -> None:
    """A run directory's saved settings must match (apart from :data:`RESUMABLE` train settings)."""
    path = out / SETTINGS_FILE
    if not path.exists():
        return
    saved = read_json_object(path, "GASP run settings")

    def fixed(r: dict) -> str:
        s = json.loads(json.dumps(r))
        for key in RESUMABLE:
            s.get("settings", {}).get("train", {}).pop(key, None)
        return json.dumps(s, sort_keys=True)

    if fixed(saved) != fixed(record):
        raise ArtefactError(f"{path}: this run was started with other data or settings; resume it with the same "
                            "ones (only train.steps, train.sample_every and train.save_every may change) or use a "
                            "new output directory")


def _preview(generator: HyperGenerator, modality: Any, z: torch.Tensor, out: Path, name: str,
             shape: tuple[int, ...] | None = None) -> Path:
    """Render ``generator`` at latents ``z`` on ``shape`` as one grid PNG ``out/name.png``."""
    values = to_data(modality, sample_features(generator, point_coordinates(modality, shape), z), shape)
    cells = modality.save(values, out / "_cells", [f"{name}_{i:03d}" for i in range(len(values))])
    return contact_sheet(cells, out / f"{name}.png", columns=8)


def gasp_train(data: str | Path, out: str | Path, overrides: list[str] | None = None, progress: bool = True,
               time_limit_s: float | None = None, device: str | torch.device = "cpu") -> dict:
    """Train GASP on the ``train`` split of ``data`` into the run directory ``out`` (resumed if it holds
    a checkpoint) on ``device``; returns a summary (steps, time, final losses, events)."""
    out = Path(out)
    with output_lock(out):
        return _gasp_train(data, out, overrides, progress, time_limit_s, resolve_device(device))


def _gasp_train(data, out: Path, overrides, progress: bool, time_limit_s: float | None, device) -> dict:
    raw_data = apply_overrides({"data": {}}, [o for o in overrides or [] if o.strip().startswith("data.")])["data"]
    ds = open_data(data, "train", raw_data, progress)
    modality = detect_modality(ds).from_dataset(ds)
    s = settings(modality, overrides)
    g_cfg, d_cfg, t_cfg = _configs(s, modality)
    clouds = PointClouds(ds, modality)
    source = {"path": str(Path(data).resolve()), "split": "train", "count": len(ds)}
    record = {"settings": s, "modality": modality.to_config(), "data": source}
    _check_resume(out, record)
    write_json(out / SETTINGS_FILE, record)
    torch.manual_seed(t_cfg.seed)  # the networks' initialisation (on the CPU: the same on every device)
    generator, discriminator = HyperGenerator(g_cfg).to(device), PointConvDiscriminator(d_cfg).to(device)
    trainer = GaspTrainer(generator, discriminator, t_cfg)
    z = torch.randn(PREVIEW_COUNT, g_cfg.latent_dim, generator=torch.Generator().manual_seed(t_cfg.seed))
    samples = out / "samples"
    if not (samples / "real.png").exists():
        cells = modality.save(ds.take(np.arange(min(PREVIEW_COUNT, len(ds)))), samples / "_cells",
                              [f"real_{i:03d}" for i in range(min(PREVIEW_COUNT, len(ds)))])
        contact_sheet(cells, samples / "real.png", columns=8)

    def on_sample(step: int, g: HyperGenerator) -> None:
        _preview(g, modality, z, samples, f"step_{step:07d}")

    def on_save(run_dir: Path) -> None:
        save_task_model(run_dir, "gasp", trainer.generator, state=trainer.eval_state(),
                        modality=modality.to_config(), discriminator=asdict(d_cfg), train=s["train"],
                        data=source, data_settings=s["data"], step=trainer.step_count, train_seconds=trainer.elapsed_s,
                        events=trainer.events)

    history = trainer.fit(clouds, out, on_sample=on_sample, on_save=on_save, progress=progress,
                          time_limit_s=time_limit_s)
    summary = {"steps": trainer.step_count, "train_seconds": trainer.elapsed_s,
               "generator_parameters": sum(p.numel() for p in generator.parameters()),
               "discriminator_parameters": sum(p.numel() for p in discriminator.parameters()),
               "last": history[-1] if history else None, "events": trainer.events}
    write_json(out / "summary.json", summary)
    return summary


def _sample_shape(modality: Any, shape: list[int] | None, scale: float | None) -> tuple[int, ...]:
    if shape is not None and scale is not None:
        raise ConfigError("give --shape or --scale, not both")
    if shape is not None:
        if len(shape) != len(modality.shape) or any(not 1 <= int(v) <= 8192 for v in shape):
            raise ConfigError(f"--shape needs {len(modality.shape)} sizes between 1 and 8192 for {modality.name} "
                              f"data (native {' '.join(map(str, modality.shape))}), got {' '.join(map(str, shape))}")
        return tuple(int(v) for v in shape)
    scale = 1.0 if scale is None else scale
    if not 0 < scale <= 64:
        raise ConfigError(f"--scale must be in (0, 64], got {scale:g}")
    return tuple(max(1, int(round(v * scale))) for v in modality.shape)


def gasp_sample(run: str | Path, out: str | Path, n: int = 64, shape: list[int] | None = None,
                scale: float | None = None, seed: int = 0, neighbours: bool = True,
                device: str | torch.device = "cpu") -> dict:
    """Draw ``n`` functions from a trained run and render them on ``shape`` (or ``scale`` × the native
    grid): one file per sample, ``sample_grid.png``, ``sample.npz`` (``values`` in data units) and
    ``metrics.json``. With ``neighbours`` (and the training data still where it was), each sample's
    nearest training item at the native resolution (among the first 2^27 values' worth of training items)
    is found and rendered (``nearest_train_grid.png``),
    with the median distances of samples and of test items to the training set (memorisation check)."""
    if not 1 <= n <= 100_000:
        raise ConfigError(f"-n must be between 1 and 100000, got {n}")
    generator, _, cfg = load_task_model(run, "gasp")
    generator = generator.to(resolve_device(device))
    modality = modality_from_config(cfg["modality"])
    target = _sample_shape(modality, shape, scale)
    check_total("samples", n * math.prod(target) * modality.out_channels, MAX_GRID_POINTS,
                f"{n} samples on a {'x'.join(map(str, target))} grid", "values")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    z = torch.randn(n, generator.config.latent_dim, generator=torch.Generator().manual_seed(seed))
    values = to_data(modality, sample_features(generator, point_coordinates(modality, target), z), target)
    paths = modality.save(values, out / "sample", [f"sample{i:04d}" for i in range(n)])
    grid = contact_sheet(paths, out / "sample_grid.png", columns=8)
    atomic_stream(out / "sample.npz", lambda f: np.savez(f, values=values.astype(np.float32), latents=z.numpy()))
    res = {"kind": "gasp", "model": str(run), "step": cfg.get("step"), "count": n, "shape": list(target),
           "grid": str(grid), "seed": seed}
    if neighbours:
        res["memorisation"] = _memorisation(generator, modality, z, cfg, out)
    write_json(out / "metrics.json", res)
    return res


def _memorisation(generator: HyperGenerator, modality: Any, z: torch.Tensor, cfg: dict, out: Path) -> dict:
    """Nearest training items of samples (at the native grid), against how close test items come."""
    source = cfg.get("data")
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return {"skipped": "the model does not say which data it was trained on"}
    path = Path(source["path"])
    if not path.exists():
        return {"skipped": f"the training data {path} is not there any more"}
    data_cfg = cfg.get("data_settings") or {}
    train = open_data(path, "train", data_cfg, False)
    test = open_data(path, "test", data_cfg, False)
    clouds = PointClouds(train, modality)

    def flat(items_features: torch.Tensor) -> torch.Tensor:
        return items_features.reshape(len(items_features), -1)

    count = min(len(train), MAX_GRID_POINTS // (clouds.coords.shape[0] * modality.out_channels))  # <= 512 MiB
    reference = torch.cat([flat(clouds.features(np.arange(s, min(s + 4096, count)))) for s in range(0, count, 4096)])
    samples = flat(sample_features(generator, clouds.coords, z))
    d_sample, idx = nearest_neighbours(samples, reference)
    probe = flat(PointClouds(test, modality).features(np.arange(min(len(test), 1000))))
    d_test, _ = nearest_neighbours(probe, reference)
    paths = modality.save(train.take(idx.numpy()), out / "nearest_train", [f"nearest{i:04d}" for i in range(len(idx))])
    contact_sheet(paths, out / "nearest_train_grid.png", columns=8)
    return {"sample_nn_distance_median": float(d_sample.median()), "test_nn_distance_median": float(d_test.median()),
            "train_items": count, "test_items": len(probe),
            "note": "L2 distances of features in [-1, 1] at the native grid; samples much closer to the training set "
                    "than test items are suggest memorisation"}
