"""Volume baselines: per-slice JPEG 2000 and WebP (the thesis' MRI protocol), and SPERR in 3-D.

All code the modality's normalised intensities (``[0, 1]``: the dataset window, or per volume) of a
volume ``(X, Y, Z)``:

* ``jpeg2000-slices`` / ``webp-slices``: each slice along the last axis (axial for RAS volumes) as an
  8-bit grey image (``round(255 f)``), one knob for the whole volume. The file is the slices' files,
  each after a 4-byte length (the byte count is what the rate counts).
* ``sperr``: SPERR (Li, Lindstrom & Clyne 2023: 3-D wavelets with outlier coding, through
  ``imagecodecs``, an optional dependency: ``pip install imagecodecs``) on the float64 intensities, in
  its fixed-rate mode: the knob is the rate in bits per voxel, met by the codec itself.

Decoded slices come back as ``k / 255`` and every codec's output is mapped back to data units with the
modality's :meth:`denormalise`, so :meth:`compare` scores it on the same scale as functa.
"""

from __future__ import annotations

import struct

import numpy as np

from .image import encode_image

__all__ = ["encode_slices", "encode_sperr", "sperr_available"]


def _normalised(item: np.ndarray, modality) -> np.ndarray:
    return modality.normalise(np.asarray(item)[None])[0].astype(np.float64)


def encode_slices(codec: str):
    """``encode(volume, knob, modality)`` coding each slice ``[:, :, k]`` as an 8-bit ``codec`` image."""

    def encode(item: np.ndarray, knob: float, modality) -> tuple[bytes, np.ndarray]:
        levels = np.round(_normalised(item, modality) * 255).astype(np.uint8)
        parts, out = [], np.empty(levels.shape, np.float32)
        for k in range(levels.shape[2]):
            data, dec = encode_image(np.ascontiguousarray(levels[:, :, k, None]), codec, knob)
            parts += [struct.pack("<I", len(data)), data]
            out[:, :, k] = dec[..., 0] / np.float32(255)
        return b"".join(parts), modality.denormalise(out)

    return encode


def sperr_available() -> bool:
    """Whether ``imagecodecs`` with SPERR is installed."""
    try:
        import imagecodecs

        return bool(imagecodecs.SPERR.available)
    except (ImportError, AttributeError):
        return False


def encode_sperr(item: np.ndarray, knob: float, modality) -> tuple[bytes, np.ndarray]:
    """SPERR of the normalised volume at ``knob`` bits per voxel (its ``bpp`` mode, header included)."""
    import imagecodecs

    x = np.ascontiguousarray(_normalised(item, modality))
    data = bytes(imagecodecs.sperr_encode(x, float(knob), mode="bpp", header=True, numthreads=1))
    out = np.asarray(imagecodecs.sperr_decode(data, numthreads=1), np.float64).reshape(x.shape)
    return data, modality.denormalise(out.astype(np.float32))
