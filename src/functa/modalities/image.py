"""Images: ``(H, W, C)`` uint8 (C = 1 or 3) <-> pixel-centre coordinates in ``[0, 1]^2``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import DataError
from ..data.augment import ImageAugmentation
from ..data.folder import decode_image, open_image
from ..atomic import atomic_stream
from ..errors import ConfigError
from ..io import atomic_write_bytes
from ..validation import MAX_GRID_POINTS, Choice, Int, Real, check_fields, check_total
from .base import ModalityBase, grid_centres, register_modality

__all__ = ["ImageModality", "image_coordinates", "seam_ratio"]


def _pil_format(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}; use e.g. .png")
    return fmt


def seam_ratio(reconstruction: np.ndarray, item: np.ndarray, period: tuple[int, int]) -> float:
    """How visible the borders of a ``period`` patch grid are in a reconstruction ``(H, W[, C])``: the mean
    jump of the error ``e = reconstruction - item`` between neighbouring pixels across patch borders, over
    the same between neighbours inside patches. Content edges cancel (they are in both images); 1 means
    no seams, a codec that codes patches independently scores above 1 (colour shifts between patches)."""
    e = np.asarray(reconstruction, np.float64) - np.asarray(item, np.float64)
    border, inside = [], []
    for axis, p in enumerate(period):
        d = np.abs(np.diff(e, axis=axis))  # d[i] compares pixels i and i + 1 along the axis
        cross = (np.arange(d.shape[axis]) + 1) % p == 0
        border.append(np.compress(cross, d, axis).ravel())
        inside.append(np.compress(~cross, d, axis).ravel())
    b, i = np.concatenate(border), np.concatenate(inside)
    if not len(b) or not len(i):
        return float("nan")
    return float(b.mean() / max(i.mean(), 1e-12))


def image_coordinates(height: int, width: int, convention: Literal["centres", "corners"] = "centres") -> Tensor:
    """``(H*W, 2)`` row-major ``(row, col)`` coordinates in ``[0, 1]``.

    ``centres`` (functa, paper A.1): pixel centres when the image corners are the unit square's
    vertices, ``(i + 1/2) / H``. ``corners`` (COIN++ code): ``linspace(0, 1, H)``.
    """
    if convention == "centres":
        r, c = grid_centres(height), grid_centres(width)
    elif convention == "corners":
        r, c = torch.linspace(0, 1, height), torch.linspace(0, 1, width)
    else:
        raise ValueError(f"unknown coordinate convention {convention!r}")
    return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(-1, 2)


@register_modality
@dataclass
class ImageModality(ModalityBase):
    """Images of a fixed size. Features are intensities / 255 (or / ``max_value``) in ``[0, 1]``.

    Loss MSE, metrics PSNR (both conventions); augmentations ``flip`` and ``crop`` (``pad``
    pixels of zero padding, spatial functa App. B.1); half, random and box observation masks."""

    name: ClassVar[str] = "image"
    code: ClassVar[int] = 1
    rate_unit: ClassVar[str] = "bpp"  # bits per pixel
    dataset_kind: ClassVar[str] = "image"
    height: int = 28
    width: int = 28
    channels: int = 1
    coordinates_convention: Literal["centres", "corners"] = "centres"
    max_value: float = 255.0
    in_dim: int = field(init=False, default=2)

    def __post_init__(self) -> None:
        check_fields(self, "modality", height=Int(1, 65536), width=Int(1, 65536),
                     coordinates_convention=Choice("centres", "corners"), max_value=Real(0, 1e12, lo_open=True))
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise ConfigError(f"images must have 1 or 3 channels, got {str(self.channels)[:40]}")
        check_total("modality", self.height * self.width, MAX_GRID_POINTS, f"{self.height}x{self.width} images", "points")
        self.shape = (self.height, self.width)
        self.out_channels = self.channels

    @classmethod
    def from_dataset(cls, dataset) -> "ImageModality":
        d = dataset.data
        if d.ndim != 4:
            raise ValueError(f"{dataset.meta.get('source')}: image datasets are (M, H, W, C), got shape {d.shape}")
        max_value = 255.0 if d.dtype == np.uint8 else 1.0
        return cls(height=d.shape[1], width=d.shape[2], channels=d.shape[3], max_value=max_value)

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        h, w = shape or self.shape
        return image_coordinates(h, w, self.coordinates_convention)

    def to_features(self, items: np.ndarray) -> Tensor:
        items = np.asarray(items)
        if items.shape[1:] != (self.height, self.width, self.channels):
            raise ValueError(f"expected images of shape {(self.height, self.width, self.channels)}, got {items.shape[1:]}")
        x = torch.from_numpy(np.ascontiguousarray(items)).to(torch.float32).div_(self.max_value)
        return x.reshape(items.shape[0], -1, self.channels)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        h, w = shape or self.shape
        x = features.detach().float().clamp(0, 1).reshape(features.shape[0], h, w, self.channels)
        return (x * self.max_value).cpu().numpy()

    def metrics(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """PSNR after quantising the prediction to the data's integer levels (what a saved PNG gives)."""
        q = torch.round(pred.clamp(0, 1) * self.max_value) / self.max_value
        mse = (q - target).square().reshape(pred.shape[0], -1).mean(1)
        return {"psnr_quantised": -10 * torch.log10(mse.clamp_min(1e-20))}

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        """PSNR in dB of the two images after rounding both to integer levels (what files store), and,
        for images larger than this modality's grid (a codec's patch), ``seam_ratio``
        (:func:`seam_ratio` over the patch grid)."""
        x = np.clip(np.round(np.asarray(reconstruction, np.float64)), 0, self.max_value) / self.max_value
        y = np.clip(np.round(np.asarray(item, np.float64)), 0, self.max_value) / self.max_value
        mse = float(np.mean((x - y) ** 2))
        out = {"psnr_db": float("inf") if mse == 0 else -10.0 * float(np.log10(mse))}
        if x.shape[0] > self.height or x.shape[1] > self.width:
            out["seam_ratio"] = seam_ratio(x, y, (self.height, self.width))
        return out

    def make_augmentation(self, kinds: tuple[str, ...], seed: int = 0, pad: int = 4) -> ImageAugmentation:
        return ImageAugmentation(tuple(kinds), pad=pad, seed=seed)

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for img, name in zip(items, names):
            arr = np.clip(np.round(img / self.max_value * 255.0), 0, 255).astype(np.uint8)
            p = directory / f"{name}.png"
            image = Image.fromarray(arr[..., 0] if self.channels == 1 else arr)
            atomic_stream(p, lambda f: image.save(f, format="PNG"))
            paths.append(p)
        return paths

    def read_item(self, path: Path) -> np.ndarray:
        """An image file (PNG, JPEG, ...) as ``(H, W, channels)`` uint8 (converted to grey / RGB)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        with open_image(path, str(path)) as im:  # header size checks first: no decompression bombs
            arr = decode_image(im, "L" if self.channels == 1 else "RGB", str(path))
        return arr.reshape(*arr.shape[:2], self.channels)

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write ``(H, W, C)`` data units as an 8-bit image (format from the suffix, e.g. ``.png``)."""
        arr = np.clip(np.round(np.asarray(item) / self.max_value * 255.0), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr[..., 0] if self.channels == 1 else arr).save(buf, format=_pil_format(Path(path)))
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    def with_shape(self, shape: tuple[int, ...]) -> "ImageModality":
        if len(shape) != 2:
            raise ValueError(f"image patches are (height, width), got {tuple(shape)}")
        return replace(self, height=int(shape[0]), width=int(shape[1]))

    def to_config(self) -> dict:
        return {"name": self.name, "height": self.height, "width": self.width, "channels": self.channels,
                "coordinates_convention": self.coordinates_convention, "max_value": self.max_value}
