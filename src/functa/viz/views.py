"""Fast PNG-ready views of 3-D occupancy fields (numpy and PIL only).

Shapes:

* ``values``: ``(X, Y, Z)`` float in ``[0, 1]``, array axes ``[x, y, z]``, **z up**; voxel ``i``
  along an axis of length ``N`` sits at ``(i + 0.5) / N`` in the unit cube ``[0, 1]^3``.
* :func:`shaded_view` returns ``(size, size, 3)`` uint8 RGB; :func:`slices` returns ``(Y, count * X)``
  uint8 grey; :func:`write_png` writes either.

View convention of :func:`shaded_view` (orthographic): the camera looks at the cube centre
``(0.5, 0.5, 0.5)`` from the direction ``(cos e cos a, cos e sin a, sin e)`` (elevation ``e`` above
the xy-plane, azimuth ``a`` counter-clockwise from +x about +z). The image's up is the projection of
+z (so +z is at the top for ``|e| < 90``) and its right is ``(-sin a, cos a, 0)``; with the default
``e = 30, a = 45``, +x points to the lower left and +y to the lower right. The image spans
:data:`VIEW_EXTENT` ``= sqrt(3)`` units (the cube's diagonal) in both directions, so the whole cube
fits at any angle and one unit of length is ``size / sqrt(3)`` pixels.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ._common import as_volume

__all__ = ["VIEW_EXTENT", "shaded_view", "slices", "write_png"]

#: Side of the square image in unit-cube lengths (the cube's diagonal).
VIEW_EXTENT = float(np.sqrt(3.0))

_BACKGROUND = 255
_COLOUR = np.array([0.60, 0.70, 0.92], dtype=np.float32)  # base albedo, light steel blue
_AMBIENT = 0.22
_KEY = 0.6  # Lambertian key light from the upper left, behind the viewer
_FILL = 0.25  # Lambertian head light (from the camera), so faces turned from the key stay legible
_DEPTH_CUE = 0.35  # farthest surfaces are darkened by this fraction
_SAMPLE_BUDGET = 1 << 19  # samples per marching block: bounds the marching memory at any size
_RAY_CHUNK = 1 << 16


# ----------------------------------------------------------------------------- camera and rays


def _camera(elevation: float, azimuth: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ``(forward, right, up)`` vectors in world (unit-cube) coordinates."""
    e, a = np.deg2rad(elevation), np.deg2rad(azimuth)
    toward_camera = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    forward = -toward_camera
    return forward, right, np.cross(right, forward)


def _rays(size: int, forward: np.ndarray, right: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``(size * size, 3)`` ray origins (row-major pixels, row 0 at the top), ``t = 0`` in front."""
    centres = ((np.arange(size) + 0.5) / size - 0.5) * VIEW_EXTENT
    s, t = np.meshgrid(centres, -centres)  # s: right, t: up (rows go down)
    plane = 0.5 + s[..., None] * right + t[..., None] * up
    return (plane - 0.5 * VIEW_EXTENT * forward).reshape(-1, 3)


def _box_interval(origins: np.ndarray, forward: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Per-ray ``(t_enter, t_exit)`` through the box ``[lo, hi]`` (slab method), clipped to the view."""
    d = np.where(np.abs(forward) < 1e-12, 1e-12, forward)
    t1, t2 = (lo - origins) / d, (hi - origins) / d
    t_enter = np.maximum(np.minimum(t1, t2).max(axis=1), 0.0)
    t_exit = np.minimum(np.maximum(t1, t2).min(axis=1), VIEW_EXTENT)
    return t_enter, t_exit


def _occupied_box(vol: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """World box outside which the trilinear field is ``< level``; ``None`` when nothing is occupied."""
    inside = vol >= level
    if not inside.any():
        return None
    n = np.asarray(vol.shape, dtype=np.float64)
    used = [np.flatnonzero(inside.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    lo, hi = np.array([u[0] for u in used]), np.array([u[-1] for u in used])
    # Voxel i's trilinear support is the open interval (i - 1, i + 1) in index units.
    return np.clip((lo - 0.5) / n, 0.0, 1.0), np.clip((hi + 1.5) / n, 0.0, 1.0)


# ----------------------------------------------------------------------------- sampling


class _Grid:
    """A zero-padded volume with trilinear sampling at padded index points, plus per-cell maxima.

    Padded index ``q = w * N + 0.5`` for world coordinate ``w``; cell ``c = floor(q)`` spans padded
    voxels ``c .. c + 1``. ``cell_max[c]`` is the largest of its 8 corners, so a point whose cell max is
    ``< level`` is certainly outside (trilinear values are convex combinations of the corners).
    """

    def __init__(self, vol: np.ndarray):
        self.shape = np.asarray(vol.shape, dtype=np.float32)
        self.padded = np.pad(vol, 1)
        p = self.padded
        self.strides = np.array([p.shape[1] * p.shape[2], p.shape[2], 1], dtype=np.int64)
        self.flat = p.ravel()
        self.cells = np.asarray(p.shape) - 1  # cells per axis

    def cell_max(self) -> np.ndarray:
        p = self.padded
        m = np.maximum(p[:-1], p[1:])
        m = np.maximum(m[:, :-1], m[:, 1:])
        return np.maximum(m[:, :, :-1], m[:, :, 1:])

    def to_index(self, world: np.ndarray) -> np.ndarray:
        return world.astype(np.float32) * self.shape + np.float32(0.5)

    def cell_corner(self, q: np.ndarray) -> np.ndarray:
        """Cell lower corners ``(..., 3)`` as float32 whole numbers, clipped to the grid."""
        return np.clip(np.floor(q), 0, self.cells - 1).astype(np.float32)

    def trilinear(self, q: np.ndarray, flat: np.ndarray | None = None) -> np.ndarray:
        """Values at padded index coordinates ``q (M, 3)``; ``flat`` samples another same-shape grid."""
        flat = self.flat if flat is None else flat
        corner = self.cell_corner(q)
        f = np.clip(q - corner, 0.0, 1.0)
        c = corner.astype(np.int64)
        base = c[:, 0] * self.strides[0] + c[:, 1] * self.strides[1] + c[:, 2]
        sx, sy, sz = self.strides
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        v00 = flat[base] * (1 - fz) + flat[base + sz] * fz
        v01 = flat[base + sy] * (1 - fz) + flat[base + sy + sz] * fz
        v10 = flat[base + sx] * (1 - fz) + flat[base + sx + sz] * fz
        v11 = flat[base + sx + sy] * (1 - fz) + flat[base + sx + sy + sz] * fz
        return (v00 * (1 - fy) + v01 * fy) * (1 - fx) + (v10 * (1 - fy) + v11 * fy) * fx


def _smooth(vol: np.ndarray, passes: int = 2) -> np.ndarray:
    """Separable binomial ``[1, 4, 6, 4, 1] / 16`` blur applied ``passes`` times, zero outside.

    Each pass has sigma = 1 voxel, so the result has sigma = sqrt(passes) voxels.
    """
    out = vol
    for axis in [a for _ in range(passes) for a in range(3)]:
        p = np.pad(out, [(2, 2) if a == axis else (0, 0) for a in range(3)])
        n = out.shape[axis]
        take = lambda k: np.take(p, np.arange(k, k + n), axis=axis)  # noqa: E731
        out = (take(0) + take(4) + 4 * (take(1) + take(3)) + 6 * take(2)) / np.float32(16)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------- ray marching


def _march(grid: _Grid, cell_max: np.ndarray, q0: np.ndarray, dq: np.ndarray, t0: np.ndarray,
           t1: np.ndarray, step: float, level: float) -> np.ndarray:
    """First ``t`` in ``[t0, t1]`` (per ray, step ``step``) where the field is ``>= level``; ``inf`` if none.

    ``q0 (R, 3)`` is the padded index at ``t = 0``, ``dq (3,)`` its change per unit ``t``. Rays are
    marched in depth blocks whose size adapts so that a block holds at most ``_SAMPLE_BUDGET``
    samples; rays that hit or leave the box drop out of the active set.
    """
    hit_t = np.full(len(q0), np.inf, dtype=np.float32)
    active = np.flatnonzero(t1 > t0)
    done = np.zeros(len(q0), dtype=np.int64)  # samples taken per ray: positions do not depend on blocking
    cm_flat = cell_max.ravel()
    cm_strides = (cell_max.shape[1] * cell_max.shape[2], cell_max.shape[2])
    while active.size:
        k = int(np.clip(_SAMPLE_BUDGET // active.size, 4, 256))
        offsets = done[active].astype(np.float32)[:, None] + np.arange(k, dtype=np.float32)  # exact integers
        ts = t0[active, None] + np.float32(step) * offsets  # (A, k)
        q = q0[active, None, :] + ts[..., None] * dq  # (A, k, 3)
        c = grid.cell_corner(q).astype(np.int32)
        cells = c[..., 0] * cm_strides[0] + c[..., 1] * cm_strides[1] + c[..., 2]
        maybe = (cm_flat[cells] >= level) & (ts <= t1[active, None])
        hit = np.zeros_like(maybe)
        hit[maybe] = grid.trilinear(q[maybe]) >= level
        found = hit.any(axis=1)
        first = hit.argmax(axis=1)
        hit_t[active[found]] = ts[found, first[found]]
        done[active] += k
        keep = ~found & (ts[:, -1] + np.float32(step) <= t1[active])
        active = active[keep]
    return hit_t


def _normals(grid: _Grid, smooth_flat: np.ndarray, q: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Outward unit normals at padded index points ``q (M, 3)``: minus the smoothed field's gradient."""
    grad = np.empty_like(q)
    for axis in range(3):
        e = np.zeros(3, dtype=np.float32)
        e[axis] = 1.0
        diff = grid.trilinear(q + e, smooth_flat) - grid.trilinear(q - e, smooth_flat)
        grad[:, axis] = diff * grid.shape[axis]  # per unit world length (anisotropic grids)
    norm = np.linalg.norm(grad, axis=1, keepdims=True)
    ok = norm[:, 0] > 1e-6
    out = np.broadcast_to(fallback, q.shape).astype(np.float32)
    out[ok] = -grad[ok] / norm[ok]
    return out


def _shade(normals: np.ndarray, depth: np.ndarray, forward: np.ndarray, right: np.ndarray,
           up: np.ndarray) -> np.ndarray:
    """RGB in ``[0, 1]`` per hit: ambient + two Lambertian lights (key, head light) times a depth cue."""
    key = -0.75 * forward + 0.55 * up - 0.35 * right
    key = (key / np.linalg.norm(key)).astype(np.float32)
    head = (-forward).astype(np.float32)
    light = _AMBIENT + _KEY * np.clip(normals @ key, 0.0, 1.0) + _FILL * np.clip(normals @ head, 0.0, 1.0)
    cue = 1.0 - _DEPTH_CUE * np.clip(depth / VIEW_EXTENT, 0.0, 1.0)
    return np.minimum(light * cue, 1.0)[:, None] * _COLOUR


def shaded_view(values: np.ndarray, size: int = 256, elevation: float = 30.0, azimuth: float = 45.0,
                level: float = 0.5) -> np.ndarray:
    """Orthographic shaded render of the iso-surface ``values >= level``, ``(size, size, 3)`` uint8.

    Args:
        values: ``(X, Y, Z)`` occupancy in ``[0, 1]``, axes ``[x, y, z]``, z up.
        size: image side in pixels.
        elevation: camera elevation above the xy-plane, degrees (+z stays at the top for
            ``|elevation| < 90``).
        azimuth: camera azimuth about +z, counter-clockwise from +x, degrees.
        level: iso-level; trilinearly interpolated values ``>= level`` are inside.

    View (see the module docstring): orthographic, looking at the cube centre from direction
    ``(cos e cos a, cos e sin a, sin e)``; image up is the projection of +z, image right is
    ``(-sin a, cos a, 0)``; the image spans ``sqrt(3)`` units, so ``size / sqrt(3)`` pixels per unit.

    Method: one ray per pixel, clipped to the box around the occupied voxels, sampled trilinearly
    every half voxel (cells whose 8 corners are all ``< level`` are skipped without interpolating);
    the first sample ``>= level`` is the hit. A hit is shaded with an ambient term plus two
    Lambertian lights (a key light from the upper left, a weaker head light) on the normal
    ``-grad`` of the field blurred with sigma = sqrt(2) voxels, times a depth cue (farther is
    darker). Background pixels are white. Rays are marched in blocks of at most 2**19 samples, so
    peak memory stays under 100 MB (measured ~85 MB) for a 128³ grid at ``size = 512``.
    """
    vol = as_volume(values)
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if not np.isfinite(level):
        raise ValueError(f"level must be finite, got {level!r}")
    image = np.full((size * size, 3), _BACKGROUND, dtype=np.uint8)
    box = _occupied_box(vol, level)
    if box is None:
        return image.reshape(size, size, 3)
    forward, right, up = _camera(elevation, azimuth)
    origins = _rays(size, forward, right, up)
    t0, t1 = _box_interval(origins, forward, *box)
    candidates = np.flatnonzero(t1 > t0)
    grid = _Grid(vol)
    cell_max = grid.cell_max()
    dq = (forward * grid.shape).astype(np.float32)
    step = 0.5 / float(max(vol.shape))
    hit_t = np.full(size * size, np.inf, dtype=np.float32)
    for start in range(0, candidates.size, _RAY_CHUNK):
        rays = candidates[start:start + _RAY_CHUNK]
        q0 = grid.to_index(origins[rays])
        hit_t[rays] = _march(grid, cell_max, q0, dq, t0[rays], t1[rays], step, level)
    hits = np.flatnonzero(np.isfinite(hit_t))
    if hits.size:
        q = grid.to_index(origins[hits]) + hit_t[hits, None] * dq
        smooth_flat = np.pad(_smooth(vol), 1).ravel()
        normals = _normals(grid, smooth_flat, q, -forward.astype(np.float32))
        rgb = _shade(normals, hit_t[hits], forward, right, up)
        image[hits] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return image.reshape(size, size, 3)


# ----------------------------------------------------------------------------- slices and PNG


def slices(values: np.ndarray, count: int = 4) -> np.ndarray:
    """``count`` evenly spaced z-slices side by side, ``(Y, count * X)`` uint8 grey.

    Slice ``k`` is ``values[:, :, floor((k + 0.5) * Z / count)]`` (centres of ``count`` equal bins);
    each tile shows x to the right and y up. Values in ``[0, 1]`` map to ``0 .. 255`` (occupied is
    white); values outside are clipped.
    """
    vol = as_volume(values)
    count = int(count)
    if not 1 <= count <= vol.shape[2]:
        raise ValueError(f"count must be in [1, {vol.shape[2]}] (the z size), got {count}")
    zs = ((np.arange(count) + 0.5) * vol.shape[2] / count).astype(int)
    tiles = [vol[:, :, z].T[::-1] for z in zs]  # (Y, X) with row 0 at the largest y
    return np.clip(np.rint(np.concatenate(tiles, axis=1) * 255.0), 0, 255).astype(np.uint8)


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image as PNG, atomically; returns the path."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"image must be uint8 (H, W) or (H, W, 3), got {arr.dtype} {arr.shape}")
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())
