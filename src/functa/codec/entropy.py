"""Entropy models of quantised latents and their range coder (``constriction``).

A *factorised* model gives every latent dimension ``d`` a categorical distribution over the
``S = 2^bits`` symbols, a table ``(D, S)``:

- ``histogram`` (COIN++ §4.2.3): one distribution shared by all dimensions, the frequency of each
  symbol in the training latents pooled over dimensions (COIN++ only reports this model's ideal
  code length; here it drives a real coder);
- ``per_dimension``: one frequency table per dimension (dimensions have different spreads);
- ``autoregressive``: not factorised; see :mod:`functa.codec.autoregressive` (FlowCOIN);
- ``context``: the latent grids of spatial functa coded cell by cell from their causal neighbours;
  see :mod:`functa.codec.context`.

Counts of zero are raised to one (COIN++'s ``min_count``) so every symbol stays codable.
:meth:`FactorizedModel.encode` range-codes a ``(P, D)`` block of symbols (``P`` patches of one item)
with ``constriction``'s queue range coder; the byte string drops up to :data:`MAX_DROPPED_BYTES`
trailing zero bytes, which the decoder restores (the range decoder reads missing words as zeros).
:meth:`bits` is the ideal code length ``-sum log2 p(q)`` for comparison with the measured size.

Decoding untrusted bytes (:class:`PayloadDecoder`) is bounded by the payload's length. The coder
(32-bit words, 64-bit state, 24-bit probabilities ``p'``) keeps its range in ``[2^32, 2^64)``,
shrinks it by at least ``p'`` per symbol and emits one word per 32 bits of shrinkage, so ``U``
words (the last one or two seal the range) carry at most ``32 U`` bits of ``-log2 p'``. With at
most 8 dropped bytes, a payload of ``B`` bytes holds symbols of at most ``8 (B + 8)`` bits; the
decoder allows one more word (:func:`payload_capacity_bits`). ``p'`` exceeds the float
probability ``p`` by at most a few parts in ``2^24``, so ``-log2(p + 2^-20)``
(:func:`code_length_bound`) never overestimates what a symbol costs. A header whose patches need
more bits than that (from the cheapest latent the model allows) is refused before anything is
decoded, and decoding stops with a :class:`~functa.errors.CodecError` as soon as the
decoded symbols exceed it; every exception the range decoder raises on invalid data becomes a
``CodecError`` too. Tables go to the coder in chunks of at most :data:`MAX_TABLE_ENTRIES`
probabilities, so memory does not grow with the item.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from ..errors import CodecError

__all__ = ["ENTROPY_MODELS", "FACTORIZED", "FactorizedModel", "PayloadDecoder", "code_length_bound",
           "entropy_from_state", "fit_entropy_model", "payload_capacity_bits"]

FACTORIZED = ("histogram", "per_dimension")
ENTROPY_MODELS = FACTORIZED + ("autoregressive", "context")
MAX_DROPPED_BYTES = 8  # trailing zero bytes a payload may omit
MAX_TABLE_ENTRIES = 2**22  # probabilities handed to the range coder at once (32 MiB of float64)
_PROBABILITY_SLACK = 2.0**-20  # the coder's 24-bit probabilities exceed the float ones by less


def words_to_bytes(words: np.ndarray) -> bytes:
    """The range coder's ``uint32`` words as little-endian bytes, with trailing zero bytes dropped
    (at most :data:`MAX_DROPPED_BYTES`, so that :func:`payload_capacity_bits` holds)."""
    raw = words.astype("<u4").tobytes()
    return raw[:max(len(raw.rstrip(b"\0")), len(raw) - MAX_DROPPED_BYTES)]


def bytes_to_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`words_to_bytes` (missing words read as zeros, as the decoder does anyway)."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<u4").astype(np.uint32)


def _coder():
    try:
        import constriction
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("entropy coding needs the 'constriction' package (pip install constriction)") from e
    return constriction


def payload_capacity_bits(num_bytes: int) -> float:
    """The most information (bits of ``-log2 p``) symbols coded into ``num_bytes`` can carry, with a
    word to spare: ``8 (B + 8 + 4)`` (see the module docstring)."""
    return 8.0 * (num_bytes + MAX_DROPPED_BYTES + 4)


def code_length_bound(probs: np.ndarray) -> np.ndarray:
    """A lower bound on the bits the range coder spends on a symbol of probability ``probs`` (any shape)."""
    return -np.log2(np.minimum(np.asarray(probs, np.float64) + _PROBABILITY_SLACK, 1.0))


def chunk_rows(row_entries: int) -> int:
    """Rows of ``row_entries`` probabilities each that make one chunk of at most :data:`MAX_TABLE_ENTRIES`."""
    return max(1, MAX_TABLE_ENTRIES // row_entries)


class PayloadDecoder:
    """Range-decodes an untrusted payload of ``latents`` latents chunk by chunk within its budget.

    Raises :class:`~functa.errors.CodecError` at once when ``latents`` latents of at least
    ``least_bits`` bits each exceed :func:`payload_capacity_bits` of ``data``; :meth:`decode` raises
    it when the range decoder rejects the bytes or the symbols decoded so far exceed that capacity.
    """

    def __init__(self, data: bytes, latents: int, least_bits: float) -> None:
        c = _coder()
        self.num_bytes, self.capacity, self.spent = len(data), payload_capacity_bits(len(data)), 0.0
        if latents * least_bits > self.capacity:
            raise CodecError(f"corrupt payload: {len(data)} bytes cannot hold {latents} latents (this entropy model "
                             f"codes each in at least {least_bits:.2f} bits)")
        self._model = c.stream.model.Categorical(perfect=False)
        try:
            self._decoder = c.stream.queue.RangeDecoder(bytes_to_words(data))
        except Exception as e:  # noqa: BLE001 - any failure of the coder on these bytes is a corrupt file
            raise CodecError(f"corrupt payload (range decoder: {' '.join(str(e).split())})") from None

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """The next ``n`` symbols, one per row of the probability table ``probs (n, S)`` -> ``(n,)`` int64."""
        try:
            sym = np.asarray(self._decoder.decode(self._model, probs), dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - constriction raises AssertionError (and others) on invalid data
            raise CodecError(f"corrupt payload (range decoder: {' '.join(str(e).split())})") from None
        self.spent += float(code_length_bound(probs[np.arange(len(sym)), sym]).sum())
        if self.spent > self.capacity:
            raise CodecError(f"corrupt payload: its {self.num_bytes} bytes cannot hold the symbols decoded from it "
                             f"(the file is truncated or altered)")
        return sym


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
        table, rows = self.table(sym.shape[1]), chunk_rows(sym.shape[1] * self.num_symbols)
        enc, model = c.stream.queue.RangeEncoder(), c.stream.model.Categorical(perfect=False)
        for start in range(0, sym.shape[0], rows):
            part = sym[start:start + rows]
            enc.encode(part.reshape(-1).numpy().astype(np.int32), model, np.tile(table, (part.shape[0], 1)))
        return words_to_bytes(enc.get_compressed())

    def min_bits(self, dim: int) -> float:
        """A lower bound on the coded size in bits of one latent of ``dim`` dimensions (its likeliest symbols)."""
        return float(code_length_bound(self.table(dim).max(1)).sum())

    def decode(self, data: bytes, count: int, dim: int) -> Tensor:
        """Inverse of :meth:`encode` for ``count`` latents of ``dim`` dimensions -> ``(count, dim)`` int64.

        Raises :class:`~functa.errors.CodecError` for a corrupt payload, before decoding when ``count``
        latents of :meth:`min_bits` need more than :func:`payload_capacity_bits` of ``data``; memory
        beyond the result is bounded.
        """
        dec = PayloadDecoder(data, count, self.min_bits(dim))
        table, rows = self.table(dim), chunk_rows(dim * self.num_symbols)
        out = np.empty((count, dim), np.int64)
        for start in range(0, count, rows):
            n = min(rows, count - start)
            out[start:start + n] = dec.decode(np.tile(table, (n, 1))).reshape(n, dim)
        return torch.from_numpy(out)

    def state(self) -> dict[str, Tensor]:
        return {"counts": self.counts.clone()}

    @classmethod
    def from_state(cls, kind: str, state: dict[str, Tensor]) -> "FactorizedModel":
        return cls(kind, state["counts"].long())


def fit_entropy_model(kind: str, symbols: Tensor, num_symbols: int, autoregressive=None, progress: bool = False,
                      context=None):
    """Fit a model of ``kind`` to training symbols ``(N, D)`` (``context``: symbol grids ``(N, *cells, C)``).

    Factorised models count (zero counts raised to one); ``autoregressive`` trains an
    :class:`~functa.codec.autoregressive.AutoregressiveModel` with ``autoregressive`` (its config),
    ``context`` a :class:`~functa.codec.context.ContextModel` with ``context`` (its config).
    """
    if kind not in ENTROPY_MODELS:
        raise ValueError(f"unknown entropy model {kind!r}; choose from {ENTROPY_MODELS}")
    if kind == "context":
        from .context import ContextConfig, ContextModel

        model = ContextModel(symbols.shape[-1], num_symbols, symbols.ndim - 2, context or ContextConfig())
        model.fit(symbols.long(), progress)
        return model
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


def entropy_from_state(kind: str, state: dict[str, Tensor], dim: int, num_symbols: int, autoregressive=None,
                       context=None, axes: int = 2):
    """Rebuild a fitted entropy model from :meth:`state` tensors (``axes``: of the context model's grids)."""
    if kind == "context":
        from .context import ContextConfig, ContextModel

        return ContextModel.from_state(dim, num_symbols, axes, context or ContextConfig(), state)
    if kind == "autoregressive":
        from .autoregressive import AutoregressiveConfig, AutoregressiveModel

        return AutoregressiveModel.from_state(dim, num_symbols, autoregressive or AutoregressiveConfig(), state)
    return FactorizedModel.from_state(kind, state)
