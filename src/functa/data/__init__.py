"""Dataset loading: sniff a path's format and return an :class:`ArrayDataset` (in memory, or read from disk item by item).

Supported formats (``meta["format"]``):

* ``idx``           MNIST / Fashion-MNIST idx files (raw or ``.gz``): a directory or one images file
* ``cifar-npz``     CIFAR-10 ``.npz`` (lossless ``x_train``/``x_test`` or JPEG ``jpeg_bytes``/``offsets``)
* ``cifar-python``  official ``cifar-10-batches-py`` pickles (read with a restricted unpickler)
* ``image-folder``  a directory of PNG/JPEG files, optional ``train/``/``test/`` and class sub-folders
* ``grid-npz``      ``.npz`` with ``lat`` ``(H,)``, ``lon`` ``(W,)`` and a float field ``(..., H, W)``
* ``netcdf``        NetCDF3 classic ``.nc`` with the same lat/lon/variable layout
* ``voxel-npz``     ``.npz`` with ``voxels`` ``(M, X, Y, Z)`` 0/1 occupancy, optional ``label(s)`` and ``class_names``
* ``array-npz``     ``.npz`` with generic ``data`` ``(M, ...)`` (bool/int/float), optional ``label(s)``, ``class_names``
* ``npy``           one ``.npy`` ``(M, ...)``, read on demand (optional ``NAME.labels.npy`` beside it)
* ``npy-shards``    a directory of ``.npy`` shards (optionally in ``train/``/``test/``), concatenated and read on demand
* ``binvox``        one binvox occupancy grid; ``binvox-folder``: a directory of them (class / train / test folders)
* ``audio-folder``  a directory of WAV / FLAC / OGG files (optional ``train/``/``test/``); ``audio-npz``: the FSDD
                    layout (``audio``, ``offsets``, ``sample_rate``); both ``(M, L)`` float32 amplitudes (:mod:`.audio`)
* ``nifti``         one 3-D volume ``.nii`` / ``.nii.gz`` / ``.mgz`` (nibabel); ``nifti-folder``: a directory of them
* ``volume-npz``    ``.npz`` with ``volumes`` ``(M, X, Y, Z)`` scalar intensities (MRI / CT), see :mod:`.nifti`
* ``blender-scenes`` NeRF "Blender" scenes: directories with ``transforms[_train|_val|_test].json`` and images
                    (the root, its children, or ``train/``/``test/`` children); ``srn-scenes``: SRN scene
                    directories (``rgb/``, ``pose/``, ``intrinsics.txt``); ``scene-npz``: ``.npz`` with ``images``,
                    ``poses`` and ``focal``. All three give a :class:`SceneDataset` ``(S, V, H, W, 3)`` uint8
                    with OpenGL camera-to-world ``poses`` ``(S, V, 4, 4)`` and ``focal`` ``(S, V)`` (:mod:`.scenes`)

Scene directories are recognised before image folders (a scene folder holds images).
Images come back as ``(M, H, W, C)`` uint8 with ``C`` in {1, 3}; fields as ``(M, H, W)`` float32; voxels as
``(M, X, Y, Z)`` uint8 in {0, 1}; arrays ``(M, ...)`` in their own dtype. ``npy`` and ``npy-shards`` data stay
on disk (:class:`ShardedArray`, positional file reads, no memory maps): items are read when indexed,
so memory stays O(batch). Split rules: :mod:`.arrays`.
A directory that holds exactly one ``.npz`` file (e.g. ``modelnet10_vox32/``) loads as that file.

Hostile files: every reader checks what a file declares (idx dims, ``.npy`` headers, zip member sizes, image
headers, binvox dims) against what the stored bytes can hold and against a limit on the decoded bytes of
one array -- 2 GiB by default, ``FUNCTA_MAX_ARRAY_BYTES`` (e.g. ``8G``) or ``load_dataset(..., max_bytes=)`` --
before decoding anything, and refuses with a :class:`DataError` naming the file (:mod:`.safeio`).
"""

from __future__ import annotations

from pathlib import Path

from .cifar import (
    JPEG_KEYS,
    LOSSLESS_KEYS,
    find_cifar_npz,
    is_cifar_python_dir,
    load_cifar_npz,
    load_cifar_python,
    npz_keys,
)
from .arrays import (
    has_binvox,
    hashed_test_mask,
    is_npy_shard_dir,
    load_array_npz,
    load_binvox,
    load_binvox_folder,
    load_npy,
    load_npy_shards,
    load_voxel_npz,
    read_array_file,
    read_binvox,
    write_array_file,
    write_binvox,
)
from .audio import (AUDIO_SUFFIXES, audio_split_files, has_audio, is_audio_npz, load_audio_folder,
                    load_audio_npz)
from .dataset import ArrayDataset, DataError
from .folder import MixedSizesError, has_images, load_image_folder, load_image_list
from .grid import is_grid_npz, load_grid_npz, load_netcdf, netcdf_kind
from .idx import find_idx_pair, is_idx_file, load_idx, read_idx
from .nifti import (has_nifti, is_nifti_path, load_nifti, load_nifti_folder, load_volume_npz, nifti_split_files,
                    parse_time_index, read_nifti)
from .safeio import DEFAULT_MAX_ARRAY_BYTES, array_limit, max_array_bytes
from .scene_dataset import SceneDataset
from .scenes import (MissingFrameError, has_blender_scenes, has_srn_scenes, is_scene_npz, load_blender_scenes,
                     load_scene_npz, load_srn_scenes)
from .shards import ShardedArray

__all__ = ["ArrayDataset", "DataError", "MixedSizesError", "ShardedArray", "hashed_test_mask", "item_files",
           "load_dataset",
           "load_image_list", "read_array_file", "read_nifti", "read_binvox", "read_idx", "write_array_file", "write_binvox", "SUPPORTED_FORMATS", "sniff_format",
           "DEFAULT_MAX_ARRAY_BYTES", "array_limit", "max_array_bytes",
           "SceneDataset", "load_blender_scenes", "load_srn_scenes", "load_scene_npz"]

SUPPORTED_FORMATS = (
    "idx (MNIST/Fashion-MNIST directory or idx[.gz] file), "
    "cifar-npz (CIFAR-10 lossless or JPEG .npz, file or directory), "
    "cifar-python (cifar-10-batches-py directory), "
    "image-folder (directory of PNG/JPEG, optional train/test and class sub-folders), "
    "grid-npz (.npz with lat, lon and a (..., H, W) float field), "
    "netcdf (NetCDF3 classic .nc), "
    "voxel-npz (.npz with voxels (M, X, Y, Z) in {0,1}), "
    "array-npz (.npz with a data (M, ...) array), "
    "npy (one .npy (M, ...), read on demand), "
    "npy-shards (directory of .npy shards, optional train/test sub-directories), "
    "binvox (.binvox file), "
    "binvox-folder (directory of .binvox, optional train/test and class sub-folders), "
    "audio-folder (directory of .wav/.flac/.ogg, optional train/test sub-folders), "
    "audio-npz (.npz with audio, offsets and sample_rate, e.g. FSDD), "
    "nifti (.nii, .nii.gz or .mgz 3-D volume; nifti-folder: a directory of them), "
    "volume-npz (.npz with volumes (M, X, Y, Z)), "
    "blender-scenes (NeRF Blender scenes: transforms*.json + images, optional train/test sub-folders), "
    "srn-scenes (SRN scenes: rgb/, pose/, intrinsics.txt, optional train/test sub-folders), "
    "scene-npz (.npz with images, poses and focal: posed views of one or many scenes)"
)
_SPLITS = ("train", "test", "all")
_SCENE_LOADERS = {"blender-scenes": load_blender_scenes, "srn-scenes": load_srn_scenes, "scene-npz": load_scene_npz}
_NETCDF_SUFFIXES = (".nc", ".nc3", ".nc4", ".cdf", ".netcdf")


def _npz_kind(path: Path) -> str:
    keys = set(npz_keys(path))
    if is_scene_npz(keys):
        return "scene-npz"
    if LOSSLESS_KEYS <= keys or JPEG_KEYS <= keys:
        return "cifar-npz"
    if is_grid_npz(sorted(keys)):
        return "grid-npz"
    if "voxels" in keys:
        return "voxel-npz"
    if is_audio_npz(keys):
        return "audio-npz"
    if "volumes" in keys:
        return "volume-npz"
    if "data" in keys:
        return "array-npz"
    raise DataError(
        f"{path}: unrecognised .npz layout (arrays: {sorted(keys)}); supported formats: {SUPPORTED_FORMATS}"
    )


def _single_npz(directory: Path) -> Path | None:
    """The one ``.npz`` file of a directory (e.g. ``modelnet10_vox32/``), or ``None``."""
    files = sorted(f for f in directory.iterdir() if f.suffix.lower() == ".npz" and f.is_file())
    return files[0] if len(files) == 1 else None


def sniff_format(path: str | Path) -> str:
    """The ``meta["format"]`` that :func:`load_dataset` would use for ``path`` (raises :class:`DataError`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; supported formats: {SUPPORTED_FORMATS}")
    if p.is_dir():
        if any(find_idx_pair(p, s)[0] is not None for s in ("train", "test")):
            return "idx"
        if is_cifar_python_dir(p):
            return "cifar-python"
        if find_cifar_npz(p, "train") is not None or find_cifar_npz(p, "test") is not None:
            return "cifar-npz"
        if has_blender_scenes(p):  # before image folders: a scene folder holds images
            return "blender-scenes"
        if has_srn_scenes(p):
            return "srn-scenes"
        if has_images(p):
            return "image-folder"
        if is_npy_shard_dir(p):
            return "npy-shards"
        if has_binvox(p):
            return "binvox-folder"
        if has_audio(p):
            return "audio-folder"
        if has_nifti(p):
            return "nifti-folder"
        single = _single_npz(p)
        if single is not None:
            return _npz_kind(single)
        raise DataError(f"{p}: directory holds no recognised dataset; supported formats: {SUPPORTED_FORMATS}")
    if not p.is_file():  # a device (/dev/zero never ends) or a named pipe (blocks): never opened
        raise DataError(f"{p}: not a regular file or directory; supported formats: {SUPPORTED_FORMATS}")
    if is_nifti_path(p):
        return "nifti"
    if netcdf_kind(p) is not None:
        return "netcdf"
    if p.suffix.lower() in _NETCDF_SUFFIXES:
        raise DataError(f"{p}: has a NetCDF suffix but no NetCDF ('CDF') or HDF5 signature")
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from e
    if head.startswith(b"PK") or p.suffix.lower() == ".npz":
        return _npz_kind(p)
    if head.startswith(b"\x93NUMPY") or p.suffix.lower() == ".npy":
        return "npy"
    if head.startswith(b"#binvox") or p.suffix.lower() == ".binvox":
        return "binvox"
    if is_idx_file(p):
        return "idx"
    if head[:1] == b"\x80" and ("batch" in p.name):
        return "cifar-python"
    raise DataError(f"{p}: unknown dataset format; supported formats: {SUPPORTED_FORMATS}")


def load_dataset(
    path: str | Path,
    split: str | None = None,
    *,
    variable: str | None = None,
    test_fraction: float = 0.1,
    limit: int | None = None,
    progress: bool = True,
    max_bytes: int | str | None = None,
    audio_length: int | None = None,
    audio_channel: int | None = None,
    audio_pad: bool = False,
    audio_sample_rate: int | None = None,
    camera_convention: str | None = None,
    near: float | None = None,
    far: float | None = None,
) -> ArrayDataset:
    """Load the dataset at ``path`` (format sniffed, see module docstring); ``npy`` / ``npy-shards`` lazily.

    Args:
        path: file or directory.
        split: "train", "test" or "all"; ``None`` (default): "train", or for a file holding a single
            split (one idx file, a JPEG CIFAR npz) that split. Such a file asked for the other split
            by name refuses (``DataError``) rather than returning the wrong data; "all" returns it.
        variable: field variable to load from grid / NetCDF files (required when several qualify).
        test_fraction: grids, ``npy`` and ``npy-shards`` without ``train/``/``test/``: the last
            ``round(test_fraction * M)`` items (at least 1) form "test". ``voxel-npz``, ``array-npz`` and binvox
            folders without ``train/``/``test/`` hold one split, so a fixed hashed split is used: item ``i`` is
            "test" iff the first 8 bytes of SHA-256 of its C-order bytes (as returned), read as a little-endian
            uint64, modulo 1000 are ``< round(1000 * test_fraction)``; identical items (duplicate shapes)
            always share a split.
        limit: keep only the first ``limit`` items of the split.
        progress: show a progress bar while decoding many image files (JPEG npz, image folders).
        max_bytes: the most decoded bytes any one array read from a file may have (an int, or a string
            such as ``"8G"``); default: ``$FUNCTA_MAX_ARRAY_BYTES``, else 2 GiB. Declared sizes over it are
            refused with :class:`DataError` before anything is decoded (see :mod:`functa.data.safeio`).
        audio_length: audio: crop every clip to its first ``audio_length`` samples (shorter clips are refused);
            default: the shortest clip's length (:mod:`functa.data.audio`).
        audio_channel: audio: the channel to read from multichannel files (refused without it).
        audio_pad: audio: pad clips shorter than ``audio_length`` with silence instead of refusing them.
        audio_sample_rate: audio: resample every clip to this rate in Hz (``soxr``, an optional dependency);
            default: no resampling, and clips of different rates are refused.
        camera_convention: scenes: the camera convention of the poses, ``"opengl"`` or ``"opencv"``, for data
            that stores none (a convention stored with the data that differs is refused); default: Blender
            scenes ``"opengl"``, SRN ``"opencv"``, a scene npz beside a ``transforms_*.json`` ``"opengl"``,
            else a scene npz without a ``convention`` array is refused (:mod:`functa.data.scenes`).
        near: scenes: the near ray bound, overriding the one stored with the data (default: stored, else
            half the smallest camera distance from the origin).
        far: scenes: the far ray bound, likewise (default: stored, else 1.5 times the largest distance).

    Returns:
        :class:`ArrayDataset` with ``data`` ``(M, H, W, C)`` uint8 (images), ``(M, H, W)`` float32 (fields),
        ``(M, X, Y, Z)`` uint8 in {0, 1} (voxels) or ``(M, ...)`` (arrays); a lazy
        :class:`ShardedArray` for ``npy`` / ``npy-shards``; a :class:`SceneDataset` ``(S, V, H, W, 3)`` uint8
        with ``poses`` and ``focal`` for scenes (``blender-scenes``, ``srn-scenes``, ``scene-npz``).
    """
    p = Path(path).expanduser()
    single = split is None
    split = "train" if split is None else split
    if split not in _SPLITS:
        raise DataError(f"{p}: unknown split {split!r}; expected one of {list(_SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or int(limit) != limit or limit < 1):
        raise DataError(f"{p}: limit must be a positive integer or None, got {limit!r}")
    limit = None if limit is None else int(limit)
    with array_limit(max_bytes):
        try:
            if sniff_format(p) in ("audio-folder", "audio-npz"):
                return _load_audio(p, split, test_fraction, limit, audio_length, audio_channel, audio_pad,
                                   audio_sample_rate)
            fmt = sniff_format(p)
            if fmt in _SCENE_LOADERS:
                if p.is_dir() and fmt == "scene-npz":
                    p = _single_npz(p)  # type: ignore[assignment]
                try:
                    return _SCENE_LOADERS[fmt](p, split, test_fraction=test_fraction, limit=limit,
                                               convention=camera_convention, near=near, far=far, progress=progress)
                except MissingFrameError as e:  # e.g. the NeRF lego folder here: the json kept, the images as npz
                    npz = sorted(f.name for f in p.glob("*.npz")) if p.is_dir() else []
                    if npz:
                        raise DataError(f"{e}; {p} also holds {', '.join(npz[:4])}: pass one of them") from None
                    raise
            return _load(p, split, single, variable, test_fraction, limit, progress)
        except MemoryError:
            raise DataError(f"{p}: out of memory while loading the dataset") from None


def item_files(path: str | Path, split: str, test_fraction: float = 0.1) -> list[Path] | None:
    """The files of ``split`` that each hold one whole item of any size, for codecs and benchmarks:
    ``[path]`` for a single audio or NIfTI file, the split's files of an audio or NIfTI folder;
    ``None`` for datasets whose items are rows of one array (npz, idx, image folders, ...)."""
    p = Path(path).expanduser()
    if p.is_file() and (p.suffix.lower() in AUDIO_SUFFIXES or is_nifti_path(p)):
        return [p]
    fmt = sniff_format(p) if p.exists() else None
    if fmt == "audio-folder":
        return audio_split_files(p, split, test_fraction)
    if fmt == "nifti-folder":
        return nifti_split_files(p, split, test_fraction)
    return None


def _load_audio(p: Path, split: str, test_fraction: float, limit: int | None, length: int | None,
                channel: int | None, pad: bool = False, sample_rate: int | None = None) -> ArrayDataset:
    kw = dict(test_fraction=test_fraction, limit=limit, length=length, channel=channel, pad=pad,
              sample_rate=sample_rate)
    if p.is_dir() and sniff_format(p) == "audio-npz" and not has_audio(p):
        p = _single_npz(p)  # type: ignore[assignment]
    return (load_audio_folder if p.is_dir() else load_audio_npz)(p, split, **kw)


def _load(p: Path, split: str, single: bool, variable: str | None, test_fraction: float, limit: int | None,
          progress: bool) -> ArrayDataset:
    fmt = sniff_format(p)
    if p.is_dir() and fmt in ("voxel-npz", "array-npz", "grid-npz", "volume-npz"):
        p = _single_npz(p)  # a directory holding one .npz file is that file
    if fmt == "idx":
        return load_idx(p, None if single else split, limit)
    if fmt == "cifar-npz":
        return load_cifar_npz(p, None if single else split, limit, progress=progress)
    if fmt == "cifar-python":
        return load_cifar_python(p, split, limit)
    if fmt == "image-folder":
        return load_image_folder(p, split, limit, progress=progress)
    if fmt == "binvox":
        return load_binvox(p, split)
    if fmt == "binvox-folder":
        return load_binvox_folder(p, split, test_fraction=test_fraction, limit=limit, progress=progress)
    if fmt in ("nifti", "nifti-folder"):
        loader = load_nifti if fmt == "nifti" else load_nifti_folder
        return loader(p, split, time_index=parse_time_index(variable), test_fraction=test_fraction, limit=limit)
    arrays = {"volume-npz": load_volume_npz, "voxel-npz": load_voxel_npz, "array-npz": load_array_npz, "npy": load_npy, "npy-shards": load_npy_shards}
    if fmt in arrays:
        return arrays[fmt](p, split, test_fraction=test_fraction, limit=limit)
    kw = dict(variable=variable, test_fraction=test_fraction, limit=limit)
    if fmt == "grid-npz":
        return load_grid_npz(p, split, **kw)
    return load_netcdf(p, split, **kw)
