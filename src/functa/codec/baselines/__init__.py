"""The codecs people use today, driven to a target rate: the baselines of ``functa codec-bench``.

Every baseline is a :class:`StandardCodec`: an ``encode(item, knob, modality)`` that returns the file's
bytes and the decoded item in data units, a quality knob, and the modalities it serves. :func:`at_rate`
binary-searches the knob for the best item whose file is at most ``target`` in the modality's rate unit
(:meth:`~functa.modalities.ModalityBase.rate`: bits per pixel for images, kbps for audio, bits per voxel
for volumes), the COIN++ baseline protocol (``baseline_image.py``); when even the lowest quality is over
budget, the lowest quality is used and its true rate is reported. Rates count every byte of the file
(headers included); quality is the modality's :meth:`compare` of the decoded item (``psnr_db``).

=================  ========  ============================================  =========================
codec              serves    library                                       knob searched
=================  ========  ============================================  =========================
jpeg               image     Pillow, libjpeg(-turbo), 4:2:0                ``quality`` 1..95
jpeg2000           image     Pillow, OpenJPEG                              compression ratio 1..400
webp               image     Pillow, libwebp (lossy, method 6)             ``quality`` 0..100
avif               image     Pillow, libavif (speed 6)                     ``quality`` 0..100
mp3                audio     soundfile (libsndfile + LAME), CBR            ``compression_level``
opus               audio     soundfile (libsndfile + libopus), Ogg         ``compression_level``
jpeg2000-slices    volume    Pillow, OpenJPEG, one 8-bit image per slice   compression ratio
webp-slices        volume    Pillow, libwebp, one 8-bit image per slice    ``quality``
sperr              volume    imagecodecs (SPERR 3-D wavelets; optional)    none: the rate is exact
=================  ========  ============================================  =========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import audio as _audio
from . import image as _image
from . import volume as _volume
from .image import encode_image, psnr_uint8

__all__ = ["STANDARD_CODECS", "CodecPoint", "StandardCodec", "at_rate", "available_codecs", "encode_image",
           "psnr_uint8"]


@dataclass(frozen=True)
class StandardCodec:
    """One baseline codec. ``encode(item, knob, modality) -> (file bytes, decoded item in data units)``.

    The knob runs from ``lo`` to ``hi``; ``higher_is_better``: a larger knob gives a larger file;
    ``integer``: the knob is rounded. ``rate_knob``: the knob *is* the rate in the modality's unit
    (no search: the codec meets it itself). ``available()`` says whether this installation can encode."""

    name: str
    modalities: tuple[str, ...]
    encode: Callable[[np.ndarray, float, Any], tuple[bytes, np.ndarray]]
    available: Callable[[], bool]
    lo: float = 0.0
    hi: float = 1.0
    higher_is_better: bool = True
    integer: bool = False
    rate_knob: bool = False


STANDARD_CODECS: dict[str, StandardCodec] = {
    c.name: c for c in (
        StandardCodec("jpeg", ("image",), _image.encode_item("jpeg"), _image.available("jpeg"), 1, 95, True, True),
        StandardCodec("jpeg2000", ("image",), _image.encode_item("jpeg2000"), _image.available("jpeg2000"),
                      1.0, 400.0, False),
        StandardCodec("webp", ("image",), _image.encode_item("webp"), _image.available("webp"), 0, 100, True, True),
        StandardCodec("avif", ("image",), _image.encode_item("avif"), _image.available("avif"), 0, 100, True, True),
        StandardCodec("mp3", ("audio",), _audio.encode_mp3, _audio.available("mp3"), 0.0, 0.999, False),
        StandardCodec("opus", ("audio",), _audio.encode_opus, _audio.available("opus"), 0.0, 1.0, False),
        StandardCodec("jpeg2000-slices", ("volume",), _volume.encode_slices("jpeg2000"),
                      _image.available("jpeg2000"), 1.0, 2000.0, False),
        StandardCodec("webp-slices", ("volume",), _volume.encode_slices("webp"), _image.available("webp"),
                      0, 100, True, True),
        StandardCodec("sperr", ("volume",), _volume.encode_sperr, _volume.sperr_available, rate_knob=True),
    )
}


@dataclass(frozen=True)
class CodecPoint:
    """One encoded item: its ``bytes``, ``rate`` (in the modality's unit; ``bpp`` for images) and
    ``psnr`` (dB), the other measures of the modality's :meth:`compare` (``quality``), and the knob used."""

    codec: str
    knob: float
    bytes: int
    rate: float
    psnr: float
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def bpp(self) -> float:
        """The rate, named as for images (bits per pixel)."""
        return self.rate


def available_codecs(modality: str = "image") -> list[str]:
    """The standard codecs for ``modality`` (a modality name) that this installation can encode."""
    return [name for name, c in STANDARD_CODECS.items() if modality in c.modalities and c.available()]


def _image_modality(item: np.ndarray):
    from ...modalities import get_modality

    return get_modality("image")(height=item.shape[0], width=item.shape[1], channels=item.shape[2])


def _point(item: np.ndarray, codec: StandardCodec, knob: float, modality) -> CodecPoint:
    data, out = codec.encode(item, knob, modality)
    quality = dict(modality.compare(out, item))
    psnr = float(quality.pop("psnr_db"))
    return CodecPoint(codec.name, float(knob), len(data), modality.rate(len(data), item.shape), psnr, quality)


def at_rate(item: np.ndarray, codec: str, target: float, modality=None, iterations: int = 12) -> CodecPoint:
    """The best-quality encoding of ``item`` (data units) with at most ``target`` (the modality's rate
    unit), by binary search on the codec's knob. ``modality`` defaults to an 8-bit image of ``item``'s size."""
    if codec not in STANDARD_CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(STANDARD_CODECS)}")
    spec = STANDARD_CODECS[codec]
    modality = _image_modality(item) if modality is None else modality
    if modality.name not in spec.modalities:
        raise ValueError(f"{codec} codes {', '.join(spec.modalities)}, not {modality.name}")
    if spec.rate_knob:
        return _point(item, spec, target, modality)
    budget = target / modality.rate(1, item.shape)  # bytes
    lo, hi = spec.lo, spec.hi

    def knob_of(t: float) -> float:  # t in [0, 1], 1 = largest file
        v = lo + t * (hi - lo) if spec.higher_is_better else hi - t * (hi - lo)
        return float(round(v)) if spec.integer else v

    best = _point(item, spec, knob_of(0.0), modality)
    if best.bytes > budget:
        return best
    a, b = 0.0, 1.0
    for _ in range(iterations):
        mid = (a + b) / 2
        p = _point(item, spec, knob_of(mid), modality)
        if p.bytes <= budget:
            a = mid
            if p.bytes > best.bytes or (p.bytes == best.bytes and p.psnr > best.psnr):
                best = p
        else:
            b = mid
        if spec.integer and abs(knob_of(a) - knob_of(b)) < 1:
            break
    top = _point(item, spec, knob_of(1.0), modality)
    return top if top.bytes <= budget else best
