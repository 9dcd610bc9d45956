import math

import pytest
import torch

from functa.fields import LatentModulatedSiren, MetaSGDLrs, SirenConfig, siren_weight_bound


def make(**kw):
    torch.manual_seed(0)
    return LatentModulatedSiren(SirenConfig(**kw))


def test_first_and_hidden_init_ranges():
    f = make(in_dim=2, width=512, depth=4, w0=30.0)
    w1 = f.layers[0].weight
    assert w1.abs().max() <= 1 / 2 + 1e-7
    assert w1.abs().max() > 0.49  # fills the range U(-1/2, 1/2)
    bound = math.sqrt(6 / 512) / 30
    for w in (f.layers[1].weight, f.layers[2].weight, f.output.weight):
        assert w.abs().max() <= bound + 1e-7
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert siren_weight_bound(512, 30.0, False) == pytest.approx(bound)


def test_biases_zero_by_default_and_uniform_option():
    f = make(width=64, depth=4)
    assert all(float(l.bias.detach().abs().max()) == 0 for l in f.layers)
    assert float(f.output.bias.detach().abs().max()) == 0
    g = make(width=64, depth=4, bias_init="uniform")
    b = g.layers[1].bias.detach()
    assert float(b.abs().max()) > 0 and float(b.abs().max()) <= siren_weight_bound(64, 30.0, False)


def test_latent_map_haiku_init():
    f = make(width=256, depth=6, latent_dim=128)
    w, b = f.latent_map.weight.detach(), f.latent_map.bias.detach()
    std = 1 / math.sqrt(128)
    assert float(b.detach().abs().max()) == 0
    assert float(w.abs().max()) <= 2 * std + 1e-6
    assert w.std().item() == pytest.approx(0.8796 * std, rel=0.03)  # std of N truncated at 2 sigma
    assert w.shape == (5 * 256, 128)


def test_forward_shapes_shared_and_per_item_coordinates():
    f = make(in_dim=3, out_dim=2, width=32, depth=3, latent_dim=8)
    z = torch.randn(4, 8)
    assert f.latent_shape == (8,) and f.zero_latents(4).shape == (4, 8)
    shared, per_item = torch.rand(1, 10, 3), torch.rand(4, 10, 3)
    assert f(shared, z).shape == (4, 10, 2)
    out = f(per_item, z)
    assert out.shape == (4, 10, 2)
    assert torch.allclose(out[2], f(per_item[2:3], z[2:3])[0], atol=1e-6)
    with pytest.raises(ValueError, match="expected coordinates"):
        f(torch.rand(10, 3), z)


def test_output_offset_and_zero_latent():
    f = make(width=16, depth=3, latent_dim=4)
    with torch.no_grad():
        f.output.weight.zero_()
    out = f(torch.rand(1, 7, 2), torch.zeros(2, 4))
    assert torch.allclose(out, torch.full_like(out, 0.5))


def test_shift_modulation_matches_formula():
    """sin(w0 (W x + b + s)) with s = W' phi + b' on every hidden layer, linear output + 0.5."""
    f = make(in_dim=2, out_dim=1, width=8, depth=3, latent_dim=3, w0=7.0).double()
    x, phi = torch.rand(5, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    got = f(x[None], phi[None])[0]
    s = (f.latent_map.weight @ phi + f.latent_map.bias).reshape(2, 8)
    h = torch.sin(7.0 * (x @ f.layers[0].weight.T + f.layers[0].bias + s[0]))
    h = torch.sin(7.0 * (h @ f.layers[1].weight.T + f.layers[1].bias + s[1]))
    ref = h @ f.output.weight.T + f.output.bias + 0.5
    assert torch.allclose(got, ref)


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("latent_dim", [6, None])
def test_explicit_latent_gradient_matches_autograd(scale, latent_dim):
    f = make(in_dim=2, out_dim=3, width=16, depth=4, latent_dim=latent_dim, modulate_scale=scale).double()
    x = torch.rand(1, 30, 2, dtype=torch.float64)
    z = (0.1 * torch.randn(3, f.config.code_dim, dtype=torch.float64)).requires_grad_()
    out, trace = f.forward_points(x, z, keep_trace=True)
    g_out = torch.randn_like(out)
    ours = f.backward_latents(trace, g_out)
    ref, = torch.autograd.grad((out * g_out).sum(), z)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_num_modulations_layout():
    cfg = SirenConfig(width=10, depth=5, latent_dim=None, modulate_scale=True)
    assert cfg.num_modulations == 4 * 10 * 2 and cfg.code_dim == 80
    f = LatentModulatedSiren(cfg)
    z = torch.zeros(1, 80)
    z[0, 40] = 1.0  # first scale entry of layer 0
    shift, scale = f.modulations(z)
    assert shift.abs().sum() == 0 and scale[0, 0, 0] == 1.0


def test_meta_sgd_init_and_clamp_really_applied():
    lrs = MetaSGDLrs(1000)
    assert 0.005 <= float(lrs.raw.detach().min()) and float(lrs.raw.detach().max()) <= 0.1
    with torch.no_grad():
        lrs.raw[:2] = torch.tensor([5.0, -1.0])
    eff = lrs()
    assert eff[0] == 1.0 and eff[1] == 0.0
    unclipped = MetaSGDLrs(3, clip=None)
    with torch.no_grad():
        unclipped.raw.fill_(5.0)
    assert torch.all(unclipped() == 5.0)
    fixed = MetaSGDLrs(4, learned=False, fixed_lr=0.01)
    assert not list(fixed.parameters()) and torch.all(fixed() == 0.01)


def test_bad_inputs_raise_clear_errors():
    f = make(in_dim=2, width=8, depth=3, latent_dim=4)
    with pytest.raises(ValueError, match="coordinates have 3 dims"):
        f(torch.rand(1, 5, 3), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="latents have 5 dims"):
        f(torch.rand(1, 5, 2), torch.zeros(1, 5))
    with pytest.raises(ValueError, match="depth"):
        SirenConfig(depth=1)
    with pytest.raises(ValueError, match="bias_init"):
        SirenConfig(bias_init="ones")
