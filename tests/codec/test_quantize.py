import pytest
import torch

from functa.codec import Quantizer, QuantizerConfig, default_std_range


def _latents(n=500, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.01, 0.1, 1.0, 3.0, 0.5, 10.0])[:d]
    return torch.randn(n, d, generator=g) * scales + torch.arange(d) * 0.3


@pytest.mark.parametrize("bits", [3, 5, 8, 16])
@pytest.mark.parametrize("per_dimension", [True, False])
def test_error_bound_for_unclipped_values(bits, per_dimension):
    z = _latents()
    q = Quantizer.fit(z, QuantizerConfig(bits=bits, per_dimension=per_dimension))
    sym = q.quantize(z)
    assert sym.dtype == torch.int64 and int(sym.min()) >= 0 and int(sym.max()) < 2**bits
    zr = q.dequantize(sym).double()
    k = q.config.clip
    inside = ((z.double() - q.mean) / q.std).abs() <= k
    bound = (q.step() / 2).expand_as(zr)
    err = (zr - z.double()).abs()
    assert bool((err[inside] <= bound[inside] * (1 + 1e-6) + 1e-7).all())
    # clipped values land on the extreme levels
    assert bool((sym[~inside] == 0).logical_or(sym[~inside] == 2**bits - 1).all())


def test_hand_computed_levels():
    q = Quantizer(QuantizerConfig(bits=2, per_dimension=False, std_range=3.0), torch.tensor([1.0]), torch.tensor([2.0]))
    # t = (z - 1) / 2 clipped to [-3, 3]; 4 levels at t = -3, -1, 1, 3  ->  z = -5, -1, 3, 7
    z = torch.tensor([[-100.0, -1.2, 2.9, 6.0, 1.0]])
    assert q.quantize(z).tolist() == [[0, 1, 2, 3, 2]]
    assert q.dequantize(torch.tensor([[0, 1, 2, 3]])).tolist() == [[-5.0, -1.0, 3.0, 7.0]]


def test_per_dimension_beats_global_on_mixed_scales():
    z = _latents()
    errs = {}
    for per_dim in (True, False):
        q = Quantizer.fit(z, QuantizerConfig(bits=5, per_dimension=per_dim))
        errs[per_dim] = float((q.dequantize(q.quantize(z)) - z).square().mean())
    assert errs[True] < errs[False] / 2


def test_defaults_and_validation():
    assert [default_std_range(b) for b in (3, 5, 6, 10, 11, 16)] == [3.0, 3.0, 5.0, 5.0, 6.0, 6.0]
    with pytest.raises(ValueError, match="bits must be in 1..16"):
        QuantizerConfig(bits=0)
    q = Quantizer.fit(_latents(d=4), QuantizerConfig())
    with pytest.raises(ValueError, match="fitted on 4"):
        q.quantize(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="symbols must lie"):
        q.dequantize(torch.full((1, 4), 32))
    const = torch.zeros(10, 3)
    assert torch.equal(Quantizer.fit(const, QuantizerConfig()).std, torch.ones(3, dtype=torch.float64))
