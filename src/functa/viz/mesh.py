"""Triangle meshes of 3-D occupancy fields, and their export to ``.obj`` / ``.ply``.

Shapes:

* ``values``: ``(X, Y, Z)`` float in ``[0, 1]`` (occupancy probability, or hard ``{0, 1}``);
  array axes are ``[x, y, z]``.
* ``vertices``: ``(V, 3)`` float32, columns ``x, y, z``.
* ``faces``: ``(F, 3)`` int64 indices into ``vertices``, wound counter-clockwise seen from outside
  (normals point out of the occupied region).

Coordinates follow the functa paper (appendix A.1): voxel ``i`` along an axis of length ``N`` sits
at its centre ``(i + 0.5) / N``, so the field lives in ``[0, 1]^3`` whatever its resolution and a
32³ and a 128³ mesh of the same field overlay.

scikit-image (marching cubes) and trimesh (export) are optional dependencies, imported inside the
functions: ``pip install 'functa[mesh]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ._common import as_volume

__all__ = ["MESH_FORMATS", "occupancy_mesh", "write_mesh"]

#: File suffixes :func:`write_mesh` understands.
MESH_FORMATS = (".obj", ".ply")

_MISSING = "mesh export needs scikit-image and trimesh: pip install 'functa[mesh]'"


def _require(module: str):
    """Import an optional dependency, or raise ImportError with the install hint."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(_MISSING) from e


def _voxel_size(shape: tuple[int, ...], spacing: float | Sequence[float] | None) -> np.ndarray:
    if spacing is None:
        return 1.0 / np.asarray(shape, dtype=np.float64)
    size = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if not np.all(np.isfinite(size) & (size > 0)):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    return size


def _empty_mesh() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)


def occupancy_mesh(
    values: np.ndarray, level: float = 0.5, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The iso-surface ``values == level`` of an occupancy grid, by marching cubes.

    Args:
        values: ``(X, Y, Z)`` occupancy in ``[0, 1]``; ``>= level`` is inside.
        level: iso-level, ``> 0`` (the grid is padded with zeros, which must count as outside).
        spacing: size of one voxel along each axis (a number or three), in output units. ``None``
            (default) is ``1 / (X, Y, Z)``, i.e. voxel centres at ``(i + 0.5) / N`` in ``[0, 1]^3``.
            In general voxel ``i`` sits at ``(i + 0.5) * spacing``.

    Returns:
        ``(vertices (V, 3) float32, faces (F, 3) int64)``. The grid is padded with one layer of
        zeros first, so shapes touching the border give closed surfaces. A grid with no voxel on
        either side of ``level`` (all outside, or all inside) gives an empty mesh ``V = F = 0``.

    Raises:
        ImportError: scikit-image is not installed.
        ValueError: ``values`` is not a finite 3-D grid, or ``level``/``spacing`` are invalid.
    """
    vol = as_volume(values)
    if not (np.isfinite(level) and level > 0):
        raise ValueError(f"level must be > 0 (the zero padding is outside), got {level!r}")
    size = _voxel_size(vol.shape, spacing)
    measure = _require("skimage.measure")
    inside = vol >= level
    if not inside.any() or inside.all():
        return _empty_mesh()
    padded = np.pad(vol, 1, mode="constant", constant_values=0.0)
    verts, faces, _, _ = measure.marching_cubes(padded, level=float(level), allow_degenerate=False)
    # Padded index j is voxel j - 1, whose centre is (j - 1 + 0.5) * size.
    vertices = ((verts.astype(np.float64) - 0.5) * size).astype(np.float32)
    # marching_cubes winds its triangles clockwise seen from the high (inside) values: flip them so
    # that the normals point outward (positive signed volume).
    return vertices, faces[:, ::-1].astype(np.int64)


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices)
    f = np.asarray(faces)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (f.size and not np.issubdtype(f.dtype, np.integer)):
        raise ValueError(f"faces must be an integer array of shape (F, 3), got {f.shape} {f.dtype}")
    if len(v) == 0 or len(f) == 0:
        raise ValueError("cannot write an empty mesh (no vertices or no faces)")
    if f.min() < 0 or f.max() >= len(v):
        raise ValueError(f"face indices must lie in [0, {len(v)}), got [{f.min()}, {f.max()}]")
    if not np.all(np.isfinite(v)):
        raise ValueError("vertices contain NaN or infinity")
    return v, f.astype(np.int64)


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a triangle mesh as ``.obj`` (text) or ``.ply`` (binary), chosen by the suffix.

    Exported with trimesh (``process=False``: vertices and faces are written as given) and written
    atomically (temporary file in the same directory, then :func:`os.replace`).

    An empty mesh (``V == 0`` or ``F == 0``, e.g. from an empty grid) raises ``ValueError`` rather
    than writing a file that loads back as something other than a mesh; check ``len(faces)`` first.

    Returns the path written. Raises ``ValueError`` for another suffix or an invalid/empty mesh,
    ``ImportError`` when trimesh is not installed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh suffix {path.suffix!r}: use one of {', '.join(MESH_FORMATS)}")
    v, f = _check_mesh(vertices, faces)
    trimesh = _require("trimesh")
    data = trimesh.Trimesh(vertices=v, faces=f, process=False).export(file_type=suffix[1:])
    if isinstance(data, str):
        data = data.encode("utf-8")
    return atomic_write_bytes(path, data)
