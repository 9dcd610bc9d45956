"""The functa codec (COIN++): encode an item into latents, quantise, entropy-code, and back.

A :class:`FunctaCodec` bundles a frozen base network, its modality (whose grid is the *patch*
size), a fitted :class:`~functa.codec.quantize.Quantizer` and a fitted entropy model. It is made
in one explicit step, :meth:`FunctaCodec.build`, from training latents (the statistics and
frequency tables are part of the codec, not of each file); there is no unfitted codec to call
``compress`` on by mistake.

Compressing an item ``(*shape[, C])``: reflect-pad to whole patches, fit one latent per patch with
``inner_steps`` meta-SGD steps (:func:`functa.fitting.fit_latents`; more steps than in
meta-learning reuse the learned rates), optionally refine the *quantised* latents by a few Adam
steps with a straight-through gradient, optionally against a rate-distortion objective
(:class:`EncodeSettings`), quantise, range-code all patches'
symbols as one payload, and wrap it in a ``.fta`` container (:mod:`functa.codec.container`).
Decompressing reverses this without any fitting: decode symbols, dequantise, evaluate the base
network on every patch grid, stitch. A file is untrusted input: its declared item may have at most
``max_output_points`` points once padded to whole patches (:data:`MAX_OUTPUT_POINTS` by default,
e.g. one 7680x4320 frame), its payload must be long enough for that many patches
(:mod:`functa.codec.entropy`), and every problem raises :class:`~functa.errors.CodecError` before
the item is rendered.

On disk a codec is a directory: the base network's ``model.safetensors`` and ``config.json``
(copied byte for byte, so it stays a valid base network) plus ``codec.json`` (settings, codec id)
and ``codec.safetensors`` (quantiser statistics and entropy tables).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from torch import nn

from ..atomic import atomic_copy
from ..device import resolve_device
from ..errors import CodecError
from ..fields import field_device
from ..fitting import Batch, auto_batch_size, fit_latents, get_loss, max_points_per_pass, point_chunks, predict
from ..errors import ConfigError
from ..io import (CONFIG_FILE, MODEL_FILE, ArtefactError, load_base_network, load_tensors, read_json_object, save_tensors,
                  write_json)
from ..validation import Choice, Int, Real, check_fields, in_file
from ..modalities import Modality, modality_from_config
from .canvas import canvas_layout, cell_grid, cell_shape, coded_dim, fit_canvas
from .container import MAX_OUTPUT_POINTS, Header, pack, unpack
from .autoregressive import AutoregressiveConfig
from .context import ContextConfig
from .entropy import ENTROPY_MODELS, FACTORIZED, entropy_from_state, fit_entropy_model
from .patches import PatchGrid, from_patches, to_patches
from .quantize import Quantizer, QuantizerConfig

__all__ = ["CodecConfig", "CodecError", "EncodeSettings", "FunctaCodec", "CODEC_FILE", "CODEC_TENSORS"]

CODEC_FILE = "codec.json"
CODEC_TENSORS = "codec.safetensors"
FORMAT = "functa-codec"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EncodeSettings:
    """How latents are fitted when compressing (decoding never fits).

    ``inner_steps``: meta-SGD steps from zero (``None``: as in meta-learning). ``refine_steps``:
    Adam steps on the latents through the quantiser afterwards, ``refine_lr`` in quantisation levels.
    ``rate_weight`` (λ): refinement minimises ``MSE + λ · bits per point`` instead of the MSE
    (rate-aware fitting, thesis §6.4.3), with the entropy model's code lengths interpolated between
    levels as the differentiable rate; it needs ``refine_steps > 0``.
    """

    inner_steps: int | None = None
    refine_steps: int = 0
    refine_lr: float = 0.25
    rate_weight: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self, "encode", inner_steps=Int(0, 100_000, optional=True), refine_steps=Int(0, 10**6),
                     refine_lr=Real(0, 1e6, lo_open=True), rate_weight=Real(0, 1e9))
        if self.rate_weight > 0 and self.refine_steps == 0:
            raise ValueError("rate_weight acts through the refinement steps; set refine_steps > 0")


@dataclass(frozen=True)
class CodecConfig:
    """Settings of a codec: quantiser and entropy model (frozen into the tables) and the default
    :class:`EncodeSettings`."""

    quantizer: QuantizerConfig = QuantizerConfig()
    entropy_model: str = "per_dimension"
    encode: EncodeSettings = EncodeSettings()
    autoregressive: AutoregressiveConfig = AutoregressiveConfig()  # used by entropy_model="autoregressive"
    context: ContextConfig = ContextConfig()  # used by entropy_model="context"
    layout: str = "auto"  # "patches", "canvas" (one latent grid per item) or "auto" (canvas where the field allows)

    def __post_init__(self) -> None:
        for name, cls in (("quantizer", QuantizerConfig), ("autoregressive", AutoregressiveConfig),
                          ("encode", EncodeSettings), ("context", ContextConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                unknown = sorted(set(value) - set(cls.__dataclass_fields__))
                if unknown:
                    raise ConfigError(f"unknown {name} settings {unknown[:5]}; valid: {sorted(cls.__dataclass_fields__)}")
                object.__setattr__(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise ConfigError(f"{name} = {str(value)[:40]!r} is not a section")
        check_fields(self, "", entropy_model=Choice(*ENTROPY_MODELS), layout=Choice("auto", "patches", "canvas"))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Encoded:
    symbols: Tensor  # (B*P, D) int64
    distortion: Tensor  # (B*P,) the base network's loss (MSE, BCE) of the quantised reconstruction per patch


class FunctaCodec:
    """Compress and decompress items of one modality with a meta-learned base network."""

    def __init__(self, field: nn.Module, modality: Modality, base_config: dict, quantizer: Quantizer,
                 entropy, config: CodecConfig) -> None:
        if entropy.kind != config.entropy_model:
            raise ValueError(f"entropy model {entropy.kind!r} does not match the config ({config.entropy_model!r})")
        if entropy.num_symbols != config.quantizer.levels:
            raise ValueError(f"entropy model has {entropy.num_symbols} symbols, the quantiser {config.quantizer.levels}")
        self.field = field.eval()
        self.canvas = canvas_layout(field, modality, config.layout, config.entropy_model)
        # the rows that are quantised and coded: one latent per patch (P, prod(latent_shape)), or on a
        # canvas one latent per cell (cells, channels)
        self.latent_dim = coded_dim(field, self.canvas)
        self.loss = get_loss(base_config.get("loss") or "mse")
        self.modality, self.base_config = modality, base_config
        self.quantizer, self.entropy, self.config = quantizer, entropy, config
        self.codec_id = self._digest()

    # ------------------------------------------------------------------ building and storage
    @classmethod
    def build(cls, field: nn.Module, modality: Modality, base_config: dict, train_latents: Tensor,
              config: CodecConfig = CodecConfig(), progress: bool = False) -> "FunctaCodec":
        """Freeze quantiser statistics and entropy model from training latents ``(N, *latent_shape)``
        (on a canvas: their cells; the context model learns from the training grids)."""
        canvas = canvas_layout(field, modality, config.layout, config.entropy_model)
        dim = coded_dim(field, canvas)
        if canvas:  # grids of the field's cells or whole canvases (N, *cells, C)
            if train_latents.ndim != len(field.latent_shape) + 1 or train_latents.shape[-1] != dim:
                raise ValueError(f"training latents must be grids (N, {len(field.latent_shape) - 1} axes, {dim}), "
                                 f"got {tuple(train_latents.shape)}")
        elif tuple(train_latents.shape[1:]) != tuple(field.latent_shape):
            raise ValueError(f"training latents must be (N, {', '.join(map(str, field.latent_shape))}), "
                             f"got {tuple(train_latents.shape)}")
        quantizer = Quantizer.fit(train_latents.reshape(-1, dim), config.quantizer)
        symbols = quantizer.quantize(train_latents if config.entropy_model == "context"
                                     else train_latents.reshape(-1, dim))
        entropy = fit_entropy_model(config.entropy_model, symbols, config.quantizer.levels, config.autoregressive,
                                    progress, config.context)
        return cls(field, modality, base_config, quantizer, entropy, config)

    def ideal_bits(self, latents: Tensor) -> tuple[float, int]:
        """The entropy model's ideal code length of latents ``(N, *latent_shape)`` and their number of values."""
        if self.codes_grids:
            sym = self.quantizer.quantize(latents)
        else:
            sym = self.quantizer.quantize(latents.reshape(-1, self.latent_dim))
        return self.entropy.bits(sym), sym.numel()

    def _digest(self) -> bytes:
        h = hashlib.sha256()
        h.update(str(self.base_config.get("sha256", "")).encode())
        h.update(json.dumps(self.config.quantizer.to_dict(), sort_keys=True).encode())
        h.update(self.config.entropy_model.encode())
        h.update(json.dumps(self.config.autoregressive.to_dict(), sort_keys=True).encode()
                 if self.config.entropy_model == "autoregressive" else b"")
        h.update(json.dumps(self.config.context.to_dict(), sort_keys=True).encode()
                 if self.config.entropy_model == "context" else b"")
        h.update(b"canvas" if self.canvas else b"")
        tables = [self.quantizer.mean, self.quantizer.std] + [v for _, v in sorted(self.entropy.state().items())]
        for t in tables:
            h.update(t.detach().contiguous().numpy().tobytes())
        return h.digest()[:8]

    def save(self, directory: str | Path, base_dir: str | Path, extra: dict | None = None) -> Path:
        """Write the codec directory (base network files copied from ``base_dir``)."""
        directory, base_dir = Path(directory), Path(base_dir)
        directory.mkdir(parents=True, exist_ok=True)
        # codec.json is the commit point: removed first, written last, so a build killed at any
        # moment leaves an incomplete codec (recognised by load), never a mix of two builds
        (directory / CODEC_FILE).unlink(missing_ok=True)
        tensors = {f"quantizer.{k}": v for k, v in self.quantizer.state().items()}
        tensors.update({f"entropy.{k}": v for k, v in self.entropy.state().items()})
        save_tensors(directory / CODEC_TENSORS, tensors)
        for name in (MODEL_FILE, CONFIG_FILE):
            if (base_dir / name).resolve() != (directory / name).resolve():
                atomic_copy(base_dir / name, directory / name)
        write_json(directory / CODEC_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                            "codec_id": self.codec_id.hex(), "config": self.config.to_dict(),
                                            "base_network_sha256": self.base_config.get("sha256"),
                                            "patch_shape": list(self.modality.shape), **(extra or {})})
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "FunctaCodec":
        """Load a codec directory; the base network runs on ``device`` (``"auto"``: CUDA if available;
        the quantiser and entropy tables stay on the CPU)."""
        directory = Path(directory)
        if not (directory / CODEC_FILE).is_file() and (directory / CODEC_TENSORS).is_file():
            raise ArtefactError(f"{directory}: incomplete codec (no {CODEC_FILE}: its build was interrupted); "
                                "rerun 'functa codec build'")
        meta = read_json_object(directory / CODEC_FILE, "a codec description (a JSON object)")
        if meta.get("format") != FORMAT:
            raise ArtefactError(f"{directory / CODEC_FILE}: not a functa codec (format {str(meta.get('format'))[:40]!r})")
        try:
            version = Int(0, 2**31)(meta.get("format_version", 0), "format_version")
            if not isinstance(meta.get("config"), dict):
                raise ConfigError(f"config = {str(meta.get('config'))[:40]!r} is not a section")
            # codecs written before the canvas layout existed code patches (their config has no "layout")
            config = CodecConfig(**{"layout": "patches", **meta["config"]})
        except ConfigError as e:
            raise in_file(directory / CODEC_FILE, e) from None
        except TypeError as e:  # unknown top-level keys
            raise ConfigError(f"{directory / CODEC_FILE}: invalid codec config ({' '.join(str(e).split())[:200]})") from None
        if version > FORMAT_VERSION:
            raise ArtefactError(f"{directory}: codec format {version} is newer than this library "
                                f"supports ({FORMAT_VERSION}); upgrade functa")
        field, base_config = load_base_network(directory)
        if meta.get("base_network_sha256") != base_config.get("sha256"):
            raise ArtefactError(f"{directory}: the codec was built for base network {meta.get('base_network_sha256')}, "
                                f"but the directory holds {base_config.get('sha256')}")
        tensors = load_tensors(directory / CODEC_TENSORS)
        try:
            quantizer = Quantizer.from_state(config.quantizer, {k[10:]: v for k, v in tensors.items()
                                                                if k.startswith("quantizer.")})
        except (KeyError, ValueError, RuntimeError) as e:
            raise ArtefactError(f"{directory / CODEC_TENSORS}: invalid codec tables ({e})") from None
        try:
            modality = modality_from_config(base_config.get("modality"))
            dim = coded_dim(field, canvas_layout(field, modality, config.layout, config.entropy_model))
        except ConfigError as e:
            raise in_file(directory / CONFIG_FILE, e) from None
        try:
            entropy = entropy_from_state(config.entropy_model, {k[8:]: v for k, v in tensors.items()
                                                                if k.startswith("entropy.")},
                                         dim, config.quantizer.levels, config.autoregressive, config.context,
                                         len(field.latent_shape) - 1)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ArtefactError(f"{directory / CODEC_TENSORS}: invalid codec tables ({e})") from None
        codec = cls(field.to(resolve_device(device)), modality, base_config, quantizer, entropy, config)
        if codec.codec_id.hex() != meta.get("codec_id"):
            raise ArtefactError(f"{directory}: codec id {codec.codec_id.hex()} computed from the files does not match "
                                f"{CODEC_FILE} ({meta.get('codec_id')}); the tables were modified")
        return codec

    # ------------------------------------------------------------------ encoding
    @property
    def patch_shape(self) -> tuple[int, ...]:
        return tuple(self.modality.shape)

    def _batch(self) -> int:
        return auto_batch_size(self.field, int(np.prod(self.patch_shape)))

    def encode_patches(self, features: Tensor, settings: EncodeSettings | None = None) -> _Encoded:
        """Fit, (refine) and quantise latents for patch features ``(M, N, C)`` -> symbols ``(M, D)``."""
        s = self.config.encode if settings is None else settings
        steps = self.default_inner_steps() if s.inner_steps is None else s.inner_steps
        dev = field_device(self.field)
        x = self.modality.coordinates()[None].to(dev)
        symbols, losses = [], []
        for start in range(0, features.shape[0], self._batch()):
            y = features[start:start + self._batch()].to(dev)
            z = fit_latents(self.field, Batch(x, y), steps, loss=self.loss).latents
            if s.refine_steps:
                z = self._refine(self.field, x, y, z, s)
            q = self.quantizer.quantize(z.reshape(len(y), -1).cpu())
            with torch.no_grad():
                out = self.field(x, self._shaped(self.quantizer.dequantize(q).to(dev)))
            symbols.append(q)
            losses.append(self.loss.per_item(out, y).cpu())
        return _Encoded(torch.cat(symbols), torch.cat(losses))

    def _shaped(self, latents: Tensor) -> Tensor:
        """Flat latents ``(M, D)`` -> the field's ``(M, *latent_shape)``."""
        return latents.reshape(latents.shape[0], *self.field.latent_shape)

    def default_inner_steps(self) -> int:
        return int(self.base_config.get("run", {}).get("train", {}).get("inner_steps", 3))

    def _code_lengths(self) -> Tensor:
        """``-log2 p`` of every symbol per latent dimension, ``(D, S)`` float32."""
        if self.config.entropy_model not in FACTORIZED:
            raise ValueError(f"rate-aware refinement needs a factorised entropy model {FACTORIZED}, "
                             f"this codec uses {self.config.entropy_model!r}")
        return -torch.from_numpy(self.entropy.table(self.latent_dim)).log2().float()

    def _soft_bits(self, z: Tensor, lengths: Tensor) -> Tensor:
        """Differentiable code length per row ``(R,)`` of rows ``z (R, D)``: ``-log2 p`` interpolated
        between the two levels around each (continuous) latent."""
        q, k = self.config.quantizer, self.config.quantizer.clip
        mean, std = self.quantizer.mean.float().to(z.device), self.quantizer.std.float().to(z.device)
        t = ((z - mean) / std).clamp(-k, k)
        u = (t + k) * ((q.levels - 1) / (2 * k))
        lo = u.detach().floor().clamp(0, q.levels - 2)
        frac = u - lo
        table = lengths.expand(z.shape[0], -1, -1)
        below = table.gather(2, lo.long()[..., None])[..., 0]
        above = table.gather(2, lo.long()[..., None] + 1)[..., 0]
        return ((1 - frac) * below + frac * above).sum(1)

    def _refine(self, field: nn.Module, x: Tensor, y: Tensor, z: Tensor, s: EncodeSettings) -> Tensor:
        """Adam on the latents ``(B, *latent_shape)`` of ``field`` (the base network, or its canvas)
        through the quantiser (straight-through gradient) on ``loss + λ·bpp`` (the base network's loss:
        MSE, BCE); keeps, per item, the latents whose *quantised* objective was best (never worse than
        none). The quantiser acts on the coded rows ``(B·R, D)``."""
        b, shape = z.shape[0], z.shape
        rows = z.reshape(-1, self.latent_dim)
        step = self.quantizer.step().float().to(z.device)
        lengths = self._code_lengths().to(z.device) if s.rate_weight > 0 else None
        per_point = s.rate_weight / x.shape[1]
        # large items (a canvas over a photo) are evaluated in point chunks: memory of one chunk
        limit = max_points_per_pass(field) if b == 1 else x.shape[1]
        chunks = point_chunks(Batch(x, y), limit)
        delta = torch.zeros_like(rows, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=s.refine_lr)
        best_z, best = rows.reshape(b, -1).clone(), torch.full((b,), float("inf"), device=z.device)
        for i in range(s.refine_steps + 1):
            last = i == s.refine_steps
            cur = rows + delta * step
            q = self.quantizer.quantize(cur.detach().cpu()).to(z.device)
            zq = self.quantizer.dequantize(q.cpu()).to(z.device)
            zq = (cur + (zq - cur).detach()).reshape(shape)  # straight-through
            leaf = zq.detach().requires_grad_(not last)
            objective = torch.zeros(b, device=z.device)
            grad = torch.zeros_like(leaf) if not last else None
            for sub, w in chunks:  # the loss and its gradient with respect to the quantised latents only
                with torch.set_grad_enabled(not last):
                    part = self.loss.per_item(field(sub.x, leaf), sub.y) * w
                    if not last:
                        grad += torch.autograd.grad(part.sum(), leaf)[0]
                objective = objective + part.detach()
            if lengths is not None:
                exact = lengths.gather(1, q.t()).t().sum(1).reshape(b, -1).sum(1)  # bits of the symbols coded
                objective = objective + per_point * exact
            better = objective < best
            best = torch.where(better, objective, best)
            best_z[better] = cur.detach().reshape(b, -1)[better]
            if last:
                break
            opt.zero_grad(set_to_none=True)
            surrogate = (zq * grad).sum()  # backpropagates the chunks' gradient through the quantiser
            if lengths is not None:
                surrogate = surrogate + per_point * self._soft_bits(cur, lengths).sum()
            surrogate.backward()
            opt.step()
        return best_z.reshape(shape)

    def encode_canvas(self, item: np.ndarray, settings: EncodeSettings | None = None) -> Tensor:
        """Canvas layout: fit, (refine) and quantise one latent grid over the whole ``item (*shape[, C])``,
        reflect-padded to whole cells -> symbols ``(*cells, channels)``."""
        s = self.config.encode if settings is None else settings
        steps = self.default_inner_steps() if s.inner_steps is None else s.inner_steps
        field, batch, z = fit_canvas(self.field, self.modality, np.asarray(item)[None], steps, self.loss)
        if s.refine_steps:
            z = self._refine(field, batch.x, batch.y, z, s)
        return self.quantizer.quantize(z[0].cpu())

    @property
    def cell_shape(self) -> tuple[int, ...]:
        """Canvas layout: the points per cell along each axis (the training patch over the grid)."""
        return cell_shape(self.field, self.modality)

    @property
    def codes_grids(self) -> bool:
        """Whether the entropy model codes whole grids ``(*cells, D)`` (the context model), not rows."""
        return bool(getattr(self.entropy, "needs_grid", False))

    def _payload(self, symbols: Tensor) -> bytes:
        """Range-code the symbols of one item: ``(P, D)`` rows, or a canvas grid ``(*cells, D)``."""
        if self.codes_grids:
            return self.entropy.encode(symbols)
        return self.entropy.encode(symbols.reshape(-1, self.latent_dim))

    def compress_many(self, items: np.ndarray, settings: EncodeSettings | None = None) -> list[bytes]:
        """Compress a stack of same-shape items ``(B, *shape[, C])`` (all their patches fitted in batches;
        on a canvas, one grid per item)."""
        items = np.asarray(items)
        k = len(self.patch_shape)
        if self.canvas:
            return [pack(self._header(tuple(it.shape[:k])), self._payload(self.encode_canvas(it, settings)))
                    for it in items]
        patches, grid = zip(*(to_patches(it, self.patch_shape) for it in items)) if len(items) else ((), ())
        if not patches:
            return []
        feats = self.modality.to_features(np.concatenate(patches))
        enc = self.encode_patches(feats, settings)
        per_item = grid[0].num_patches
        out = []
        for b in range(len(items)):
            sym = enc.symbols[b * per_item:(b + 1) * per_item]
            out.append(pack(self._header(tuple(items.shape[1:1 + k])), self.entropy.encode(sym)))
        return out

    def compress(self, item: np.ndarray, settings: EncodeSettings | None = None) -> bytes:
        """Compress one item ``(*shape[, C])`` of any size (padded to whole patches) into ``.fta`` bytes."""
        return self.compress_many(np.asarray(item)[None], settings)[0]

    def _header(self, shape: tuple[int, ...]) -> Header:
        q = self.config.quantizer
        return Header(self.codec_id, self.modality.name, q.bits, q.per_dimension, self.config.entropy_model, shape)

    # ------------------------------------------------------------------ decoding
    def _symbols(self, data: bytes, max_output_points: int) -> tuple[Tensor, PatchGrid]:
        """Validate a file against this codec and decode its symbols ``(P, D)``."""
        header, payload = unpack(data)  # raises ContainerError, a CodecError
        if header.codec_id != self.codec_id:
            raise CodecError(f"the file was made by codec {header.codec_id.hex()}, this is codec {self.codec_id.hex()}")
        expected = self._header(header.shape)
        if replace(header, shape=expected.shape) != expected:
            raise CodecError(f"file settings {header} do not match this codec")
        if len(header.shape) != len(self.patch_shape):
            raise CodecError(f"file holds a {len(header.shape)}-axis item, the codec's patches have {len(self.patch_shape)}")
        grid = PatchGrid(header.shape, self.cell_shape if self.canvas else self.patch_shape)
        points = math.prod(grid.padded)  # checked first: the canvas is built only for a bounded item
        if points > max_output_points:
            raise CodecError(f"the file declares a {'x'.join(map(str, header.shape))} item ({points} points padded to "
                             f"whole {'cells' if self.canvas else 'patches'}), more than the limit of "
                             f"{max_output_points}; raise max_output_points (--max-output-points) if it is genuine")
        if self.canvas:
            grid = cell_grid(self.field, self.modality, header.shape)  # CodecError beyond the largest canvas
        if self.codes_grids:
            return self.entropy.decode(payload, grid.counts), grid
        return self.entropy.decode(payload, grid.num_patches, self.latent_dim), grid

    def decompress(self, data: bytes, max_output_points: int = MAX_OUTPUT_POINTS) -> np.ndarray:
        """``.fta`` bytes -> the item ``(*shape[, C])`` in data units.

        Raises :class:`CodecError` for a corrupt file, one made by another codec, or one whose item
        has more than ``max_output_points`` points padded to whole patches.
        """
        return self.decompress_many([data], max_output_points)[0]

    def decompress_many(self, files: list[bytes], max_output_points: int = MAX_OUTPUT_POINTS) -> list[np.ndarray]:
        """Decode several files (each within ``max_output_points``, see :meth:`decompress`); the
        patches of all of them are rendered in shared batches."""
        decoded = [self._symbols(f, max_output_points) for f in files]
        if not decoded:
            return []
        if self.canvas:
            return [self._render_canvas(sym, grid) for sym, grid in decoded]
        patches = self.render_latents(self.quantizer.dequantize(torch.cat([s for s, _ in decoded])))
        out, start = [], 0
        for _, grid in decoded:
            out.append(from_patches(patches[start:start + grid.num_patches], grid))
            start += grid.num_patches
        return out

    def _render_canvas(self, symbols: Tensor, grid: PatchGrid) -> np.ndarray:
        """Canvas layout: decoded symbols ``(cells, D)`` -> the item ``(*shape[, C])`` (padding cropped)."""
        latents = self.quantizer.dequantize(symbols).reshape(1, *grid.counts, self.latent_dim)
        x = self.modality.coordinates(grid.padded)[None]
        out = self.modality.from_features(predict(self.field.canvas(grid.counts), x, latents, loss=self.loss),
                                          grid.padded)[0]
        return np.ascontiguousarray(out[tuple(slice(0, n) for n in grid.shape)])

    def render_latents(self, latents: Tensor) -> np.ndarray:
        """Flat latents ``(M, D)`` -> patches ``(M, *patch[, C])`` in data units (memory-bounded batches)."""
        if latents.shape[0] == 0:
            return np.zeros((0, *self.patch_shape), np.float32)
        x = self.modality.coordinates()[None]
        return self.modality.from_features(predict(self.field, x, self._shaped(latents), loss=self.loss))

