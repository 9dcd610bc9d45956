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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import Dataset

from .io import ArtefactError, read_json, save_tensors, sha256_file, versions, write_json

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
        self._buf: dict[str, list[np.ndarray]] = {}
        self._buffered = 0
        if (self.path / MANIFEST).exists():
            manifest = read_json(self.path / MANIFEST)
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
    values (``loss`` and the modality's metrics; ``mse`` and ``psnr`` in format-1 functasets)."""

    def __init__(self, path: str | Path, verify: bool = False) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise ArtefactError(f"{self.path}: not a functaset (no {MANIFEST})")
        self.manifest = read_json(self.path / MANIFEST)
        if self.manifest.get("format") != FORMAT:
            raise ArtefactError(f"{self.path / MANIFEST}: format is {self.manifest.get('format')!r}, not a functaset")
        if int(self.manifest.get("format_version", 0)) > FORMAT_VERSION:
            raise ArtefactError(f"{self.path}: functaset format {self.manifest['format_version']} is newer than "
                                f"this library supports ({FORMAT_VERSION}); upgrade functa")
        self._starts = [0]
        for ch in self.manifest["chunks"]:
            f = self.path / ch["file"]
            if not f.is_file():
                raise ArtefactError(f"{f}: chunk listed in the manifest is missing")
            if verify and sha256_file(f) != ch["sha256"]:
                raise ArtefactError(f"{f}: checksum mismatch (corrupt chunk)")
            self._starts.append(self._starts[-1] + int(ch["count"]))
        self._cache: tuple[int, dict[str, Tensor]] | None = None
        stored = self.manifest.get("columns") or (list(_V1_COLUMNS) if self.manifest.get("format_version") == 1 else [])
        self.columns: tuple[str, ...] = _KEYS + tuple(stored)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (format 1 recorded only ``latent_dim``: a vector)."""
        h = self.header
        return tuple(h["latent_shape"]) if "latent_shape" in h else (int(h["latent_dim"]),)

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
            f = self.path / self.manifest["chunks"][c]["file"]
            try:
                with safe_open(str(f), framework="pt") as st:
                    data = {k: st.get_tensor(k) for k in self.columns}
            except Exception as e:  # safetensors raises several types for corrupt files
                raise ArtefactError(f"{f}: unreadable chunk ({e})") from None
            self._cache = (c, data)
        return self._cache[1]

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
            return {k: torch.empty(0) for k in self.columns}
        return out

    def arrays(self) -> dict[str, Tensor]:
        """All columns concatenated: ``latents (M, *latent_shape)``, ``labels``, ``index`` and the per-item
        values ``(M,)``."""
        parts = [self._chunk(c) for c in range(len(self.manifest["chunks"]))]
        if not parts:
            return {k: torch.empty(0) for k in self.columns}
        out = {k: torch.cat([p[k] for p in parts]) for k in self.columns}
        self._cache = None
        return out

    def check_base_network(self, sha256: str) -> None:
        """Raise if this functaset was not encoded with the base network of hash ``sha256``."""
        mine = self.header.get("base_network", {}).get("sha256")
        if mine != sha256:
            raise ArtefactError(f"{self.path}: encoded with base network {str(mine)[:12]}…, not {sha256[:12]}…; "
                                "latents are only meaningful with the network that produced them")
