"""Audio: mono clips ``(L,)`` of float amplitudes <-> 1-D time coordinates (COIN++, thesis ch. 4).

Coordinates. ``c`` is the sample position in ``[0, 1]``; by default (``coordinates = "coinpp"``) the
field sees ``10 c - 5`` in ``[-5, 5]``: COIN++ scales audio coordinates to ``[-5, 5]`` "as we found
this improved performance" (thesis 4.B.5; COIN++ code ``10 * c - 5``). ``"unit"`` gives ``c`` itself
(``[0, 1]``), ``"symmetric"`` ``2 c - 1`` (``[-1, 1]``). ``coordinates_convention`` places the samples
like the image modality: ``"corners"`` (the default here, as COIN++'s ``linspace(0, 1, L)``: first
and last sample at 0 and 1) or ``"centres"`` (``(i + 1/2) / L``). Patches have their own local grid
(COIN++ fits every patch on the same coordinates), like image patches.

Patches. Long clips are meta-learned on random crops of ``data.patch = [N]`` samples and compressed /
evaluated as whole clips cut into non-overlapping, reflect-padded patches that are stitched back
(the machinery images use, :mod:`functa.codec.patches`). COIN++ uses N = 200, 400, 800 or 1600 on
16 kHz LibriSpeech (thesis 4.B.5: 12.5-100 ms); ``--set 'data.patch=[400]'`` is a CPU-sized choice.

Features. One channel in ``[0, 1]``: ``(a / full_scale + 1) / 2`` for an amplitude ``a``, a fixed map
of ``[-full_scale, full_scale]`` onto ``[0, 1]`` (COIN++'s ``(waveform + 1) / 2``; ``full_scale`` is
1 for integer PCM, the peak for float files that exceed it). ``full_scale`` and ``sample_rate``
are stored in the modality config, so decoding gives back the amplitude and the sample rate.
Quiet recordings use little of that range (FSDD's RMS is 0.056); ``data.normalisation = "item"``
(``normalisation = "peak"`` here) divides every clip by its own peak amplitude first, in the dataset
(:meth:`AudioModality.normalise_items`) and in :meth:`AudioModality.read_item`; decoded clips are then
the peak-normalised amplitudes (the peaks are not part of a latent or a ``.fta`` file).

Sample rate. Nothing is resampled unless asked for: a run fitted with ``data.audio_sample_rate = R``
(every training clip resampled to ``R`` Hz with ``soxr``: :mod:`functa.data.audio`) stores
``sample_rate = R`` and ``resample = true``, and :meth:`read_item` (``functa compress FILE.ogg``)
then resamples a file at another rate to ``R``; otherwise (``resample = false``, the default) such a
file is refused, naming the option.

Metrics. ``psnr`` on the ``[0, 1]`` features (COIN++ reports PSNR ``-10 log10 MSE`` per clip, averaged
over clips: the headline is ``mean_psnr``; ``psnr_of_mean_mse`` is also given) and ``snr_db``: signal
power over error power in the original amplitude, ``10 log10(sum a^2 / sum (a - a')^2)`` per clip,
averaged over clips.

Renders. A WAV file (16-bit PCM, float for ``full_scale > 1``) and a PNG of the waveform envelope per
item. A field is continuous in time, so rendering at ``scale = k`` evaluates it at ``k`` times as many
positions over the same interval and writes them at ``k`` times the sample rate (same duration):
``--scale 2`` is 2x upsampling by the field. It is *not* a band-limited resampler: what the field
does between the samples it was fitted on (anything up to its own frequency content, e.g. SIREN
``w0``) decides what the extra samples hold.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..atomic import atomic_stream
from ..data import DataError
from ..data.audio import read_audio
from ..fitting import PsnrMetrics
from ..io import atomic_write_bytes
from ..validation import MAX_GRID_POINTS, Bool, Choice, Int, Real, check_fields, check_total
from .base import ModalityBase, grid_centres, register_modality

__all__ = ["AudioMetrics", "AudioModality", "audio_coordinates"]

VIEW_SIZE = (512, 128)  # width, height of the waveform PNGs
_RANGES = {"coinpp": (-5.0, 5.0), "unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}


def audio_coordinates(length: int, coordinates: str = "coinpp", convention: str = "corners") -> Tensor:
    """``(L, 1)`` time coordinates of ``length`` samples: positions ``c`` in ``[0, 1]`` (``corners``:
    ``linspace(0, 1, L)``; ``centres``: ``(i + 1/2) / L``) mapped to ``[-5, 5]`` (``coinpp``: ``10 c - 5``),
    ``[0, 1]`` (``unit``) or ``[-1, 1]`` (``symmetric``)."""
    if coordinates not in _RANGES:
        raise ValueError(f"unknown audio coordinates {coordinates!r}; choose from {', '.join(_RANGES)}")
    if convention == "corners":
        c = torch.linspace(0, 1, length) if length > 1 else torch.full((length,), 0.5)
    elif convention == "centres":
        c = grid_centres(length)
    else:
        raise ValueError(f"unknown coordinate convention {convention!r}")
    lo, hi = _RANGES[coordinates]
    return (lo + (hi - lo) * c)[:, None]


@dataclass(frozen=True)
class AudioMetrics(PsnrMetrics):
    """PSNR of the ``[0, 1]`` features (per clip, and of the mean MSE) and SNR in dB in amplitude units.

    Features are ``(a / full_scale + 1) / 2``, so ``a = full_scale (2 f - 1)`` and the SNR
    ``sum a^2 / sum (a - a')^2 = sum (2 f - 1)^2 / (4 sum (f - f')^2)`` does not depend on ``full_scale``."""

    headline: str = "mean_psnr"

    def per_item(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        out = super().per_item(pred, target, mask)
        w = torch.ones_like(target) if mask is None else mask.expand_as(target).to(target.dtype)
        signal = ((2 * target - 1).square() * w).sum((1, 2)).detach().double()
        error = (4 * (pred - target).square() * w).sum((1, 2)).detach().double()
        out["snr_db"] = 10 * torch.log10(signal.clamp_min(1e-20) / error.clamp_min(1e-20))
        return out

    def summary(self, sums: dict[str, float], count: int) -> dict[str, float]:
        out = super().summary(sums, count)
        out["snr_db"] = sums.get("snr_db", float("nan")) / count if count else float("nan")
        return out

    def describe(self, summary: dict[str, float]) -> str:
        return (f"PSNR {summary['mean_psnr']:.2f} dB (mean of clips), {summary['psnr_of_mean_mse']:.2f} dB "
                f"(of mean MSE), SNR {summary['snr_db']:.2f} dB")


def _peaks(clips: np.ndarray) -> np.ndarray:
    """Peak absolute amplitude of each clip ``(B, L)`` as ``(B,)`` float32 (1 for silent clips)."""
    peaks = np.abs(np.asarray(clips, np.float32)).max(axis=1)
    return np.where(peaks > 0, peaks, 1.0).astype(np.float32)


def _waveform_png(clip: np.ndarray, full_scale: float) -> Image.Image:
    """Min/max envelope of a clip, one column per ``len / width`` samples."""
    w, h = VIEW_SIZE
    x = np.clip(np.asarray(clip, np.float64) / full_scale, -1, 1)
    edges = np.linspace(0, len(x), w + 1).astype(np.int64)
    img = np.full((h, w), 255, np.uint8)
    img[h // 2, :] = 200
    for j in range(w):
        seg = x[edges[j]:max(edges[j + 1], edges[j] + 1)]
        lo, hi = (float(seg.min()), float(seg.max())) if len(seg) else (0.0, 0.0)
        r0, r1 = int(round((1 - hi) / 2 * (h - 1))), int(round((1 - lo) / 2 * (h - 1)))
        img[r0:r1 + 1, j] = 40
    return Image.fromarray(img)


@register_modality
@dataclass
class AudioModality(ModalityBase):
    """Mono clips of ``length`` samples at ``sample_rate`` Hz (see the module docstring)."""

    name: ClassVar[str] = "audio"
    code: ClassVar[int] = 5
    dataset_kind: ClassVar[str] = "audio"
    unobserved_fill: ClassVar[float] = 0.5  # silence
    rate_unit: ClassVar[str] = "kbps"
    rate_targets: ClassVar[tuple[float, ...]] = (6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
    length: int = 16000
    sample_rate: int = 16000
    full_scale: float = 1.0
    coordinates_range: Literal["coinpp", "unit", "symmetric"] = "coinpp"
    coordinates_convention: Literal["corners", "centres"] = "corners"
    channel: int | None = None  # the channel read from multichannel files (read_item)
    normalisation: Literal["fixed", "peak"] = "fixed"  # "peak": every clip divided by its peak (module docstring)
    resample: bool = False  # read_item resamples files at other rates to sample_rate (data.audio_sample_rate)
    in_dim: int = field(init=False, default=1)
    out_channels: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        check_fields(self, "modality", length=Int(1, 2**40), sample_rate=Int(1, 10**7),
                     full_scale=Real(0, 1e12, lo_open=True), coordinates_range=Choice(*_RANGES),
                     coordinates_convention=Choice("corners", "centres"), channel=Int(0, 1024, optional=True),
                     resample=Bool(), normalisation=Choice("fixed", "peak"))
        check_total("modality", self.length, MAX_GRID_POINTS, f"clips of {self.length} samples", "points")
        self.shape = (self.length,)

    @classmethod
    def normalise_items(cls, dataset):
        """Every clip divided by its peak amplitude (silent clips unchanged); ``meta["item_peaks"]`` holds the peaks."""
        from ..data import ArrayDataset

        clips = np.asarray(dataset.take(np.arange(len(dataset))), np.float32)
        peaks = _peaks(clips)
        return ArrayDataset(clips / peaks[:, None], dataset.labels,
                            {**dataset.meta, "normalisation": "item", "item_peaks": peaks.tolist()})

    @classmethod
    def from_dataset(cls, dataset) -> "AudioModality":
        d = dataset.data
        if d.ndim != 2:
            raise ValueError(f"{dataset.meta.get('source')}: audio datasets are (M, L) amplitudes, got shape {d.shape}")
        peak = float(np.abs(np.asarray(d)).max()) if not dataset.lazy and d.size else 1.0
        full_scale = 1.0 if peak <= 1.0 else float(2 ** math.ceil(math.log2(peak)))
        return cls(length=int(d.shape[1]), sample_rate=int(dataset.meta.get("sample_rate", 16000)),
                   full_scale=full_scale, channel=dataset.meta.get("channel"),
                   resample=bool(dataset.meta.get("resample", False)),
                   normalisation="peak" if dataset.meta.get("normalisation") == "item" else "fixed")

    def coordinates(self, shape: tuple[int, ...] | None = None) -> Tensor:
        (n,) = tuple(shape or self.shape)
        return audio_coordinates(int(n), self.coordinates_range, self.coordinates_convention)

    def coordinate_box(self) -> tuple[float, float]:
        return _RANGES[self.coordinates_range]

    def to_features(self, items: np.ndarray) -> Tensor:
        """Amplitudes ``(B, L)`` (or ``(B, L, 1)``) -> features ``(a / full_scale + 1) / 2``, ``(B, L, 1)``."""
        items = np.asarray(items)
        if items.ndim == 3 and items.shape[2] == 1:
            items = items[..., 0]
        if items.shape[1:] != self.shape:
            raise ValueError(f"expected clips of {self.length} samples, got items of shape {items.shape[1:]}")
        x = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
        return ((x / self.full_scale + 1) / 2).reshape(items.shape[0], -1, 1)

    def from_features(self, features: Tensor, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Features ``(B, L, 1)`` -> amplitudes ``(B, L)`` float32, ``full_scale (2 f - 1)`` (clamped to full scale)."""
        (n,) = tuple(shape or self.shape)
        f = features.detach().float().clamp(0, 1).reshape(features.shape[0], int(n))
        return ((2 * f - 1) * self.full_scale).cpu().numpy()

    def reconstruction_metrics(self) -> AudioMetrics:
        return AudioMetrics()

    def compare(self, reconstruction: np.ndarray, item: np.ndarray) -> dict[str, float]:
        """PSNR in dB of the ``[0, 1]`` features (the headline) and SNR in dB of the amplitudes."""
        x = np.asarray(reconstruction, np.float64).reshape(-1)
        y = np.asarray(item, np.float64).reshape(-1)
        mse = float(np.mean(((x - y) / (2 * self.full_scale)) ** 2))
        err = float(np.sum((x - y) ** 2))
        sig = float(np.sum(y**2))
        return {"psnr_db": float("inf") if mse == 0 else -10.0 * math.log10(mse),
                "snr_db": float("inf") if err == 0 else 10.0 * math.log10(max(sig, 1e-300) / err)}

    def rate(self, num_bytes: int, shape: tuple[int, ...]) -> float:
        """Kilobits per second of audio: ``8 * num_bytes / (L / sample_rate) / 1000`` for a clip of ``L`` samples."""
        return 8.0 * num_bytes * self.sample_rate / (1000.0 * int(shape[0]))

    def observation_mask(self, kind: str, features: Tensor, fraction: float = 0.5, seed: int = 0) -> Tensor:
        """``left-half`` (the first half in time), ``right-half`` or ``random`` samples (a ``fraction``)."""
        n = self.length
        if kind in ("left-half", "right-half"):
            m = np.arange(n) < n // 2
            return torch.from_numpy(m if kind == "left-half" else ~m)[None]
        if kind == "random":
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"fraction must be in (0, 1], got {fraction}")
            m = np.zeros(n, bool)
            m[np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False)] = True
            return torch.from_numpy(m)[None]
        raise ValueError(f"unknown audio mask {kind!r}; choose from left-half, right-half, random")

    def _rate_for(self, samples: int) -> int:
        """The sample rate that gives ``samples`` the duration of a clip (renders at any resolution)."""
        return max(1, int(round(self.sample_rate * samples / self.length)))

    def _write(self, clip: np.ndarray, path: Path, rate: int) -> Path:
        import soundfile as sf

        fmt = _WRITE_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: unknown audio suffix {path.suffix!r}; use .wav, .flac, .ogg, .npy or .npz")
        x = np.asarray(clip, np.float64).reshape(-1) / self.full_scale
        if fmt == "WAV" and self.full_scale > 1.0:
            subtype, data = "FLOAT", (x * self.full_scale).astype(np.float32)
        else:
            subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
            data = np.clip(x, -1.0, 1.0).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, data, rate, format=fmt, subtype=subtype)  # soundfile seeks: write to memory, then atomically
        atomic_write_bytes(path, buf.getvalue())
        return path

    def save(self, items: np.ndarray, directory: Path, names: list[str]) -> list[Path]:
        """A waveform PNG (returned) and a WAV per item; items of ``k L`` samples are written at ``k``
        times the sample rate (the same duration: see the module docstring on upsampling)."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for clip, name in zip(items, names):
            clip = np.asarray(clip).reshape(-1)
            self._write(clip, directory / f"{name}.wav", self._rate_for(len(clip)))
            p = directory / f"{name}.png"
            view = _waveform_png(clip, self.full_scale)
            atomic_stream(p, lambda f: view.save(f, format="PNG"))
            paths.append(p)
        return paths

    def read_item(self, path: Path) -> np.ndarray:
        """A WAV / FLAC / OGG file (any length) as ``(L,)`` float32 amplitudes; its sample rate must be the
        modality's, unless ``resample`` (a run fitted with ``data.audio_sample_rate``): then it is resampled to
        it (``soxr``); multichannel files need ``channel``; ``.npy`` / ``.npz`` (array ``data``): a 1-D float
        amplitude array (taken to be at the modality's rate). With ``normalisation = "peak"`` the clip is
        divided by its peak amplitude."""
        path = Path(path)
        if path.suffix.lower() in (".npy", ".npz"):
            from ..data import read_array_file

            arr = read_array_file(path, "data")
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
                raise DataError(f"{path}: an audio .npy must be a 1-D array of finite float amplitudes")
            clip = arr.astype(np.float32)
        else:
            clip = read_audio(path, self.channel, sample_rate=self.sample_rate, resample_to_rate=self.resample)[0]
        return clip / _peaks(clip[None])[0] if self.normalisation == "peak" else clip

    def write_item(self, item: np.ndarray, path: Path) -> Path:
        """Write ``(L,)`` amplitudes at the modality's sample rate as ``.wav`` / ``.flac`` / ``.ogg``
        (or ``.npy`` / ``.npz``)."""
        path = Path(path)
        if path.suffix.lower() in (".npy", ".npz"):
            buf, arr = io.BytesIO(), np.asarray(item, np.float32).reshape(-1)
            np.save(buf, arr) if path.suffix.lower() == ".npy" else np.savez_compressed(buf, data=arr)
            atomic_write_bytes(path, buf.getvalue())
            return path
        return self._write(np.asarray(item), path, self.sample_rate)

    def with_shape(self, shape: tuple[int, ...]) -> "AudioModality":
        if len(shape) != 1:
            raise ValueError(f"audio patches are (samples,), got {tuple(shape)}")
        return replace(self, length=int(shape[0]))

    def to_config(self) -> dict:
        return {"name": self.name, "length": self.length, "sample_rate": self.sample_rate,
                "full_scale": self.full_scale, "coordinates_range": self.coordinates_range,
                "coordinates_convention": self.coordinates_convention, "channel": self.channel,
                "resample": self.resample, "normalisation": self.normalisation}
