"""COIN (thesis ch. 3): one small SIREN overfitted per image, its weights stored in 16 bits.

The baseline the COIN++ codec is measured against. Every image of a batch gets its own SIREN
(batched weights ``(B, out, in)``, so a whole batch trains with one ``bmm`` per layer), fitted to
the image's pixels by Adam from the SIREN initialisation; the weights are then cast to float16
and stored, in a fixed order, as the payload of the same ``.fta`` container the functa codec uses
(entropy-model id ``raw16``: no entropy coding). The decoder rebuilds the SIREN from the payload
and evaluates it at the pixel centres. The rate is ``16 * #params / #pixels`` plus the header.

The architecture (``width``, ``hidden_layers``) sets the rate: COIN searched it per target bpp
(e.g. 10 x 28 at 0.3 bpp on Kodak; 2 layers of width 12-22 on CIFAR-10, 10k iterations).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import CodecError
from ..fields.init import siren_weight_bound
from ..modalities.image import image_coordinates
from .container import MAX_OUTPUT_POINTS, Header, pack, unpack

__all__ = ["CoinConfig", "CoinCodec"]


@dataclass(frozen=True)
class CoinConfig:
    """SIREN ``2 -> width x hidden_layers -> channels`` with sine activations ``sin(w0 x)``."""

    width: int = 16
    hidden_layers: int = 2
    channels: int = 3
    w0: float = 30.0
    steps: int = 2000
    lr: float = 2e-4

    def __post_init__(self) -> None:
        if self.width < 1 or self.hidden_layers < 1 or self.channels not in (1, 3):
            raise ValueError(f"invalid COIN architecture {self}")

    def shapes(self) -> list[tuple[int, int]]:
        """``(out, in)`` of every linear layer, first to last."""
        dims = [2] + [self.width] * self.hidden_layers + [self.channels]
        return [(dims[i + 1], dims[i]) for i in range(len(dims) - 1)]

    @property
    def num_params(self) -> int:
        return sum(o * i + o for o, i in self.shapes())

    def bits_per_pixel(self, height: int, width: int) -> float:
        """Payload rate (16-bit weights), header excluded."""
        return 16.0 * self.num_params / (height * width)


class CoinCodec:
    """Compress images by overfitting a SIREN per image (``compress_many``) and decode them."""

    def __init__(self, config: CoinConfig) -> None:
        self.config = config
        arch = {k: v for k, v in asdict(config).items() if k in ("width", "hidden_layers", "channels", "w0")}
        self.codec_id = hashlib.sha256(json.dumps({"coin": arch}, sort_keys=True).encode()).digest()[:8]

    # ------------------------------------------------------------------ network
    def _init(self, batch: int, generator: torch.Generator) -> list[Tensor]:
        c, params = self.config, []
        for k, (o, i) in enumerate(self.config.shapes()):
            bound = siren_weight_bound(i, c.w0, is_first=k == 0)
            params.append((torch.rand(batch, o, i, generator=generator) * 2 - 1) * bound)
            params.append(torch.zeros(batch, o))
        return params

    def _forward(self, params: list[Tensor], coords: Tensor) -> Tensor:
        """``coords (N, 2)`` -> ``(B, N, C)`` for stacked per-image weights."""
        h = coords.expand(params[0].shape[0], -1, -1)
        last = len(params) // 2 - 1
        for k in range(last + 1):
            w, b = params[2 * k], params[2 * k + 1]
            h = torch.baddbmm(b[:, None, :], h, w.transpose(1, 2))
            if k < last:
                h = torch.sin(self.config.w0 * h)
        return h + 0.5

    def fit(self, images: np.ndarray, seed: int = 0) -> list[Tensor]:
        """Overfit one SIREN per image ``(B, H, W, C)`` uint8; returns the stacked parameters."""
        b, h, w, ch = images.shape
        if ch != self.config.channels:
            raise ValueError(f"images have {ch} channels, the COIN config {self.config.channels}")
        coords = image_coordinates(h, w)
        target = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).reshape(b, h * w, ch)
        params = [p.requires_grad_() for p in self._init(b, torch.Generator().manual_seed(seed))]
        opt = torch.optim.Adam(params, lr=self.config.lr)
        best = [p.detach().clone() for p in params]
        best_mse = torch.full((b,), float("inf"))
        for step in range(self.config.steps + 1):
            mse = (self._forward(params, coords) - target).square().mean((1, 2))
            improved = mse.detach() < best_mse
            if bool(improved.any()):
                best_mse = torch.where(improved, mse.detach(), best_mse)
                for kept, p in zip(best, params):
                    kept[improved] = p.detach()[improved]
            if step == self.config.steps:
                break
            opt.zero_grad(set_to_none=True)
            mse.sum().backward()
            opt.step()
        return best

    # ------------------------------------------------------------------ bytes
    def compress_many(self, images: np.ndarray, seed: int = 0) -> list[bytes]:
        params = self.fit(np.asarray(images), seed)
        flat = torch.cat([p.reshape(p.shape[0], -1) for p in params], 1).half().numpy()
        h, w = images.shape[1:3]
        header = Header(self.codec_id, "image", 16, False, "raw16", (h, w))
        return [pack(header, row.astype("<f2").tobytes()) for row in flat]

    def decompress(self, data: bytes, max_output_points: int = MAX_OUTPUT_POINTS) -> np.ndarray:
        """``.fta`` bytes -> the image ``(H, W, C)`` float in ``[0, 255]``; raises :class:`CodecError` for a
        corrupt file, another codec's, or an image of more than ``max_output_points`` pixels."""
        header, payload = unpack(data)
        if header.codec_id != self.codec_id or header.entropy_model != "raw16" or len(header.shape) != 2:
            raise CodecError(f"the file was made by codec {header.codec_id.hex()}, this is COIN codec {self.codec_id.hex()}")
        if len(payload) != 2 * self.config.num_params:
            raise CodecError(f"payload holds {len(payload)} bytes, the COIN architecture needs {2 * self.config.num_params}")
        if math.prod(header.shape) > max_output_points:
            raise CodecError(f"the file declares a {header.shape[0]}x{header.shape[1]} image, more than the limit of "
                             f"{max_output_points} pixels")
        flat = torch.from_numpy(np.frombuffer(payload, dtype="<f2").astype(np.float32))
        params, pos = [], 0
        for o, i in self.config.shapes():
            params.append(flat[pos:pos + o * i].reshape(1, o, i))
            pos += o * i
            params.append(flat[pos:pos + o].reshape(1, o))
            pos += o
        h, w = header.shape
        with torch.no_grad():
            out = self._forward(params, image_coordinates(h, w)).clamp(0, 1)
        return (out.reshape(h, w, self.config.channels) * 255.0).numpy()

    @staticmethod
    def for_rate(target_bpp: float, height: int, width: int, hidden_layers: int = 2, channels: int = 3,
                 **kw) -> "CoinCodec":
        """The widest SIREN with ``hidden_layers`` whose 16-bit weights stay within ``target_bpp``."""
        best = None
        for width_ in range(1, 1025):
            cfg = CoinConfig(width=width_, hidden_layers=hidden_layers, channels=channels, **kw)
            if cfg.bits_per_pixel(height, width) > target_bpp:
                break
            best = cfg
        if best is None:
            raise ValueError(f"no COIN network with {hidden_layers} hidden layers fits {target_bpp} bpp at {height}x{width}")
        return CoinCodec(best)

