"""Modalities: how data items become coordinates and features, and back."""

from .base import (FieldDataset, Modality, PatchDataset, available_modalities, get_modality, grid_centres,
                   modality_from_config, register_modality)
from .image import ImageModality, image_coordinates
from .sphere import SphereModality, latitude_weights, sphere_coordinates

__all__ = [
    "FieldDataset",
    "ImageModality",
    "Modality",
    "PatchDataset",
    "SphereModality",
    "available_modalities",
    "get_modality",
    "grid_centres",
    "image_coordinates",
    "latitude_weights",
    "modality_from_config",
    "register_modality",
    "sphere_coordinates",
]
