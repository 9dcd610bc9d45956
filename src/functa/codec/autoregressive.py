"""An autoregressive flow over quantised latents, usable by a range coder (FlowCOIN, thesis §6.4.2).

The thesis models the quantised latents with a neural spline flow and reports the ideal code
length ``-log2 Q(q)``. A stack of flow layers gives only a joint density, which an arithmetic coder
cannot use symbol by symbol. Here the model is a single *autoregressive* flow layer: a masked MLP
(MADE, :class:`zuko.nn.MaskedMLP`) maps the levels ``q_<d`` of the earlier dimensions to a mixture of
``K`` logistics for dimension ``d``; its CDF ``F_d(x | q_<d)`` is the layer's monotone transform.
The probability of level ``s`` is the CDF mass of its bin,

    P(q_d = s | q_<d) = F_d(s + 1/2 | q_<d) - F_d(s - 1/2 | q_<d)     (outer bins open-ended),

which is exact and sums to one, so it is both the training likelihood (no dequantisation bound
needed) and the coding distribution: dimension by dimension, the range coder gets the ``(P, S)``
table of every patch's next symbol.

Encoder and decoder evaluate the network in the same sequence of calls (per dimension, one pass
over each chunk of :attr:`AutoregressiveModel.chunk` patches, later dimensions zero; their weights
are masked to exact zeros), so both sides see bit-identical tables on the same machine and library
build. As with most learned entropy models, decoding on a different CPU or BLAS may in rare cases
compute a different table and fail; the factorised models (integer counts) have no such caveat.
The symbols are coded dimension-major (every patch's first dimension, then every patch's second,
...). Only the first dimension's table is known before decoding, so a header asking for more
patches than the payload holds is refused up front when their first dimensions alone exceed the
payload's capacity, and otherwise once the decoded symbols do
(:class:`~functa.codec.entropy.PayloadDecoder`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total
from .entropy import PayloadDecoder, _coder, chunk_rows, code_length_bound, words_to_bytes

__all__ = ["AutoregressiveConfig", "AutoregressiveModel", "fit_likelihood", "logistic_bin_probs", "symbols_to_unit"]


def symbols_to_unit(symbols: Tensor, num_symbols: int) -> Tensor:
    """Symbols in ``[0, S)`` as network inputs in ``[-1, 1]`` (float32, same shape)."""
    return symbols.float() * (2.0 / (num_symbols - 1)) - 1.0


def logistic_bin_probs(logits: Tensor, means: Tensor, log_scales: Tensor, edges: Tensor) -> Tensor:
    """A mixture of ``K`` logistics ``(..., K)`` (logits, means and log-scales in level units) ->
    probabilities of the ``S`` levels ``(..., S)``: the CDF mass between the level ``edges (S - 1,)``
    (``0.5, 1.5, ...``), the outer bins open-ended, so they sum to one exactly."""
    w = torch.softmax(logits, -1)[..., None, :]
    z = (edges[:, None] - means[..., None, :]) * torch.exp(-log_scales)[..., None, :]
    cdf = (w * torch.sigmoid(z)).sum(-1)  # (..., S-1)
    zeros, ones = torch.zeros_like(cdf[..., :1]), torch.ones_like(cdf[..., :1])
    return torch.diff(torch.cat([zeros, cdf, ones], -1), dim=-1).clamp_min(1e-12)


def fit_likelihood(model: nn.Module, data: Tensor, batch: int, per_item: int, desc: str,
                   progress: bool = False) -> list[float]:
    """Train an entropy model by maximum likelihood: Adam at ``model.config.lr`` with cosine decay over
    ``model.config.steps`` steps on random batches of ``batch`` items of ``data`` (seeded by
    ``model.config.seed``), minimising ``-model.log2_prob(items).mean() / per_item`` (bits per symbol);
    returns that every 100 steps and at the last. The model is left in eval mode."""
    from tqdm.auto import tqdm

    c = model.config
    g = torch.Generator().manual_seed(c.seed)
    torch.manual_seed(c.seed)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(c.steps, 1))
    history = []
    model.train()
    for step in tqdm(range(c.steps), desc=desc, disable=not progress):
        idx = torch.randint(0, data.shape[0], (batch,), generator=g)
        loss = -model.log2_prob(data[idx]).mean() / per_item
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == c.steps - 1:
            history.append(float(loss.detach()))
    model.eval()
    return history


@dataclass(frozen=True)
class AutoregressiveConfig:
    hidden: tuple[int, ...] = (256, 256)
    components: int = 4
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            check_fields(self, "autoregressive", hidden=IntSeq(1, 16384, min_len=1, max_len=16),
                         components=Int(1, 64), steps=Int(0, 10**9), batch_size=Int(1, 2**20),
                         lr=Real(0, 1e3, lo_open=True), seed=Int(0, 2**63 - 1))
        except ConfigError as e:
            raise ConfigError(f"invalid autoregressive model config: {e}") from None
        check_total("autoregressive", sum(a * b for a, b in zip(self.hidden, self.hidden[1:])), MAX_PARAMETERS,
                    f"hidden layers {list(self.hidden)}")

    def to_dict(self) -> dict:
        return asdict(self)


class AutoregressiveModel(nn.Module):
    """``P(q) = prod_d P(q_d | q_<d)`` over symbols ``(B, D)`` in ``[0, S)``."""

    kind = "autoregressive"

    def __init__(self, dim: int, num_symbols: int, config: AutoregressiveConfig = AutoregressiveConfig()) -> None:
        super().__init__()
        import zuko

        self.dim, self.num_symbols, self.config = dim, num_symbols, config
        k = config.components
        out_dim = torch.arange(dim).repeat_interleave(3 * k)  # output o belongs to dimension out_dim[o]
        adjacency = torch.arange(dim)[None, :] < out_dim[:, None]  # (D*3K, D): d sees j < d
        self.net = zuko.nn.MaskedMLP(adjacency, config.hidden, activation=nn.ELU)
        # edges of the level bins in level units: -inf, 0.5, 1.5, ..., S-1.5, +inf
        self.register_buffer("edges", torch.arange(num_symbols - 1, dtype=torch.float32) + 0.5, persistent=False)

    # ------------------------------------------------------------------ densities
    def _inputs(self, symbols: Tensor) -> Tensor:
        return symbols_to_unit(symbols, self.num_symbols)

    def _mixture(self, symbols: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mixture logits, means and log-scales in level units, each ``(B, D, K)``."""
        k = self.config.components
        h = self.net(self._inputs(symbols)).reshape(symbols.shape[0], self.dim, 3, k)
        centre = (self.num_symbols - 1) / 2
        means = centre + h[:, :, 1] * centre
        return h[:, :, 0], means, h[:, :, 2].clamp(-7.0, 7.0)

    def _bin_probs(self, logits: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
        return logistic_bin_probs(logits, means, log_scales, self.edges)

    def log2_prob(self, symbols: Tensor) -> Tensor:
        """``log2 P(q)`` per item ``(B,)`` (one network pass: all conditionals from the given symbols)."""
        probs = self._bin_probs(*self._mixture(symbols))  # (B, D, S)
        return torch.log2(probs.gather(2, symbols.long()[..., None])[..., 0]).sum(1)

    def bits(self, symbols: Tensor) -> float:
        with torch.no_grad():
            return float(-self.log2_prob(symbols.reshape(-1, self.dim)).sum())

    # ------------------------------------------------------------------ training
    def fit(self, symbols: Tensor, progress: bool = False) -> list[float]:
        """Maximum likelihood on training symbols ``(N, D)`` (Adam, cosine decay); returns bits/dim."""
        batch = min(self.config.batch_size, symbols.shape[0])
        return fit_likelihood(self, symbols, batch, self.dim, "entropy model", progress)

    # ------------------------------------------------------------------ coding
    def _tables(self, symbols: Tensor, d: int) -> np.ndarray:
        """Probabilities ``(P, S)`` of dimension ``d`` given ``symbols[:, :d]`` (later entries ignored)."""
        context = symbols.clone()
        context[:, d:] = 0  # identical inputs on the encoder and the decoder side
        with torch.no_grad():
            logits, means, log_scales = self._mixture(context)
            probs = self._bin_probs(logits[:, d], means[:, d], log_scales[:, d])
        return probs.double().numpy()

    def encode(self, symbols: Tensor) -> bytes:
        c = _coder()
        sym = symbols.reshape(-1, self.dim).long()
        if sym.numel() and (int(sym.min()) < 0 or int(sym.max()) >= self.num_symbols):
            raise ValueError(f"symbols must lie in [0, {self.num_symbols})")
        enc = c.stream.queue.RangeEncoder()
        model = c.stream.model.Categorical(perfect=False)
        for d in range(self.dim):
            for start in range(0, sym.shape[0], self.chunk):
                part = sym[start:start + self.chunk]
                enc.encode(part[:, d].numpy().astype(np.int32), model, self._tables(part, d))
        return words_to_bytes(enc.get_compressed())

    def min_bits(self) -> float:
        """A lower bound on the coded bits of one latent: those of its likeliest first level (the first
        dimension's table has no context), with ``2^-16`` of slack for rounding across batch sizes."""
        first = self._tables(torch.zeros(1, self.dim, dtype=torch.long), 0).max()
        return float(code_length_bound(first + 2.0**-16))

    @property
    def chunk(self) -> int:
        """Patches per network pass when coding (bounds the ``(n, S, K)`` mixture tensors)."""
        return chunk_rows(self.num_symbols * self.config.components)

    def decode(self, data: bytes, count: int, dim: int) -> Tensor:
        """Inverse of :meth:`encode` -> ``(count, dim)`` int64; raises :class:`~functa.errors.CodecError`
        on a corrupt payload or one too short for ``count`` patches."""
        if dim != self.dim:
            raise ValueError(f"latents have {dim} dimensions, the entropy model was fitted on {self.dim}")
        dec = PayloadDecoder(data, count, self.min_bits())
        sym = torch.empty(count, self.dim, dtype=torch.long)  # filled as decoded; _tables zeroes the rest
        for d in range(self.dim):
            for start in range(0, count, self.chunk):
                part = sym[start:start + self.chunk]
                part[:, d] = torch.from_numpy(dec.decode(self._tables(part, d)))
        return sym

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, dim: int, num_symbols: int, config: AutoregressiveConfig,
                   state: dict[str, Tensor]) -> "AutoregressiveModel":
        model = cls(dim, num_symbols, config)
        model.load_state_dict(state)
        return model.eval()
