"""Posed multi-view scenes (NeRF data): Blender ``transforms*.json`` folders, SRN folders and scene ``.npz``.

Every loader returns a :class:`~functa.data.scene_dataset.SceneDataset`: ``data`` ``(S, V, H, W, 3)`` uint8
composited on white, ``poses`` ``(S, V, 4, 4)`` float32 OpenGL camera-to-world, ``focal`` ``(S, V)`` float32
pixels. Formats (``meta["format"]``):

* ``blender-scenes``  NeRF's "Blender" layout. A scene is a directory holding ``transforms_train.json``,
  ``transforms_val.json``, ``transforms_test.json`` (any of them; else one plain ``transforms.json``); its
  views are the frames of those files, in that order. Keys: ``camera_angle_x`` (radians, required in every
  file), ``frames[i].file_path`` (relative to the scene directory; without an image suffix, as NeRF writes
  ``./train/r_0``, the first of ``.png``, ``.jpg``, ``.jpeg`` that exists), ``frames[i].transform_matrix``
  (4x4 camera-to-world), and optionally ``near``, ``far`` (floats) and ``camera_convention`` (``"opengl"``,
  Blender's and the default, or ``"opencv"``). Focal = ``0.5 * W / tan(0.5 * camera_angle_x)``, ``W`` the
  image width in pixels.
* ``srn-scenes``  the SRN layout (Sitzmann et al. 2019): a scene directory holds ``rgb/*.png``, ``pose/*.txt``
  (16 numbers: a row-major 4x4 camera-to-world matrix, OpenCV convention: the camera looks down ``+z``,
  ``+y`` down) and ``intrinsics.txt`` (first line ``f cx cy 0.``, ``f`` the focal length in pixels; a last
  line ``H W``, if present, is the resolution ``f`` refers to, and ``f`` is rescaled when the stored images
  have another size). Views are matched by file stem (``rgb/000000.png`` with ``pose/000000.txt``), sorted.
* ``scene-npz``  an ``.npz`` with ``images`` uint8 ``(V, H, W, 3|4)`` (one scene) or ``(S, V, H, W, 3|4)``,
  ``poses`` float ``(V, 4, 4)`` or ``(S, V, 4, 4)``, ``focal`` scalar, ``(S,)`` or ``(S, V)`` (one scene: also
  ``(V,)``), optional scalars ``near`` and ``far``, a 0-d string ``convention`` (``"opengl"`` | ``"opencv"``)
  and 1-d strings ``names`` (one per scene). Convention: the ``convention`` array, else the ``convention``
  argument, else ``"opengl"`` when a ``transforms_*.json`` lies beside the file (NeRF's Blender export, e.g.
  ``lego_100.npz``); otherwise the file is refused.

Folders of scenes (``blender-scenes``, ``srn-scenes``), for the ``root`` given::

    root/                         one scene (it holds the transforms / intrinsics): returned for every split
    root/{train,test}/<scene>/    split folders ("all": train, then test)
    root/<scene>/                 a fixed hashed split by scene directory name

Hashed split: scene ``name`` is "test" iff ``int.from_bytes(sha256(name.encode()).digest()[:8], "little") %
1000 < round(1000 * test_fraction)`` (halves rounded up, as :mod:`.arrays`); a multi-scene ``.npz`` hashes
``names[i]``, or ``str(i)`` without ``names``; a single-scene ``.npz`` (``images`` ``(V, H, W, C)`` or
``(1, V, H, W, C)``) is returned for every split. Scenes are
sorted by name; ``limit`` keeps the first ``limit`` scenes of the split; ``meta["names"]`` lists them.

Images: PNG or JPEG, 8-bit RGB, RGBA, L or LA. Alpha is composited on white, straight alpha:
``round(255 * (rgb/255 * a/255 + 1 - a/255))``. All views of all scenes of a split must have one size and
every scene the same number of views.

Cameras: poses must be finite rigid transforms (orthonormal rotation, determinant +1, last row ``0 0 0 1``);
OpenCV poses are converted with :func:`~functa.data.scene_dataset.opencv_to_opengl` and ``meta["convention"]``
records the source's. Convention: the one stored with the data, else the ``convention`` argument, else the
format's default (Blender: ``"opengl"``; SRN is always ``"opencv"``); a stored convention (or SRN's) that
differs from the argument is refused, as are scenes of one split with different conventions. Ray bounds:
the ``near`` / ``far`` arguments (``meta["near_far"] = "argument"``), else the bounds stored with the data
(Blender json, npz; every scene of the split must agree; ``"dataset"``), else
:func:`~functa.data.scene_dataset.default_near_far` (``"default"``).

Hostile files: JSON files over :data:`JSON_MAX_BYTES` (64 MiB) and text files over :data:`TEXT_MAX_BYTES`
(1 MiB) are refused before parsing; images are opened with :func:`~functa.data.folder.open_image` (pixel
and byte limits from the header), and the stacked ``(S, V, H, W, 3)`` array is checked against the array
limit (:mod:`.safeio`) from the image headers before any image is decoded; ``.npz`` files are read with
:class:`~functa.data.safeio.Npz` (never ``np.load``), shapes and dtypes checked from the headers first.
Every refusal is a one-line :class:`~functa.errors.DataError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .folder import decode_image, open_image
from .safeio import Npz, check_nbytes, empty_array
from .scene_dataset import ROTATION_ATOL, SceneDataset, default_near_far, opencv_to_opengl

__all__ = ["CONVENTIONS", "JSON_MAX_BYTES", "TEXT_MAX_BYTES", "has_blender_scenes", "has_srn_scenes",
           "is_scene_npz", "is_test_name", "MissingFrameError", "load_blender_scenes", "load_scene_npz", "load_srn_scenes"]  # fmt: skip



class MissingFrameError(DataError):
    """A frame named by a scene's cameras has no image (or an image has no camera)."""


JSON_MAX_BYTES = 64 << 20  # a transforms json larger than this is refused unread
TEXT_MAX_BYTES = 1 << 20  # SRN intrinsics / pose text files
CONVENTIONS = ("opengl", "opencv")
SCENE_NPZ_KEYS = frozenset({"images", "poses", "focal"})
_SPLITS = ("train", "test", "all")
_SPLIT_DIRS = ("train", "test")
_BLENDER_SPLIT_FILES = ("transforms_train.json", "transforms_val.json", "transforms_test.json")
_BLENDER_FILES = (*_BLENDER_SPLIT_FILES, "transforms.json")
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
_HASH_BUCKETS = 1000


# --------------------------------------------------------------------------------------- structures


@dataclass
class _View:
    image: Path
    pose: np.ndarray  # (4, 4) float64, as stored
    angle_x: float | None = None  # Blender: horizontal field of view (radians)
    focal: float | None = None  # SRN: focal in pixels at the scene's ``focal_size``


@dataclass
class _Scene:
    name: str
    path: Path
    where: str  # the scene's first metadata file, for messages
    views: list[_View] = field(default_factory=list)
    bounds: dict[str, tuple[float, str]] = field(default_factory=dict)  # "near"/"far" -> (value, file)
    convention: tuple[str, str] | None = None  # (stored convention, file)
    focal_size: tuple[int, int] | None = None  # SRN: (H, W) the focal refers to


# ------------------------------------------------------------------------------------------ helpers


def _check_args(root: Path, split: str, test_fraction: float, limit: int | None, convention: str | None,
                near: float | None, far: float | None) -> str | None:  # fmt: skip
    if split not in _SPLITS:
        raise DataError(f"{root}: unknown split {split!r}; expected one of {list(_SPLITS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"{root}: limit must be a positive integer or None, got {limit!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise DataError(f"{root}: test_fraction must be a number in (0, 1), got {test_fraction!r}")
    for key, value in (("near", near), ("far", far)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):  # fmt: skip
            raise DataError(f"{root}: {key} must be a finite number >= 0, got {value!r}")
    if convention is None:
        return None
    conv = convention.lower() if isinstance(convention, str) else convention
    if conv not in CONVENTIONS:
        raise DataError(f"{root}: unknown camera convention {convention!r}; expected one of {list(CONVENTIONS)}")
    return conv


def is_test_name(key: str, test_fraction: float) -> bool:
    """The fixed hashed split of scenes: ``key`` (a scene name) is in "test" iff the first 8 bytes of its
    SHA-256, read as a little-endian integer, modulo 1000, are below ``floor(1000 * test_fraction + 1/2)``."""
    threshold = math.floor(_HASH_BUCKETS * test_fraction + 0.5)
    try:
        raw = key.encode("utf-8", "surrogateescape")  # a directory name of non-UTF-8 bytes: those bytes
    except UnicodeEncodeError:
        raw = key.encode("utf-8", "surrogatepass")  # a lone surrogate stored in an npz 'names' array
    digest = hashlib.sha256(raw).digest()
    return int.from_bytes(digest[:8], "little") % _HASH_BUCKETS < threshold


def _check_fraction(root: Path, test_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"{root}: test_fraction must be in (0, 1), got {test_fraction}; use split='all' for everything")


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``, refused (before reading) when it holds more than ``limit`` bytes."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a directory, a device (/dev/zero never ends), a pipe (blocks)
            raise DataError(f"{path}: not a regular file (a {what} must be a file)")
        size = st.st_size
        if size > limit:
            raise DataError(f"{path}: {what} of {size} bytes is larger than the limit of {limit} bytes")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if len(data) > limit:
        raise DataError(f"{path}: {what} is larger than the limit of {limit} bytes")
    return data


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _finite(x: Any) -> float | None:
    """``float(x)`` for a finite JSON number, else ``None``."""
    if not _is_number(x):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def _check_rigid(poses: np.ndarray, where: Callable[[int], str]) -> None:
    """Refuse camera-to-world matrices ``(K, 4, 4)`` that are not finite rigid transforms; the message names
    the first bad one as ``where(k)`` (a file and frame index), as :func:`check_rotations` checks them."""
    p = poses.astype(np.float64)
    finite = np.isfinite(p).all(axis=(1, 2))
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise DataError(f"{where(k)}: the camera pose holds non-finite numbers")
    r = p[:, :3, :3]
    with np.errstate(all="ignore"):  # huge entries: inf products, refused below
        err = np.abs(np.einsum("kij,kil->kjl", r, r) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(r)
    err, det = np.nan_to_num(err, nan=np.inf), np.nan_to_num(det, nan=np.inf)
    bottom = np.abs(p[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    bad = np.flatnonzero((err > ROTATION_ATOL) | (np.abs(det - 1) > ROTATION_ATOL) | (bottom > ROTATION_ATOL))
    if bad.size:
        k = int(bad[0])
        raise DataError(f"{where(k)}: the pose is not a camera-to-world rigid transform (|R^T R - I| = {err[k]:.3g}, "
                        f"det R = {det[k]:.4g}, last row {p[k, 3].tolist()}); rotations must be orthonormal with "
                        f"determinant +1 ({bad.size} bad pose(s))")  # fmt: skip


def _composite(rgba: np.ndarray) -> np.ndarray:
    """``(..., 4)`` uint8 straight-alpha RGBA on white -> ``(..., 3)`` uint8: ``round(rgb * a + 255 * (1 - a))``
    in exact integer arithmetic (``x / 255`` is never a half, so there are no ties)."""
    rgb = rgba[..., :3].astype(np.uint32)
    a = rgba[..., 3:4].astype(np.uint32)
    num = rgb * a + 255 * (255 - a)
    return ((2 * num + 255) // 510).astype(np.uint8)


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DataError(f"{d}: cannot list directory ({e.strerror or e})") from e


def _is_blender_scene(d: Path) -> bool:
    # any entry of the name (a broken file, a link, a directory): the scene's loader says what is wrong with it
    return any(os.path.lexists(d / n) for n in _BLENDER_FILES)


def _is_srn_scene(d: Path) -> bool:
    # ``pose/`` beside ``intrinsics.txt`` (any entry of the name) or ``rgb/``: an SRN scene, even one missing
    # its intrinsics, whose loader then says so (never a plain image folder without its cameras)
    return (d / "pose").is_dir() and (os.path.lexists(d / "intrinsics.txt") or (d / "rgb").is_dir())


def _has_scenes(path: Path, is_scene: Callable[[Path], bool]) -> bool:
    if not path.is_dir():
        return False
    if is_scene(path):
        return True
    children = _subdirs(path)
    if any(is_scene(c) for c in children):
        return True
    return any(is_scene(c) for s in _SPLIT_DIRS if (path / s).is_dir() for c in _subdirs(path / s))


def has_blender_scenes(path: Path) -> bool:
    """Does ``path`` (or a child, or a child of ``train/`` / ``test/``) hold a NeRF ``transforms*.json``?"""
    return _has_scenes(Path(path), _is_blender_scene)


def has_srn_scenes(path: Path) -> bool:
    """Does ``path`` (or a child, or a child of ``train/`` / ``test/``) hold an SRN ``intrinsics.txt`` and ``pose/``?"""
    return _has_scenes(Path(path), _is_srn_scene)


def is_scene_npz(keys: Any) -> bool:
    """Do the array names of an ``.npz`` make it a scene npz (``images``, ``poses`` and ``focal``)?"""
    return SCENE_NPZ_KEYS <= set(keys)


def _find_scenes(root: Path, split: str, test_fraction: float, limit: int | None,
                 is_scene: Callable[[Path], bool], what: str) -> tuple[list[tuple[str, Path]], str, int]:  # fmt: skip
    """``(name, directory)`` of the scenes of ``split``, the split rule and the number of scenes in all splits."""
    if not root.is_dir():
        raise DataError(f"{root}: not a directory of {what} scenes")
    if is_scene(root):
        return [(root.resolve().name or str(root), root)], "single", 1
    by_split = {s: [d for d in _subdirs(root / s) if is_scene(d)] for s in _SPLIT_DIRS if (root / s).is_dir()}
    if any(by_split.values()):
        rule = "folders"
        n_total = sum(len(v) for v in by_split.values())
        wanted = _SPLIT_DIRS if split == "all" else (split,)
        scenes = [(d.name, d) for s in wanted for d in by_split.get(s, [])]
    else:
        rule = "hash"
        every = [(d.name, d) for d in _subdirs(root) if is_scene(d)]
        n_total = len(every)
        if split != "all" and every:
            _check_fraction(root, test_fraction)
            scenes = [(n, d) for n, d in every if is_test_name(n, test_fraction) == (split == "test")]
        else:
            scenes = every
    if not scenes:
        how = {"folders": f"no '{split}/' scenes among {sorted(by_split)}", "hash":
               f"{n_total} scene(s) in all, hashed split with test_fraction={test_fraction}"}[rule]  # fmt: skip
        raise DataError(f"{root}: no {what} scenes found for split {split!r} ({how})")
    return scenes[:limit], rule, n_total


# ------------------------------------------------------------------------------------------ Blender


def _read_json(path: Path) -> dict[str, Any]:
    raw = _read_bounded(path, JSON_MAX_BYTES, "JSON file")

    def constant(name: str) -> None:
        raise ValueError(f"non-finite number {name}")

    try:
        doc = json.loads(raw, parse_constant=constant)
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: malformed JSON ({type(e).__name__}: {e})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'camera_angle_x' and 'frames', got {type(doc).__name__}")
    return doc


def _frame_image(scene: Path, file_path: str, where: str) -> Path:
    base = scene / file_path
    if not base.name or file_path.endswith(("/", "\\")):
        raise DataError(f"{where}: 'file_path' {file_path[:80]!r} names a directory, not an image file")
    if base.suffix.lower() in _FRAME_SUFFIXES:
        candidates = [base]
    else:
        candidates = [base.with_name(base.name + s) for s in _FRAME_SUFFIXES] + [base]
    for c in candidates:
        try:
            if c.is_file():
                return c
        except (OSError, ValueError) as e:  # a name too long for the file system, say
            raise DataError(f"{where}: bad 'file_path' {file_path[:80]!r} ({getattr(e, 'strerror', None) or e})") from None
    tried = "" if len(candidates) == 1 else f" (tried {', '.join(s for s in _FRAME_SUFFIXES)})"
    raise MissingFrameError(f"{where}: missing frame {file_path!r}: no image file {candidates[0]}{tried}")


def _set_stored(scene: _Scene, key: str, value: Any, path: Path) -> None:
    if key == "camera_convention":
        conv = value.lower() if isinstance(value, str) else None
        if conv not in CONVENTIONS:
            raise DataError(f"{path}: 'camera_convention' must be one of {list(CONVENTIONS)}, got {value!r}")
        if scene.convention is not None and scene.convention[0] != conv:
            raise DataError(f"{path}: 'camera_convention' {conv!r} differs from {scene.convention[0]!r} in "
                            f"{scene.convention[1]}")  # fmt: skip
        scene.convention = (conv, str(path))
        return
    v = _finite(value)
    if v is None or v < 0:
        raise DataError(f"{path}: {key!r} must be a finite number >= 0, got {value!r}")
    if key in scene.bounds and scene.bounds[key][0] != v:
        raise DataError(f"{path}: {key!r} = {v:g} differs from {scene.bounds[key][0]:g} in {scene.bounds[key][1]}")
    scene.bounds[key] = (v, str(path))


def _blender_scene(name: str, d: Path) -> _Scene:
    files = [d / n for n in _BLENDER_SPLIT_FILES if os.path.lexists(d / n)] or [d / "transforms.json"]
    scene = _Scene(name, d, str(files[0]))
    for path in files:
        doc = _read_json(path)
        angle = doc.get("camera_angle_x")
        if angle is None:
            raise DataError(f"{path}: no 'camera_angle_x' (the horizontal field of view in radians)")
        a = _finite(angle)
        if a is None or not 0 < a < math.pi:
            raise DataError(f"{path}: 'camera_angle_x' must be a number in (0, pi) radians, got {angle!r}")
        for key in ("near", "far", "camera_convention"):
            if doc.get(key) is not None:
                _set_stored(scene, key, doc[key], path)
        frames = doc.get("frames")
        if not isinstance(frames, list):
            raise DataError(f"{path}: 'frames' must be a list of frames, got {type(frames).__name__}")
        mats = []
        for i, frame in enumerate(frames):
            where = f"{path}: frame {i}"
            if not isinstance(frame, dict):
                raise DataError(f"{where}: expected an object with 'file_path' and 'transform_matrix'")
            fp, m = frame.get("file_path"), frame.get("transform_matrix")
            if not isinstance(fp, str) or not fp:
                raise DataError(f"{where}: 'file_path' must be a non-empty string, got {fp!r}")
            if not (isinstance(m, list) and len(m) == 4
                    and all(isinstance(r, list) and len(r) == 4 and all(map(_is_number, r)) for r in m)):  # fmt: skip
                raise DataError(f"{where}: 'transform_matrix' must be a 4x4 list of numbers")
            values = [_finite(x) for r in m for x in r]
            if any(v is None for v in values):
                raise DataError(f"{where}: 'transform_matrix' holds non-finite numbers")
            mats.append(np.array(values, dtype=np.float64).reshape(4, 4))
            scene.views.append(_View(_frame_image(d, fp, where), mats[-1], angle_x=a))
        if mats:
            _check_rigid(np.stack(mats), lambda k, path=path: f"{path}: frame {k}")
    if not scene.views:
        raise DataError(f"{scene.where}: scene {name!r} has no frames")
    return scene


# ---------------------------------------------------------------------------------------------- SRN


def _text(path: Path) -> str:
    try:
        return _read_bounded(path, TEXT_MAX_BYTES, "text file").decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None


def _floats(words: list[str], path: Path, what: str) -> list[float]:
    try:
        values = [float(w) for w in words]
    except ValueError:
        raise DataError(f"{path}: {what}: expected numbers, found {' '.join(words)[:80]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"{path}: {what}: non-finite numbers")
    return values


def _srn_files(d: Path, suffixes: tuple[str, ...], scene: Path) -> dict[str, Path]:
    if not d.is_dir():
        raise DataError(f"{scene}: SRN scene has no {d.name}/ folder")
    out: dict[str, Path] = {}
    for f in sorted(d.iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in suffixes:
            if f.stem in out:
                raise DataError(f"{f}: two files for frame {f.stem!r} ({out[f.stem].name} and {f.name})")
            out[f.stem] = f
    return out


def _srn_scene(name: str, d: Path) -> _Scene:
    intr = d / "intrinsics.txt"
    lines = [ln.split() for ln in _text(intr).splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{intr}: empty; expected a first line 'f cx cy 0.'")
    f = _floats(lines[0], intr, "first line 'f cx cy 0.'")[0]
    if f <= 0:
        raise DataError(f"{intr}: focal length {f:g} must be > 0")
    scene = _Scene(name, d, str(intr), convention=("opencv", str(intr)))
    if len(lines) > 1 and len(lines[-1]) == 2:
        h, w = _floats(lines[-1], intr, "last line 'H W'")
        if h < 1 or w < 1 or h != int(h) or w != int(w):
            raise DataError(f"{intr}: last line 'H W' must be two positive integers, got {' '.join(lines[-1])!r}")
        scene.focal_size = (int(h), int(w))
    rgb = _srn_files(d / "rgb", _FRAME_SUFFIXES, d)
    poses = _srn_files(d / "pose", (".txt",), d)
    for stem in sorted(set(rgb) ^ set(poses)):
        if stem in rgb:
            raise MissingFrameError(f"{rgb[stem]}: missing frame {stem!r}: no pose file {d / 'pose' / (stem + '.txt')}")
        raise MissingFrameError(f"{poses[stem]}: missing frame {stem!r}: no image file {d / 'rgb' / (stem + '.png')}")
    if not rgb:
        raise DataError(f"{d}: SRN scene {name!r} has no frames (rgb/*.png with pose/*.txt)")
    stems = sorted(rgb)
    mats = []
    for stem in stems:
        values = _floats(_text(poses[stem]).split(), poses[stem], "camera-to-world matrix")
        if len(values) != 16:
            raise DataError(f"{poses[stem]}: expected 16 numbers (a 4x4 camera-to-world matrix), found {len(values)}")
        mats.append(np.array(values, dtype=np.float64).reshape(4, 4))
        scene.views.append(_View(rgb[stem], mats[-1], focal=f))
    _check_rigid(np.stack(mats), lambda k: f"{poses[stems[k]]}: frame {stems[k]!r}")
    return scene


# ---------------------------------------------------------------------------------- shared assembly


def _resolve_convention(stored: list[tuple[str | None, str]], argument: str | None, default: str | None,
                        root: Path) -> str | None:  # fmt: skip
    """The split's source convention from ``(stored or None, file)`` per scene, the argument and the default."""
    chosen: list[tuple[str | None, str]] = []
    for conv, where in stored:
        if conv is not None and argument is not None and conv != argument:
            raise DataError(f"{where}: the camera convention {conv!r} stored with the data conflicts with the "
                            f"convention argument {argument!r} (data.camera_convention)")  # fmt: skip
        chosen.append((conv or argument or default, where))
    first = chosen[0]
    for conv, where in chosen[1:]:
        if conv != first[0]:
            raise DataError(f"{where}: camera convention {conv!r} differs from {first[0]!r} of {first[1]}; the "
                            f"scenes of one split must share a convention")  # fmt: skip
    return first[0]


def _resolve_bounds(stored: list[tuple[dict[str, tuple[float, str]], str]], near: float | None,
                    far: float | None, poses: np.ndarray) -> tuple[float, float, str]:  # fmt: skip
    """``(near, far, how)`` from the bounds stored per scene ``({key: (value, file)}, scene file)``, the
    arguments and the default (module docstring)."""
    values: dict[str, float] = {}
    sources = set()
    for key, arg in (("near", near), ("far", far)):
        if arg is not None:
            values[key], _ = float(arg), sources.add("argument")
            continue
        got = [(b.get(key), where) for b, where in stored]
        first = got[0]
        for item, where in got[1:]:
            if (item is None) != (first[0] is None) or (item is not None and item[0] != first[0][0]):
                have = "none" if item is None else f"{item[0]:g}"
                want = "none" if first[0] is None else f"{first[0][0]:g}"
                raise DataError(f"{where}: stored {key} {have} differs from {want} of {first[1]}; the scenes of "
                                f"a split must share ray bounds (or pass {key}=)")  # fmt: skip
        if first[0] is not None:
            values[key], _ = first[0][0], sources.add("dataset")
        else:
            values[key], _ = default_near_far(poses)[key == "far"], sources.add("default")
    how = "argument" if "argument" in sources else "default" if "default" in sources else "dataset"
    if "default" in sources and not values["near"] < values["far"]:
        raise DataError(f"{stored[0][1]}: no ray bounds stored and none derivable from the camera distances "
                        f"(near={values['near']:g}, far={values['far']:g}); pass near= and far=")  # fmt: skip
    return values["near"], values["far"], how


def _bar(items: list[Any], progress: bool, root: Path) -> Any:
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=f"reading {root.name or root}", unit="scene", leave=False)


def _frame_header(path: Path) -> tuple[int, int]:
    with open_image(path, str(path)) as im:
        if im.mode.startswith("I") or im.mode == "F":
            raise DataError(f"{path}: unsupported image mode {im.mode!r} (only 8-bit RGB, RGBA, L or LA images)")
        return im.size


def _decode_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    with open_image(path, str(path)) as im:
        if im.size != size:
            raise DataError(f"{path}: image size {im.size[0]}x{im.size[1]} changed while the scenes were read "
                            f"(was {size[0]}x{size[1]})")  # fmt: skip
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            return _composite(decode_image(im, "RGBA", str(path)))
        return decode_image(im, "RGB", str(path))


def _assemble(root: Path, scenes: list[_Scene], fmt: str, split: str, rule: str, n_total: int,
              test_fraction: float, convention: str | None, default_convention: str, near: float | None,
              far: float | None, progress: bool) -> SceneDataset:  # fmt: skip
    first = scenes[0]
    v = len(first.views)
    for sc in scenes[1:]:
        if len(sc.views) != v:
            raise DataError(f"{sc.where}: scene {sc.name!r} has {len(sc.views)} views, expected {v} (as scene "
                            f"{first.name!r}); every scene of a split needs the same number of views")  # fmt: skip
    conv = _resolve_convention([(sc.convention[0] if sc.convention else None, sc.where) for sc in scenes],
                               convention, default_convention, root)  # fmt: skip
    poses = np.stack([np.stack([view.pose for view in sc.views]) for sc in scenes])
    if conv == "opencv":
        poses = opencv_to_opengl(poses)
    near_v, far_v, how = _resolve_bounds([(sc.bounds, sc.where) for sc in scenes], near, far, poses)

    # pass 1: image headers -- every view one size, the stacked array within the limit
    size = _frame_header(first.views[0].image)
    for sc in scenes:
        for j, view in enumerate(sc.views):
            got = _frame_header(view.image)
            if got != size:
                raise DataError(f"{view.image}: scene {sc.name!r} view {j} is {got[0]}x{got[1]}, expected "
                                f"{size[0]}x{size[1]} (as {first.views[0].image}); all views of a split "
                                "need one size")  # fmt: skip
    w, h = size
    shape = (len(scenes), v, h, w, 3)
    check_nbytes(math.prod(shape), str(root), f"{len(scenes)} scenes x {v} views of {w}x{h} RGB")
    data = empty_array(shape, np.dtype(np.uint8), str(root))

    # pass 2: decode
    for i, sc in enumerate(_bar(scenes, progress, root)):
        for j, view in enumerate(sc.views):
            data[i, j] = _decode_frame(view.image, size)

    focal = np.empty((len(scenes), v), np.float64)
    for i, sc in enumerate(scenes):
        scale = 1.0
        if sc.focal_size is not None and sc.focal_size != (h, w):
            fh, fw = sc.focal_size
            if abs(h / fh - w / fw) > 1e-6 * max(h / fh, w / fw):
                raise DataError(f"{sc.where}: intrinsics are for {fw}x{fh} images but the views are {w}x{h} "
                                "(another aspect ratio)")  # fmt: skip
            scale = w / fw
        for j, view in enumerate(sc.views):
            focal[i, j] = 0.5 * w / math.tan(0.5 * view.angle_x) if view.angle_x is not None else view.focal * scale
    meta: dict[str, Any] = {
        "source": str(root), "format": fmt, "kind": "scene", "split": split, "split_rule": rule,
        "test_fraction": float(test_fraction), "n_total": n_total, "names": [sc.name for sc in scenes],
        "near": float(near_v), "far": float(far_v), "near_far": how, "convention": conv,
    }  # fmt: skip
    return SceneDataset(data, None, meta, poses=poses, focal=focal)


# -------------------------------------------------------------------------------------------- public


def load_blender_scenes(
    root: str | os.PathLike, split: str, *, test_fraction: float = 0.1, limit: int | None = None,
    convention: str | None = None, near: float | None = None, far: float | None = None, progress: bool = True,
) -> SceneDataset:  # fmt: skip
    """NeRF "Blender" scenes (``transforms*.json`` + images) under ``root`` -> :class:`SceneDataset`.

    Layouts, splits, conventions and ray bounds: module docstring. ``convention`` is used for scenes whose
    json has no ``camera_convention`` (default ``"opengl"``); ``near`` / ``far`` override stored bounds."""
    root = Path(root).expanduser()
    conv = _check_args(root, split, test_fraction, limit, convention, near, far)
    found, rule, n_total = _find_scenes(root, split, test_fraction, limit, _is_blender_scene, "Blender")
    scenes = [_blender_scene(name, d) for name, d in found]
    return _assemble(root, scenes, "blender-scenes", split, rule, n_total, test_fraction, conv, "opengl", near,
                     far, progress)  # fmt: skip


def load_srn_scenes(
    root: str | os.PathLike, split: str, *, test_fraction: float = 0.1, limit: int | None = None,
    convention: str | None = None, near: float | None = None, far: float | None = None, progress: bool = True,
) -> SceneDataset:  # fmt: skip
    """SRN scenes (``rgb/``, ``pose/``, ``intrinsics.txt``) under ``root`` -> :class:`SceneDataset`.

    Poses are OpenCV (a ``convention`` other than ``"opencv"`` is refused) and converted to OpenGL; ray
    bounds: ``near`` / ``far``, else :func:`default_near_far`. Layouts and splits: module docstring."""
    root = Path(root).expanduser()
    conv = _check_args(root, split, test_fraction, limit, convention, near, far)
    found, rule, n_total = _find_scenes(root, split, test_fraction, limit, _is_srn_scene, "SRN")
    scenes = [_srn_scene(name, d) for name, d in found]
    return _assemble(root, scenes, "srn-scenes", split, rule, n_total, test_fraction, conv, "opencv", near, far,
                     progress)  # fmt: skip


def _strings(a: np.ndarray, where: str) -> list[str]:
    return [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in a.reshape(-1).tolist()]


def _npz_layout(z: Npz, path: Path) -> tuple[int, int, int, int, int, bool]:
    """Check every header of a scene npz; ``(S, V, H, W, C, single)``."""
    missing = sorted(SCENE_NPZ_KEYS - set(z.names))
    if missing:
        raise DataError(f"{path}: a scene npz needs arrays 'images', 'poses' and 'focal'; missing {missing} "
                        f"(has {sorted(z.names)})")  # fmt: skip
    ishape, idt = z.header("images")
    if idt != np.uint8 or len(ishape) not in (4, 5) or ishape[-1] not in (3, 4):
        raise DataError(f"{path}: array 'images' must be uint8 (V, H, W, 3|4) or (S, V, H, W, 3|4), got {idt} "
                        f"{ishape}")  # fmt: skip
    single = len(ishape) == 4
    s, v, h, w, c = (1, *ishape) if single else ishape
    if min(s, v, h, w) < 1:
        raise DataError(f"{path}: array 'images' {ishape} holds no views")
    check_nbytes(math.prod(ishape), f"{path}: array 'images'", f"uint8 {ishape}")
    pshape, pdt = z.header("poses")
    want = (v, 4, 4) if single else (s, v, 4, 4)
    if pdt.kind != "f" or pshape != want:
        raise DataError(f"{path}: array 'poses' must be float {want} for images {ishape}, got {pdt} {pshape}")
    fshape, fdt = z.header("focal")
    allowed = [(), (s,), (s, v)] + ([(v,)] if single else [])
    if fdt.kind not in "fiu" or fshape not in allowed:
        raise DataError(f"{path}: array 'focal' must be numeric with shape in {allowed} for images {ishape}, "
                        f"got {fdt} {fshape}")  # fmt: skip
    for key in ("near", "far"):
        if key in z:
            shape, dt = z.header(key)
            if dt.kind not in "fiu" or shape != ():
                raise DataError(f"{path}: array {key!r} must be a numeric scalar, got {dt} {shape}")
    for key, shape_want in (("convention", ()), ("names", (s,))):
        if key in z:
            shape, dt = z.header(key)
            if dt.kind not in "US" or shape != shape_want:
                raise DataError(f"{path}: array {key!r} must be strings of shape {shape_want}, got {dt} {shape}")
    return s, v, h, w, c, single


def load_scene_npz(
    path: str | os.PathLike, split: str, *, test_fraction: float = 0.1, limit: int | None = None,
    convention: str | None = None, near: float | None = None, far: float | None = None, progress: bool = True,
) -> SceneDataset:  # fmt: skip
    """Scenes from one ``.npz`` (module docstring), read with :class:`~functa.data.safeio.Npz` -> :class:`SceneDataset`.

    One scene (``images`` ``(V, H, W, C)``) is returned for every split; many are split by the hashed rule on
    their names (or indices). ``progress`` is accepted for a uniform signature (nothing slow to show)."""
    path = Path(path).expanduser()
    conv_arg = _check_args(path, split, test_fraction, limit, convention, near, far)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if not regular:  # a named pipe would block the zip reader forever, a device never end
        raise DataError(f"{path}: not a regular file (a scene .npz must be a file)")
    with Npz(path) as z:
        s, v, h, w, c, single = _npz_layout(z, path)
        small = z.read_all(["poses", "focal", *(k for k in ("near", "far", "convention", "names") if k in z)])
        names = _strings(small["names"], str(path)) if "names" in small else None
        if single or s == 1:
            idx, rule = np.arange(1), "single"
            names = names or [path.stem]
        else:
            keys = names or [str(i) for i in range(s)]
            if split == "all":
                idx = np.arange(s)
            else:
                _check_fraction(path, test_fraction)
                idx = np.array([i for i, k in enumerate(keys) if is_test_name(k, test_fraction) == (split == "test")],
                               dtype=np.int64)  # fmt: skip
            if not idx.size:
                raise DataError(f"{path}: none of the {s} scenes falls in the {split!r} split (hashed, "
                                f"test_fraction={test_fraction}); use split='all' or another test_fraction")  # fmt: skip
            idx, rule = idx[:limit], "hash"
            names = [keys[i] for i in idx]
        stored = _strings(small["convention"], str(path))[0].lower() if "convention" in small else None
        if stored is not None and stored not in CONVENTIONS:
            raise DataError(f"{path}: array 'convention' must be one of {list(CONVENTIONS)}, got {stored!r}")
        default = "opengl" if any(path.parent.glob("transforms_*.json")) else None
        conv = _resolve_convention([(stored, str(path))], conv_arg, default, path)
        if conv is None:
            raise DataError(f"{path}: the camera convention cannot be determined: add a 'convention' array "
                            "('opengl' or 'opencv') or pass data.camera_convention")  # fmt: skip
        poses = small["poses"].astype(np.float64).reshape(s, v, 4, 4)
        _check_rigid(poses.reshape(-1, 4, 4), lambda k: f"{path}: array 'poses' scene {k // v} view {k % v}")
        focal = np.asarray(small["focal"], np.float64)
        focal = np.broadcast_to(focal[None] if single and focal.shape == (v,) else
                                focal[:, None] if focal.shape == (s,) else focal, (s, v))  # fmt: skip
        if not (np.isfinite(focal).all() and (focal > 0).all()):
            raise DataError(f"{path}: array 'focal' must be finite and > 0")
        out_shape = (len(idx), v, h, w, 3)
        check_nbytes(math.prod(out_shape), str(path), f"{len(idx)} scenes x {v} views of {w}x{h} RGB")
        images = z.read("images").reshape(s, v, h, w, c)
    data = empty_array(out_shape, np.dtype(np.uint8), str(path))
    for n, i in enumerate(idx):
        data[n] = _composite(images[i]) if c == 4 else images[i]
    del images
    poses, focal = poses[idx], focal[idx]
    if conv == "opencv":
        poses = opencv_to_opengl(poses)
    bounds = {k: (float(small[k]), str(path)) for k in ("near", "far") if k in small}
    for k, (value, _) in bounds.items():
        if not math.isfinite(value) or value < 0:
            raise DataError(f"{path}: array {k!r} must be a finite number >= 0, got {value}")
    near_v, far_v, how = _resolve_bounds([(bounds, str(path))], near, far, poses)
    meta: dict[str, Any] = {
        "source": str(path), "format": "scene-npz", "kind": "scene", "split": split, "split_rule": rule,
        "test_fraction": float(test_fraction), "n_total": s, "names": names, "files": [str(path)],
        "near": float(near_v), "far": float(far_v), "near_far": how, "convention": conv,
    }  # fmt: skip
    return SceneDataset(data, None, meta, poses=poses, focal=focal)
