"""Functasets on disk: a directory of safetensors chunks plus a JSON manifest.

Layout of ``name.functaset/``::

    manifest.json            format, versions, base network (sha256, field + modality config),
                             encoding settings, data source, latent_shape, count, chunk list,
                             the per-item columns and their running sums, summary
    chunk-000000.safetensors latents (n, *latent_shape) float32, labels (n,) int64,
                             index (n,) int64 (position of the item in its source dataset), and
                             one float32 column (n,) per per-item value: the fitting ``loss`` and
                             the modality's metrics (``mse``/``psnr`` for images and fields,
                             ``voxel_accuracy``/``iou`` for shapes)

Chunks are written one at a time (temp file + rename) and the manifest is rewritten after each,
so a large dataset never has to fit in memory and an interrupted encoding resumes after the last
complete chunk. No pickle anywhere; any safetensors reader can open a chunk.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from torch import Tensor
from torch.utils.data import Dataset

from .errors import ConfigError
from .io import ArtefactError, read_json, read_json_object, save_tensors, sha256_file, tensor_shapes, versions, write_json
from .validation import MAX_GRID_POINTS, Bool, Int, IntSeq, Text, check_total

__all__ = ["FunctasetWriter", "Functaset", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT = "functaset"
FORMAT_VERSION = 2
_KEYS = ("latents", "labels", "index")
_V1_COLUMNS = ("mse", "psnr")  # format 1 stored these two per-item columns, always


class FunctasetWriter:
    """Incremental writer. ``header`` identifies what is encoded (base network, data, settings).

    Re-opening a directory whose manifest has the same ``header`` resumes after its last chunk
    (``writer.count`` items are already stored); a different header raises instead of mixing.
    Per-item float columns (``columns`` of :meth:`append`) are fixed by the first batch; the
    manifest keeps their running sums (:attr:`sums`), from which summaries are computed.
    """

    def __init__(self, path: str | Path, header: dict[str, Any], total: int, chunk_size: int = 4096) -> None:
        self.path = Path(path)
        self.header, self.total, self.chunk_size = header, int(total), int(chunk_size)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        if (self.path / MANIFEST).exists():
            manifest = read_json_object(self.path / MANIFEST, "a functaset manifest (a JSON object)")
            try:
                _check_manifest(manifest, FORMAT_VERSION)
            except ConfigError as e:
                raise ArtefactError(f"{self.path / MANIFEST}: {e}; delete the functaset to encode it again") from None
            if manifest.get("header") != header or manifest.get("total") != self.total:
                raise ArtefactError(f"{self.path}: already holds a functaset of other data or another base network; "
                                    "choose a new output path or delete it")
            self.manifest = manifest
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "versions": versions(),
                             "header": header, "total": self.total, "count": 0, "chunks": [], "complete": False,
                             "columns": None, "sums": {}}
            write_json(self.path / MANIFEST, self.manifest)

    @property
    def count(self) -> int:
        """Items stored in complete chunks."""
        return int(self.manifest["count"])

    @property
    def sums(self) -> dict[str, float]:
        """Sums of every per-item column over the stored items."""
        return dict(self.manifest.get("sums", {}))

    def append(self, latents: Tensor, labels: np.ndarray, index: np.ndarray, columns: dict[str, Tensor]) -> None:
        """Add a batch: ``latents (B, *latent_shape)``, ``labels (B,)``, ``index (B,)`` and per-item
        float ``columns`` ``{name: (B,)}``."""
        names = sorted(columns)
        if self.manifest.get("columns") is None:
            bad = [k for k in names if k in _KEYS]
            if bad:
                raise ValueError(f"column names {bad} are reserved")
            self.manifest["columns"] = names
        elif names != self.manifest["columns"]:
            raise ValueError(f"{self.path}: columns {names} differ from the stored {self.manifest['columns']}")
        rows = {"latents": latents.detach().cpu().float().numpy(), "labels": np.asarray(labels, dtype=np.int64),
                "index": np.asarray(index, dtype=np.int64)}
        rows.update({k: columns[k].detach().cpu().double().numpy().astype(np.float32) for k in names})
        for k, v in rows.items():
            self._buf.setdefault(k, []).append(v)
        self._buffered += len(rows["index"])
        while self._buffered >= self.chunk_size:
            self._flush(self.chunk_size)

    def _flush(self, n: int) -> None:
        if n == 0:
            return
        arrays = {k: np.concatenate(v) for k, v in self._buf.items()}
        head = {k: torch.from_numpy(np.ascontiguousarray(a[:n])) for k, a in arrays.items()}
        self._buf = {k: [a[n:]] for k, a in arrays.items()}
        self._buffered -= n
        name = f"chunk-{len(self.manifest['chunks']):06d}.safetensors"
        save_tensors(self.path / name, head)
        self.manifest["chunks"].append({"file": name, "count": n, "sha256": sha256_file(self.path / name)})
        self.manifest["count"] = self.count + n
        sums = self.manifest.setdefault("sums", {})
        for k in self.manifest["columns"]:
            sums[k] = sums.get(k, 0.0) + float(head[k].double().sum())
        write_json(self.path / MANIFEST, self.manifest)

    def flush(self) -> None:
        """Write the buffered items as a (short) chunk."""
        self._flush(self._buffered)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        """Flush the remainder, mark complete when ``count == total`` and record ``summary``
        (the reconstruction summary of the stored items, computed by the caller from :attr:`sums`)."""
        self._flush(self._buffered)
        self.manifest["complete"] = self.count == self.total
        self.manifest["summary"] = dict(summary or {})
        write_json(self.path / MANIFEST, self.manifest)


class Functaset(Dataset):
    """Read a functaset; ``ds[i] -> (latent (*latent_shape), label)``. Chunks are read on demand.

    :attr:`columns` names every stored column: ``latents``, ``labels``, ``index`` and the per-item
    values (``loss`` and the modality's metrics; ``mse`` and ``psnr`` in format-1 functasets).

    Opening checks the manifest (its schema: types, ranges, required keys; chunk files are plain
    names inside the directory; the chunk counts add up to ``count``) and the header of every
    chunk (each array's shape and dtype as the manifest declares: ``latents (n, *latent_shape)``
    float32, ``labels`` / ``index`` ``(n,)`` int64, one float32 ``(n,)`` per column), so nothing is
    allocated from a size the files do not hold. With ``verify=True`` (the default) every chunk's
    bytes are also checked against the SHA-256 in the manifest when the chunk is first read
    (:meth:`arrays`, :meth:`take`, indexing), so corrupt latents are never returned;
    ``verify=False`` skips the hashes (the fast path, for files known to be intact). Problems
    raise :class:`ArtefactError` naming the file.
    """

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        self.verify = bool(verify)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            if manifest_path.exists():
                raise ArtefactError(f"{manifest_path}: not a regular file")
            raise ArtefactError(f"{self.path}: not a functaset (no {MANIFEST})")
        self.manifest = read_json_object(manifest_path, "a functaset manifest (a JSON object)")
        if self.manifest.get("format") != FORMAT:
            raise ArtefactError(f"{manifest_path}: format is {str(self.manifest.get('format'))[:40]!r}, not a functaset")
        try:
            version = Int(0, 2**31)(self.manifest.get("format_version", 0), "format_version")
            if version > FORMAT_VERSION:
                raise ArtefactError(f"{self.path}: functaset format {version} is newer than "
                                    f"this library supports ({FORMAT_VERSION}); upgrade functa")
            self._latent_shape, stored, self._chunks = _check_manifest(self.manifest, version)
        except ConfigError as e:
            raise ArtefactError(f"{manifest_path}: {e}") from None
        self.columns: tuple[str, ...] = _KEYS + stored
        self._expected = [self._expected_arrays(int(ch["count"])) for ch in self._chunks]
        root = self.path.resolve()
        self._starts = [0]
        for ch, expected in zip(self._chunks, self._expected):
            f = self.path / ch["file"]
            if not f.is_file():
                raise ArtefactError(f"{f}: chunk listed in the manifest is "
                                    f"{'not a regular file' if f.exists() else 'missing'}")
            if f.resolve().parent != root:
                raise ArtefactError(f"{f}: chunk is a link to a file outside the functaset")
            try:
                stored_arrays = tensor_shapes(f)
            except ArtefactError:
                if self.verify and sha256_file(f) != ch["sha256"]:
                    raise ArtefactError(f"{f}: checksum mismatch (corrupt chunk)") from None
                raise ArtefactError(f"{f}: unreadable chunk (not a safetensors file)") from None
            self._match(f, expected, stored_arrays)
            self._starts.append(self._starts[-1] + int(ch["count"]))
        self._cache: tuple[int, dict[str, Tensor]] | None = None
        self._verified: set[int] = set()

    def _expected_arrays(self, n: int) -> dict[str, tuple[tuple[int, ...], str]]:
        out = {"latents": ((n, *self._latent_shape), "F32"), "labels": ((n,), "I64"), "index": ((n,), "I64")}
        out.update({k: ((n,), "F32") for k in self.columns[len(_KEYS):]})
        return out

    @staticmethod
    def _match(f: Path, expected: dict, stored: dict) -> None:
        for k, (shape, dtype) in expected.items():
            if k not in stored:
                raise ArtefactError(f"{f}: chunk has no {k!r} array (the manifest lists it)")
            s_shape, s_dtype = stored[k]
            if tuple(s_shape) != shape or s_dtype != dtype:
                raise ArtefactError(f"{f}: {k} are {s_dtype} of shape {tuple(s_shape)}; the manifest declares "
                                    f"{dtype} of shape {shape}")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (format 1 recorded only ``latent_dim``: a vector)."""
        return self._latent_shape

    @property
    def header(self) -> dict:
        return self.manifest["header"]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return self._starts[-1]

    def _chunk(self, c: int) -> dict[str, Tensor]:
        if self._cache is None or self._cache[0] != c:
            ch = self._chunks[c]
            f = self.path / ch["file"]
            try:
                if self.verify and c not in self._verified:
                    raw = f.read_bytes()  # hash the very bytes that are parsed
                    if hashlib.sha256(raw).hexdigest() != ch["sha256"]:
                        raise ArtefactError(f"{f}: checksum mismatch (corrupt chunk)")
                    tensors = load_safetensors(raw)
                    del raw
                    data = {k: tensors[k] for k in self.columns}
                    self._verified.add(c)
                else:
                    with safe_open(str(f), framework="pt") as st:
                        data = {k: st.get_tensor(k) for k in self.columns}
            except ArtefactError:
                raise
            except Exception as e:  # noqa: BLE001 - safetensors raises several types for corrupt files
                raise ArtefactError(f"{f}: unreadable chunk ({' '.join(str(e).split())[:200]})") from None
            # the file may have been replaced since it was opened
            self._match(f, self._expected[c], {k: (tuple(v.shape), _DTYPE_NAMES.get(v.dtype, str(v.dtype)))
                                                for k, v in data.items()})
            if not bool(torch.isfinite(data["latents"]).all()):  # a hash forged along with the values
                raise ArtefactError(f"{f}: non-finite latents (NaN or inf)")
            self._cache = (c, data)
        return self._cache[1]

    def check(self) -> None:
        """Read every chunk once (hash, declared shapes, finite latents; one chunk in memory at a time) and
        raise :class:`~functa.io.ArtefactError` naming the first bad file."""
        for c in range(len(self._chunks)):
            self._chunk(c)
        self._cache = None

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        c = bisect.bisect_right(self._starts, i) - 1
        ch = self._chunk(c)
        j = i - self._starts[c]
        return ch["latents"][j], int(ch["labels"][j])

    def take(self, indices) -> dict[str, Tensor]:
        """Rows ``indices`` (any order) of every column, read chunk by chunk: ``latents (K, *latent_shape)``, ..."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"indices out of range for a functaset of {len(self)} items")
        idx = idx % max(len(self), 1)
        chunk_of = np.searchsorted(self._starts, idx, side="right") - 1
        out: dict[str, Tensor] | None = None
        for c in np.unique(chunk_of):
            sel = np.nonzero(chunk_of == c)[0]
            data = self._chunk(int(c))
            local = torch.from_numpy(idx[sel] - self._starts[c])
            if out is None:
                out = {k: v.new_empty((len(idx), *v.shape[1:])) for k, v in data.items()}
            for k, v in data.items():
                out[k][torch.from_numpy(sel)] = v[local]
        if out is None:
            return self._empty()
        return out

    def arrays(self) -> dict[str, Tensor]:
        """All columns concatenated: ``latents (M, *latent_shape)``, ``labels``, ``index`` and the per-item
        values ``(M,)``."""
        parts = [self._chunk(c) for c in range(len(self._chunks))]
        if not parts:
            return self._empty()
        out = {k: torch.cat([p[k] for p in parts]) for k in self.columns}
        self._cache = None
        return out

    def _empty(self) -> dict[str, Tensor]:
        """Every column with no rows, shaped and typed as stored: ``latents (0, *latent_shape)`` float32, ...

        Empty results (``take([])``, or :meth:`arrays` of a functaset whose manifest lists no chunks) used
        to be 1-d ``torch.empty(0)`` for every column: a grid functaset then returned latents of shape
        ``(0,)``, not the documented ``(0, *latent_shape)``, and callers that check the latent shape
        reported a wrong one (e.g. ``codec build``: "latents must be grids ..., got (0,)")."""
        return {k: torch.empty(shape, dtype=_TORCH_DTYPES[dtype])
                for k, (shape, dtype) in self._expected_arrays(0).items()}

    def check_base_network(self, sha256: str) -> None:
        """Raise if this functaset was not encoded with the base network of hash ``sha256``."""
        mine = self.header.get("base_network", {}).get("sha256")
        if mine != sha256:
            raise ArtefactError(f"{self.path}: encoded with base network {str(mine)[:12]}…, not {sha256[:12]}…; "
                                "latents are only meaningful with the network that produced them")


_DTYPE_NAMES = {torch.float32: "F32", torch.int64: "I64", torch.float64: "F64", torch.float16: "F16",
                torch.int32: "I32"}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")  # a file name: no separators, no "..", no dot files
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_LATENT_SIZE = 2**24  # floats in one latent
MAX_ROWS = 2**40


def _check_manifest(m: dict, version: int) -> tuple[tuple[int, ...], tuple[str, ...], list[dict]]:
    """Schema of a functaset manifest; returns ``(latent_shape, per-item columns, chunks)``.
    Raises :class:`ConfigError` (the caller names the file)."""
    header = m.get("header")
    if not isinstance(header, dict):
        raise ConfigError("header is missing or not an object")
    base = header.get("base_network")
    if not isinstance(base, dict):
        raise ConfigError("header.base_network is missing or not an object")
    Text(max_len=256)(base.get("sha256"), "header.base_network.sha256")
    dim = Int(1, MAX_LATENT_SIZE)(header.get("latent_dim"), "header.latent_dim")
    if "latent_shape" in header:
        shape = IntSeq(1, MAX_LATENT_SIZE, min_len=1, max_len=8)(header["latent_shape"], "header.latent_shape")
        if math.prod(shape) != dim:
            raise ConfigError(f"header.latent_shape {list(shape)} does not hold header.latent_dim = {dim} values")
    else:
        shape = (dim,)
    if "patches" in header:  # items encoded patch by patch: latents (P, *latent_shape of the base network)
        p = header["patches"]
        if not isinstance(p, dict):
            raise ConfigError("header.patches is not an object")
        grid = IntSeq(1, MAX_GRID_POINTS, min_len=1, max_len=3)(p.get("item_grid"), "header.patches.item_grid")
        patch = IntSeq(1, MAX_GRID_POINTS, min_len=len(grid), max_len=len(grid))(p.get("patch"), "header.patches.patch")
        check_total("header.patches", math.prod(grid), MAX_GRID_POINTS, f"items of {list(grid)}", "points")
        num = math.prod(-(-g // q) for g, q in zip(grid, patch))
        if Int(1, MAX_LATENT_SIZE)(p.get("num_patches"), "header.patches.num_patches") != num or shape[0] != num:
            raise ConfigError(f"header.patches: items of {list(grid)} in patches of {list(patch)} have {num} "
                              f"patches, but num_patches = {p.get('num_patches')} and latent_shape = {list(shape)}")
    total = Int(0, MAX_ROWS)(m.get("total"), "total")
    count = Int(0, total)(m.get("count"), "count")
    if "complete" in m:
        complete = Bool()(m["complete"], "complete")
        if complete and count != total:
            raise ConfigError(f"marked complete with count = {count} of total = {total}")
    columns = m.get("columns")
    if columns is None:
        stored = _V1_COLUMNS if version == 1 else ()
    else:
        if not isinstance(columns, list) or len(columns) > 256:
            raise ConfigError(f"columns = {str(columns)[:40]!r} is not a list of column names")
        for i, name in enumerate(columns):
            if not isinstance(name, str) or not _COLUMN_NAME.fullmatch(name) or name in _KEYS:
                raise ConfigError(f"columns[{i}] = {str(name)[:40]!r} is not a column name")
        if len(set(columns)) != len(columns):
            raise ConfigError(f"columns {columns} has repeated names")
        stored = tuple(columns)
    for key in ("sums", "summary"):
        if key in m and not isinstance(m[key], dict):
            raise ConfigError(f"{key} = {str(m[key])[:40]!r} is not an object")
    chunks = m.get("chunks")
    if not isinstance(chunks, list):
        raise ConfigError(f"chunks = {str(chunks)[:40]!r} is not a list")
    seen: set[str] = set()
    rows = 0
    for i, ch in enumerate(chunks):
        if not isinstance(ch, dict):
            raise ConfigError(f"chunks[{i}] = {str(ch)[:40]!r} is not an object")
        name = ch.get("file")
        if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or name == MANIFEST:
            raise ConfigError(f"chunks[{i}].file = {str(name)[:60]!r} is not a plain file name inside the functaset")
        if name in seen:
            raise ConfigError(f"chunks[{i}].file = {name!r} is listed twice")
        seen.add(name)
        rows += Int(1, MAX_ROWS)(ch.get("count"), f"chunks[{i}].count")
        digest = ch.get("sha256")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ConfigError(f"chunks[{i}].sha256 = {str(digest)[:70]!r} is not a SHA-256 digest")
    if rows != count:
        raise ConfigError(f"the chunks hold {rows} rows, but count = {count}")
    return tuple(shape), stored, chunks
