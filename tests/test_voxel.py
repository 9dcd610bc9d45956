"""3-D shapes: occupancy metrics, the paper's rescaling augmentation, observation masks, and the
command line end to end (fit with BCE, eval without any PSNR, render at 4x with meshes and PNGs,
compress/decompress a .binvox, corrupt inputs)."""

import json

import numpy as np
import pytest
import torch

from functa.cli import main
from functa.data import DataError, read_binvox, write_binvox
from functa.modalities import OccupancyMetrics, VoxelModality, VoxelRescale, depth_scan_mask, voxel_coordinates


def test_voxel_coordinates_are_cell_centres_of_the_unit_cube():
    c = voxel_coordinates((2, 3, 4))
    assert c.shape == (24, 3)
    assert torch.allclose(c[0], torch.tensor([0.25, 1 / 6, 0.125]))
    assert torch.allclose(c[-1], torch.tensor([0.75, 5 / 6, 0.875]))
    assert torch.allclose(c[1], torch.tensor([0.25, 1 / 6, 0.375]))  # row-major: z fastest


def test_occupancy_metrics_hand_computed():
    target = torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0.0]])[..., None]
    pred = torch.tensor([[0.9, 0.2, 0.7, 0.1, 0, 0, 0, 0.0]])[..., None]  # one hit, one miss, one false alarm
    v = OccupancyMetrics().per_item(pred, target)
    assert float(v["voxel_accuracy"][0]) == pytest.approx(6 / 8) and float(v["iou"][0]) == pytest.approx(1 / 3)
    masked = OccupancyMetrics().per_item(pred, target, torch.tensor([[1, 1, 0, 0, 0, 0, 0, 0.0]])[..., None])
    assert float(masked["voxel_accuracy"][0]) == pytest.approx(0.5) and float(masked["iou"][0]) == pytest.approx(0.5)
    empty = OccupancyMetrics().per_item(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1))
    assert float(empty["iou"][0]) == 1.0  # nothing to find, nothing found
    assert "PSNR" not in OccupancyMetrics().describe({"voxel_accuracy": 0.99, "iou": 0.8})


def test_rescaling_augmentation():
    grid = np.zeros((1, 16, 16, 16), np.uint8)
    grid[0, 4:12, 4:12, 4:12] = 1  # a centred 8^3 cube
    aug = VoxelRescale(seed=3)
    params = aug.parameters(5, copy=1)
    assert params.shape == (5, 3) and params.min() >= 0.75 and params.max() <= 1.25
    assert np.array_equal(params, VoxelRescale(seed=3).parameters(5, copy=1))
    assert not np.array_equal(params, aug.parameters(5, copy=2))
    out = aug.apply(grid, np.array([[1.25, 1.0, 0.75]]))
    # the cube becomes 10 x 8 x 6 voxels, still centred
    xs, ys, zs = np.nonzero(out[0])
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, zs.max() - zs.min() + 1) == (10, 8, 6)
    assert abs(xs.mean() - 7.5) < 0.6 and abs(zs.mean() - 7.5) < 0.6
    assert np.array_equal(aug.apply(grid, np.ones((1, 3))), grid)  # identity scale
    shell = np.zeros((1, 16, 16, 16), np.uint8)
    shell[0, 2:14, 2:14, 2] = 1  # a one-voxel-thick plate stays closed when shrunk
    small = aug.apply(shell, np.array([[0.75, 0.75, 0.75]]))
    plate = small[0].sum(2).astype(bool)
    xs, ys = np.nonzero(plate)
    # voxels 2..13 map to floor((i + 0.5 - 8) * 0.75 + 8) = 3..12: a full 10 x 10 plate, no holes
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 12, 3, 12) and plate.sum() == 100


def test_observation_masks():
    mod = VoxelModality(4, 4, 4)
    grid = np.zeros((2, 4, 4, 4), np.uint8)
    grid[0, 2, :, :] = 1  # a wall at x = 2: the scan from x = 0 sees x <= 2
    feats = mod.to_features(grid)
    half = mod.observation_mask("x-half", feats).reshape(4, 4, 4)
    assert half[:2].all() and not half[2:].any()
    top = mod.observation_mask("top-half", feats).reshape(4, 4, 4)
    assert top[:, :, 2:].all() and not top[:, :, :2].any()
    scan = mod.observation_mask("depth-scan", feats)
    assert scan.shape == (2, 64)
    s0 = scan[0].reshape(4, 4, 4)
    assert s0[:3].all() and not s0[3:].any()
    assert scan[1].all()  # nothing hit: all free space is seen
    assert np.array_equal(depth_scan_mask(grid)[0], s0.numpy())
    assert int(mod.observation_mask("random", feats, 0.25, seed=1).sum()) == 16
    with pytest.raises(ValueError, match="depth-scan"):
        mod.observation_mask("left-half", feats)


def _shapes(path, n=40, size=8):
    """Boxes and crosses of several sizes and positions: two classes, (nearly) all distinct."""
    rng = np.random.default_rng(0)
    grids = np.zeros((n, size, size, size), np.uint8)
    labels = np.arange(n) % 2
    for i in range(n):
        lo, hi = rng.integers(0, 3, 3), rng.integers(5, 9, 3)
        if labels[i] == 0:
            grids[i, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 1
        else:
            grids[i, lo[0] + 2, lo[1]:hi[1], :] = grids[i, :, lo[2] + 2, lo[0]:hi[0]] = 1
    np.savez(path, voxels=grids, label=labels, class_names=np.array(["box", "cross"]))
    return grids


FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "train.batch_size=4", "--set", "train.eval_items=8", "--set", "train.eval_every=5",
        "--set", "train.save_every=5", "--set", "train.warmup_steps=2", "--set", "train.points_per_step=128"]


def test_voxels_end_to_end(tmp_path, capsys):
    grids = _shapes(tmp_path / "shapes.npz")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(tmp_path / "shapes.npz"), "-o", str(run), "--steps", "10", *FAST]) == 0
    out = capsys.readouterr().out
    assert "voxel accuracy" in out and "PSNR" not in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["name"] == "voxel" and cfg["loss"] == "bce" and cfg["field"]["output_offset"] == 0.0
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(tmp_path / "shapes.npz"), "-m", str(run), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["loss"] == "bce" and res["headline"] == "voxel_accuracy"
    last = res["results"]["per_step"][-1]
    assert {"voxel_accuracy", "iou"} <= set(last) and not any("psnr" in k for k in json.dumps(res).split('"'))
    assert 0.5 < last["voxel_accuracy"] <= 1.0
    fs = tmp_path / "train.functaset"
    assert main(["--quiet", "encode", str(tmp_path / "shapes.npz"), "-m", str(run), "-o", str(fs),
                 "--augment", "scale", "--copies", "1"]) == 0
    manifest = json.loads((fs / "manifest.json").read_text())
    assert manifest["columns"] == ["iou", "loss", "voxel_accuracy"] and "voxel_accuracy" in manifest["summary"]
    assert manifest["count"] == 2 * manifest["header"]["source"]["count"]
    renders = tmp_path / "renders"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:2", "--scale", "4",
                 "-o", str(renders)]) == 0
    assert np.load(renders / "renders.npz")["values"].shape == (2, 32, 32, 32)
    assert (renders / "item000000_32x32x32.png").is_file() and (renders / "grid.png").is_file()
    meshes = list(renders.glob("*.obj")) + list(renders.glob("*.ply"))
    assert len(meshes) in (0, 2, 4)  # a mesh pair per item with a surface
    # compression of one shape file, decoded back to a .binvox
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    item = tmp_path / "one.binvox"
    write_binvox(grids[0], item)
    capsys.readouterr()
    assert main(["compress", str(item), "-m", str(codec), "-o", str(tmp_path / "one.fta")]) == 0
    assert "voxel_accuracy" in capsys.readouterr().out
    assert (tmp_path / "one.fta").read_bytes()[13] == VoxelModality.code
    assert main(["decompress", str(tmp_path / "one.fta"), "-m", str(codec), "-o", str(tmp_path / "back.binvox")]) == 0
    assert read_binvox(tmp_path / "back.binvox").shape == (8, 8, 8)
    # corrupt inputs fail cleanly with exit code 2
    bad = tmp_path / "bad.binvox"
    bad.write_bytes(b"#binvox 1\ndim 8 8 8\ntranslate 0 0 0\nscale 1\ndata\n\x01\xff\x01\xff\x01\xff")
    assert main(["compress", str(bad), "-m", str(codec), "-o", str(tmp_path / "bad.fta")]) == 2
    assert "bad.binvox" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["fit", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "r2")]) == 2
    assert "bad.npz" in capsys.readouterr().err


def test_fit_and_encode_stream_from_memory_mapped_shards(tmp_path):
    """A directory of .npy shards is read item by item (never loaded whole) through fit and encode."""
    grids = _shapes(tmp_path / "shapes.npz")
    shards = tmp_path / "shards"
    for split, part in (("train", grids[:32]), ("test", grids[32:])):
        (shards / split).mkdir(parents=True)
        for k in range(0, len(part), 10):
            np.save(shards / split / f"part{k:03d}.npy", part[k:k + 10].astype(bool))
    (shards / "meta.json").write_text(json.dumps({"kind": "voxel"}))
    from functa.data import load_dataset

    ds = load_dataset(shards, "train")
    assert ds.lazy and len(ds) == 32 and ds.meta["kind"] == "voxel"
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(shards), "-o", str(run), "--steps", "4", *FAST]) == 0
    fs = tmp_path / "fs"
    assert main(["--quiet", "encode", str(shards), "-m", str(run), "-o", str(fs), "--batch-size", "6"]) == 0
    manifest = json.loads((fs / "manifest.json").read_text())
    assert manifest["count"] == 32 and manifest["complete"]


def test_single_item_files_are_size_checked_before_reading(tmp_path):
    """A 100-byte .npy declaring a 2^43-voxel grid is refused from its header, without allocating."""
    import io as io_

    header = io_.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (2**15, 2**14, 2**14)})
    hostile = tmp_path / "huge.npy"
    hostile.write_bytes(header.getvalue() + b"\x00" * 32)
    with pytest.raises(DataError, match="huge.npy.*truncated"):
        VoxelModality().read_item(hostile)
    with pytest.raises(DataError, match="no array 'voxels'"):
        np.savez(tmp_path / "other.npz", grid=np.zeros((2, 2, 2), np.uint8))
        VoxelModality().read_item(tmp_path / "other.npz")
