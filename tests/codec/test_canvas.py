"""The spatial codec: one latent canvas per item and the causal context entropy model."""

import numpy as np
import pytest
import torch

from functa.codec import CodecConfig, CodecError, ContextConfig, ContextModel, EncodeSettings, FunctaCodec
from functa.codec.context import causal_offsets
from functa.codec.container import unpack, pack
from functa.errors import ConfigError
from functa.fields import SpatialConfig, SpatialSiren
from functa.fitting import Batch, fit_latents
from functa.io import save_base_network
from functa.modalities import get_modality


def smooth_grids(n, cells, c, s, seed=0):
    """Symbol grids ``(n, *cells, c)`` whose neighbouring cells are strongly correlated."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.randn(n, *cells, c, generator=g).cumsum(1).cumsum(2) * 0.3
    walk = walk - walk.mean((1, 2), keepdim=True)
    return (walk * 2 + s / 2).round().clamp(0, s - 1).long()


def test_causal_offsets_come_before_the_cell_in_every_wavefront():
    for k in (1, 2, 3):
        off = causal_offsets(k)
        w = 2 ** torch.arange(k - 1, -1, -1)
        assert len(off) == (3**k - 1) // 2 + k
        assert bool(((off * w).sum(1) < 0).all())  # an earlier wavefront: decodable before the cell
    assert causal_offsets(2).tolist() == [[-1, -1], [-1, 0], [-1, 1], [0, -1], [-2, 0], [0, -2]]


def test_context_model_round_trip_size_and_learning():
    s, c = 16, 3
    train = smooth_grids(300, (8, 8), c, s)
    model = ContextModel(c, s, 2, ContextConfig(steps=300, hidden=(32, 32)))
    untrained = model.bits(train[:20]) / train[:20].numel()
    model.fit(train)
    trained = model.bits(train[:20]) / train[:20].numel()
    assert untrained > 3.0 and trained < 0.75 * untrained  # it learns the neighbours
    # a factorised per-channel histogram cannot use the context
    counts = torch.stack([torch.bincount(train[..., j].reshape(-1), minlength=s) for j in range(c)]).double() + 1
    factorised = float(-(torch.log2(counts / counts.sum(1, keepdim=True))
                         .gather(1, train[:20].reshape(-1, c).t()).sum()) / train[:20].numel())
    assert trained < factorised - 0.3
    grid = smooth_grids(1, (11, 7), c, s, seed=5)[0]  # another shape than in training
    data = model.encode(grid)
    assert torch.equal(model.decode(data, (11, 7)).reshape(11, 7, c), grid)
    assert abs(len(data) * 8 - model.bits(grid)) < 0.05 * model.bits(grid) + 64


def test_context_decoder_rejects_corrupt_and_short_payloads():
    s, c = 8, 2
    model = ContextModel(c, s, 2, ContextConfig(steps=0))
    grid = smooth_grids(1, (6, 6), c, s)[0]
    data = model.encode(grid)
    with pytest.raises(CodecError, match="cannot hold"):
        model.decode(data[:2], (1000, 1000))  # far more cells than the payload can carry: refused up front
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    try:
        out = model.decode(bytes(flipped), (6, 6))
    except CodecError:
        return
    assert not torch.equal(out.reshape(6, 6, c), grid)  # a silent change is at least not the original


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    modality = get_modality("image")(height=8, width=8, channels=3)
    field = SpatialSiren(SpatialConfig(in_dim=2, out_dim=3, width=16, depth=3, grid=2, channels=4, w0=10.0,
                                       interpolation="bilinear", periodic_input=True))
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, size=(48, 8, 8, 3), dtype=np.uint8)
    latents = fit_latents(field, Batch(modality.coordinates()[None], modality.to_features(train)), 3).latents
    return field, modality, latents


def _codec(parts, **kw):
    field, modality, latents = parts
    base_config = {"sha256": "cd" * 32, "modality": modality.to_config(), "run": {"train": {"inner_steps": 3}}}
    return FunctaCodec.build(field, modality, base_config, latents, CodecConfig(**kw))


@pytest.mark.parametrize("entropy", ["per_dimension", "context"])
def test_canvas_round_trip_is_the_render_of_the_coded_grid(parts, entropy):
    codec = _codec(parts, entropy_model=entropy, context=ContextConfig(steps=50))
    assert codec.canvas and codec.latent_dim == 4 and codec.cell_shape == (4, 4)
    item = np.random.default_rng(1).integers(0, 256, size=(13, 21, 3)).astype(np.uint8)
    data = codec.compress(item)
    out = codec.decompress(data)
    assert out.shape == (13, 21, 3) and np.array_equal(codec.decompress(data), out)
    sym = codec.encode_canvas(item)
    assert sym.shape == (4, 6, 4)  # 16 x 24 padded pixels, 4 x 4 per cell
    field = codec.field.canvas((4, 6))
    x = codec.modality.coordinates((16, 24))[None]
    with torch.no_grad():
        img = field(x, codec.quantizer.dequantize(sym)[None]).clamp(0, 1).reshape(16, 24, 3) * 255
    np.testing.assert_allclose(out, img.numpy()[:13, :21], atol=0.6)


def test_canvas_refinement_never_worsens_the_quantised_fit(parts):
    codec = _codec(parts)
    item = np.random.default_rng(2).integers(0, 256, size=(16, 16, 3)).astype(np.uint8)

    def mse(settings):
        rec = codec.decompress(codec.compress(item, settings)).astype(np.float64)
        return float(((rec - item) ** 2).mean())

    assert mse(EncodeSettings(refine_steps=20)) <= mse(EncodeSettings()) + 1e-9


def test_canvas_codec_saves_loads_and_decodes_identically(parts, tmp_path):
    field, modality, _ = parts
    base = tmp_path / "base"
    save_base_network(base, field, modality=modality.to_config(), run={"train": {"inner_steps": 3}})
    from functa.io import load_base_network

    loaded_field, cfg = load_base_network(base)
    codec = FunctaCodec.build(loaded_field, modality, cfg, parts[2], CodecConfig(entropy_model="context",
                                                                                 context=ContextConfig(steps=30)))
    codec.save(tmp_path / "codec", base)
    again = FunctaCodec.load(tmp_path / "codec")
    assert again.canvas and again.codec_id == codec.codec_id
    item = np.random.default_rng(3).integers(0, 256, size=(9, 17, 3)).astype(np.uint8)
    data = codec.compress(item)
    assert np.array_equal(again.decompress(data), codec.decompress(data))


def test_canvas_layout_errors_and_hostile_headers(parts):
    field, modality, latents = parts
    with pytest.raises(ConfigError, match="canvas layout"):
        _codec(parts, entropy_model="context", layout="patches")
    nearest_binary = SpatialSiren(SpatialConfig(in_dim=2, out_dim=3, width=8, depth=2, grid=2, channels=2,
                                                interpolation="bilinear", binary_bits=3))
    base_config = {"sha256": "ef" * 32, "modality": modality.to_config()}
    z = torch.zeros(4, 2, 2, 2)
    with pytest.raises(ConfigError, match="layout 'canvas'"):
        FunctaCodec.build(nearest_binary, modality, base_config, z, CodecConfig(layout="canvas"))
    assert not FunctaCodec.build(nearest_binary, modality, base_config, z, CodecConfig()).canvas  # auto: patches
    codec = _codec(parts)
    header, payload = unpack(codec.compress(np.zeros((8, 8, 3), np.uint8)))
    from dataclasses import replace

    wide = pack(replace(header, shape=(4, 4 * 2000)), payload)  # 2000 cells along an axis
    with pytest.raises(CodecError, match="too large for one latent canvas"):
        codec.decompress(wide, max_output_points=2**30)
    huge = pack(replace(header, shape=(4000, 4000)), payload)
    with pytest.raises(CodecError, match="cannot hold|limit"):
        codec.decompress(huge)


def test_seam_ratio_sees_patch_borders_and_the_canvas_has_none(parts):
    from functa.modalities.image import seam_ratio

    rng = np.random.default_rng(4)
    item = rng.random((24, 24, 3))
    offsets = np.kron(rng.normal(0, 0.1, (3, 3, 1)), np.ones((8, 8, 1)))  # one colour shift per 8x8 patch
    assert seam_ratio(item + offsets, item, (8, 8)) > 5
    assert seam_ratio(item + 0.05 * np.sin(np.arange(24) / 3)[:, None, None], item, (8, 8)) == pytest.approx(1, abs=0.1)
    # compare() reports it over the modality's grid (a codec's patch) for larger images only
    modality = parts[1]
    assert "seam_ratio" not in modality.compare(item[:8, :8] * 255, item[:8, :8] * 255)
    shifted = np.clip((item + offsets) * 200, 0, 255)
    assert modality.compare(shifted, item * 200)["seam_ratio"] > 3


def test_command_line_canvas_codec_from_whole_training_items(tmp_path, capsys):
    """``codec build --data`` on a canvas codec fits one canvas per training item (not per patch), the context
    model learns from them, and compress / decompress round-trip an image of another size."""
    import json

    from PIL import Image

    from functa.cli import main

    data = tmp_path / "photos" / "train"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(data / f"{i}.png")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(tmp_path / "photos"), "-o", str(run), "--field", "spatial", "--steps", "2",
                 "--set", "field.grid=2", "--set", "field.channels=3", "--set", "field.width=8",
                 "--set", "field.depth=3", "--set", "field.interpolation=bilinear", "--set", "field.periodic_input=true",
                 "--set", "data.patch=[8,8]", "--set", "train.batch_size=2", "--set", "train.eval_items=2"]) == 0
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--data", str(tmp_path / "photos"), "--entropy", "context",
                 "--context-steps", "20", "-o", str(codec)]) == 0
    meta = json.loads((codec / "codec.json").read_text())
    assert meta["built_from"]["layout"] == "canvas" and meta["built_from"]["count"] == 6  # six canvases
    assert meta["stats"]["layout"] == "canvas"
    img = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 255, (13, 30, 3), dtype=np.uint8)).save(img)
    capsys.readouterr()
    assert main(["compress", str(img), "-m", str(codec), "-o", str(tmp_path / "big.fta")]) == 0
    assert "latent cell(s)" in capsys.readouterr().out  # 4 x 8 cells of 4 x 4 pixels
    assert main(["--quiet", "decompress", str(tmp_path / "big.fta"), "-m", str(codec), "-o", str(tmp_path / "out.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "out.png")).shape == (13, 30, 3)


def test_layout_auto_needs_centred_points_and_old_codecs_stay_patch_codecs(parts, tmp_path):
    """A modality whose points are not cell-aligned centres (corners) cannot make a canvas, so auto codes
    patches; a codec.json written before the canvas layout existed (no ``layout`` key) loads as patches."""
    import json

    field, _, latents = parts
    corners = get_modality("image")(height=8, width=8, channels=3, coordinates_convention="corners")
    base_config = {"sha256": "cd" * 32, "modality": corners.to_config()}
    assert not FunctaCodec.build(field, corners, base_config, latents, CodecConfig()).canvas
    with pytest.raises(ConfigError, match="cell-aligned centres"):
        FunctaCodec.build(field, corners, base_config, latents, CodecConfig(layout="canvas"))
    modality = parts[1]
    base = tmp_path / "base"
    save_base_network(base, field, modality=modality.to_config(), run={"train": {"inner_steps": 3}})
    from functa.io import load_base_network

    loaded, cfg = load_base_network(base)
    old = FunctaCodec.build(loaded, modality, cfg, latents, CodecConfig(layout="patches"))
    old.save(tmp_path / "old", base)
    meta = json.loads((tmp_path / "old" / "codec.json").read_text())
    del meta["config"]["layout"], meta["config"]["context"]
    (tmp_path / "old" / "codec.json").write_text(json.dumps(meta))
    again = FunctaCodec.load(tmp_path / "old")
    assert not again.canvas and again.codec_id == old.codec_id
