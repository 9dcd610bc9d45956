"""Posed views of many scenes (NeRF data): the container every scene loader returns.

A :class:`SceneDataset` is an :class:`~functa.data.ArrayDataset` whose items are scenes:

* ``data``: ``(S, V, H, W, 3)`` uint8 RGB views, already composited on white where the source had alpha
  (``rgb * a + (1 - a)``, the NeRF convention);
* ``poses``: ``(S, V, 4, 4)`` float32 camera-to-world matrices in the **OpenGL** convention (the camera
  looks down its ``-z`` axis, ``+y`` is up, ``+x`` right), whatever convention the source used;
* ``focal``: ``(S, V)`` float32 focal lengths in pixels (square pixels, principal point at the image
  centre).

``meta`` holds ``kind = "scene"``, ``near`` and ``far`` (ray bounds, scene units), ``convention`` (of the
source, e.g. ``"opengl"`` or ``"opencv"``), ``near_far`` (``"dataset"``: stored with the data, or
``"default"``: derived from the camera distances), ``names`` (one per scene), plus ``source``, ``format``
and ``split``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DataError
from .dataset import ArrayDataset

__all__ = ["SceneDataset", "check_rotations", "opencv_to_opengl", "default_near_far"]

ROTATION_ATOL = 1e-3  # |R^T R - I| and |det R - 1| above this: not a rotation


@dataclass(eq=False)
class SceneDataset(ArrayDataset):
    """Scenes ``(S, V, H, W, 3)`` uint8 with their cameras (see the module docstring)."""

    poses: np.ndarray | None = None
    focal: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        where = self.meta.get("source", "scenes")
        if self.data.ndim != 5 or self.data.shape[-1] != 3 or self.data.dtype != np.uint8:
            raise DataError(f"{where}: scene views must be (S, V, H, W, 3) uint8, got {self.data.shape} {self.data.dtype}")
        s, v = self.data.shape[:2]
        if self.poses is None or self.focal is None:
            raise DataError(f"{where}: scene views need poses and focal lengths")
        self.poses = np.ascontiguousarray(self.poses, dtype=np.float32)
        self.focal = np.ascontiguousarray(np.broadcast_to(np.asarray(self.focal, np.float32), (s, v)))
        if self.poses.shape != (s, v, 4, 4):
            raise DataError(f"{where}: {s} scenes of {v} views need poses (S, V, 4, 4), got {self.poses.shape}")
        if not (np.isfinite(self.poses).all() and np.isfinite(self.focal).all() and (self.focal > 0).all()):
            raise DataError(f"{where}: poses and focal lengths must be finite, with focal > 0")
        near, far = self.meta.get("near"), self.meta.get("far")
        if not (isinstance(near, (int, float)) and isinstance(far, (int, float)) and 0 <= near < far < np.inf):
            raise DataError(f"{where}: scenes need ray bounds 0 <= near < far, got near={near!r}, far={far!r}")
        check_rotations(self.poses.reshape(-1, 4, 4), where)
        self.meta.setdefault("kind", "scene")

    @property
    def num_views(self) -> int:
        return int(self.data.shape[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every view."""
        return int(self.data.shape[2]), int(self.data.shape[3])

    @property
    def near(self) -> float:
        return float(self.meta["near"])

    @property
    def far(self) -> float:
        return float(self.meta["far"])

    def cameras(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        """``poses (B, V, 4, 4)`` and ``focal (B, V)`` of the scenes ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        return self.poses[idx], self.focal[idx]

    def subset(self, indices: Any) -> "SceneDataset":
        idx = np.arange(len(self))[indices] if isinstance(indices, slice) else np.asarray(indices, np.int64).reshape(-1)
        meta = dict(self.meta)
        if isinstance(meta.get("names"), list):
            meta["names"] = [meta["names"][i] for i in idx]
        labels = None if self.labels is None else self.labels[idx]
        return SceneDataset(self._read(idx), labels, meta, poses=self.poses[idx], focal=self.focal[idx])

    def __repr__(self) -> str:
        return (f"SceneDataset(scenes={len(self)}, views={self.num_views}, image={self.image_shape}, "
                f"near={self.near:g}, far={self.far:g}, format={self.meta.get('format', '?')!r}, "
                f"split={self.meta.get('split', '?')!r})")


def check_rotations(poses: np.ndarray, where: str) -> None:
    """Refuse camera-to-world matrices ``(K, 4, 4)`` whose 3x3 block is not a rotation (orthonormal,
    determinant +1) or whose last row is not ``(0, 0, 0, 1)``; the message names the first bad one."""
    r = poses[:, :3, :3].astype(np.float64)
    err = np.abs(np.einsum("kij,kil->kjl", r, r) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(r)
    bottom = np.abs(poses[:, 3] - np.array([0, 0, 0, 1], np.float32)).max(axis=1)
    bad = np.flatnonzero((err > ROTATION_ATOL) | (np.abs(det - 1) > ROTATION_ATOL) | (bottom > ROTATION_ATOL))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{where}: pose {k} is not a camera-to-world rigid transform (|R^T R - I| = {err[k]:.3g}, "
                        f"det R = {det[k]:.4g}, last row {poses[k, 3].tolist()}); rotations must be orthonormal "
                        f"with determinant +1 ({len(bad)} bad pose(s))")


def opencv_to_opengl(poses: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices ``(..., 4, 4)`` of OpenCV cameras (looking down ``+z``, ``+y`` down, as SRN
    stores them) as OpenGL cameras: right-multiplied by ``diag(1, -1, -1, 1)`` (the functa SRN converter)."""
    return poses * np.array([1, -1, -1, 1], dtype=poses.dtype)[None, :]


def default_near_far(poses: np.ndarray) -> tuple[float, float]:
    """Ray bounds for data that stores none: ``0.5 * min`` and ``1.5 * max`` of the camera distances from
    the origin (NeRF's Blender scenes: cameras at 4.03, bounds 2 / 6)."""
    d = np.linalg.norm(poses[..., :3, 3].reshape(-1, 3).astype(np.float64), axis=1)
    return float(0.5 * d.min()), float(1.5 * d.max())
