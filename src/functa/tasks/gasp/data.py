"""Datasets as point clouds for GASP: coordinates and features in ``[-1, 1]`` (thesis App. 2.A.2).

Any modality with a point-cloud view serves: its grid coordinates are mapped from the modality's
:meth:`~functa.modalities.Modality.coordinate_box` to ``[-1, 1]`` (pixel and voxel centres, the
sphere's unit vectors unchanged, as the thesis' 3-D coordinates of the ERA5 grids), and its features
(``[0, 1]``: images, occupancies, min-max normalised fields) to ``2 y - 1``. The generator's ``tanh``
output is mapped back by :meth:`PointClouds.to_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError

__all__ = ["PointClouds", "point_coordinates", "sample_features", "to_data"]


def point_coordinates(modality: Any, shape: tuple[int, ...] | None = None) -> Tensor:
    """The modality's grid coordinates (native grid, or ``shape``) in ``[-1, 1]``: ``(N, in_dim)``.

    Where each coordinate axis is a grid axis (images, voxels, volumes, audio), the axes are scaled by
    the native grid's aspect (``size / max size``, as the public code divides every axis by one size),
    so neighbours are equally spaced along every axis and the longest axis spans ``[-1, 1]``."""
    box = modality.coordinate_box()
    if box is None:
        raise ConfigError(f"GASP needs data with a coordinate grid; {modality.name} items have none "
                          "(scenes are seen through rays of posed views)")
    lo, hi = box
    x = (modality.coordinates(shape) - lo) * (2.0 / (hi - lo)) - 1.0
    native = tuple(modality.shape)
    if x.shape[-1] == len(native) and len(set(native)) > 1:
        x = x * torch.tensor([n / max(native) for n in native], dtype=x.dtype)
    return x


@dataclass
class PointClouds:
    """A dataset seen as point clouds: ``coords (N, d)`` shared by every item; :meth:`features` gathers
    items ``(B, N, C)`` in ``[-1, 1]``."""

    data: Any  # ArrayDataset
    modality: Any  # Modality

    def __post_init__(self) -> None:
        self.coords = point_coordinates(self.modality)

    def __len__(self) -> int:
        return len(self.data)

    def features(self, indices: np.ndarray) -> Tensor:
        return self.modality.to_features(self.data.take(np.asarray(indices))) * 2.0 - 1.0

    def to_data(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Generated features ``(B, N, C)`` in ``[-1, 1]`` -> items in data units on the grid ``shape``."""
        return to_data(self.modality, features, shape)


def to_data(modality: Any, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Features ``(B, N, C)`` in ``[-1, 1]`` -> the modality's items ``(B, *shape[, C])`` in data units."""
    return modality.from_features((features.float() + 1.0) * 0.5, shape)


def sample_features(generator: Any, coords: Tensor, z: Tensor, max_values: int = 2**24) -> Tensor:
    """``generator(coords, z)`` for ``coords (N, d)`` and ``z (B, latent)`` on the CPU: ``(B, N, out_dim)``.

    Latents go 64 at a time and points in chunks that keep one layer's activations below
    ``max_values`` numbers, so many samples or a 4× render of a large grid stay small; the generator
    may sit on another device."""
    device = next(generator.parameters()).device
    width = max(max(shape) for shape in generator.function.layer_shapes)
    out = []
    with torch.no_grad():
        for a in range(0, len(z), 64):
            theta = generator.weights(z[a:a + 64].to(device))
            step = max(1, max_values // (len(theta) * width))
            out.append(torch.cat([generator.function(coords[None, s:s + step].to(device), theta).cpu()
                                  for s in range(0, coords.shape[0], step)], 1))
    return torch.cat(out, 0)
