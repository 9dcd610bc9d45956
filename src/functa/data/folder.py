"""A directory of image files (PNG / JPEG / ...), optionally split and class-labelled.

Layouts understood (``root`` is the path given)::

    root/*.png                         unlabelled
    root/<class>/*.png                 labelled, class ids by sorted folder name
    root/{train,test}/[<class>/]*.png  split chosen by ``split``

Every image must have the same size. If all images are grayscale (PIL modes ``1``, ``L``, ``LA``) the
result is ``(M, H, W, 1)`` uint8, otherwise every image is converted to RGB and the result is
``(M, H, W, 3)`` uint8 (alpha channels are dropped; ``meta["notes"]`` records it).

Decompression bombs: every image's size is read from its header before it is decoded, and refused
(:class:`DataError` naming the file) above ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's default, about
89 million; when it is set to ``None`` that default still applies here) or above the array limit of
:mod:`functa.data.safeio` in bytes; Pillow's ``DecompressionBombWarning`` and ``DecompressionBombError``
become the same error. The stacked ``(M, H, W, C)`` array must fit the array limit too (checked from the
headers, before anything is decoded).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from .dataset import ArrayDataset, DataError
from .safeio import check_nbytes, empty_array

__all__ = ["IMAGE_SUFFIXES", "MixedSizesError", "decode_image", "has_images", "load_image_folder", "load_image_list",
           "max_image_pixels", "open_image"]  # fmt: skip

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
_GRAY_MODES = frozenset({"1", "L", "LA"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_SPLIT_DIRS = ("train", "test")
_PROGRESS_MIN = 1000
_PIL_DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's default Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3)


class MixedSizesError(DataError):
    """The images of a folder differ in size, so they cannot form one ``(M, H, W, C)`` array."""


def _image_files(d: Path) -> list[Path]:
    return sorted(
        p for p in d.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _class_dirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".") and _image_files(p))


def has_images(path: Path) -> bool:
    """Does ``path`` hold image files directly, in class folders, or in ``train/``/``test/`` (with class folders)?"""
    dirs = [path] + [path / s for s in _SPLIT_DIRS if (path / s).is_dir()]
    return any(_image_files(d) or _class_dirs(d) for d in dirs)


def _items(base: Path, class_names: list[str] | None) -> list[tuple[Path, int]]:
    """``(file, label)`` pairs under ``base``; label -1 when unlabelled."""
    loose = _image_files(base)
    if class_names is None:
        if not loose:
            raise DataError(f"{base}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
        return [(f, -1) for f in loose]
    if loose:
        raise DataError(f"{base}: mixes loose images (e.g. {loose[0].name}) with class sub-folders")
    index = {name: i for i, name in enumerate(class_names)}
    return [(f, index[d.name]) for d in _class_dirs(base) for f in _image_files(d)]


def _layout(root: Path, split: str) -> tuple[list[Path], list[str] | None, str]:
    """Directories to read for ``split``, the class names (None if unlabelled) and the split recorded in meta."""
    split_dirs = [root / s for s in _SPLIT_DIRS if (root / s).is_dir()]
    if split_dirs:
        if split == "all":
            bases = split_dirs
        elif (root / split).is_dir():
            bases = [root / split]
        else:
            raise DataError(f"{root}: no '{split}/' sub-directory (found {[d.name for d in split_dirs]})")
        # class ids are computed over every split so train and test agree
        scan, split_name = split_dirs, split
    else:
        if split == "test":
            raise DataError(f"{root}: image folder has no 'test/' sub-directory; use split='train' or 'all'")
        bases, scan, split_name = [root], [root], "all"
    classes = sorted({d.name for b in scan for d in _class_dirs(b)})
    return bases, (classes or None), split_name


def max_image_pixels() -> int:
    """The most pixels an image may have: ``PIL.Image.MAX_IMAGE_PIXELS``, or Pillow's default when that is None."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else _PIL_DEFAULT_MAX_PIXELS


def _image_error(where: str, e: BaseException) -> DataError:
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DataError(f"{where}: image too large to decode, a decompression bomb? ({e})")
    if isinstance(e, MemoryError):
        return DataError(f"{where}: cannot read image (out of memory)")
    return DataError(f"{where}: cannot read image ({type(e).__name__}: {e})")


@contextlib.contextmanager
def open_image(source: str | Path | IO[bytes], where: str) -> Iterator[Image.Image]:
    """Open an image (a path or a binary file object) and check its size from the header; nothing is decoded.

    Refuses (:class:`DataError` starting with ``where``) an unreadable header, more than
    :func:`max_image_pixels` pixels, or more decoded bytes (4 per pixel) than the array limit; Pillow's
    decompression-bomb warning counts as an error."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(source)
    except Exception as e:  # PIL raises many exception types for corrupt files
        raise _image_error(where, e) from None
    with im:
        w, h = im.size
        pixels = max_image_pixels()
        if w * h > pixels:
            raise DataError(f"{where}: image of {w}x{h} = {w * h} pixels is larger than the limit of {pixels} "
                            "pixels (PIL.Image.MAX_IMAGE_PIXELS); a decompression bomb?")  # fmt: skip
        check_nbytes(4 * w * h, where, f"a {w}x{h} image")
        yield im


def decode_image(im: Image.Image, mode: str, where: str) -> np.ndarray:
    """Decode an image from :func:`open_image`, converted to ``mode``, as an ``(H, W[, C])`` uint8 array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
            return np.asarray(im if im.mode == mode else im.convert(mode))
    except DataError:
        raise
    except Exception as e:  # PIL raises many exception types for corrupt files
        raise _image_error(where, e) from None


def load_image_folder(root: Path, split: str, limit: int | None = None, progress: bool = True) -> ArrayDataset:
    """Load every image under ``root`` (see module docstring) into ``(M, H, W, C)`` uint8 + labels ``(M,)``."""
    bases, class_names, split_name = _layout(root, split)
    items = [it for b in bases for it in _items(b, class_names)]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError(f"{root}: no image files for split {split!r}")

    # pass 1: headers only -- sizes and modes
    size0: tuple[int, int] | None = None
    gray = True
    for f, _ in items:
        with open_image(f, str(f)) as im:
            size, mode = im.size, im.mode
        if mode.startswith("I") or mode == "F":
            raise DataError(f"{f}: unsupported image mode {mode!r} (only 8-bit grayscale / colour images)")
        if size0 is None:
            size0 = size
        elif size != size0:
            raise MixedSizesError(
                f"{f}: image size {size[0]}x{size[1]} differs from {items[0][0]} ({size0[0]}x{size0[1]}); "
                "all images in a folder dataset must have the same size"
            )
        gray = gray and mode in _GRAY_MODES
    target = "L" if gray else "RGB"
    w, h = size0  # type: ignore[misc]
    shape = (len(items), h, w, 1 if gray else 3)
    check_nbytes(math.prod(shape), str(root), f"{len(items)} decoded {w}x{h} {target} images")
    data = empty_array(shape, np.dtype(np.uint8), str(root))

    # pass 2: decode
    it: Any = enumerate(items)
    if progress and len(items) > _PROGRESS_MIN:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(items), desc=f"reading {root.name}", unit="img", leave=False)
    n_alpha = 0
    for i, (f, _) in it:
        with open_image(f, str(f)) as im:
            if im.size != size0:
                raise MixedSizesError(f"{f}: image size {im.size[0]}x{im.size[1]} changed while the folder was read "
                                      f"(was {w}x{h})")  # fmt: skip
            arr = decode_image(im, target, str(f))
            if im.mode in _ALPHA_MODES or "transparency" in im.info:
                n_alpha += 1
        data[i] = arr.reshape(h, w, -1)

    meta: dict[str, Any] = {
        "source": str(root),
        "format": "image-folder",
        "kind": "image",
        "split": split_name,
        "mode": target,
        "n_files": len(items),
    }
    labels = None
    if class_names is not None:
        labels = np.array([lab for _, lab in items], dtype=np.int64)
        meta["class_names"] = class_names
    if n_alpha:
        meta["notes"] = [f"alpha channel dropped from {n_alpha} image(s) (converted to {target})"]
    return ArrayDataset(data, labels, meta)


def load_image_list(root: Path, split: str = "all", limit: int | None = None) -> list[np.ndarray]:
    """The images under ``root`` (same layout rules as :func:`load_image_folder`) as a list of
    ``(H, W, C)`` uint8 arrays of any sizes: RGB, or grey (C = 1) when every image is grey."""
    bases, class_names, _ = _layout(root, split)
    items = [it for b in bases for it in _items(b, class_names)][:limit]
    if not items:
        raise DataError(f"{root}: no image files for split {split!r}")
    images = []
    for f, _ in items:
        with open_image(f, str(f)) as im:
            images.append((im.mode, decode_image(im, "RGB", str(f))))
    gray = all(mode in _GRAY_MODES for mode, _ in images)
    return [arr[..., :1] if gray else arr for _, arr in images]
