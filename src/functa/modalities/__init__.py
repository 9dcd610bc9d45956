"""Modalities: how data items become coordinates and features, and back."""

from .base import (Augmentation, FieldDataset, Modality, ModalityBase, PatchDataset, available_modalities,
                   detect_modality, get_modality, grid_centres, modality_by_code, modality_from_config,
                   register_modality)
from .audio import AudioMetrics, AudioModality, audio_coordinates
from .image import ImageModality, image_coordinates
from .masks import MASKS, grid_mask
from .scene import SceneModality, SceneRays, SceneViews
from .sphere import SphereModality, latitude_weights, sphere_coordinates
from .voxel import OccupancyMetrics, VoxelModality, VoxelRescale, depth_scan_mask, voxel_coordinates
from .volume import VolumeModality

__all__ = [
    "AudioMetrics",
    "AudioModality",
    "Augmentation",
    "FieldDataset",
    "ImageModality",
    "MASKS",
    "Modality",
    "ModalityBase",
    "OccupancyMetrics",
    "PatchDataset",
    "SceneModality",
    "SceneRays",
    "SceneViews",
    "SphereModality",
    "VolumeModality",
    "VoxelModality",
    "VoxelRescale",
    "audio_coordinates",
    "available_modalities",
    "depth_scan_mask",
    "detect_modality",
    "get_modality",
    "grid_centres",
    "grid_mask",
    "image_coordinates",
    "latitude_weights",
    "modality_by_code",
    "modality_from_config",
    "register_modality",
    "sphere_coordinates",
    "voxel_coordinates",
]
