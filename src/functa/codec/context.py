"""A causal context model over the cells of a quantised latent grid, usable by a range coder.

The learned entropy models of current overfitted codecs (C3, Cool-chic) predict each latent from the
latents already decoded around it. Here the symbols of a grid ``q (*cells, C)`` (spatial functa, one
``C``-channel latent per cell) are coded cell by cell in a causal order, each cell's channels from a
small MLP of its causal neighbourhood:

    P(q_j | q_<j) = prod_c P(q_jc | context_j),    context_j = the symbols of the cells j + o, o in O,

where ``O`` is the causal half of the ``3^k`` box around a cell (lexicographically before it) plus the
cells two steps back along each axis; a neighbour outside the grid reads as zero with an "absent"
flag. The MLP gives every channel a mixture of ``K`` logistics, and the probability of level ``s`` is
the mixture's CDF mass of its bin (:func:`~functa.codec.autoregressive.logistic_bin_probs`), mixed
with ``2^-10`` of the uniform distribution so that no symbol costs more than 10 + log2 S bits and
every symbol costs a little (:meth:`ContextModel.min_bits`, which bounds what a corrupt payload can
make the decoder do).

Coding order: every context offset ``o`` has ``sum_a w_a o_a < 0`` with ``w_a = 2^(k - 1 - a)``, so the
cells of one *wavefront* ``t = sum_a w_a j_a`` depend only on earlier wavefronts: the encoder and the
decoder evaluate the network once per wavefront, on the same rows in the same order, and so compute
bit-identical tables on the same machine and library build (decoding on another CPU or BLAS may in
rare cases compute a different table and fail, as with any learned entropy model; the factorised
models have no such caveat; the tables are computed on the calling thread's settings, so decode with the
torch thread count and build you encoded with). A ``40 x 60`` grid takes 138 wavefronts.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..validation import MAX_PARAMETERS, Int, IntSeq, Real, check_fields, check_total
from .autoregressive import fit_likelihood, logistic_bin_probs, symbols_to_unit
from .entropy import PayloadDecoder, _coder, code_length_bound, words_to_bytes

__all__ = ["ContextConfig", "ContextModel", "causal_offsets"]

UNIFORM_MIX = 2.0**-10


@dataclass(frozen=True)
class ContextConfig:
    """Network and training settings of a :class:`ContextModel` (``batch_cells``: cells per training step,
    as whole grids: at least one)."""

    hidden: tuple[int, ...] = (64, 64)
    components: int = 2
    steps: int = 2000
    batch_cells: int = 4096
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            check_fields(self, "context", hidden=IntSeq(1, 4096, min_len=1, max_len=8), components=Int(1, 16),
                         steps=Int(0, 10**9), batch_cells=Int(1, 2**24), lr=Real(0, 1e3, lo_open=True),
                         seed=Int(0, 2**63 - 1))
        except ConfigError as e:
            raise ConfigError(f"invalid context model config: {e}") from None
        check_total("context", sum(a * b for a, b in zip(self.hidden, self.hidden[1:])), MAX_PARAMETERS,
                    f"hidden layers {list(self.hidden)}")

    def to_dict(self) -> dict:
        return asdict(self)


def causal_offsets(k: int) -> Tensor:
    """Context offsets ``(O, k)`` for ``k``-D grids: the ``(3^k - 1) / 2`` cells of the ``3^k`` box that come
    before the centre in raster order, then the cells two steps back along each axis."""
    box = [o for o in itertools.product((-1, 0, 1), repeat=k) if o < (0,) * k]
    far = [tuple(-2 if b == a else 0 for b in range(k)) for a in range(k)]
    return torch.tensor(box + far, dtype=torch.long)


class ContextModel(nn.Module):
    """``P(q) = prod_j P(q_j | causal context)`` over symbol grids ``(*cells, C)`` in ``[0, S)``."""

    kind = "context"
    needs_grid = True  # codes grids (*cells, C), not flat rows

    def __init__(self, dim: int, num_symbols: int, axes: int, config: ContextConfig = ContextConfig()) -> None:
        super().__init__()
        if not 1 <= axes <= 3:
            raise ValueError(f"a context model needs grids of 1 to 3 axes, got {axes}")
        self.dim, self.num_symbols, self.axes, self.config = dim, num_symbols, axes, config
        self.register_buffer("offsets", causal_offsets(axes), persistent=False)
        self.register_buffer("order", 2 ** torch.arange(axes - 1, -1, -1), persistent=False)
        self.register_buffer("edges", torch.arange(num_symbols - 1, dtype=torch.float32) + 0.5, persistent=False)
        sizes = [len(self.offsets) * (dim + 1), *config.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ELU()]
        out = nn.Linear(sizes[-1], dim * 3 * config.components)
        nn.init.zeros_(out.weight)  # starts as one broad logistic per channel around the middle level
        nn.init.zeros_(out.bias)
        self.net = nn.Sequential(*layers, out)

    # ------------------------------------------------------------------ densities
    def _context(self, values: Tensor, coords: Tensor, cells: tuple[int, ...]) -> Tensor:
        """Context features ``(B, n, O (C + 1))`` of the cells at ``coords (n, k)`` from the symbol values
        ``values (B, P, C)`` in ``[-1, 1]`` (cells row-major): each neighbour's values and a presence flag."""
        shape = torch.tensor(cells, device=coords.device)
        nb = coords[:, None, :] + self.offsets[None]  # (n, O, k)
        inside = ((nb >= 0) & (nb < shape)).all(-1)  # (n, O)
        strides = torch.tensor([math.prod(cells[a + 1:]) for a in range(len(cells))], device=coords.device)
        flat = (nb.clamp_min(0) * strides).sum(-1).clamp_max(values.shape[1] - 1)
        v = torch.where(inside[None, :, :, None], values[:, flat], 0.0)  # (B, n, O, C)
        flags = inside[None].expand(values.shape[0], -1, -1).to(values.dtype)[..., None]
        return torch.cat([v, flags], -1).flatten(2)

    def _probs(self, context: Tensor) -> Tensor:
        """Level probabilities ``(..., C, S)`` from context features ``(..., O (C + 1))``."""
        k = self.config.components
        h = self.net(context).reshape(*context.shape[:-1], self.dim, 3, k)
        centre = (self.num_symbols - 1) / 2
        log_scales = (h[..., 2, :] + math.log(self.num_symbols / 4)).clamp(-7.0, math.log(self.num_symbols))
        probs = logistic_bin_probs(h[..., 0, :], centre + h[..., 1, :] * centre, log_scales, self.edges)
        return (1 - UNIFORM_MIX) * probs + UNIFORM_MIX / self.num_symbols

    def _values(self, symbols: Tensor) -> Tensor:
        return symbols_to_unit(symbols, self.num_symbols)

    @staticmethod
    def _coords(cells: tuple[int, ...]) -> Tensor:
        return torch.cartesian_prod(*(torch.arange(g) for g in cells)).reshape(-1, len(cells))

    def log2_prob(self, grids: Tensor) -> Tensor:
        """``log2 P(q)`` per grid ``(B,)`` of symbol grids ``(B, *cells, C)`` (all contexts at once)."""
        cells = tuple(grids.shape[1:-1])
        sym = grids.reshape(grids.shape[0], -1, self.dim).long()
        probs = self._probs(self._context(self._values(sym), self._coords(cells).to(sym.device), cells))
        return torch.log2(probs.gather(-1, sym[..., None])[..., 0]).sum((1, 2))

    def bits(self, grids: Tensor) -> float:
        """Ideal code length in bits of symbol grids ``(*cells, C)`` or ``(B, *cells, C)`` (in chunks of
        grids of about ``batch_cells`` cells: memory does not grow with the number of grids)."""
        g = grids if grids.ndim == self.axes + 2 else grids[None]
        per = max(1, self.config.batch_cells // max(1, math.prod(g.shape[1:-1])))
        with torch.no_grad():
            return float(sum(-self.log2_prob(g[i:i + per]).sum() for i in range(0, len(g), per)))

    # ------------------------------------------------------------------ training
    def fit(self, grids: Tensor, progress: bool = False) -> list[float]:
        """Maximum likelihood on training symbol grids ``(N, *cells, C)`` (Adam, cosine decay); returns
        bits per symbol every 100 steps."""
        c = self.config
        if grids.ndim != self.axes + 2 or grids.shape[-1] != self.dim:
            raise ValueError(f"training grids must be (N, {self.axes} axes, {self.dim}), got {tuple(grids.shape)}")
        batch = min(grids.shape[0], max(1, c.batch_cells // math.prod(grids.shape[1:-1])))
        return fit_likelihood(self, grids, batch, math.prod(grids.shape[1:]), "context model", progress)

    # ------------------------------------------------------------------ coding
    def _wavefronts(self, cells: tuple[int, ...]) -> tuple[Tensor, list[Tensor]]:
        """All cell coordinates ``(P, k)`` and the flat indices of each wavefront, in coding order."""
        coords = self._coords(cells)
        t = (coords * self.order).sum(-1)
        order = torch.argsort(t * coords.shape[0] + torch.arange(coords.shape[0]))  # by front, then raster
        counts = torch.bincount(t, minlength=int(t.max()) + 1 if len(t) else 0)
        return coords, [f for f in torch.split(order, counts.tolist()) if len(f)]

    def _front_table(self, values: Tensor, coords: Tensor, front: Tensor, cells: tuple[int, ...]) -> np.ndarray:
        """Probabilities ``(n * C, S)`` float64 of the ``n`` cells ``front`` (flat indices) from the decoded
        values ``(P, C)``; the same rows in the same call on the encoder and the decoder side."""
        with torch.no_grad():
            probs = self._probs(self._context(values[None], coords[front], cells))[0]  # (n, C, S)
        return probs.reshape(-1, self.num_symbols).double().numpy()

    def encode(self, grid: Tensor) -> bytes:
        """Range-code one symbol grid ``(*cells, C)`` into bytes."""
        c = _coder()
        cells = tuple(grid.shape[:-1])
        if grid.ndim != self.axes + 1 or grid.shape[-1] != self.dim:
            raise ValueError(f"expected a symbol grid ({self.axes} axes, {self.dim}), got {tuple(grid.shape)}")
        sym = grid.reshape(-1, self.dim).long()
        if sym.numel() and (int(sym.min()) < 0 or int(sym.max()) >= self.num_symbols):
            raise ValueError(f"symbols must lie in [0, {self.num_symbols})")
        values = self._values(sym)
        coords, fronts = self._wavefronts(cells)
        enc, model = c.stream.queue.RangeEncoder(), c.stream.model.Categorical(perfect=False)
        for front in fronts:
            enc.encode(sym[front].reshape(-1).numpy().astype(np.int32), model,
                       self._front_table(values, coords, front, cells))
        return words_to_bytes(enc.get_compressed())

    def min_bits(self) -> float:
        """A lower bound on the coded bits of one cell: every channel's likeliest level has probability at
        most ``1 - 2^-10 (S - 1) / S`` (the uniform mixture)."""
        top = 1.0 - UNIFORM_MIX * (self.num_symbols - 1) / self.num_symbols
        return self.dim * float(code_length_bound(np.array(top)))

    def decode(self, data: bytes, cells: tuple[int, ...]) -> Tensor:
        """Inverse of :meth:`encode` -> symbols ``(prod(cells), C)`` int64; raises
        :class:`~functa.errors.CodecError` on a corrupt payload or one too short for the grid."""
        cells = tuple(int(g) for g in cells)
        if len(cells) != self.axes:
            raise ValueError(f"expected {self.axes} cell counts, got {cells}")
        count = math.prod(cells)
        dec = PayloadDecoder(data, count, self.min_bits())
        sym = torch.zeros(count, self.dim, dtype=torch.long)
        values = self._values(sym)  # decoded cells are filled in front by front
        coords, fronts = self._wavefronts(cells)
        for front in fronts:
            got = torch.from_numpy(dec.decode(self._front_table(values, coords, front, cells))).reshape(-1, self.dim)
            sym[front] = got
            values[front] = self._values(got)
        return sym

    def state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    @classmethod
    def from_state(cls, dim: int, num_symbols: int, axes: int, config: ContextConfig,
                   state: dict[str, Tensor]) -> "ContextModel":
        model = cls(dim, num_symbols, axes, config)
        model.load_state_dict(state)
        return model.eval()
