"""Entropy models of quantised latents and their range coder (``constriction``).

A *factorised* model gives every latent dimension ``d`` a categorical distribution over the
``S = 2^bits`` symbols, a table ``(D, S)``:

- ``histogram`` (COIN++ §4.2.3): one distribution shared by all dimensions, the frequency of each
  symbol in the training latents pooled over dimensions (COIN++ only reports this model's ideal
  code length; here it drives a real coder);
- ``per_dimension``: one frequency table per dimension (dimensions have different spreads);
- ``autoregressive``: not factorised; see :mod:`functa.codec.autoregressive` (FlowCOIN).

Counts of zero are raised to one (COIN++'s ``min_count``) so every symbol stays codable.
:meth:`FactorizedModel.encode` range-codes a ``(P, D)`` block of symbols (``P`` patches of one item)
with ``constriction``'s queue range coder; the byte string drops trailing zero bytes, which the
decoder restores (the range decoder reads missing words as zeros). :meth:`bits` is the ideal
code length ``-sum log2 p(q)`` for comparison with the measured size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["ENTROPY_MODELS", "FACTORIZED", "FactorizedModel", "entropy_from_state", "fit_entropy_model"]

FACTORIZED = ("histogram", "per_dimension")
ENTROPY_MODELS = FACTORIZED + ("autoregressive",)


def words_to_bytes(words: np.ndarray) -> bytes:
    """The range coder's ``uint32`` words as little-endian bytes, trailing zero bytes dropped."""
    return words.astype("<u4").tobytes().rstrip(b"\0")


def bytes_to_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`words_to_bytes` (missing words read as zeros, as the decoder does anyway)."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def _coder():
    try:
        import constriction
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("entropy coding needs the 'constriction' package (pip install constriction)") from e
    return constriction


@dataclass
class FactorizedModel:
    """Categorical distribution per latent dimension: ``counts`` ``(D, S)`` or ``(1, S)`` (shared)."""

    kind: str
    counts: Tensor  # int64

    names: ClassVar[tuple[str, ...]] = FACTORIZED

    def __post_init__(self) -> None:
        if self.kind not in FACTORIZED:
            raise ValueError(f"unknown factorised entropy model {self.kind!r}; choose from {FACTORIZED}")
        if self.counts.ndim != 2 or self.counts.shape[1] < 2:
            raise ValueError(f"counts must be (D, S>=2), got {tuple(self.counts.shape)}")
        if int(self.counts.min()) < 1:
            raise ValueError("counts must be >= 1 (every symbol codable)")

    @property
    def num_symbols(self) -> int:
        return int(self.counts.shape[1])

    def table(self, dim: int) -> np.ndarray:
        """Probabilities ``(dim, S)`` float64 for the dimensions of one latent."""
        c = self.counts.double()
        if c.shape[0] == 1:
            c = c.expand(dim, -1)
        elif c.shape[0] != dim:
            raise ValueError(f"latents have {dim} dimensions, the entropy model was fitted on {c.shape[0]}")
        return (c / c.sum(1, keepdim=True)).numpy()

    def bits(self, symbols: Tensor) -> float:
        """Ideal code length in bits of symbols ``(P, D)``."""
        p = torch.from_numpy(self.table(symbols.shape[-1]))
        idx = symbols.reshape(-1, symbols.shape[-1]).long()
        return float(-torch.log2(p.gather(1, idx.t()).t()).sum())

    def encode(self, symbols: Tensor) -> bytes:
        """Range-code symbols ``(P, D)`` (int) into bytes."""
        c = _coder()
        sym = symbols.reshape(-1, symbols.shape[-1])
        if sym.numel() and (int(sym.min()) < 0 or int(sym.max()) >= self.num_symbols):
            raise ValueError(f"symbols must lie in [0, {self.num_symbols})")
        probs = np.tile(self.table(sym.shape[1]), (sym.shape[0], 1))
        enc = c.stream.queue.RangeEncoder()
        enc.encode(sym.reshape(-1).numpy().astype(np.int32), c.stream.model.Categorical(perfect=False), probs)
        return words_to_bytes(enc.get_compressed())

    def decode(self, data: bytes, count: int, dim: int) -> Tensor:
        """Inverse of :meth:`encode` for ``count`` latents of ``dim`` dimensions -> ``(count, dim)`` int64."""
        c = _coder()
        words = bytes_to_words(data)
        probs = np.tile(self.table(dim), (count, 1))
        dec = c.stream.queue.RangeDecoder(words)
        out = dec.decode(c.stream.model.Categorical(perfect=False), probs)
        return torch.from_numpy(np.asarray(out, dtype=np.int64)).reshape(count, dim)

    def state(self) -> dict[str, Tensor]:
        return {"counts": self.counts.clone()}

    @classmethod
    def from_state(cls, kind: str, state: dict[str, Tensor]) -> "FactorizedModel":
        return cls(kind, state["counts"].long())


def fit_entropy_model(kind: str, symbols: Tensor, num_symbols: int, autoregressive=None, progress: bool = False):
    """Fit a model of ``kind`` to training symbols ``(N, D)``.

    Factorised models count (zero counts raised to one); ``autoregressive`` trains an
    :class:`~functa.codec.autoregressive.AutoregressiveModel` with ``autoregressive`` (its config).
    """
    if kind not in ENTROPY_MODELS:
        raise ValueError(f"unknown entropy model {kind!r}; choose from {ENTROPY_MODELS}")
    sym = symbols.reshape(-1, symbols.shape[-1]).long()
    if kind == "autoregressive":
        from .autoregressive import AutoregressiveConfig, AutoregressiveModel

        model = AutoregressiveModel(sym.shape[1], num_symbols, autoregressive or AutoregressiveConfig())
        model.fit(sym, progress)
        return model
    if kind == "histogram":
        counts = torch.bincount(sym.reshape(-1), minlength=num_symbols)[None]
    else:
        d = sym.shape[1]
        flat = (torch.arange(d)[None, :] * num_symbols + sym).reshape(-1)
        counts = torch.bincount(flat, minlength=d * num_symbols).reshape(d, num_symbols)
    return FactorizedModel(kind, counts.clamp_min(1))


def entropy_from_state(kind: str, state: dict[str, Tensor], dim: int, num_symbols: int, autoregressive=None):
    """Rebuild a fitted entropy model from :meth:`state` tensors."""
    if kind == "autoregressive":
        from .autoregressive import AutoregressiveConfig, AutoregressiveModel

        return AutoregressiveModel.from_state(dim, num_symbols, autoregressive or AutoregressiveConfig(), state)
    return FactorizedModel.from_state(kind, state)
