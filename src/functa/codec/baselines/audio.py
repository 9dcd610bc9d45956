"""Audio baselines through soundfile (libsndfile): MP3 (LAME, constant bitrate) and Opus in Ogg.

Both code the clip's amplitude ``a / full_scale`` (``[-1, 1]``) at the modality's sample rate, mono.
The knob is libsndfile's ``compression_level`` (0 = largest file): for MP3 in constant-bitrate mode it
selects one of the MPEG bitrates (at 16 kHz: 8 to 160 kbps), for Opus a bitrate of about 8 to 260 kbps
(at 16 kHz). Decoding: libsndfile (mpg123 for MP3, libopus). A constant-bitrate MP3 decodes with the
encoder's delay in front (1,105 samples with LAME: no gapless header is written), so the decoded clip
is aligned by the lag, up to :data:`MAX_LAG` samples, that minimises its squared error to the original,
and cut to the original's length (this favours MP3 slightly: a real decoder would not know the lag).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

__all__ = ["MAX_LAG", "align", "available", "encode_mp3", "encode_opus"]

MAX_LAG = 4096  # samples; LAME's delay is 1,105 (576 + 529) plus up to a frame of padding
_FORMATS = {"mp3": ("MP3", "MPEG_LAYER_III"), "opus": ("OGG", "OPUS")}


def available(codec: str) -> Callable[[], bool]:
    """Whether the installed libsndfile writes ``codec`` (MP3 needs libsndfile >= 1.1, Opus >= 1.0.29)."""

    def check() -> bool:
        try:
            import soundfile as sf

            fmt, subtype = _FORMATS[codec]
            return subtype in sf.available_subtypes(fmt)
        except Exception:  # no soundfile / libsndfile
            return False

    return check


def align(decoded: np.ndarray, original: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """``decoded[lag:lag + len(original)]`` for the lag in ``[0, max_lag]`` with the least squared error
    (zero-padded at the end when the decoded clip is shorter)."""
    n = len(original)
    d = np.concatenate([decoded, np.zeros(max(0, n + max_lag - len(decoded)), decoded.dtype)])
    lags = np.arange(min(max_lag, len(d) - n) + 1)
    # sum (d[l + i] - x[i])^2 = sum d[l:l+n]^2 - 2 (d * x)[l] + sum x^2, with the correlation by FFT
    size = 1 << int(np.ceil(np.log2(len(d) + n)))
    corr = np.fft.irfft(np.fft.rfft(d, size) * np.conj(np.fft.rfft(original, size)), size)[lags]
    energy = np.concatenate([[0.0], np.cumsum(d.astype(np.float64) ** 2)])
    err = energy[lags + n] - energy[lags] - 2 * corr
    lag = int(lags[np.argmin(err)])
    return d[lag:lag + n]


def _encode(codec: str, item: np.ndarray, knob: float, modality, **options) -> tuple[bytes, np.ndarray]:
    import soundfile as sf

    fmt, subtype = _FORMATS[codec]
    x = np.clip(np.asarray(item, np.float64).reshape(-1) / modality.full_scale, -1, 1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, modality.sample_rate, format=fmt, subtype=subtype, compression_level=float(knob), **options)
    data = buf.getvalue()
    decoded = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0][:, 0]
    return data, (align(decoded, x) * modality.full_scale).astype(np.float32)


def encode_mp3(item: np.ndarray, knob: float, modality) -> tuple[bytes, np.ndarray]:
    """MP3 (LAME, constant bitrate) of a clip ``(L,)`` at ``compression_level = knob`` in ``[0, 1)``."""
    return _encode("mp3", item, min(float(knob), 0.999), modality, bitrate_mode="CONSTANT")


def encode_opus(item: np.ndarray, knob: float, modality) -> tuple[bytes, np.ndarray]:
    """Opus in Ogg of a clip ``(L,)`` at ``compression_level = knob`` in ``[0, 1]``."""
    return _encode("opus", item, knob, modality)
