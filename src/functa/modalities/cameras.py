"""Pinhole cameras: rays through pixels, and camera paths around a scene.

Poses are camera-to-world matrices ``(..., 4, 4)`` in the OpenGL convention (the camera looks down
its ``-z`` axis, ``+y`` up, ``+x`` right; :mod:`functa.data.scene_dataset`). Pixel ``(u, v)`` (column,
row) of an ``H x W`` view with focal length ``f`` (pixels) has the camera-space direction
``((u + c - W/2) / f, -(v + c - H/2) / f, -1)`` with ``c = 1/2`` (rays through pixel centres, the
default) or ``c = 0`` (functa Listing 1 and the official code: rays through pixel corners). Directions
are not normalised (their ``z`` is ``-1``), so a ray's depth ``t`` is its distance along the optical axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..data.scene_builder import look_at_poses

__all__ = ["pixel_rays", "orbit_poses"]


def pixel_rays(poses: Tensor, focal: Tensor, height: int, width: int, pixels: Tensor, *,
               pixel_centres: bool = True) -> tuple[Tensor, Tensor]:
    """Ray origins and directions ``(..., K, 3)`` through the flat pixel indices ``pixels (..., K)``
    (row-major, ``v * W + u``) of views with ``poses (..., 4, 4)`` and ``focal (...)``."""
    c = 0.5 if pixel_centres else 0.0
    u = (pixels % width).to(poses.dtype)
    v = torch.div(pixels, width, rounding_mode="floor").to(poses.dtype)
    f = focal[..., None].to(poses.dtype)
    d_cam = torch.stack([(u + c - 0.5 * width) / f, -(v + c - 0.5 * height) / f, -torch.ones_like(u)], -1)
    directions = torch.einsum("...ij,...kj->...ki", poses[..., :3, :3], d_cam)
    origins = poses[..., None, :3, 3].expand_as(directions)
    return origins, directions


def orbit_poses(count: int, radius: float, up: tuple[float, float, float] = (0.0, 0.0, 1.0),
                elevation_deg: float = 30.0, start_deg: float = 0.0) -> np.ndarray:
    """A turntable: ``count`` cameras ``(count, 4, 4)`` evenly spaced in azimuth on a circle of
    ``radius`` at ``elevation_deg`` above the plane normal to ``up``, all looking at the origin."""
    if count < 1:
        raise ValueError(f"a turntable needs at least one view, got {count}")
    up_v = np.asarray(up, np.float64) / np.linalg.norm(up)
    a = np.array([1.0, 0.0, 0.0]) if abs(up_v[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = a - (a @ up_v) * up_v
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(up_v, e1)
    az = np.deg2rad(start_deg) + 2 * math.pi * np.arange(count) / count
    el = math.radians(elevation_deg)
    centres = radius * (math.cos(el) * (np.cos(az)[:, None] * e1 + np.sin(az)[:, None] * e2) + math.sin(el) * up_v)
    return look_at_poses(centres, up_v)
