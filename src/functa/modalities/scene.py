"""NeRF scenes: posed views of a 3-D scene <-> rays through a field of RGB + density.

A scene is a :class:`~functa.data.SceneDataset` item: ``V`` views ``(H, W, 3)`` with cameras. The field
maps 3-D points to 4 outputs (RGB and a density); a :class:`~functa.fitting.VolumeRenderer` composites
``points_per_ray`` samples between ``near`` and ``far`` into pixels (functa paper §5.2, A.6, Listing 1),
and the loss is the MSE of the rendered pixels, so every part of the core (inner loop, meta-learning,
encoding, MAP inference) works on scenes unchanged.

Sampling (paper A.6): every meta-learning step fits each scene on ``views_per_step`` of its views and
``pixels_per_view`` pixels of each. By default both are drawn **independently per scene and without
replacement** (``sampling = "independent"``); ``"shared"`` reproduces the official code, which draws one
index set for the whole batch, with replacement (reference-study §1.9). Encoding fits each scene on
``encode_views`` x ``encode_pixels`` (paper: 32 x 2048), a fixed draw per scene. Evaluation follows
PixelNeRF: fit on ``context_views`` (``context_pixels`` of them sampled, 1024 as the official code, or all),
then render the ``novel_views`` fully and report the PSNR of their pixels.

Conventions, each an option with the paper's default: rays through pixel centres (``pixel_centres``;
the official code uses corners), uniform depths (``stratified`` jitter off), deltas in depth units
(``metric_deltas``), a white background. The base network's default ``w0`` is 5 (paper: SRN cars).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from ..fields import field_device
from ..fitting import Batch, VolumeRenderer, max_points_per_pass, ray_batch, ray_depths
from ..validation import Bool, Choice, Int, IntSeq, Real, check_fields
from .base import ModalityBase, register_modality
from .cameras import orbit_poses, pixel_rays
from .image import ImageModality

__all__ = ["SceneModality", "SceneRays", "SceneViews"]

MAX_PIXELS = 4096 * 4096


@register_modality
@dataclass(frozen=True)
class SceneModality(ModalityBase):
    """Posed views of scenes, fitted through a volume renderer (see the module docstring).

    Data settings (from the dataset): ``height``, ``width``, ``num_views``, ``near``, ``far``,
    ``radius`` (median camera distance), ``up`` (the mean camera up vector) and ``focal`` (median, pixels):
    the cameras of turntables and previews. ``preview_views`` views of a turntable at ``preview_elevation``
    degrees, side by side, are what :meth:`render_values` draws of an item (samples, interpolations)."""

    name: ClassVar[str] = "scene"
    code: ClassVar[int] = 7
    dataset_kind: ClassVar[str] = "scene"
    rate_unit: ClassVar[str] = "bits per pixel of one view"
    field_defaults: ClassVar[dict[str, Any]] = {"w0": 5.0}  # paper A.1: w0 = 5 for SRN cars

    height: int = 64
    width: int = 64
    num_views: int = 50
    near: float = 0.8
    far: float = 1.8
    radius: float = 1.3
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    focal: float = 70.0
    points_per_ray: int = 32
    views_per_step: int = 16
    pixels_per_view: int = 512
    sampling: Literal["independent", "shared"] = "independent"
    stratified: bool = False
    pixel_centres: bool = True
    metric_deltas: bool = False
    white_background: bool = True
    context_views: tuple[int, ...] = (0,)
    novel_views: tuple[int, ...] | None = None
    context_pixels: int | None = 1024
    encode_views: int = 32
    encode_pixels: int = 2048
    preview_views: int = 4
    preview_elevation: float = 30.0
    in_dim: int = field(init=False, default=3)
    out_channels: int = field(init=False, default=4)

    def __post_init__(self) -> None:
        check_fields(self, "modality", height=Int(1, 4096), width=Int(1, 4096), num_views=Int(1, 100_000),
                     near=Real(0, 1e6), far=Real(0, 1e6, lo_open=True), radius=Real(0, 1e6, lo_open=True),
                     points_per_ray=Int(2, 1024), views_per_step=Int(1, 100_000), pixels_per_view=Int(1, MAX_PIXELS),
                     sampling=Choice("independent", "shared"), stratified=Bool(), pixel_centres=Bool(),
                     metric_deltas=Bool(), white_background=Bool(),
                     context_views=IntSeq(0, 99_999, min_len=1, max_len=1024),
                     novel_views=IntSeq(0, 99_999, min_len=1, max_len=1024, optional=True),
                     context_pixels=Int(1, MAX_PIXELS, optional=True), encode_views=Int(1, 100_000),
                     encode_pixels=Int(1, MAX_PIXELS), focal=Real(0, 1e7, lo_open=True), preview_views=Int(1, 64),
                     preview_elevation=Real(-90, 90))
        if not self.near < self.far:
            raise ConfigError(f"modality.near = {self.near:g} must be smaller than modality.far = {self.far:g}")
        up = tuple(float(u) for u in self.up)
        if len(up) != 3 or not np.isfinite(up).all() or np.linalg.norm(up) == 0:
            raise ConfigError(f"modality.up = {self.up!r} must be a non-zero 3-vector")
        object.__setattr__(self, "up", up)
        for key in ("context_views", "novel_views"):  # checked against the split they are used on (for_dataset)
            views = getattr(self, key)
            if views is not None:
                object.__setattr__(self, key, tuple(int(v) for v in views))
        object.__setattr__(self, "shape", (self.height, self.width))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, dataset) -> "SceneModality":
        poses = dataset.poses.reshape(-1, 4, 4).astype(np.float64)
        radius = float(np.median(np.linalg.norm(poses[:, :3, 3], axis=1)))
        up = poses[:, :3, 1].mean(0)
        up = tuple(float(u) for u in (up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-6 else (0.0, 0.0, 1.0)))
        h, w = dataset.image_shape
        return cls(height=h, width=w, num_views=dataset.num_views, near=dataset.near, far=dataset.far,
                   radius=radius, up=up, focal=float(np.median(dataset.focal)))

    def for_dataset(self, dataset) -> "SceneModality":
        """This modality on another split of scenes: its own number of views (SRN: 50 training views, 251
        test views), the same image size; the context and novel views must exist there."""
        where = dataset.meta.get("source", "scenes")
        if tuple(dataset.image_shape) != (self.height, self.width):
            raise ValueError(f"{where}: views of {dataset.image_shape[0]}x{dataset.image_shape[1]}, the base "
                             f"network was meta-learned on {self.height}x{self.width}")
        for key in ("context_views", "novel_views"):
            views = getattr(self, key)
            if views is not None and max(views) >= dataset.num_views:
                raise ValueError(f"{where}: modality.{key} = {list(views)} names a view beyond the "
                                 f"{dataset.num_views} views of each scene")
        return self if dataset.num_views == self.num_views else replace(self, num_views=dataset.num_views)

    def to_config(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        for k in ("up", "context_views", "novel_views"):
            out[k] = None if out[k] is None else list(out[k])
        return {"name": self.name, **out}

    # ------------------------------------------------------------------ rendering
    @property
    def renderer(self) -> VolumeRenderer:
        return VolumeRenderer(self.points_per_ray, self.white_background, self.metric_deltas)

    @property
    def views(self) -> ImageModality:
        """The views as images (features, files, PSNR)."""
        return ImageModality(height=self.height, width=self.width, channels=3)

    def default_novel_views(self, context: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """``novel_views``, or four views spread over those that are not context views (``context``, by
        default ``context_views``)."""
        if self.novel_views is not None:
            return self.novel_views
        context = self.context_views if context is None else context
        rest = [v for v in range(self.num_views) if v not in context] or list(range(self.num_views))
        pick = np.unique(np.linspace(0, len(rest) - 1, min(4, len(rest))).round().astype(int))
        return tuple(rest[i] for i in pick)

    def rays(self, poses: Tensor, focal: Tensor, pixels: Tensor, colours: Tensor | None = None, *,
             stratified: bool = False, generator: torch.Generator | None = None) -> Batch:
        """The batch of rays through ``pixels (B, k, m)`` (flat indices, row-major) of ``k`` views per item
        with cameras ``poses (B, k, 4, 4)`` and ``focal (B, k)``, observing ``colours (B, k*m, 3)`` (zeros
        when only rendering). Depths are ``linspace(near, far, P)``; with ``stratified`` (training draws
        of a ``modality.stratified`` modality) jittered with ``generator``."""
        o, d = pixel_rays(poses, focal, self.height, self.width, pixels, pixel_centres=self.pixel_centres)
        o, d = o.reshape(o.shape[0], -1, 3), d.reshape(d.shape[0], -1, 3)
        b, n = o.shape[:2]
        if stratified:
            t = ray_depths(self.near, self.far, self.points_per_ray, (b, n), stratified=True, generator=generator)
        else:
            t = ray_depths(self.near, self.far, self.points_per_ray, (1, n))
        y = torch.zeros(b, n, 3) if colours is None else colours
        return ray_batch(o, d, t, y, self.renderer)

    def camera_path(self, count: int, elevation_deg: float = 30.0) -> np.ndarray:
        """A turntable of ``count`` cameras ``(count, 4, 4)`` around the scene, at the data's camera distance."""
        return orbit_poses(count, self.radius, self.up, elevation_deg)

    @torch.no_grad()
    def render_views(self, field: torch.nn.Module, latents: Tensor, poses: np.ndarray, scale: float = 1.0,
                     focal: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Render every item ``latents (B, ...)`` from the cameras ``poses (K, 4, 4)`` at ``scale`` x the
        data's view size: RGB ``(B, K, H', W', 3)`` (unclamped: the renderer's white background can push it
        just past 1), expected depth and opacity ``(B, K, H', W')``, on the CPU. Rays are made and rendered
        chunk by chunk, so memory is bounded at any resolution and number of views."""
        h, w = max(1, round(self.height * scale)), max(1, round(self.width * scale))
        view = replace(self, height=h, width=w)
        k, b = len(poses), len(latents)
        pose = torch.from_numpy(np.asarray(poses, np.float32))
        f = torch.full((k,), float(focal or self.focal) * (w / self.width))
        dev = field_device(field)
        z = latents.to(dev)
        rays = max(1, max_points_per_pass(field) // max(1, b) // self.points_per_ray)
        rgb, depth, acc = [], [], []
        for start in range(0, k * h * w, rays):
            flat = torch.arange(start, min(start + rays, k * h * w))
            v, pix = torch.div(flat, h * w, rounding_mode="floor"), flat % (h * w)
            batch = view.rays(pose[v][None], f[v][None], pix[None, :, None]).to(dev)  # one camera per ray
            pixels, d, a = batch.renderer.render(field(batch.x, z), batch)
            rgb.append(pixels.cpu())
            depth.append(d.cpu())
            acc.append(a.cpu())
        return (torch.cat(rgb, 1).reshape(b, k, h, w, 3), torch.cat(depth, 1).reshape(b, k, h, w),
                torch.cat(acc, 1).reshape(b, k, h, w))

    def render_values(self, field: torch.nn.Module, latents: Tensor, loss: Any = None,
                      shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A preview of each item: ``preview_views`` turntable views side by side, ``(B, H', K W', 3)`` in
        data units (0-255), at the view size ``shape`` (default: the data's)."""
        scale = 1.0 if shape is None else shape[0] / self.height
        rgb, _, _ = self.render_views(field, latents, self.camera_path(self.preview_views, self.preview_elevation),
                                      scale)
        b, k, h, w, _ = rgb.shape
        return (rgb.clamp(0, 1).permute(0, 2, 1, 3, 4).reshape(b, h, k * w, 3) * 255.0).numpy()

    # ------------------------------------------------------------------ the Modality protocol
    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        raise ValueError("scenes are observed through rays of posed views, not on a coordinate grid; "
                         "use SceneModality.rays")

    def coordinate_box(self) -> None:
        return None  # no point-cloud view of a scene (rays through posed views)

    def to_features(self, items: np.ndarray) -> Tensor:
        """Views ``(B, H, W, 3)`` uint8 -> pixels ``(B, H*W, 3)`` in ``[0, 1]``."""
        return self.views.to_features(items)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        return self.views.from_features(features, shape)

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        return self.views.compare(reconstruction, item)

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        return self.views.save(items, directory, names)

    def read_item(self, path: Path) -> np.ndarray:
        return self.views.read_item(path)

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        return self.views.write_item(item, path)

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        return self.views.observation_mask(kind, features, fraction, seed)

    def with_shape(self, shape: tuple[int, ...]) -> "SceneModality":
        raise ValueError("scenes are fitted whole (views and pixels are subsampled); they have no patches")

    # ------------------------------------------------------------------ batch sources
    def sources(self, train, val, *, patches: bool, seed: int) -> tuple["SceneRays", "SceneViews"]:
        if patches:
            raise ValueError("scenes have no patches (data.patch); views and pixels are subsampled instead")
        return SceneRays(train, self, seed=seed), SceneViews(val, self.for_dataset(val), seed=seed + 1)

    def encode_source(self, dataset, seed: int = 0) -> "SceneRays":
        return SceneRays(dataset, self.for_dataset(dataset), seed=seed)


def _choose(rng: np.random.Generator, rows: int, population: int, k: int) -> np.ndarray:
    """``(rows, k)`` indices into ``range(population)``, without replacement within each row (all of
    them, in random order, when ``k >= population``); memory ``O(rows * k)`` however large the population
    (one draw per row: rows are views or scenes, never pixels)."""
    k = min(k, population)
    return np.stack([rng.choice(population, k, replace=False) for _ in range(rows)]) if rows else \
        np.zeros((0, k), np.int64)


@dataclass
class SceneRays:
    """Scenes as a batch source of rays: random training draws (``sample``) and a fixed per-scene
    draw for encoding (``batch``: ``encode_views`` x ``encode_pixels``, from ``default_rng([seed, i])``).

    ``num_points`` is the field points of an encoding batch item (rays x ``points_per_ray``)."""

    data: Any  # SceneDataset
    modality: SceneModality
    seed: int = 0

    def __post_init__(self) -> None:
        m = self.modality
        if self.data.num_views != m.num_views or tuple(self.data.image_shape) != (m.height, m.width):
            raise ValueError(f"{self.data.meta.get('source', 'scenes')}: scenes of {self.data.num_views} views of "
                             f"{self.data.image_shape}, the modality expects {m.num_views} of {(m.height, m.width)} "
                             "(SceneModality.for_dataset)")
        self.hw = m.height * m.width
        self.num_points = (min(m.encode_views, m.num_views) * min(m.encode_pixels, self.hw) * m.points_per_ray)

    def __len__(self) -> int:
        return len(self.data)

    def labels(self, indices: np.ndarray) -> np.ndarray:
        if self.data.labels is None:
            return np.full(len(indices), -1, dtype=np.int64)
        return np.asarray(self.data.labels)[np.asarray(indices)].astype(np.int64)

    def _gather(self, indices: np.ndarray, views: np.ndarray, pixels: np.ndarray,
                generator: torch.Generator | None = None) -> Batch:
        """Rays of scenes ``indices (B,)`` through ``pixels (B, k, m)`` of their ``views (B, k)``."""
        b, k, m = pixels.shape
        images = self.data.data[np.asarray(indices)[:, None], views]  # (B, k, H, W, 3): only the views used
        colours = images.reshape(b, k, self.hw, 3)[np.arange(b)[:, None, None], np.arange(k)[None, :, None], pixels]
        poses, focal = self.data.cameras(indices)
        pose = torch.from_numpy(np.ascontiguousarray(np.take_along_axis(poses, views[:, :, None, None], 1)))
        f = torch.from_numpy(np.ascontiguousarray(np.take_along_axis(focal, views, 1)))  # (B, k)
        y = torch.from_numpy(np.ascontiguousarray(colours.reshape(b, k * m, 3))).float().div_(255.0)
        return self.modality.rays(pose, f, torch.from_numpy(np.array(pixels, np.int64)), y,
                                  stratified=generator is not None, generator=generator)

    def sample(self, indices: np.ndarray, rng: np.random.Generator) -> Batch:
        """A training draw: ``views_per_step`` views and ``pixels_per_view`` pixels of each, per scene and
        without replacement (``sampling = "independent"``), or one set with replacement for the whole
        batch (``"shared"``, the official code)."""
        m, b = self.modality, len(indices)
        k, p = min(m.views_per_step, m.num_views), min(m.pixels_per_view, self.hw)
        if m.sampling == "shared":
            views = np.broadcast_to(rng.integers(0, m.num_views, k), (b, k))
            pixels = np.broadcast_to(rng.integers(0, self.hw, (k, p)), (b, k, p))
        else:
            views = _choose(rng, b, m.num_views, k)
            pixels = _choose(rng, b * k, self.hw, p).reshape(b, k, p)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62))) if m.stratified else None
        return self._gather(np.asarray(indices), np.ascontiguousarray(views), np.ascontiguousarray(pixels), gen)

    def fixed_draw(self, indices: np.ndarray, views: int, pixels: int, salt: int) -> tuple[np.ndarray, np.ndarray]:
        """Per scene ``i``: ``views`` views and ``pixels`` pixels of each from ``default_rng([seed, salt, i])``."""
        m = self.modality
        k, p = min(views, m.num_views), min(pixels, self.hw)
        vs, ps = [], []
        for i in np.asarray(indices):  # one generator per scene: a scene's draw does not depend on the batch
            rng = np.random.default_rng([self.seed, salt, int(i)])
            vs.append(_choose(rng, 1, m.num_views, k)[0])
            ps.append(_choose(rng, k, self.hw, p))
        return np.stack(vs), np.stack(ps)

    def batch(self, indices: np.ndarray) -> Batch:
        """The encoding observations of scenes ``indices``: ``encode_views`` x ``encode_pixels`` each."""
        views, pixels = self.fixed_draw(indices, self.modality.encode_views, self.modality.encode_pixels, 0)
        return self._gather(np.asarray(indices), views, pixels)


@dataclass
class SceneViews(SceneRays):
    """Scenes for evaluation (PixelNeRF protocol): ``batch`` observes the ``context_views``
    (``context_pixels`` of them, a fixed draw, or all), ``heldout`` the whole ``novel_views``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        m = self.modality
        per_view = self.hw if m.context_pixels is None else min(m.context_pixels, self.hw)
        # what sizes evaluation batches: the larger of the context fit and the novel views' rays
        rays = max(len(m.context_views) * per_view, len(m.default_novel_views()) * self.hw)
        self.num_points = rays * m.points_per_ray

    def view_rays(self, indices: np.ndarray, views: tuple[int, ...], pixels: np.ndarray) -> Batch:
        """Rays through ``pixels (B, k, m)`` of the views ``views (k,)`` of scenes ``indices (B,)``."""
        b = len(indices)
        v = np.broadcast_to(np.asarray(views, np.int64), (b, len(views)))
        return self._gather(np.asarray(indices), np.ascontiguousarray(v), np.ascontiguousarray(pixels))

    def batch(self, indices: np.ndarray) -> Batch:
        m, b = self.modality, len(indices)
        k = len(m.context_views)
        if m.context_pixels is None or m.context_pixels >= self.hw:
            pixels = np.broadcast_to(np.arange(self.hw), (b, k, self.hw))
        else:
            pixels = np.stack([_choose(np.random.default_rng([self.seed, 1, int(i)]), k, self.hw, m.context_pixels)
                               for i in np.asarray(indices)])
        return self.view_rays(indices, m.context_views, pixels)

    def heldout(self, indices: np.ndarray) -> Batch:
        """Every pixel of the ``novel_views`` of scenes ``indices``: the rays to score."""
        views = self.modality.default_novel_views()
        pixels = np.broadcast_to(np.arange(self.hw), (len(indices), len(views), self.hw))
        return self.view_rays(indices, views, pixels)
