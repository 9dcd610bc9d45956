"""Render posed views of voxel shapes (ModelNet10) into NeRF "Blender" scene folders.

Meta-learning NeRF scenes as functa needs many scenes of one kind; this module makes them from voxel
occupancy grids (e.g. ``modelnet10_chair_monitor_vox32.npz``) with an exact ray/voxel renderer.

Conventions
-----------
* **World.** Right-handed, ``+z`` up (ModelNet is z-up). A grid ``(X, Y, Z)`` with array axes
  ``[x, y, z]`` occupies the world cube ``[-0.5, 0.5]^3``: voxel ``(i, j, k)`` spans
  ``[i/N - X/(2N), (i+1)/N - X/(2N)] x [j/N - Y/(2N), ...] x [k/N - Z/(2N), ...]`` with ``N = max(X, Y, Z)``,
  i.e. for a cubic grid ``[i/X - 0.5, (i+1)/X - 0.5] x ...``; a non-cubic grid is scaled by its largest
  dimension and centred in the cube.
* **Cameras.** Camera-to-world matrices ``(4, 4)`` float32 in the **OpenGL** convention (NeRF Blender):
  the columns of the rotation ``R`` are the camera's ``x`` (right), ``y`` (up) and ``z`` axes in world
  coordinates and the last column is the camera centre; the camera looks down its ``-z`` axis.
  :func:`look_at_poses` aims every camera at the origin with the world ``+z`` as up (a camera on the up
  axis uses world ``+y`` instead, see there).
* **Pixels.** Square pixels, principal point at the image centre, focal length ``f`` in pixels
  (``f = 0.5 * W / tan(0.5 * camera_angle_x)``). Pixel ``(u, v)`` (column ``u``, row ``v`` from the top)
  casts the ray through its centre with camera-space direction
  ``((u + 0.5 - W/2) / f, -(v + 0.5 - H/2) / f, -1)``, rotated into the world by ``R``.
* **Rendering.** Exact first hit of each ray with the occupied voxels: rays are clipped to the occupied
  bounding box and walked voxel by voxel with a 3-D DDA (Amanatides & Woo), vectorised in torch over all
  rays of all views at once. The normal is the outward normal of the voxel face through which the ray
  entered the hit voxel, so every face is flat-shaded. Lambertian shading with a fixed directional key
  light ``l`` (world coordinates, default ``normalise(0.3, 0.5, 1.0)``) and a weaker headlight along the
  camera's ``+z`` axis ``c`` (towards the camera, so faces turned away from ``l`` stay readable)::

      shade  = ambient + (1 - ambient) * ((1 - headlight) * max(0, n.l) + headlight * max(0, n.c))
      colour = round(255 * albedo * shade)

  Defaults: ``ambient = 0.3``, ``headlight = 0.25``, ``albedo = (0.8, 0.8, 0.8)``. Rays that hit nothing
  are RGBA ``(255, 255, 255, 0)`` (white, transparent: the NeRF convention); hits have alpha 255. With
  ``supersample = s`` each pixel averages ``s x s`` sub-pixel rays (premultiplied colour and alpha, so
  compositing on white gives the average of the composited sub-rays).
* **Scene folders** (:func:`build_modelnet_scenes`): ``OUT/{train,test}/<class>_<index:04d>/`` with
  ``r_0.png ... r_{V-1}.png`` (RGBA, 8-bit) and ``transforms_train.json`` (``camera_angle_x``, ``near``,
  ``far``, ``camera_convention: "opengl"``, ``frames: [{"file_path": "./r_k", "transform_matrix": 4x4}]``).
  ``index`` is the shape's position in the source file. A scene is "test" iff the first 8 bytes of
  ``sha256(name)`` read as a little-endian integer, modulo 1000, are ``< floor(1000 * test_fraction + 1/2)``
  (the loaders' rule, :func:`functa.data.scenes.is_test_name`).
  Every file is written atomically and the json of a scene last, so a scene folder holding its json is
  complete; a re-run skips complete scenes. ``OUT/builder.json`` records the settings, the source's
  sha256 and the counts per split and class.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..atomic import atomic_write_bytes, output_lock, remove_stale_tmp
from .scenes import is_test_name

__all__ = ["look_at_poses", "sphere_cameras", "ray_voxel_hits", "render_voxels", "build_modelnet_scenes",
           "scene_split", "DEFAULT_LIGHT"]

DEFAULT_LIGHT = (0.3, 0.5, 1.0)
_POLE_EPS = 1e-6
_RAY_CHUNK = 1 << 18
_RENDER_RAYS = 1 << 22  # rays (before culling) rendered at a time
_BUILDER_VERSION = 1
_WRITE_THREADS = 8
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ------------------------------------------------------------------------------------------ cameras


def look_at_poses(centres: np.ndarray, up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """Camera-to-world matrices of cameras at ``centres`` looking at the origin (OpenGL convention).

    Args:
        centres: ``(K, 3)`` (or ``(3,)``) camera centres in world coordinates, none at the origin.
        up: the world up vector (default ``+z``). A camera whose view direction is (anti)parallel to
            ``up`` (at a pole) uses the world axis least aligned with ``up`` instead (``+y`` for ``+z``).

    Returns:
        ``(K, 4, 4)`` float32: ``[:3, 0]`` camera ``+x`` (right), ``[:3, 1]`` ``+y`` (up, with a positive
        component along ``up`` unless at a pole), ``[:3, 2]`` ``+z`` (= centre direction; the camera looks
        down ``-z`` at the origin), ``[:3, 3]`` the centre; ``det R = +1``.
    """
    c = np.asarray(centres, dtype=np.float64)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(f"centres must be (K, 3), got shape {c.shape}")
    u = np.asarray(up, dtype=np.float64).reshape(3)
    if not np.isfinite(c).all() or not np.isfinite(u).all() or np.linalg.norm(u) == 0:
        raise ValueError("centres and up must be finite and up non-zero")
    u = u / np.linalg.norm(u)
    dist = np.linalg.norm(c, axis=1, keepdims=True)
    if (dist == 0).any():
        raise ValueError("a camera centre is at the origin (no view direction)")
    z = c / dist
    x = np.cross(u, z)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    pole = norm[:, 0] < _POLE_EPS
    if pole.any():
        alt = np.eye(3)[int(np.argmin(np.abs(u)))] if abs(u[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        x[pole] = np.cross(alt, z[pole])
        norm[pole] = np.linalg.norm(x[pole], axis=1, keepdims=True)
    x = x / norm
    y = np.cross(z, x)
    out = np.zeros((len(c), 4, 4), dtype=np.float64)
    out[:, :3, 0], out[:, :3, 1], out[:, :3, 2], out[:, :3, 3] = x, y, z, c
    out[:, 3, 3] = 1.0
    return out.astype(np.float32)


def sphere_cameras(count: int, radius: float, seed: int, hemisphere: bool = False) -> np.ndarray:
    """``count`` camera centres uniform on the sphere of ``radius`` about the origin.

    Args:
        count: number of cameras ``K >= 1``.
        radius: sphere radius ``> 0``.
        seed: any non-negative int; the same seed gives the same centres (``numpy.random.default_rng``).
        hemisphere: only the upper hemisphere ``z >= 0`` (uniform there: ``z`` of a uniform point mirrored).

    Returns:
        ``(K, 3)`` float64 centres, ``|c| = radius``.
    """
    if isinstance(count, bool) or int(count) != count or count < 1:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be finite and > 0, got {radius!r}")
    rng = np.random.default_rng(seed)
    p = rng.standard_normal((int(count), 3))
    n = np.linalg.norm(p, axis=1, keepdims=True)
    while (n < 1e-9).any():  # practically never
        bad = n[:, 0] < 1e-9
        p[bad] = rng.standard_normal((int(bad.sum()), 3))
        n = np.linalg.norm(p, axis=1, keepdims=True)
    p = p / n
    if hemisphere:
        p[:, 2] = np.abs(p[:, 2])
    return p * float(radius)


# ------------------------------------------------------------------------------------ ray casting


def _grid_frame(shape: Sequence[int]) -> tuple[torch.Tensor, float]:
    """World position of the grid's corner ``(3,)`` and the voxel edge length ``1 / max(X, Y, Z)``."""
    dims = torch.tensor([float(s) for s in shape], dtype=torch.float64)
    size = 1.0 / float(max(shape))
    return -0.5 * dims * size, size


def ray_voxel_hits(occupancy: torch.Tensor, origins: torch.Tensor, directions: torch.Tensor, *,
                   chunk: int = _RAY_CHUNK) -> dict[str, torch.Tensor]:
    """Exact first hit of rays with the occupied voxels of a grid in the world cube (module docstring).

    Vectorised 3-D DDA (Amanatides & Woo) over all rays, chunked over rays (``chunk`` at a time); the
    loop runs over DDA steps (at most ``X + Y + Z`` of the occupied bounding box, plus 3) and stops when
    every ray has hit or left. Only hits at ``t >= 0`` count (a ray starting inside a voxel hits it at t = 0).
    Computed in float32 when ``origins`` and ``directions`` are both float32 tensors, else in float64.

    Args:
        occupancy: ``(X, Y, Z)`` bool (or 0/1) occupancy.
        origins: ``(R, 3)`` ray origins, world coordinates.
        directions: ``(R, 3)`` ray directions (need not be unit; ``t`` is in their units).

    Returns:
        dict with ``hit`` ``(R,)`` bool; ``voxel`` ``(R, 3)`` int64 index of the hit voxel (-1 for a miss);
        ``axis`` ``(R,)`` int64 axis of the entry face (-1 for a miss); ``normal`` ``(R, 3)`` float32 outward
        normal of the entry face (``-sign(d[axis]) e_axis``; zeros for a miss); ``t`` ``(R,)`` float64 ray
        parameter of the entry point (``inf`` for a miss).
    """
    single = (isinstance(origins, torch.Tensor) and isinstance(directions, torch.Tensor)
              and origins.dtype == directions.dtype == torch.float32)
    dtype = torch.float32 if single else torch.float64
    o = torch.as_tensor(origins, dtype=dtype).reshape(-1, 3)
    d = torch.as_tensor(directions, dtype=dtype).reshape(-1, 3)
    if o.shape != d.shape:
        raise ValueError(f"origins {tuple(o.shape)} and directions {tuple(d.shape)} must match")
    out = _trace(occupancy, o.T, d.T, chunk)
    r = len(o)
    normal = torch.zeros(r, 3)
    rows = out["hit"].nonzero()[:, 0]
    normal[rows, out["axis"][rows]] = out["sign"][rows].float()
    return {"hit": out["hit"], "voxel": out["voxel"], "axis": out["axis"], "normal": normal, "t": out["t"]}


def _trace(occupancy: torch.Tensor, o: torch.Tensor, d: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """:func:`ray_voxel_hits` on rays in the ``(3, R)`` layout (each coordinate contiguous: reductions over
    the 3 axes are element-wise ops, much faster than along a short last dimension). Returns ``hit``,
    ``voxel`` ``(R, 3)``, ``axis``, ``sign`` ``(R,)`` int8 (the normal is ``sign * e_axis``) and ``t``."""
    occ = torch.as_tensor(occupancy).bool()
    if occ.ndim != 3 or min(occ.shape) < 1:
        raise ValueError(f"occupancy must be (X, Y, Z), got shape {tuple(occ.shape)}")
    r = o.shape[1]
    out = {"hit": torch.zeros(r, dtype=torch.bool), "voxel": torch.full((r, 3), -1, dtype=torch.int64),
           "axis": torch.full((r,), -1, dtype=torch.int64), "sign": torch.zeros(r, dtype=torch.int8),
           "t": torch.full((r,), math.inf, dtype=torch.float64)}
    filled = occ.nonzero()
    if not len(filled) or not r:
        return out
    lo, hi = filled.min(0).values, filled.max(0).values + 1
    dims = hi - lo
    crop = occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    # interior 0 (empty) / 1 (filled), a 1-voxel border of 2: "left the box" without bounds checks
    pad = torch.full(tuple((dims + 2).tolist()), 2, dtype=torch.uint8)
    pad[1:-1, 1:-1, 1:-1] = crop.to(torch.uint8)
    flat = pad.reshape(-1)
    strides = torch.tensor([(dims[1] + 2) * (dims[2] + 2), dims[2] + 2, 1], dtype=torch.int64)
    corner, vsize = _grid_frame(occ.shape)
    # rays in the cropped grid's coordinates (box [0, dims]); the scaling leaves t unchanged
    shift = (corner / vsize + lo.to(torch.float64)).to(o.dtype)[:, None]
    dimf = dims.to(o.dtype)[:, None]
    max_steps = int(dims.sum()) + 3
    chunk = max(1, int(chunk))
    for start in range(0, r, chunk):
        stop = min(r, start + chunk)
        g = o[:, start:stop] / vsize - shift
        gd = d[:, start:stop] / vsize
        _dda_chunk(flat, strides, dimf, g, gd, max_steps, lo, out, start)
    return out


def _argmax3(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and argmax over the rows of ``(3, n)`` (ties: the lower row)."""
    m01 = torch.maximum(a[0], a[1])
    i = torch.where(a[2] > m01, 2, (a[1] > a[0]).to(torch.int64))
    return torch.maximum(m01, a[2]), i


def _dda_chunk(flat: torch.Tensor, strides: torch.Tensor, dimf: torch.Tensor, g: torch.Tensor, gd: torch.Tensor,
               max_steps: int, lo: torch.Tensor, out: dict[str, torch.Tensor], offset: int) -> None:
    """DDA of one chunk of rays ``g + t gd`` (cropped grid coordinates, ``(3, n)``) into ``out[offset:]``.

    Set-up: slab clipping to the box, first voxel, first boundary crossings. The walk keeps per active
    ray only its linear voxel index into the padded grid, its column in the chunk, the next crossings
    ``tmax`` ``(3, n)`` and the last stepped axis, and drops rays as they hit or leave.
    """
    zero = gd == 0
    inv = 1.0 / gd  # +-inf where gd == 0 (fixed below)
    ta, tb = -g * inv, (dimf - g) * inv
    tlo, thi = torch.minimum(ta, tb), torch.maximum(ta, tb)
    if bool(zero.any()):  # parallel to a slab: inside it for all t, or never
        inside = (g >= 0) & (g <= dimf)
        tlo = torch.where(zero, torch.where(inside, -math.inf, math.inf), tlo)
        thi = torch.where(zero, torch.where(inside, math.inf, -math.inf), thi)
    t_enter, entry_axis = _argmax3(tlo)
    t_exit = torch.minimum(torch.minimum(thi[0], thi[1]), thi[2])
    valid = (t_enter < t_exit) & (t_exit > 0)
    rid = valid.nonzero()[:, 0]
    n = len(rid)
    if not n:
        return
    g, gd, inv = g.index_select(1, rid), gd.index_select(1, rid), inv.index_select(1, rid)
    t_enter, entry_axis = t_enter.index_select(0, rid), entry_axis.index_select(0, rid)
    pos, neg = gd > 0, gd < 0
    outside = t_enter > 0
    t0 = t_enter.clamp(min=0.0)
    idx = torch.minimum(torch.floor(g + t0 * gd).clamp(min=0), dimf - 1)
    # on the entry axis the first voxel is exactly the first/last layer (robust to rounding)
    sel = (torch.arange(3)[:, None] == entry_axis) & outside
    idx = torch.where(sel, torch.where(pos, 0.0, dimf - 1), idx)
    # a ray starting inside the box: its "entry face" is the one facing it along its main axis
    axis = torch.where(outside, entry_axis, _argmax3(gd.abs())[1])
    # next boundary crossing per axis
    tmax = torch.where(pos, (idx + 1 - g) * inv, torch.where(neg, (idx - g) * inv, math.inf)).float()
    tdelta = torch.where(zero.index_select(1, rid), math.inf, inv.abs()).float().reshape(-1)  # (3 n,)
    # int32 indices in the walk (half the memory traffic of int64); the padded grid is far below 2^31 voxels
    step = (torch.sign(gd).to(torch.int64) * strides[:, None]).reshape(-1).int()  # (3 n,) linear-index steps
    lin = ((idx.to(torch.int64) + 1) * strides[:, None]).sum(0).int()
    loc = torch.arange(n, dtype=torch.int32)
    cols = torch.arange(n, dtype=torch.int32)
    for it in range(max_steps):
        v = flat.index_select(0, lin)
        done = v != 0
        if bool(done.any()):
            got = (v == 1).nonzero()[:, 0]
            if len(got):
                k = loc.index_select(0, got)
                _record(out, rid.index_select(0, k) + offset, lin.index_select(0, got).long(),
                        axis.index_select(0, got).long(), strides, lo, g.index_select(1, k), gd.index_select(1, k),
                        t0.index_select(0, k), outside.index_select(0, k) if it == 0 else None)
            keep = (~done).nonzero()[:, 0]
            if not len(keep):
                return
            lin, loc, tmax = lin.index_select(0, keep), loc.index_select(0, keep), tmax.index_select(1, keep)
        m = len(lin)
        tx, ty, tz = tmax[0], tmax[1], tmax[2]
        axis = torch.where(tz < torch.minimum(tx, ty), 2, (ty < tx).int())  # argmin, ties -> lower axis
        fi = axis * n + loc
        lin = lin + step.index_select(0, fi)
        tmax.view(-1).index_add_(0, axis * m + cols[:m], tdelta.index_select(0, fi))
    raise RuntimeError("DDA did not terminate (bug)")  # pragma: no cover


def _record(out: dict[str, torch.Tensor], rows: torch.Tensor, lin: torch.Tensor, axis: torch.Tensor,
            strides: torch.Tensor, lo: torch.Tensor, g: torch.Tensor, gd: torch.Tensor, t0: torch.Tensor,
            entered: torch.Tensor | None) -> None:
    """Store hits (``g``, ``gd`` ``(3, m)``): voxel index from the padded linear index, entry ``t`` from the
    entry face (``entered``: per ray whether it came in through a face at t > 0; None: all did)."""
    idx = torch.stack([lin // strides[0], (lin % strides[0]) // strides[1], lin % strides[1]], 1) - 1
    a = axis[None]
    ga, da = g.gather(0, a)[0].double(), gd.gather(0, a)[0].double()
    face = idx.gather(1, axis[:, None])[:, 0].double() + (da < 0).double()
    t = (face - ga) / da
    if entered is not None:
        t = torch.where(entered, t, t0.double())
    out["hit"][rows] = True
    out["voxel"][rows] = idx + lo
    out["axis"][rows] = axis
    out["sign"][rows] = torch.where(da > 0, -1, 1).to(torch.int8)
    out["t"][rows] = t.clamp(min=0.0)


# -------------------------------------------------------------------------------------- rendering


def _pixel_directions(size: int, focal: float, supersample: int) -> torch.Tensor:
    """Camera-space ray directions ``(size * size * s * s, 3)`` float64, pixel-major (row, column, sub-ray)."""
    s = supersample
    sub = (torch.arange(s, dtype=torch.float64) + 0.5) / s  # offsets inside the pixel
    coords = (torch.arange(size, dtype=torch.float64)[:, None] + sub[None, :]).reshape(-1)  # (size * s,)
    # coords[p * s + a] = p + (a + 0.5) / s
    x = (coords - size / 2) / focal
    y = -(coords - size / 2) / focal
    # order: v (row), sub-row, u (column), sub-column -> rearranged to (v, u, sub-row, sub-col)
    dx = x.view(size, s)[None, None, :, None, :].expand(size, s, size, 1, s)
    dy = y.view(size, s)[:, :, None, None, None].expand(size, s, size, 1, s)
    dirs = torch.stack([dx, dy, -torch.ones_like(dx)], -1)[..., 0, :, :]  # (v, sr, u, sc, 3)
    return dirs.permute(0, 2, 1, 3, 4).reshape(-1, 3)


def _candidate_pixels(occ: torch.Tensor, poses: torch.Tensor, focal: float, size: int) -> torch.Tensor:
    """``(V * size * size,)`` bool: pixels (row-major per view) whose rays may hit the occupied voxels.

    The rectangle (plus a one-pixel margin) around the projections of the 8 corners of the occupied
    bounding box; every pixel of a view that has a corner at or behind the camera plane.
    """
    v = len(poses)
    filled = occ.nonzero()
    if not len(filled):
        return torch.zeros(v * size * size, dtype=torch.bool)
    corner, vsize = _grid_frame(occ.shape)
    lo = corner + filled.min(0).values.double() * vsize
    hi = corner + (filled.max(0).values + 1).double() * vsize
    bits = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in range(8)], dtype=torch.float64)
    corners = lo + bits * (hi - lo)  # (8, 3)
    rel = corners[None] - poses[:, None, :3, 3]  # (V, 8, 3)
    local = torch.einsum("vji,vcj->vci", poses[:, :3, :3], rel)  # R^T (X - c): camera coordinates
    depth = -local[..., 2]
    front = (depth > 1e-9).all(1)  # (V,)
    dz = depth.clamp(min=1e-9)
    u = focal * local[..., 0] / dz + size / 2 - 0.5  # pixel-centre coordinates
    w = -focal * local[..., 1] / dz + size / 2 - 0.5
    inf = torch.tensor(float(size + 2), dtype=torch.float64)
    u0 = torch.where(front, u.min(1).values.floor() - 1, -inf)
    u1 = torch.where(front, u.max(1).values.ceil() + 1, inf)
    w0 = torch.where(front, w.min(1).values.floor() - 1, -inf)
    w1 = torch.where(front, w.max(1).values.ceil() + 1, inf)
    ar = torch.arange(size, dtype=torch.float64)
    cols = (ar >= u0[:, None]) & (ar <= u1[:, None])  # (V, W)
    rows = (ar >= w0[:, None]) & (ar <= w1[:, None])  # (V, H)
    return (rows[:, :, None] & cols[:, None, :]).reshape(-1)


def render_voxels(occupancy: torch.Tensor, poses: np.ndarray, focal: float, size: int, *,
                  light: Sequence[float] = DEFAULT_LIGHT, ambient: float = 0.3,
                  albedo: Sequence[float] = (0.8, 0.8, 0.8), headlight: float = 0.25, supersample: int = 1,
                  chunk: int = _RAY_CHUNK) -> np.ndarray:
    """Render an occupancy grid from ``V`` cameras into RGBA images (conventions: module docstring).

    Args:
        occupancy: ``(X, Y, Z)`` bool occupancy, array axes ``[x, y, z]``, placed in the world cube.
        poses: ``(V, 4, 4)`` camera-to-world matrices (OpenGL convention).
        focal: focal length in pixels (> 0).
        size: image height = width ``H = W`` in pixels.
        light: direction towards the key light, world coordinates (normalised here).
        ambient: ambient term in ``[0, 1]``.
        albedo: RGB albedo in ``[0, 1]``.
        headlight: weight in ``[0, 1]`` of the light along each camera's ``+z`` axis (0: key light only).
        supersample: ``s >= 1``: average ``s x s`` sub-pixel rays per pixel (alpha included).
        chunk: rays traced at a time (bounds memory).

    Returns:
        ``(V, size, size, 4)`` uint8 RGBA; background ``(255, 255, 255, 0)``, hits alpha 255.
    """
    p = torch.as_tensor(np.asarray(poses, dtype=np.float64)).reshape(-1, 4, 4)
    if not torch.isfinite(p).all():
        raise ValueError("poses must be finite")
    if not (math.isfinite(focal) and focal > 0):
        raise ValueError(f"focal must be finite and > 0, got {focal!r}")
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(supersample, bool) or int(supersample) != supersample or supersample < 1:
        raise ValueError(f"supersample must be a positive integer, got {supersample!r}")
    if not 0.0 <= ambient <= 1.0 or not 0.0 <= headlight <= 1.0:
        raise ValueError(f"ambient and headlight must be in [0, 1], got {ambient!r}, {headlight!r}")
    lvec = torch.tensor([float(c) for c in light], dtype=torch.float64)
    if lvec.shape != (3,) or not torch.isfinite(lvec).all() or lvec.norm() == 0:
        raise ValueError(f"light must be a finite non-zero 3-vector, got {light!r}")
    lvec = lvec / lvec.norm()
    alb = torch.tensor([float(c) for c in albedo], dtype=torch.float64)
    if alb.shape != (3,) or not ((alb >= 0) & (alb <= 1)).all():
        raise ValueError(f"albedo must be 3 values in [0, 1], got {albedo!r}")
    size, s = int(size), int(supersample)
    occ = torch.as_tensor(occupancy).bool()
    if occ.ndim != 3 or min(occ.shape) < 1:
        raise ValueError(f"occupancy must be (X, Y, Z), got shape {tuple(occ.shape)}")
    n_pix = size * size * s * s
    group = max(1, _RENDER_RAYS // n_pix)  # views per batch: bounds the memory of large images
    img = np.empty((len(p), size, size, 4), dtype=np.uint8)
    for start in range(0, len(p), group):
        img[start:start + group] = _render_views(occ, p[start:start + group], float(focal), size, s, lvec, alb,
                                                 float(ambient), float(headlight), chunk)
    return img


def _render_views(occ: torch.Tensor, p: torch.Tensor, focal: float, size: int, s: int, lvec: torch.Tensor,
                  alb: torch.Tensor, ambient: float, headlight: float, chunk: int) -> np.ndarray:
    """:func:`render_voxels` of the views ``p`` ``(V, 4, 4)`` float64 (arguments checked) -> ``(V, size, size, 4)``."""
    v = len(p)
    cam = _pixel_directions(size, focal, s)  # (P s^2, 3), P = size^2 pixels, s^2 rays each
    n_pix = len(cam)
    rot = p[:, :3, :3]
    # only the pixels inside the projected bounding box of the occupied voxels cast rays
    pixels = _candidate_pixels(occ, p, focal, size).nonzero()[:, 0]  # into V * size^2
    ids = (pixels[:, None] * (s * s) + torch.arange(s * s)).reshape(-1)  # into V * P s^2
    view = ids // n_pix
    # rays in the (3, n) layout, float32: R @ d_cam of their view, origins the camera centres
    dirs = torch.matmul(rot.float(), cam.T.float()).permute(1, 0, 2).reshape(3, -1).index_select(1, ids)
    origins = p[:, :3, 3].float().T.index_select(1, view)
    res = _trace(occ, origins, dirs, chunk)
    hit_local = res["hit"].nonzero()[:, 0]
    rows = ids.index_select(0, hit_local)
    res = {k: res[k].index_select(0, hit_local) for k in ("axis", "sign")}
    # flat shading: one colour per (view, face) -> a (V, 3 axes, 2 signs) lookup table of RGB in [0, 255]
    faces = torch.zeros(2, 3, 3, dtype=torch.float64)  # [sign index, axis] -> normal (sign index 0: -e, 1: +e)
    faces[0] = -torch.eye(3, dtype=torch.float64)
    faces[1] = torch.eye(3, dtype=torch.float64)
    key = (faces @ lvec).clamp(min=0)  # (2, 3)
    head = torch.einsum("sai,vi->vsa", faces, rot[:, :, 2]).clamp(min=0)  # (V, 2, 3)
    shade = ambient + (1 - ambient) * ((1 - headlight) * key[None] + headlight * head)
    lut = ((alb * shade[..., None]).clamp(0, 1) * 255.0).reshape(-1, 3)  # (V * 6, 3)
    axis = res["axis"]
    positive = (res["sign"] > 0).to(torch.int64)
    face_id = (rows // n_pix) * 6 + positive * 3 + axis
    if s == 1:
        img = torch.tensor([255, 255, 255, 0], dtype=torch.uint8).repeat(v * n_pix, 1)
        img[rows, :3] = lut[face_id].round().to(torch.uint8)
        img[rows, 3] = 255
        return img.view(v, size, size, 4).numpy()
    premul = torch.zeros(v * n_pix, 4, dtype=torch.float32)  # colour * alpha, alpha in [0, 1]
    premul[rows, :3] = lut[face_id].float()
    premul[rows, 3] = 1.0
    premul = premul.view(v, size, size, s * s, 4).mean(3)
    a = premul[..., 3:]
    straight = torch.where(a > 0, premul[..., :3] / a.clamp(min=1e-12), torch.full_like(premul[..., :3], 255.0))
    img = torch.cat([straight, a * 255.0], -1)
    return img.round().clamp(0, 255).to(torch.uint8).numpy()


# ----------------------------------------------------------------------------------- scene folders


def scene_split(name: str, test_fraction: float) -> str:
    """``"test"`` or ``"train"``: the loaders' hashed split of scene names (:func:`functa.data.scenes.is_test_name`),
    so a folder without ``train/``/``test/`` sub-folders would split the same way."""
    return "test" if is_test_name(name, test_fraction) else "train"


def _scene_seed(seed: int, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"functa-scene:{int(seed)}:{int(index)}".encode()).digest()[:8], "little")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _png_bytes(rgba: np.ndarray) -> bytes:
    """PNG (RGBA, 8-bit) of an ``(H, W, 4)`` uint8 image."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def _check_args(seed: int, views: int, size: int, limit: int | None, test_fraction: float, radius: float,
                camera_angle_x: float, near: float, far: float, supersample: int) -> None:
    def integer(x: Any) -> bool:
        return not isinstance(x, bool) and isinstance(x, (int, np.integer))

    if not integer(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not integer(views) or views < 1:
        raise ValueError(f"views must be an integer >= 1, got {views!r}")
    if not integer(size) or not 8 <= size <= 1024:
        raise ValueError(f"size must be an integer in 8..1024, got {size!r}")
    if limit is not None and (not integer(limit) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if not integer(supersample) or not 1 <= supersample <= 8:
        raise ValueError(f"supersample must be an integer in 1..8, got {supersample!r}")
    if not (isinstance(test_fraction, (int, float)) and 0.0 <= test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    half_diag = math.sqrt(3) / 2
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > half_diag):
        raise ValueError(f"radius must be > sqrt(3)/2 = {half_diag:.4f} (cameras outside the unit cube), "
                         f"got {radius!r}")
    if not (isinstance(camera_angle_x, (int, float)) and 0.0 < camera_angle_x < math.pi):
        raise ValueError(f"camera_angle_x must be in (0, pi) radians, got {camera_angle_x!r}")
    if not (isinstance(near, (int, float)) and isinstance(far, (int, float)) and math.isfinite(far)
            and 0.0 < near < far):
        raise ValueError(f"need 0 < near < far (finite), got near={near!r}, far={far!r}")
    if near > radius - half_diag or far < radius + half_diag:
        raise ValueError(
            f"near={near} / far={far} would clip the unit cube seen from radius {radius}: need "
            f"near <= {radius - half_diag:.4f} and far >= {radius + half_diag:.4f}"
        )


def build_modelnet_scenes(source: str | Path, out: str | Path, *, views: int = 50, size: int = 64,
                          limit: int | None = None, classes: Sequence[str] | None = None,
                          test_fraction: float = 0.1, seed: int = 0, radius: float = 1.7,
                          camera_angle_x: float = 0.75, near: float = 0.8, far: float = 2.6,
                          hemisphere: bool = False, supersample: int = 1, progress: bool = True) -> dict:
    """Render every shape of a voxel dataset into a NeRF Blender scene folder (module docstring).

    Args:
        source: a ``voxel-npz`` (``voxels`` ``(M, X, Y, Z)``, ``label`` ``(M,)``, ``class_names``) or anything
            :func:`functa.data.load_dataset` loads as voxels ``(M, X, Y, Z)``.
        out: output directory (created; locked with :func:`functa.atomic.output_lock` while building).
        views: views per scene (``>= 1``), cameras from :func:`sphere_cameras` seeded per scene by
            ``(seed, index)``.
        size: image width = height in pixels (8..1024).
        limit: only the first ``limit`` shapes (after the class filter).
        classes: only shapes of these class names (e.g. ``["chair"]``); needs labels and class names.
        test_fraction: fraction of scenes (by hashed name, :func:`scene_split`) put in ``test/``.
        seed: base seed of the cameras.
        radius: camera distance from the origin (``> sqrt(3)/2``).
        camera_angle_x: horizontal field of view in radians; ``focal = 0.5 * size / tan(0.5 * camera_angle_x)``.
        near, far: ray bounds stored in the json; must enclose the unit cube (``near <= radius - sqrt(3)/2``,
            ``far >= radius + sqrt(3)/2``).
        hemisphere: cameras on the upper hemisphere only.
        supersample: ``s x s`` rays per pixel (:func:`render_voxels`).
        progress: show a tqdm bar over shapes.

    Returns:
        ``{"out", "scenes" (selected by this call), "rendered", "skipped", "counts": {split: {class: n}}
        (of this call's selection), "counts_on_disk" (all complete scenes under ``out``, as in
        ``builder.json``), "seconds", "seconds_per_rendered_scene" (render + write, or None)}``.

    Raises:
        ValueError: bad arguments, unknown class names, or ``out`` built before with other render settings.
    """
    from . import load_dataset

    _check_args(seed, views, size, limit, test_fraction, radius, camera_angle_x, near, far, supersample)
    started = time.perf_counter()
    ds = load_dataset(source, "all", progress=False)
    if ds.meta.get("kind") != "voxel" or np.asarray(ds.data).ndim != 4:
        raise ValueError(f"{source}: expected voxel occupancy grids (M, X, Y, Z), got {ds.meta.get('format')}")
    data = ds.data
    m = len(data)
    names_of_class = ds.meta.get("class_names")
    labels = None if ds.labels is None else np.asarray(ds.labels)
    if labels is None:
        cls = ["shape"] * m
    elif names_of_class is None:
        cls = [f"class{int(lab)}" for lab in labels]
    else:
        cls = [str(names_of_class[int(lab)]) for lab in labels]
    bad = sorted({c for c in cls if not _NAME.fullmatch(c)})
    if bad:
        raise ValueError(f"{source}: class names {bad} cannot name scene folders (use letters, digits, '_', '-', '.')")
    indices = list(range(m))
    wanted = None
    if classes is not None:
        wanted = [str(c) for c in ([classes] if isinstance(classes, str) else classes)]
        present = sorted(set(cls))
        unknown = [c for c in wanted if c not in present]
        if unknown:
            raise ValueError(f"{source}: no shapes of class(es) {unknown}; present: {present}")
        indices = [i for i in indices if cls[i] in wanted]
    if limit is not None:
        indices = indices[: int(limit)]
    files = ds.meta.get("files") or [source]
    src_file = Path(files[0])
    focal = 0.5 * size / math.tan(0.5 * camera_angle_x)
    render = {"light": list(DEFAULT_LIGHT), "ambient": 0.3, "albedo": [0.8, 0.8, 0.8], "headlight": 0.25,
              "supersample": int(supersample)}
    settings = {
        "builder_version": _BUILDER_VERSION, "source_sha256": _file_sha256(src_file) if src_file.is_file() else None,
        "views": int(views), "size": int(size), "test_fraction": float(test_fraction), "seed": int(seed),
        "radius": float(radius), "camera_angle_x": float(camera_angle_x), "focal": focal, "near": float(near),
        "far": float(far), "hemisphere": bool(hemisphere), "render": render, "camera_convention": "opengl",
    }  # fmt: skip
    out = Path(out)
    rendered = skipped = 0
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    render_seconds = 0.0
    with output_lock(out, clean=False):
        remove_stale_tmp(out, depth=3)
        builder_path = out / "builder.json"
        if builder_path.is_file():
            try:
                old = json.loads(builder_path.read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{builder_path}: unreadable ({e}); use a new output directory") from None
            if old.get("settings") != json.loads(json.dumps(settings)):
                raise ValueError(f"{out} was built with other settings (see {builder_path}); "
                                 "use a new output directory or the same settings")
        record = {"source": str(src_file), "settings": settings, "selection": {"classes": wanted, "limit": limit},
                  "complete": False}
        atomic_write_bytes(builder_path, _json_bytes(record))
        bar = None
        pool = ThreadPoolExecutor(_WRITE_THREADS, thread_name_prefix="scene-writer")
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(indices), desc="scenes", unit="shape")
        pending = None  # the scene whose images are being written while the next one renders
        loop_started = time.perf_counter()
        try:
            for i in indices:
                name = f"{cls[i]}_{i:04d}"
                split = scene_split(name, test_fraction)
                counts[split][cls[i]] = counts[split].get(cls[i], 0) + 1
                folder = out / split / name
                json_path = folder / "transforms_train.json"
                if json_path.is_file():
                    skipped += 1
                else:
                    job = _start_scene(folder, torch.from_numpy(np.asarray(data[i])).bool(), views, size, focal,
                                       camera_angle_x, near, far, radius, _scene_seed(seed, i), hemisphere, render,
                                       pool)
                    if pending is not None:
                        _finish_scene(pending)
                    pending = job
                    rendered += 1
                if bar is not None:
                    bar.update(1)
            if pending is not None:
                _finish_scene(pending)
            render_seconds = time.perf_counter() - loop_started
        finally:
            pool.shutdown(wait=True)
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - started
        on_disk = _complete_scenes(out)
        record.update({"complete": True, "counts": on_disk, "scenes": sum(sum(c.values()) for c in on_disk.values()),
                       "last_run": {"scenes": len(indices), "rendered": rendered, "skipped": skipped,
                                    "counts": counts, "seconds": round(seconds, 3)}})
        atomic_write_bytes(builder_path, _json_bytes(record))
    return {"out": str(out), "scenes": len(indices), "rendered": rendered, "skipped": skipped, "counts": counts,
            "counts_on_disk": on_disk, "seconds": seconds,
            "seconds_per_rendered_scene": render_seconds / rendered if rendered else None}


def _complete_scenes(out: Path) -> dict[str, dict[str, int]]:
    """``{split: {class: n}}`` of the scene folders under ``out`` that hold their json (complete ones)."""
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    for split in counts:
        root = out / split
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and (folder / "transforms_train.json").is_file():
                cls = folder.name.rsplit("_", 1)[0]
                counts[split][cls] = counts[split].get(cls, 0) + 1
    return counts


def _start_scene(folder: Path, occ: torch.Tensor, views: int, size: int, focal: float, camera_angle_x: float,
                 near: float, far: float, radius: float, seed: int, hemisphere: bool, render: dict,
                 pool: ThreadPoolExecutor) -> tuple[list[Future], Path, bytes]:
    """Render one scene and start writing its images in ``pool``; returns what :func:`_finish_scene` needs."""
    poses = look_at_poses(sphere_cameras(views, radius, seed, hemisphere))
    images = render_voxels(occ, poses, focal, size, light=render["light"], ambient=render["ambient"],
                           albedo=render["albedo"], headlight=render["headlight"], supersample=render["supersample"])
    pngs = [_png_bytes(image) for image in images]  # encoded here: in the threads they would contend for the GIL
    folder.mkdir(parents=True, exist_ok=True)
    # each image: temporary file, fsync, rename (atomic_write_bytes); in threads, so that the fsyncs overlap
    # with each other and with rendering the next scene
    futures = [pool.submit(atomic_write_bytes, folder / f"r_{k}.png", pngs[k]) for k in range(views)]
    frames = [{"file_path": f"./r_{k}", "transform_matrix": poses[k].astype(np.float64).tolist()}
              for k in range(views)]
    meta = {"camera_angle_x": float(camera_angle_x), "near": float(near), "far": float(far),
            "camera_convention": "opengl", "frames": frames}
    return futures, folder / "transforms_train.json", _json_bytes(meta)


def _finish_scene(job: tuple[list[Future], Path, bytes]) -> None:
    """Wait for a scene's images (re-raising a failed write), then write its json: last, it marks the scene complete."""
    futures, json_path, data = job
    for future in futures:
        future.result()
    atomic_write_bytes(json_path, data)
