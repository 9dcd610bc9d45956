"""Audio datasets: a folder of WAV / FLAC / OGG files, or the FSDD npz layout, as ``(M, L)`` float32 amplitudes.

Clips are read with ``soundfile`` (libsndfile) as float32 amplitudes (full scale ``[-1, 1]`` for integer
PCM). Every reader is bounded: the header's declared ``frames x channels`` is checked against the array
limit of :mod:`.safeio` before any sample is decoded, and the dataset array ``M x L`` is checked again
before it is allocated.

Equal lengths: a dataset is one array, so every clip is **cropped to its first** ``length`` samples
(``data.audio_length``; COIN++ uses the first 3 s = 48,000 samples of each LibriSpeech utterance).
A clip shorter than ``length`` is refused (:class:`DataError` naming it), unless ``pad`` is set
(``data.audio_pad``): then it is padded with silence (zero amplitude, feature 0.5) at its end, and
``meta["notes"]`` counts the padded clips. Without ``length``, every clip of the dataset (all splits)
is cropped to the shortest one, and ``meta["notes"]`` says so.

Sample rates: by default clips are never resampled: clips of different sample rates are refused, naming
two of them. Resampling is explicit: with ``sample_rate = R`` (``data.audio_sample_rate``) every clip whose
rate is not ``R`` is resampled to ``R`` Hz with ``soxr`` (python-soxr, ``quality="HQ"``; an optional
dependency: ``pip install soxr`` or the ``audio`` extra, ``pip install 'functa[audio]'``), so a dataset may
mix rates; ``meta["sample_rate"]`` is then ``R`` (the modality stores it), ``length`` counts samples at
``R``, ``meta["resample"]`` is true and ``meta["notes"]`` names the rates converted. A clip of ``L`` samples
at ``r`` Hz becomes ``round(L R / r)`` samples; only the input needed for the first ``length`` output
samples (plus a margin for the filter) is decoded.

Channels: a multichannel clip is refused unless ``channel`` (``data.audio_channel``, 0-based) picks one.

Splits: a folder with ``train/`` and ``test/`` sub-folders uses them. Otherwise the split is
*group-disjoint*: clips are grouped by speaker (the first ``-``-separated field of LibriSpeech-style
names ``SPEAKER-CHAPTER-UTTERANCE``; the ``speaker`` array of the FSDD npz), else each file is its own
group; groups are ordered by the SHA-256 of their name and the first ``max(1, round(test_fraction * G))``
of them form "test" (with one group only, "test" is empty). FSDD's official split (takes 0-4) shares
speakers between train and test, so it is not used.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import ArrayDataset, DataError
from .safeio import Npz, check_nbytes, empty_array

__all__ = ["AUDIO_SUFFIXES", "MIN_AUDIO_SAMPLES", "audio_info", "has_audio", "is_audio_npz", "load_audio_folder",
           "load_audio_npz", "read_audio", "resample", "resampled_length"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MIN_AUDIO_SAMPLES = 16  # shorter clips are refused (nothing to fit)
_LIBRISPEECH = re.compile(r"^(\d+)-\d+-\d+")
_RESAMPLE_MARGIN_S = 0.05  # extra input (seconds) decoded past the last needed sample, for the filter's support


def _soundfile():
    try:
        import soundfile
    except ImportError as e:  # pragma: no cover - a dependency of the package
        raise DataError(f"reading audio needs the 'soundfile' package ({e})") from None
    return soundfile


def _soxr():
    try:
        import soxr
    except ImportError:
        raise DataError("resampling audio (data.audio_sample_rate) needs the 'soxr' package: pip install soxr "
                        "(or pip install 'functa[audio]')") from None
    return soxr


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples a clip of ``frames`` samples at ``rate`` Hz has at ``target`` Hz: ``round(frames target / rate)``
    (what :func:`resample` returns)."""
    return int(frames) if rate == target else (2 * int(frames) * int(target) + int(rate)) // (2 * int(rate))


def resample(clip: np.ndarray, rate: int, target: int, where: str = "audio") -> np.ndarray:
    """``(L,)`` float32 amplitudes at ``rate`` Hz -> at ``target`` Hz with ``soxr`` (``quality="HQ"``); the
    clip itself when the rates agree. Needs ``soxr`` (:class:`DataError` saying how to install it)."""
    if rate == target:
        return clip
    soxr = _soxr()
    try:
        out = soxr.resample(np.ascontiguousarray(clip, np.float32), int(rate), int(target), quality="HQ")
    except Exception as e:  # pragma: no cover - soxr refuses only absurd rates
        raise DataError(f"{where}: cannot resample {rate} Hz to {target} Hz ({' '.join(str(e).split())[:200]})") from None
    return np.ascontiguousarray(out, np.float32)


def _check_rate(sample_rate: int | None, where: str) -> None:
    if sample_rate is not None and (isinstance(sample_rate, bool) or not isinstance(sample_rate, int)
                                    or not 0 < sample_rate <= 10**7):
        raise DataError(f"{where}: audio_sample_rate must be an integer in 1..10^7 Hz, got {sample_rate!r}")


def audio_info(path: Path) -> tuple[int, int, int]:
    """``(frames, channels, sample_rate)`` from a file's header (:class:`DataError` naming it if unreadable)."""
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile reports corrupt / unknown files as RuntimeError subclasses
        raise DataError(f"{path}: not a readable WAV/FLAC/OGG file ({' '.join(str(e).split())[:200]})") from None
    frames, channels, rate = int(info.frames), int(info.channels), int(info.samplerate)
    if channels < 1 or rate < 1 or frames < 0 or frames >= 2**62:
        raise DataError(f"{path}: corrupt audio header ({frames} frames, {channels} channels, {rate} Hz)")
    return frames, channels, rate


def _pick_channel(channels: int, channel: int | None, path: Path) -> int:
    if channel is None:
        if channels > 1:
            raise DataError(f"{path}: {channels} channels; audio is mono: choose one with data.audio_channel "
                            f"(0..{channels - 1})")
        return 0
    if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel < channels:
        raise DataError(f"{path}: channel {channel!r} does not exist (the file has {channels})")
    return channel


def read_audio(path: str | Path, channel: int | None = None, frames: int | None = None,
               sample_rate: int | None = None, resample_to_rate: bool = False) -> tuple[np.ndarray, int]:
    """One clip as ``(L,)`` float32 amplitudes and its sample rate, reading at most ``frames`` samples.

    Refuses (:class:`DataError` naming the file): unreadable or corrupt files, more channels than one
    without ``channel``, a declared size over the array limit, fewer than :data:`MIN_AUDIO_SAMPLES`
    samples, NaN or infinite samples, and a sample rate other than ``sample_rate`` (when given), unless
    ``resample_to_rate``: then the clip is resampled to ``sample_rate`` (:func:`resample`, ``soxr``) and
    ``frames`` counts samples at ``sample_rate``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    declared, channels, rate = audio_info(path)
    convert = sample_rate is not None and rate != sample_rate
    if convert and not resample_to_rate:
        raise DataError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (no resampling is done unless "
                        f"asked for: resample the file, or train with data.audio_sample_rate={sample_rate})")
    ch = _pick_channel(channels, channel, path)
    if convert and frames is not None:  # the input behind the first `frames` output samples, and a margin
        frames = math.ceil(int(frames) * rate / sample_rate) + math.ceil(_RESAMPLE_MARGIN_S * rate) + 16
    n = declared if frames is None else min(declared, int(frames))
    check_nbytes(4 * n * channels, str(path), f"{n} frames x {channels} channels of float32 audio")
    if declared < MIN_AUDIO_SAMPLES:
        raise DataError(f"{path}: {declared} samples, too short (at least {MIN_AUDIO_SAMPLES})")
    sf = _soundfile()
    try:
        data = sf.read(str(path), frames=n, dtype="float32", always_2d=True)[0]
    except Exception as e:
        raise DataError(f"{path}: cannot decode audio ({' '.join(str(e).split())[:200]})") from None
    if data.shape[0] < min(n, MIN_AUDIO_SAMPLES):
        raise DataError(f"{path}: {data.shape[0]} samples decoded, too short (at least {MIN_AUDIO_SAMPLES})")
    clip = np.ascontiguousarray(data[:, ch])
    if not np.isfinite(clip).all():
        raise DataError(f"{path}: NaN or infinite samples")
    if convert:
        return resample(clip, rate, int(sample_rate), str(path)), int(sample_rate)
    return clip, rate


def _audio_files(d: Path) -> list[Path]:
    return sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)


def has_audio(path: Path) -> bool:
    """Whether a directory holds audio files (directly or in ``train/`` / ``test/``)."""
    if not path.is_dir():
        return False
    return bool(_audio_files(path)) or any((path / s).is_dir() and _audio_files(path / s) for s in ("train", "test"))


def is_audio_npz(keys: set[str]) -> bool:
    """The FSDD npz layout: ``audio`` (all clips concatenated), ``offsets`` (M + 1,) and ``sample_rate``."""
    return {"audio", "offsets", "sample_rate"} <= keys


def _group(name: str) -> str:
    m = _LIBRISPEECH.match(name)
    return m.group(1) if m else name


def _test_groups(groups: list[str], test_fraction: float) -> set[str]:
    unique = sorted(set(groups), key=lambda g: (hashlib.sha256(g.encode()).hexdigest(), g))
    if len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, round(test_fraction * len(unique))))
    return set(unique[:k])


def _select(groups: list[str], split: str, test_fraction: float, root: Path) -> np.ndarray:
    if split == "all":
        return np.arange(len(groups))
    test = _test_groups(groups, test_fraction)
    keep = np.array([(g in test) == (split == "test") for g in groups], bool)
    if not keep.any():
        raise DataError(f"{root}: no clips in split {split!r} (groups: {len(set(groups))})")
    return np.nonzero(keep)[0]


def _common_length(lengths: list[int], names: list[str], length: int | None, where: str,
                   pad: bool = False) -> tuple[int, list[str]]:
    """The crop length, refusing clips shorter than an explicit ``length`` unless ``pad``."""
    notes = []
    if pad and length is None:
        raise DataError(f"{where}: data.audio_pad needs data.audio_length (the length to pad to)")
    if length is None:
        i = int(np.argmin(lengths))
        if lengths[i] < MIN_AUDIO_SAMPLES:
            raise DataError(f"{names[i]}: {lengths[i]} samples, too short (at least {MIN_AUDIO_SAMPLES})")
        if min(lengths) != max(lengths):
            notes.append(f"clips cropped to the shortest one ({lengths[i]} samples, {names[i]}); set "
                         "data.audio_length to choose the length")
        return int(lengths[i]), notes
    if isinstance(length, bool) or not isinstance(length, int) or length < MIN_AUDIO_SAMPLES:
        raise DataError(f"{where}: audio_length must be an integer >= {MIN_AUDIO_SAMPLES}, got {length!r}")
    short = [(n, name) for n, name in zip(lengths, names) if n < length]
    if short and not pad:
        n, name = short[0]
        raise DataError(f"{name}: {n} samples, too short for data.audio_length = {length} (set data.audio_pad=true "
                        "to pad short clips with silence)")
    if short:
        notes.append(f"{len(short)} of {len(lengths)} clips padded with silence to {length} samples")
    return int(length), notes


def _resample_note(rates: dict[int, Any], target: int) -> list[str]:
    other = sorted(r for r in rates if r != target)
    if not other:
        return []
    return [f"clips at {', '.join(f'{r} Hz' for r in other)} resampled to {target} Hz (soxr HQ, data.audio_sample_rate)"]


def load_audio_folder(root: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None,
                      length: int | None = None, channel: int | None = None, pad: bool = False,
                      sample_rate: int | None = None) -> ArrayDataset:
    """The audio files under ``root`` (see the module docstring) as ``(M, L)`` float32 amplitudes; with
    ``sample_rate``, every clip resampled to it."""
    _check_rate(sample_rate, str(root))
    subdirs = [root / s for s in ("train", "test") if (root / s).is_dir() and _audio_files(root / s)]
    if subdirs:
        files_by = {s.name: _audio_files(s) for s in subdirs}
        every = [f for fs in files_by.values() for f in fs]
        if split == "all":
            chosen = every
        elif split in files_by:
            chosen = files_by[split]
        else:
            raise DataError(f"{root}: no {split}/ sub-folder with audio files")
    else:
        every = _audio_files(root)
        if not every:
            raise DataError(f"{root}: no .wav, .flac or .ogg files")
        chosen = [every[i] for i in _select([_group(f.name) for f in every], split, test_fraction, root)]
    headers = {f: audio_info(f) for f in every}  # pass 1: headers only
    rates = {}
    for f, (frames, channels, rate) in headers.items():
        rates.setdefault(rate, f)
        _pick_channel(channels, channel, f)
    if sample_rate is None and len(rates) > 1:
        (r0, f0), (r1, f1) = list(rates.items())[:2]
        raise DataError(f"{f1}: sample rate {r1} Hz differs from {f0} ({r0} Hz); all clips of a dataset must have "
                        f"the same rate (no resampling is done unless asked for: set data.audio_sample_rate={r0} "
                        f"to resample every clip to {r0} Hz with soxr)")
    if sample_rate is not None and any(r != sample_rate for r in rates):
        _soxr()  # before anything is decoded
    rate = next(iter(rates)) if sample_rate is None else int(sample_rate)
    n, notes = _common_length([resampled_length(headers[f][0], headers[f][2], rate) for f in every],
                              [str(f) for f in every], length, str(root), pad)
    if sample_rate is not None:
        notes = _resample_note(rates, rate) + notes
    if limit is not None:
        chosen = chosen[:limit]
    check_nbytes(4 * n * len(chosen), str(root), f"{len(chosen)} clips of {n} float32 samples")
    data = empty_array((len(chosen), n), np.dtype(np.float32), str(root))
    for i, f in enumerate(chosen):  # pass 2: decode the first n samples of each clip
        clip, _ = read_audio(f, channel, frames=n, sample_rate=rate, resample_to_rate=sample_rate is not None)
        declared = resampled_length(headers[f][0], headers[f][2], rate)
        if len(clip) < min(n, declared):
            raise DataError(f"{f}: {len(clip)} samples decoded, the header declares {declared}; truncated?")
        data[i, :len(clip[:n])] = clip[:n]
        data[i, len(clip[:n]):] = 0.0  # silence (only with pad)
    meta: dict[str, Any] = {"source": str(root), "format": "audio-folder", "kind": "audio", "split": split,
                            "sample_rate": rate, "n_files": len(chosen), "channel": channel,
                            "names": [f.name for f in chosen][:1000]}
    if sample_rate is not None:
        meta["resample"] = True
        meta["source_sample_rates"] = sorted(rates)
    if notes:
        meta["notes"] = notes
    return ArrayDataset(data, None, meta)


def load_audio_npz(path: Path, split: str, *, test_fraction: float = 0.1, limit: int | None = None,
                   length: int | None = None, channel: int | None = None, pad: bool = False,
                   sample_rate: int | None = None) -> ArrayDataset:
    """The FSDD npz layout (``audio`` int16 or float, ``offsets``, ``sample_rate``, optional ``label``,
    ``speaker``, ``speaker_names``, ``name``) as ``(M, L)`` float32 amplitudes (int16 / 32768); with
    ``sample_rate``, resampled to it.

    The split is speaker-disjoint (module docstring) when the npz has ``speaker``; else each clip is a group."""
    _check_rate(sample_rate, str(path))
    with Npz(path) as z:
        offsets = z.read("offsets").astype(np.int64)
        if offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise DataError(f"{path}: offsets must be an increasing (M + 1,) array starting at 0")
        shape, dtype = z.header("audio")
        if len(shape) != 1 or offsets[-1] != shape[0]:
            raise DataError(f"{path}: audio {shape} does not match offsets (last {offsets[-1]})")
        rate = z.read("sample_rate").reshape(-1)
        if rate.size != 1 or not 0 < int(rate[0]) < 10**7:
            raise DataError(f"{path}: sample_rate must be one positive integer")
        m = len(offsets) - 1
        aux = {k: z.read(k) for k in ("label", "speaker", "speaker_names", "name") if k in z}
        audio = z.read("audio")
    if channel not in (None, 0):
        raise DataError(f"{path}: the npz holds mono clips; channel {channel!r} does not exist")
    for k in ("label", "speaker"):
        if k in aux and aux[k].shape != (m,):
            raise DataError(f"{path}: {k} must have shape ({m},), got {aux[k].shape}")
    names = [str(s) for s in aux["name"]] if "name" in aux and len(aux["name"]) == m else [str(i) for i in range(m)]
    if "speaker" in aux:
        spk = aux["speaker"].astype(np.int64)
        sn = [str(s) for s in aux.get("speaker_names", [])]
        groups = [sn[s] if 0 <= s < len(sn) else str(s) for s in spk]
    else:
        groups = names
    src_rate = int(rate[0])
    out_rate = src_rate if sample_rate is None else int(sample_rate)
    if out_rate != src_rate:
        _soxr()  # before anything is decoded
    lengths = [resampled_length(k, src_rate, out_rate) for k in np.diff(offsets).tolist()]
    n, notes = _common_length(lengths, [f"{path} (clip {i}, {names[i]})" for i in range(m)], length, str(path), pad)
    if sample_rate is not None:
        notes = _resample_note({src_rate: path}, out_rate) + notes
    idx = _select(groups, split, test_fraction, path)
    if limit is not None:
        idx = idx[:limit]
    scale = 32768.0 if audio.dtype == np.int16 else 2147483648.0 if audio.dtype == np.int32 else 1.0
    if not (np.issubdtype(audio.dtype, np.integer) or np.issubdtype(audio.dtype, np.floating)):
        raise DataError(f"{path}: audio must be integer or float samples, got {audio.dtype}")
    check_nbytes(4 * n * len(idx), str(path), f"{len(idx)} clips of {n} float32 samples")
    data = empty_array((len(idx), n), np.dtype(np.float32), str(path))
    need = n if out_rate == src_rate else math.ceil(n * src_rate / out_rate) + math.ceil(_RESAMPLE_MARGIN_S * src_rate) + 16
    for j, i in enumerate(idx):
        clip = audio[offsets[i]:min(offsets[i] + need, offsets[i + 1])].astype(np.float32) / scale
        if out_rate != src_rate:
            if not np.isfinite(clip).all():
                raise DataError(f"{path}: NaN or infinite samples (clip {i}, {names[i]})")
            clip = resample(clip, src_rate, out_rate, f"{path} (clip {i}, {names[i]})")[:n]
        data[j, :len(clip)] = clip
        data[j, len(clip):] = 0.0  # silence (only with pad)
    if not np.isfinite(data).all():
        raise DataError(f"{path}: NaN or infinite samples")
    labels = aux["label"].astype(np.int64)[idx] if "label" in aux else None
    meta: dict[str, Any] = {"source": str(path), "format": "audio-npz", "kind": "audio", "split": split,
                            "sample_rate": out_rate, "n_files": int(len(idx)), "channel": channel,
                            "test_groups": sorted(_test_groups(groups, test_fraction))}
    if sample_rate is not None:
        meta["resample"] = True
        meta["source_sample_rates"] = [src_rate]
    if labels is not None:
        meta["class_names"] = [str(c) for c in range(int(labels.max()) + 1)] if len(labels) else []
    if notes:
        meta["notes"] = notes
    return ArrayDataset(data, labels, meta)


def audio_split_files(root: Path, split: str, test_fraction: float = 0.1) -> list[Path]:
    """The audio files of ``split`` of a folder (``train/`` / ``test/`` sub-folders, else the
    speaker-disjoint hashed split of :func:`load_audio_folder`)."""
    subdirs = {s: _audio_files(root / s) for s in ("train", "test") if (root / s).is_dir() and _audio_files(root / s)}
    if subdirs:
        if split == "all":
            return [f for fs in subdirs.values() for f in fs]
        if split not in subdirs:
            raise DataError(f"{root}: no {split}/ sub-folder with audio files")
        return subdirs[split]
    every = _audio_files(root)
    if not every:
        raise DataError(f"{root}: no .wav, .flac or .ogg files")
    return [every[i] for i in _select([_group(f.name) for f in every], split, test_fraction, root)]
