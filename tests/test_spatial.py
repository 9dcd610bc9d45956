"""Spatial functa fields: locality of one latent cell (1-NN: its patch only; bilinear: the neighbouring
patches), ``s = 1`` is vector functa exactly, any resolution and any subset of points, per-cell meta-SGD
rates, and meta-learning through the autograd inner loop."""

from __future__ import annotations

import pytest
import torch

from functa.errors import ConfigError
from functa.fields import LatentModulatedSiren, SirenConfig, SpatialConfig, SpatialSiren, field_from_config
from functa.fitting import Batch, InnerLoop, MSELoss
from functa.modalities.image import image_coordinates


def field(**kw):
    torch.manual_seed(0)
    return SpatialSiren(SpatialConfig(**{"width": 16, "depth": 4, "grid": 4, "channels": 3, "w0": 10.0, **kw}))


def perturbed_outputs(f, res=16, cell=(1, 2)):
    x = image_coordinates(res, res)[None]
    z = torch.randn(1, *f.latent_shape)
    z2 = z.clone()
    z2[0, cell[0], cell[1]] += 1.0
    with torch.no_grad():
        diff = (f(x, z2) - f(x, z)).abs().reshape(res, res)
    return diff


def test_nearest_one_cell_changes_only_its_patch():
    diff = perturbed_outputs(field(), res=16, cell=(1, 2))  # grid 4 on 16x16 pixels: 4x4-pixel patches
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:8, 8:12] = True
    assert (diff[inside] > 1e-4).all()  # every point of the patch moves
    assert (diff[~inside] == 0).all()  # no other point does (a points/layers mix-up would break this)


def test_bilinear_one_cell_changes_only_the_neighbouring_patches():
    f = field(interpolation="bilinear", binary_bits=4)
    diff = perturbed_outputs(f, res=16, cell=(1, 2))
    # cell (1, 2) has its centre at pixel (6, 10); it weighs the points within one cell (4 pixels) of it
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    centre_r, centre_c = (1 + 0.5) * 4 - 0.5, (2 + 0.5) * 4 - 0.5
    near = ((rows - centre_r).abs() < 4) & ((cols - centre_c).abs() < 4)
    assert (diff[near] > 0).all() and (diff[~near] == 0).all()
    assert near.sum() > 16  # more than one patch: the neighbours of the cell


def test_grid_of_one_is_vector_functa_exactly():
    torch.manual_seed(1)
    vec = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, width=16, depth=4, latent_dim=5, w0=10.0))
    sp = SpatialSiren(SpatialConfig(in_dim=2, out_dim=3, width=16, depth=4, grid=1, channels=5, w0=10.0))
    sp.layers.load_state_dict(vec.layers.state_dict())
    sp.output.load_state_dict(vec.output.state_dict())
    sp.latent_map.load_state_dict(vec.latent_map.state_dict())
    x = image_coordinates(7, 9, "corners")[None]  # corners: x = 1 stays in the (only) cell
    z = torch.randn(4, 5)
    torch.testing.assert_close(sp(x, z[:, None, None, :]), vec(x, z), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_any_resolution_and_any_subset_of_points(interpolation):
    f = field(interpolation=interpolation)
    z = torch.randn(2, *f.latent_shape)
    x = image_coordinates(32, 32)[None]
    with torch.no_grad():
        full = f(x, z)
        subset = torch.randperm(32 * 32)[:100]
        torch.testing.assert_close(f(x[:, subset], z), full[:, subset])  # the same points, alone
        per_item = torch.stack([x[0, subset], x[0, subset.flip(0)]])  # coordinates per datum
        out = f(per_item, z)
        torch.testing.assert_close(out[0], full[0, subset])
        torch.testing.assert_close(out[1], full[1, subset.flip(0)])
        assert f(image_coordinates(5, 3)[None], z).shape == (2, 15, 1)  # another resolution


def test_per_cell_meta_sgd_rates_and_config_round_trip():
    f = field(grid=3, channels=4)
    assert f.inner_lrs().shape == (3, 3, 1) and f.zero_latents(2).shape == (2, 3, 3, 4)
    assert [p.numel() for p in f.meta_parameters()] == [9]
    g = field_from_config(f.to_config())
    assert isinstance(g, SpatialSiren) and g.latent_shape == f.latent_shape
    n = sum(p.numel() for p in f.base_parameters() + f.meta_parameters())
    assert n == f.config.num_parameters
    with pytest.raises(ConfigError, match="binary_bits"):
        SpatialConfig(binary_bits=4)  # 1-NN feeds local coordinates
    with pytest.raises(ConfigError, match="kernel"):
        SpatialConfig(kernel=2)


def test_kernel_3_mixes_neighbouring_cells():
    f = field(kernel=3)
    diff = perturbed_outputs(f, res=16, cell=(1, 2))
    moved = diff.reshape(4, 4, 4, 4).permute(0, 2, 1, 3).reshape(4, 4, 16).amax(-1) > 0  # per patch
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:3, 1:4] = True  # the 3x3 neighbourhood of cell (1, 2)
    assert torch.equal(moved, expected)


def test_autograd_inner_loop_fits_and_meta_gradients_reach_every_group():
    f = field(grid=2, channels=4, width=32)
    x = image_coordinates(8, 8)[None]
    y = torch.rand(3, 64, 1)
    batch = Batch(x, y)
    loop = InnerLoop(steps=3, loss=MSELoss(), fast_path=False)
    assert not loop.is_fast(f, batch)  # the autograd inner loop
    z = loop(f, batch)
    assert z.shape == (3, 2, 2, 4)
    before = MSELoss().per_item(f(x, f.zero_latents(3)), y).mean()
    after = MSELoss().per_item(f(x, z), y).mean()
    assert after < before
    after.backward()
    for p in f.base_parameters() + f.meta_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_command_line_fit_encode_info_render_with_a_latent_grid(tmp_path, capsys):
    """``functa fit --field spatial``: the preset's vector-only settings are left out, the run and its
    functaset report the grid latent shape, renders work at 2x, and the classifier takes the grids flat."""
    import json

    import numpy as np
    from PIL import Image

    from functa.cli import main
    from functa.config import load_config
    from functa.functaset import Functaset

    assert load_config(overrides=["field.name=spatial"]).field == {"width": 128, "depth": 6, "name": "spatial"}
    with pytest.raises(ConfigError, match="latent_dim"):
        load_config(overrides=["field.name=spatial", "field.latent_dim=64"])  # a user's own setting is checked
    data = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for i in range(10):  # two classes (sub-folders)
        (data / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(data / "ab"[i % 2] / f"{i}.png")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--field", "spatial", "--steps", "2",
                 "--set", "field.grid=2", "--set", "field.channels=3", "--set", "field.width=8",
                 "--set", "field.depth=3", "--set", "train.batch_size=4", "--set", "train.eval_items=2"]) == 0
    assert json.loads((run / "config.json").read_text())["field"]["name"] == "spatial"
    fs = tmp_path / "fs"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "all"]) == 0
    assert Functaset(fs).take(np.arange(2))["latents"].shape == (2, 2, 2, 3)
    for path in (run, fs):
        capsys.readouterr()
        assert main(["info", str(path)]) == 0
        out = capsys.readouterr()
        assert json.loads(out.out)["latent_shape"] == [2, 2, 3] and "latent shape: (2, 2, 3)" in out.err
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:2", "--scale", "2",
                 "-o", str(tmp_path / "r")]) == 0
    assert np.load(tmp_path / "r" / "renders.npz")["values"].shape == (2, 16, 16, 3)
    codec = tmp_path / "codec"  # the vector codec codes the grids flat
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    big = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)).save(big)
    assert main(["--quiet", "compress", str(big), "-m", str(codec), "-o", str(tmp_path / "big.fta")]) == 0
    assert main(["--quiet", "decompress", str(tmp_path / "big.fta"), "-m", str(codec), "-o",
                 str(tmp_path / "back.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "back.png")).shape == (12, 20, 3)
    # the Transformer classifier is chosen for grids (the MLP for vectors); classify eval reloads it
    assert main(["--quiet", "classify", "train", str(fs), "--test", str(fs), "-o", str(tmp_path / "cls"),
                 "--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.warmup_steps=1",
                 "--set", "transformer.width=8", "--set", "transformer.heads=2", "--set", "transformer.depth=1"]) == 0
    metrics = json.loads((tmp_path / "cls" / "metrics.json").read_text())
    assert metrics["name"] == "functa Transformer" and metrics["parameters"] < 2000
    assert main(["--quiet", "classify", "eval", str(tmp_path / "cls" / "seed0"), str(fs)]) == 0
    # DDPM on the grids with spatial functa's per-channel (vector-valued) statistics
    assert main(["--quiet", "diffusion", "train", str(fs), "-o", str(tmp_path / "ddpm"), "--set", "train.steps=2",
                 "--set", "statistics=channel", "--set", "norm_factor=2.5", "--set", "train.batch_size=4",
                 "--set", "train.warmup_steps=1", "--set", "train.eval_every=2"]) == 0
    from safetensors.torch import load_file

    saved = {k: v for k, v in load_file(tmp_path / "ddpm" / "model.safetensors").items() if "standardizer" in k}
    mean = next(v for k, v in saved.items() if k.endswith("mean"))
    torch.testing.assert_close(mean.reshape(4, 3), mean[:3].expand(4, 3))  # one mean per channel
    assert main(["--quiet", "fit", str(data), "-o", str(tmp_path / "vec"), "--field", "siren", "--steps", "1",
                 "--set", "field.width=8", "--set", "field.depth=3", "--set", "train.batch_size=4",
                 "--set", "train.eval_items=2"]) == 0
    assert json.loads((tmp_path / "vec" / "config.json").read_text())["field"]["latent_dim"] == 128


@pytest.mark.parametrize("kw", [{}, {"interpolation": "bilinear", "binary_bits": 3}, {"kernel": 3}, {"out_dim": 3}])
def test_explicit_latent_gradient_matches_autograd(kw):
    from functa.fields import LatentAdjoint

    f = field(**kw).double()
    assert isinstance(f, LatentAdjoint)
    x = torch.rand(1, 40, 2, dtype=torch.float64)
    z = torch.randn(3, *f.latent_shape, dtype=torch.float64, requires_grad=True)
    out, trace = f.forward_points(x, z, keep_trace=True)
    grad_out = torch.randn_like(out)
    (expected,) = torch.autograd.grad((f(x, z) * grad_out).sum(), z)
    torch.testing.assert_close(f.backward_latents(trace, grad_out), expected, rtol=1e-10, atol=1e-12)
    # a trace of batch 1 (the shared zero-latent first step) broadcast against per-item gradients
    out1, trace1 = f.forward_points(x, f.zero_latents(1).double(), keep_trace=True)
    zeros = f.zero_latents(3).double().requires_grad_(True)
    (expected0,) = torch.autograd.grad((f(x, zeros) * grad_out).sum(), zeros)
    torch.testing.assert_close(f.backward_latents(trace1, grad_out), expected0, rtol=1e-10, atol=1e-12)


def test_fast_inner_loop_gives_the_autograd_latents_and_meta_gradients():
    f = field(grid=2, channels=4, width=32).double()
    x = image_coordinates(8, 8)[None].double()
    batch = Batch(x, torch.rand(3, 64, 1, dtype=torch.float64))
    results = []
    for fast in (True, False):
        loop = InnerLoop(steps=3, loss=MSELoss(), fast_path=fast)
        assert loop.is_fast(f, batch) == fast
        z = loop(f, batch)
        value = MSELoss().per_item(f(x, z), batch.y).mean()
        grads = torch.autograd.grad(value, f.base_parameters() + f.meta_parameters())
        results.append((z.detach(), grads))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    for a, b in zip(results[0][1], results[1][1]):  # second order through the explicit gradient too
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("res", [16, 28, 30])
def test_patch_layout_equals_the_general_path(res):
    """1-NN on shared grid coordinates runs as B * S small fields (no per-point gather) when every cell
    holds the same local points (16, 28: yes; 30 is not divisible by 4: the general path); outputs and
    explicit gradients are those of the general path (per-item coordinates) and of autograd."""
    f = field(out_dim=2).double()
    x = image_coordinates(res, res)[None].double()
    assert (f._patch_layout(x) is not None) == (res % 4 == 0)
    z = torch.randn(3, *f.latent_shape, dtype=torch.float64, requires_grad=True)
    out, trace = f.forward_points(x, z, keep_trace=True)
    general = f(x.expand(3, -1, -1), z)  # per-item coordinates: the gather path
    # 28 / 4 = 7 pixels per cell: the cells' local coordinates agree to float32 rounding (< 1e-6), and
    # the patch path uses the first cell's
    tol = 1e-9 if res == 16 else 1e-5
    torch.testing.assert_close(out, general, rtol=tol, atol=tol)
    grad_out = torch.randn_like(out)
    (expected,) = torch.autograd.grad((general * grad_out).sum(), z)
    torch.testing.assert_close(f.backward_latents(trace, grad_out), expected, rtol=1e-8 + 10 * tol, atol=1e-10 + 10 * tol)
    _, trace1 = f.forward_points(x, f.zero_latents(1).double(), keep_trace=True)  # batch-1 trace
    zeros = f.zero_latents(3).double().requires_grad_(True)
    (expected0,) = torch.autograd.grad((f(x.expand(3, -1, -1), zeros) * grad_out).sum(), zeros)
    torch.testing.assert_close(f.backward_latents(trace1, grad_out), expected0, rtol=1e-8 + 10 * tol, atol=1e-10 + 10 * tol)


def test_grid_standardisation_per_channel_per_position_and_scalar(tmp_path):
    """Spatial functa's standardisations of latent grids (N, s, s, c), kept flat: per channel (vector-
    valued, shared over positions), per position and channel (array-valued), scalar; with gamma."""
    from functa.tasks.latents import Standardizer

    torch.manual_seed(0)
    grids = torch.randn(500, 2, 2, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([0.0, 10.0, -3.0])
    grids[:, 0, 0] += 7.0  # one position is offset in every channel
    flat = grids.reshape(500, -1)
    ch = Standardizer.fit(flat, norm_factor=2.5, channels=3)
    per_channel = grids.reshape(-1, 3)
    torch.testing.assert_close(ch.mean.reshape(4, 3), per_channel.mean(0).expand(4, 3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ch.std.reshape(4, 3), per_channel.std(0).expand(4, 3), rtol=1e-5, atol=1e-5)
    u = ch(flat)
    assert ch.norm_factor == 2.5 and float(u.reshape(-1, 3).std(0).max()) == pytest.approx(1 / 2.5, rel=1e-3)
    torch.testing.assert_close(ch.inverse(u), flat, rtol=1e-5, atol=1e-4)
    pos = Standardizer.fit(flat)  # array-valued: every position and channel its own statistics
    torch.testing.assert_close(pos(flat).mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="grids of 5 channels"):
        Standardizer.fit(flat, channels=5)


def test_transformer_classifier_tokens_positions_and_parameters():
    from functa.tasks.classify import TransformerClassifier, TransformerConfig, count_parameters

    torch.manual_seed(0)
    cfg = TransformerConfig(tokens=16, token_dim=4, num_classes=10, width=32, depth=2, heads=4, dropout=0.0)
    m = TransformerClassifier(cfg).eval()
    z = torch.randn(5, 4, 4, 4)
    logits = m(z)
    assert logits.shape == (5, 10)
    torch.testing.assert_close(m(z.reshape(5, -1)), logits)  # flat grids are the same grids
    swapped = z.clone()
    swapped[:, 0, 0], swapped[:, 3, 3] = z[:, 3, 3], z[:, 0, 0]
    assert not torch.allclose(m(swapped), logits)  # absolute positions: cells are not interchangeable
    with torch.no_grad():
        m.position.zero_()
    torch.testing.assert_close(m(swapped), m(z), rtol=1e-5, atol=1e-5)  # ... only through the embeddings
    w = 32
    expected = (4 + 1) * w + 16 * w + 2 * (4 * (w * w + w) + 2 * 4 * w * w + 4 * w + w + 4 * w) + 2 * w + (w + 1) * 10
    assert count_parameters(m) == expected
    with pytest.raises(ConfigError, match="divisible"):
        TransformerConfig(tokens=4, token_dim=2, num_classes=2, width=30, heads=4)
    with pytest.raises(ValueError, match="16 cells x 4 channels"):
        m(torch.randn(2, 3, 3, 4))


def test_canvas_of_whole_grids_equals_each_grid_on_its_own():
    """A 1-NN canvas of 2 x 3 training grids (8 x 8 pixels each, 2 x 2 pixels per cell): outputs, explicit
    latent gradients and the tiled meta-SGD rates are those of the six grids fitted independently."""
    f = field(out_dim=3).double()
    big = f.canvas((8, 12))
    assert big.latent_shape == (8, 12, 3) and f.latent_shape == (4, 4, 3)
    assert big.layers[0].weight is f.layers[0].weight  # shares the parameters
    z = torch.randn(2, 8, 12, 3, dtype=torch.float64)
    def centres(h, w):  # pixel centres in float64, so that the cells' local points agree exactly
        r, c = (torch.arange(h, dtype=torch.float64) + 0.5) / h, (torch.arange(w, dtype=torch.float64) + 0.5) / w
        return torch.stack(torch.meshgrid(r, c, indexing="ij"), -1).reshape(1, -1, 2)

    x_big, x_small = centres(16, 24), centres(8, 8)
    out = big(x_big, z).reshape(2, 16, 24, 3)
    with torch.no_grad():
        f.inner_lrs_per_cell.raw.copy_(torch.rand_like(f.inner_lrs_per_cell.raw) * 0.1)  # distinct rates per cell
    rates = big.inner_lrs()
    assert rates.shape == (8, 12, 1)
    for i in range(2):
        for j in range(3):
            tile = z[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4]
            expected = f(x_small, tile).reshape(2, 8, 8, 3)
            torch.testing.assert_close(out[:, 8 * i:8 * i + 8, 8 * j:8 * j + 8], expected, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(rates[4 * i:4 * i + 4, 4 * j:4 * j + 4], 6 * f.inner_lrs())  # 6 grids
    # meta-SGD on the canvas (the item's mean loss over all six grids) is meta-SGD on each grid
    from functa.fitting import fit_latents

    target = torch.rand(1, 16 * 24, 3, dtype=torch.float64)
    fitted = fit_latents(big, Batch(x_big, target), 3).latents
    tiles = target.reshape(16, 24, 3)
    for i in range(2):
        for j in range(3):
            tile = tiles[8 * i:8 * i + 8, 8 * j:8 * j + 8].reshape(1, 64, 3)
            torch.testing.assert_close(fitted[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4],
                                       fit_latents(f, Batch(x_small, tile), 3).latents, rtol=1e-9, atol=1e-12)
    zz = z.clone().requires_grad_(True)
    o, trace = big.forward_points(x_big, zz, keep_trace=True)
    g = torch.randn_like(o)
    (expected,) = torch.autograd.grad((big(x_big.expand(2, -1, -1), zz) * g).sum(), zz)  # the gather path
    torch.testing.assert_close(big.backward_latents(trace, g), expected, rtol=1e-9, atol=1e-11)


def test_periodic_input_is_translation_equivariant_and_seamless():
    """Bilinear with the periodic SIREN input: shifting the latent grid by one cell shifts the image by one
    cell (away from the clamped border), and neighbouring pixels across a cell border differ no more than
    within a cell: no seams, unlike 1-NN."""
    torch.manual_seed(0)
    f = field(interpolation="bilinear", periodic_input=True, out_dim=1)
    assert f.config.siren_in_dim == 4 and f.config.translation_equivariant
    big = f.canvas((6, 6))
    z = torch.randn(1, 7, 6, 3) * 0.3
    x = image_coordinates(24, 24)[None]  # 4 pixels per cell
    with torch.no_grad():
        a = big(x, z[:, :6]).reshape(24, 24)
        b = big(x, z[:, 1:]).reshape(24, 24)
    torch.testing.assert_close(a[8:20], b[4:16], rtol=1e-5, atol=1e-5)  # rows 2..4 of cells, one cell apart
    assert not torch.allclose(a[8:20], b[8:20], atol=1e-3)

    def border_jump(g):
        with torch.no_grad():
            img = g.canvas((6, 6))(x, z[:, :6]).reshape(24, 24)
        d = (img[:, 1:] - img[:, :-1]).abs()  # horizontal neighbours; columns 3, 7, ... cross a cell border
        border = d[:, 3::4].mean()
        inside = torch.cat([d[:, c::4] for c in (0, 1, 2)], 1).mean()
        return float(border / inside)

    assert border_jump(f) < 1.5
    assert border_jump(field(out_dim=1)) > 2.0  # 1-NN: every cell is its own field


def test_canvas_and_periodic_input_errors():
    with pytest.raises(ConfigError, match="periodic_input"):
        SpatialConfig(periodic_input=True)  # 1-NN
    with pytest.raises(ConfigError, match="periodic_input"):
        SpatialConfig(interpolation="bilinear", binary_bits=3, periodic_input=True)
    with pytest.raises(ConfigError, match="canvas"):
        field(interpolation="bilinear", binary_bits=3).canvas((8, 8))
    with pytest.raises(ValueError, match="2 cell counts"):
        field().canvas((8,))
