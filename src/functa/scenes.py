"""Scenes end to end: turntables and depth maps of scene functa, and novel view synthesis from one (or
a partial) view with and without a flow prior (functa paper §6.3, Figure 11).

Both read a base network meta-learned with ``functa fit --modality scene`` and either a functaset of it
or scenes to fit first. Cameras of turntables circle the scene at the data's median camera distance,
around its mean camera up vector (:meth:`~functa.modalities.SceneModality.camera_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .atomic import atomic_stream, output_lock
from .fields import field_device
from .fitting import Batch, MetricMeter, fit_latents, max_points_per_pass, rendered_fit_points
from .functaset import Functaset
from .io import write_json
from .modalities import SceneModality, SceneViews
from .modalities.masks import MASKS, grid_mask
from .pipeline import load_model, model_loss, open_data, parse_indices, stored_latents
from .tasks.inference import load_flow_prior, map_fit_batch

__all__ = ["fit_scenes", "turntable", "interpolation_turntable", "novel_view_synthesis", "depth_image", "write_gif"]

NVS_MASKS = ("full", *MASKS)


def _scene_model(model: str | Path, device: str | torch.device | None = "cpu"):
    field, modality, cfg = load_model(model, device)
    if not isinstance(modality, SceneModality):
        raise ValueError(f"{model}: the base network was meta-learned on {modality.name} data; turntables and "
                         "novel view synthesis are for scenes (functa fit --modality scene)")
    return field, modality, cfg


def fit_scenes(field: torch.nn.Module, modality: SceneModality, loss: Any, dataset: Any, indices: np.ndarray,
               steps: int) -> Tensor:
    """Latents of the scenes ``indices`` of ``dataset``, fitted as the encoder does (``encode_views`` x
    ``encode_pixels`` rays each, in memory-bounded chunks of rays). ``(B, *latent_shape)``."""
    batch = modality.encode_source(dataset).batch(indices)
    return fit_latents(field, batch, steps, loss=loss, max_points=rendered_fit_points(field, batch)).latents.cpu()


def depth_image(depth: Tensor, opacity: Tensor, near: float, far: float) -> np.ndarray:
    """A depth map ``(H, W)`` as 8-bit grey: 255 at ``near``, 0 at ``far``; empty pixels (opacity < 0.5) white."""
    grey = ((far - depth) / (far - near)).clamp(0, 1) * 255.0
    grey = torch.where(opacity < 0.5, torch.full_like(grey, 255.0), grey)
    return grey.round().to(torch.uint8).numpy()


def write_gif(frames: list[np.ndarray], path: Path, fps: float = 12.0) -> Path:
    """An endlessly looping animated GIF of ``frames`` (each ``(H, W[, 3])`` uint8), written atomically."""
    images = [Image.fromarray(f) for f in frames]
    atomic_stream(path, lambda f: images[0].save(f, format="GIF", save_all=True, append_images=images[1:],
                                                 duration=max(20, round(1000 / fps)), loop=0))
    return path


def _png(array: np.ndarray, path: Path) -> Path:
    image = Image.fromarray(array)
    atomic_stream(path, lambda f: image.save(f, format="PNG"))
    return path


def _as_uint8(rgb: Tensor) -> np.ndarray:
    return (rgb.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def turntable(model: str | Path, out: str | Path, functaset: str | Path | None = None, data: str | Path | None = None,
              split: str = "test", indices: str | None = None, frames: int = 36, elevation: float = 30.0,
              scale: float = 1.0, depth: bool = True, fps: float = 12.0,
              device: str | torch.device | None = "cpu") -> dict:
    """Render scenes as turntables: ``frames`` views around each, as PNG frames, an animated GIF and
    (``depth``) depth maps and their GIF, under ``out/item<index>/``; ``out/grid.png`` holds the first
    frame of each scene. Latents come from a functaset, or are fitted to ``data[split]`` first."""
    field, modality, cfg = _scene_model(model, device)
    loss = model_loss(cfg)
    if functaset is not None:
        _, idx, latents = stored_latents(functaset, cfg, indices)
    elif data is not None:
        ds = open_data(data, split, cfg.get("data"))
        idx = parse_indices(indices, len(ds))
        latents = fit_scenes(field, modality, loss, ds, idx, cfg["run"]["train"]["inner_steps"])
    else:
        raise ValueError("a turntable needs a functaset or scenes to fit")
    out = Path(out)
    with output_lock(out):
        return _write_turntables(field, modality, latents, idx, out, frames, elevation, scale, depth, fps)


def _write_turntables(field, modality: SceneModality, latents: Tensor, idx: np.ndarray, out: Path, frames: int,
                      elevation: float, scale: float, depth: bool, fps: float) -> dict:
    poses = modality.camera_path(frames, elevation)
    firsts, items = [], []
    for i, z in zip(idx, latents):  # one scene at a time: frames x H x W rays each
        rgb, dep, acc = modality.render_views(field, z[None], poses, scale)
        d = out / f"item{int(i):06d}"
        d.mkdir(parents=True, exist_ok=True)
        views = [_as_uint8(v) for v in rgb[0]]
        paths = [_png(v, d / f"frame_{k:03d}.png") for k, v in enumerate(views)]
        entry = {"index": int(i), "frames": [str(p) for p in paths],
                 "gif": str(write_gif(views, d / "turntable.gif", fps))}
        if depth:
            maps = [depth_image(dep[0, k], acc[0, k], modality.near, modality.far) for k in range(len(poses))]
            entry["depth"] = [str(_png(m, d / f"depth_{k:03d}.png")) for k, m in enumerate(maps)]
            entry["depth_gif"] = str(write_gif(maps, d / "depth.gif", fps))
        firsts.append(views[0])
        items.append(entry)
    grid = _png(_tile([firsts], gap=2), out / "grid.png")
    res = {"count": len(idx), "frames": frames, "elevation_deg": elevation, "shape": list(firsts[0].shape[:2]),
           "grid": str(grid), "items": items}
    write_json(out / "turntable.json", res)
    return res


def interpolation_turntable(model: str | Path, functaset: str | Path, out: str | Path, a: int, b: int,
                            frames: int = 36, elevation: float = 30.0, scale: float = 1.0, fps: float = 12.0,
                            device: str | torch.device | None = "cpu") -> dict:
    """Latent interpolation between scenes ``a`` and ``b`` with a moving camera (paper Figure 10): frame ``k``
    renders ``(1 - t_k) z_a + t_k z_b``, ``t_k = k / (frames - 1)``, from turntable camera ``k``. Writes
    ``out/interpolation_frame_<k>.png``, ``out/interpolation.gif`` and ``out/interpolation.json``."""
    from .tasks.latents import interpolate

    field, modality, cfg = _scene_model(model, device)
    fs = Functaset(functaset)
    fs.check_base_network(cfg["sha256"])
    for i in (a, b):
        if not 0 <= i < len(fs):
            raise ValueError(f"item {i} is not in {functaset} ({len(fs)} items)")
    za, zb = fs.take([a, b])["latents"]
    path = interpolate(za, zb, frames)  # (frames, ...) from za to zb
    poses = modality.camera_path(frames, elevation)
    out = Path(out)
    with output_lock(out):
        views = [_as_uint8(modality.render_views(field, path[k:k + 1], poses[k:k + 1], scale)[0][0, 0])
                 for k in range(frames)]
        paths = [str(_png(v, out / f"interpolation_frame_{k:03d}.png")) for k, v in enumerate(views)]
        res = {"a": a, "b": b, "frames": frames, "elevation_deg": elevation, "shape": list(views[0].shape[:2]),
               "gif": str(write_gif(views, out / "interpolation.gif", fps)), "frame_files": paths}
        write_json(out / "interpolation.json", res)
    return res


def _tile(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Tile rows of ``(H, W, 3)`` uint8 images (same height per row) on white, ``gap`` pixels apart."""
    heights = [max(im.shape[0] for im in r) for r in rows]
    widths = [sum(im.shape[1] for im in r) + gap * (len(r) - 1) for r in rows]
    sheet = np.full((sum(heights) + gap * (len(rows) - 1), max(widths), 3), 255, np.uint8)
    y = 0
    for r, h in zip(rows, heights):
        x = 0
        for im in r:
            sheet[y:y + im.shape[0], x:x + im.shape[1]] = im if im.ndim == 3 else im[..., None]
            x += im.shape[1] + gap
        y += h + gap
    return sheet


def novel_view_synthesis(model: str | Path, data: str | Path, out: str | Path, prior: str | Path | None = None,
                         split: str = "test", indices: str | None = None, context: tuple[int, ...] = (0,),
                         novel: tuple[int, ...] | None = None, mask: str = "full", pixels: int | None = None,
                         prior_weight: float = 0.01,
                         steps: int = 300, lr: float = 1e-2, seed: int = 0, progress: bool = True,
                         device: str | torch.device | None = "cpu") -> dict:
    """Infer scenes from ``context`` views (all their pixels, or the part ``mask`` observes, e.g.
    ``left-half``) by MAP fitting of the latent, with no prior and with the flow ``prior`` (paper §6.3;
    ``prior_weight`` 0.01 measured best on ModelNet scenes: weight 1 swamps the observation),
    then render the ``novel`` views (default: the modality's novel views) and score their PSNR. ``pixels``
    fits on that many of the observed pixels of each context view (a fixed random draw; default all).

    Writes ``out/nvs_grid.png`` (per scene: a row per method -- no prior, prior -- and the ground truth,
    each the context view followed by the novel views) and ``out/metrics.json``."""
    field, modality, cfg = _scene_model(model, device)
    loss = model_loss(cfg)
    if mask not in NVS_MASKS:
        raise ValueError(f"unknown mask {mask!r}; choose from {', '.join(NVS_MASKS)}")
    ds = open_data(data, split, cfg.get("data"), progress)
    modality = modality.for_dataset(ds)
    for name, views in (("context", context), ("novel", novel or ())):
        bad = [v for v in views if not 0 <= v < ds.num_views]
        if bad:
            raise ValueError(f"{name} view {bad[0]} does not exist: the scenes have {ds.num_views} views")
    novel = tuple(novel) if novel else modality.default_novel_views(tuple(context))
    if pixels is not None and pixels < 1:
        raise ValueError(f"--pixels must be a positive number of pixels, got {pixels}")
    idx = parse_indices(indices, len(ds))
    m = modality
    keep = np.ones(m.height * m.width, bool) if mask == "full" else grid_mask((m.height, m.width), mask, 0.5, seed)
    rays = np.flatnonzero(keep)  # only observed pixels are cast
    if pixels is not None and pixels < len(rays):
        rays = np.sort(np.random.default_rng(seed).choice(rays, pixels, replace=False))
    batch = SceneViews(ds, m).view_rays(idx, tuple(context), np.broadcast_to(rays, (len(idx), len(context), len(rays))))
    fits = {"no_prior": map_fit_batch(field, batch, loss=loss, steps=steps, lr=lr, progress=progress,
                                      batch_size=_map_items(field, batch))}
    if prior is not None:
        log_prior = load_flow_prior(prior, cfg["sha256"], field_device(field))
        fits["prior"] = map_fit_batch(field, batch, loss=loss, log_prior=log_prior, prior_weight=prior_weight,
                                      steps=steps, lr=lr, progress=progress, batch_size=_map_items(field, batch))
    truth = ds.take(idx)  # (B, V, H, W, 3)
    res: dict[str, Any] = {"count": len(idx), "context": list(context), "novel": list(novel), "mask": mask,
                           "observed_pixels_per_view": int(len(rays)), "prior_weight": prior_weight, "steps": steps,
                           "lr": lr}
    shown = np.where(np.tile(keep, len(context)).reshape(len(context), m.height, m.width, 1), truth[:, list(context)],
                     128).astype(np.uint8)
    rows: dict[str, list] = {}
    poses, focal = ds.cameras(idx)
    for name, z in fits.items():
        rgb = _render_cameras(field, m, z, poses[:, list(novel)], focal[:, list(novel)])  # (B, K, H, W, 3)
        target = torch.from_numpy(truth[:, list(novel)]).float() / 255.0
        meter = MetricMeter(m.reconstruction_metrics())
        meter.update(rgb.reshape(len(idx), -1, 3), target.reshape(len(idx), -1, 3))
        ctx = _render_cameras(field, m, z, poses[:, list(context)], focal[:, list(context)])
        ctx_meter = MetricMeter(m.reconstruction_metrics())
        w = torch.from_numpy(np.tile(keep, len(context)).astype(np.float32))[None, :, None]  # the observed pixels
        ctx_truth = torch.from_numpy(truth[:, list(context)]).float().reshape(len(idx), -1, 3) / 255.0
        ctx_meter.add(ctx_meter.metrics.per_item(ctx.reshape(len(idx), -1, 3), ctx_truth, w))
        res[name] = {"novel_views": meter.as_dict(), "observed_context": ctx_meter.as_dict()}
        rows[name] = [_as_uint8(v) for v in rgb]
    out = Path(out)
    with output_lock(out):
        figure = []
        for b in range(len(idx)):
            for name in fits:
                figure.append([shown[b, 0], *list(rows[name][b])])
            figure.append([truth[b, context[0]], *list(truth[b, list(novel)])])
        res["grid"] = str(_png(_tile(figure), out / "nvs_grid.png"))
        res["rows"] = [*fits, "ground_truth"]
        write_json(out / "metrics.json", res)
    return res


def _map_items(field, batch: Batch) -> int:
    """Scenes per MAP chunk: the autograd graph of one scene's rays is held for every Adam step."""
    return max(1, 4 * max_points_per_pass(field) // max(1, batch.x.shape[1]))


def _render_cameras(field, modality: SceneModality, latents: Tensor, poses: np.ndarray, focal: np.ndarray) -> Tensor:
    """Views ``(B, K, H, W, 3)`` of each scene ``b`` from its own cameras ``poses[b] (K, 4, 4)``."""
    out = []
    for b in range(len(latents)):
        f = float(np.median(focal[b]))
        if not np.allclose(focal[b], f):
            raise ValueError("the novel views of a scene must share one focal length")
        out.append(modality.render_views(field, latents[b:b + 1], poses[b], focal=f)[0][0])
    return torch.stack(out)
