"""3-D medical volumes: NIfTI / npy / npz reading, normalisation round trips, spacing written back, refusals
naming the file, detection apart from voxel grids, and the command line end to end on patches (fit, eval
of stitched whole volumes, encode, render to slices and a scaled NIfTI, compress / decompress a .nii.gz)."""

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from functa.cli import main
from functa.data import DataError, load_dataset
from functa.data.safeio import array_limit
from functa.modalities import VolumeModality, detect_modality
from functa.modalities.volume import (centre_slices, denormalise_volumes, normalise_dataset, normalise_volumes,
                                      scaled_affine)

AFFINE = np.array([[2.0, 0, 0, -30], [0, 3.0, 0, -40], [0, 0, 1.5, 10], [0, 0, 0, 1]])


def _volumes(n, size, seed=0):
    """Smooth blobs in CT-like units (-1000 .. ~1000), all distinct."""
    rng = np.random.default_rng(seed)
    g = (np.arange(size) + 0.5) / size
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    out = []
    for _ in range(n):
        c, r = rng.uniform(0.3, 0.7, 3), rng.uniform(0.15, 0.35)
        d = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / r**2
        out.append(-1000 + 1800 * np.exp(-d) + 100 * np.sin(6 * x + rng.uniform(0, 6)))
    return np.stack(out).astype(np.float32)


def _nii(path, vol, affine=AFFINE, dtype=np.float32):
    nib.save(nib.Nifti1Image(np.asarray(vol, dtype), affine), str(path))
    return path


def test_nifti_npy_npz_reading_keeps_values_and_spacing(tmp_path):
    vol = _volumes(1, 10)[0]
    mod = VolumeModality(4, 4, 4)
    for name in ("a.nii", "a.nii.gz"):
        p = _nii(tmp_path / name, vol)
        assert np.allclose(mod.read_item(p), vol)
        ds = load_dataset(p)
        assert ds.meta["kind"] == "volume" and ds.data.shape == (1, 10, 10, 10)
        assert ds.meta["spacing"] == [2.0, 3.0, 1.5] and np.allclose(ds.meta["affine"], AFFINE)
    np.save(tmp_path / "a.npy", vol)
    np.savez(tmp_path / "b.npz", volumes=vol[None])
    assert np.allclose(mod.read_item(tmp_path / "a.npy"), vol) and np.allclose(mod.read_item(tmp_path / "b.npz"), vol)
    # a folder of NIfTI volumes and an npz of volumes are datasets of the volume modality
    folder = tmp_path / "scans"
    folder.mkdir()
    for i, v in enumerate(_volumes(5, 8, seed=1)):
        _nii(folder / f"s{i}.nii.gz", v)
    ds = load_dataset(folder, "all")
    assert ds.data.shape == (5, 8, 8, 8) and detect_modality(ds) is VolumeModality
    assert load_dataset(folder, "test").data.shape[0] == 1  # tail split
    np.savez(tmp_path / "vols.npz", volumes=(_volumes(6, 8) > 0).astype(np.uint8) * 200)
    assert detect_modality(load_dataset(tmp_path / "vols.npz", "all")) is VolumeModality
    # binary occupancy grids stay with the voxel modality
    np.savez(tmp_path / "vox.npz", voxels=(_volumes(6, 8) > 0).astype(np.uint8))
    assert detect_modality(load_dataset(tmp_path / "vox.npz", "all")).name == "voxel"


def test_normalisation_round_trips_per_dataset_and_per_volume(tmp_path):
    vols = _volumes(4, 8)
    folder = tmp_path / "d"
    folder.mkdir()
    for i, v in enumerate(vols):
        _nii(folder / f"{i}.nii.gz", v)
    ds = load_dataset(folder, "all")
    mod = VolumeModality.from_dataset(ds)  # thesis default: dataset window, min .. 99.99th percentile
    assert mod.normalisation == "dataset" and mod.lo == pytest.approx(vols.min())
    assert mod.hi == pytest.approx(np.percentile(vols, 99.99), rel=1e-5)
    f = mod.to_features(vols)
    assert f.shape == (4, 512, 1) and float(f.min()) == 0.0 and float(f.max()) == 1.0
    back = mod.from_features(f)
    assert np.allclose(back, np.clip(vols, mod.lo, mod.hi), atol=1e-3 * (mod.hi - mod.lo))
    # the window is in the config: a modality rebuilt from it decodes to the same units
    again = VolumeModality(**{k: v for k, v in mod.to_config().items() if k != "name"})
    assert np.allclose(again.from_features(f), back)
    # per volume: each item in [0, 1] by its own min and max; the statistics invert it
    norm, stats = normalise_volumes(vols)
    assert np.allclose(norm.reshape(4, -1).min(1), 0) and np.allclose(norm.reshape(4, -1).max(1), 1)
    assert np.allclose(denormalise_volumes(norm, stats), vols, atol=1e-3)
    nds = normalise_dataset(ds)
    per = VolumeModality.from_dataset(nds, normalisation="volume")
    assert (per.lo, per.hi) == (0.0, 1.0) and np.allclose(nds.meta["volume_stats"], stats)
    assert np.allclose(per.from_features(per.to_features(nds.data)), nds.data, atol=1e-6)
    item = per.read_item(folder / "0.nii.gz")  # read normalised, like the dataset
    assert np.allclose(item, norm[0], atol=1e-6)
    with pytest.raises(ValueError, match="normalised"):
        VolumeModality.from_dataset(ds, normalisation="volume")


def test_spacing_is_written_back_and_scaled_with_the_resolution(tmp_path):
    vol = _volumes(1, 8)[0]
    mod = VolumeModality(8, 8, 8, spacing=[2.0, 3.0, 1.5], affine=AFFINE.tolist(), lo=-1000, hi=1000)
    out = mod.write_item(vol, tmp_path / "x.nii.gz")
    img = nib.load(str(out))
    assert np.allclose(img.header.get_zooms(), (2, 3, 1.5)) and np.allclose(img.affine, AFFINE)
    assert np.allclose(np.asarray(img.dataobj), vol)
    assert np.allclose(mod.read_item(mod.write_item(vol, tmp_path / "x.nii")), vol)
    # rendered at 2x: half the voxel size, same field of view (the grid's centre maps to the same point)
    big = np.repeat(np.repeat(np.repeat(vol, 2, 0), 2, 1), 2, 2)
    paths = mod.save(big[None], tmp_path / "r", ["v"])
    assert paths[0].name == "v.png"
    for plane in ("axial", "coronal", "sagittal"):
        assert (tmp_path / "r" / f"v_{plane}.png").is_file()
    img = nib.load(str(tmp_path / "r" / "v.nii.gz"))
    assert img.shape == (16, 16, 16) and np.allclose(img.header.get_zooms(), (1, 1.5, 0.75))
    centre_old = AFFINE @ np.array([3.5, 3.5, 3.5, 1])
    assert np.allclose(img.affine @ np.array([7.5, 7.5, 7.5, 1]), centre_old)
    assert np.allclose(scaled_affine(AFFINE, (8, 8, 8), (8, 8, 8)), AFFINE)
    s = centre_slices(np.linspace(0, 1, 4 * 5 * 6).reshape(4, 5, 6))
    assert s["sagittal"].shape == (6, 5) and s["coronal"].shape == (6, 4) and s["axial"].shape == (5, 4)


def test_bad_volumes_are_refused_naming_the_file(tmp_path):
    mod = VolumeModality(8, 8, 8)
    bad = tmp_path / "corrupt.nii"
    bad.write_bytes(b"definitely not a NIfTI header" * 20)
    with pytest.raises(DataError, match="corrupt.nii"):
        mod.read_item(bad)
    with pytest.raises(DataError, match="corrupt.nii"):
        load_dataset(bad)
    series = _nii(tmp_path / "fmri.nii.gz", np.random.default_rng(0).normal(size=(8, 8, 8, 3)))
    with pytest.raises(DataError, match=r"fmri\.nii\.gz.*time index"):
        mod.read_item(series)
    assert VolumeModality(8, 8, 8, time_index=2).read_item(series).shape == (8, 8, 8)
    assert load_dataset(series, variable="t=1").data.shape == (1, 8, 8, 8)
    nan = _volumes(1, 8)[0]
    nan[1, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"nan\.nii\.gz.*NaN"):
        mod.read_item(_nii(tmp_path / "nan.nii.gz", nan))
    np.save(tmp_path / "nan.npy", nan)
    with pytest.raises(DataError, match=r"nan\.npy"):
        mod.read_item(tmp_path / "nan.npy")
    with pytest.raises(DataError, match=r"small\.nii\.gz.*smaller than one patch"):
        mod.read_item(_nii(tmp_path / "small.nii.gz", _volumes(1, 4)[0]))
    with pytest.raises(DataError, match="3-D"):
        mod.read_item(_nii(tmp_path / "flat.nii.gz", np.zeros((8, 8))))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _nii(mixed / "a.nii.gz", _volumes(1, 8)[0])
    _nii(mixed / "b.nii.gz", _volumes(1, 9)[0])
    with pytest.raises(DataError, match=r"b\.nii\.gz: volume of shape \(9, 9, 9\)"):
        load_dataset(mixed)
    # a header declaring 2000^3 float32 (32 GB) in a tiny file: refused before any data is read
    raw = bytearray(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)).to_bytes())
    raw[40:48] = np.array([3, 2000, 2000, 2000], "<i2").tobytes()
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    (tmp_path / "huge.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    for name in ("huge.nii", "huge.nii.gz"):
        with pytest.raises(DataError, match=rf"{name}.*more than the limit"):
            mod.read_item(tmp_path / name)
    with array_limit("64G"):  # under a larger limit: what the file can hold refuses it
        with pytest.raises(DataError, match=r"huge\.nii: truncated"):
            mod.read_item(tmp_path / "huge.nii")
        with pytest.raises(DataError, match=r"huge\.nii\.gz.*deflate"):
            mod.read_item(tmp_path / "huge.nii.gz")


FAST = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8", "--set", "field.w0=10",
        "--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.eval_every=4",
        "--set", "train.save_every=4", "--set", "train.warmup_steps=2"]


def test_volumes_end_to_end_on_patches(tmp_path, capsys):
    data = tmp_path / "scans"
    data.mkdir()
    for i, v in enumerate(_volumes(10, 12)):
        _nii(data / f"scan{i:02d}.nii.gz", v)
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "8", "--set", "data.patch=[8,8,8]", *FAST]) == 0
    cfg = json.loads((run / "config.json").read_text())
    m = cfg["modality"]
    assert m["name"] == "volume" and (m["size_x"], m["size_y"], m["size_z"]) == (8, 8, 8)
    assert m["normalisation"] == "dataset" and m["spacing"] == [2.0, 3.0, 1.5] and m["hi"] > m["lo"]
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0
    res = json.loads(js.read_text())["results"]
    assert "whole items" in res["protocol"]  # 12^3 volumes stitched from 8^3 patches
    assert {"mean_psnr", "psnr_of_mean_mse"} <= set(res["per_step"][-1])
    assert res["per_step"][-1]["mean_psnr"] > res["per_step"][0]["mean_psnr"]
    # encode patch-sized volumes (an npz of them), render them at 2x
    small = tmp_path / "small.npz"
    np.savez(small, volumes=_volumes(6, 8, seed=3))
    fs = tmp_path / "s.functaset"
    assert main(["--quiet", "encode", str(small), "-m", str(run), "-o", str(fs), "--split", "all"]) == 0
    out = tmp_path / "renders"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:2", "--scale", "2",
                 "-o", str(out)]) == 0
    img = nib.load(str(out / "item000000_16x16x16.nii.gz"))
    assert img.shape == (16, 16, 16) and np.allclose(img.header.get_zooms(), (1.0, 1.5, 0.75))
    assert (out / "item000000_16x16x16_axial.png").is_file() and (out / "grid.png").is_file()
    # compress one NIfTI volume (cut into patches by the codec) and decode it back to NIfTI
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    item = _nii(tmp_path / "x.nii.gz", _volumes(1, 10, seed=9)[0])
    fta = tmp_path / "x.fta"
    capsys.readouterr()
    assert main(["compress", str(item), "-m", str(codec), "-o", str(fta)]) == 0
    assert "psnr_db" in capsys.readouterr().out
    assert fta.read_bytes()[13] == VolumeModality.code
    back = tmp_path / "y.nii.gz"
    assert main(["decompress", str(fta), "-m", str(codec), "-o", str(back)]) == 0
    img = nib.load(str(back))
    assert img.shape == (10, 10, 10) and np.allclose(img.header.get_zooms(), (2, 3, 1.5))
    for bad, why in ((tmp_path / "cut.nii.gz", "cannot read"), (tmp_path / "flat.nii.gz", "smaller than one patch")):
        if bad.name == "cut.nii.gz":
            bad.write_bytes(item.read_bytes()[:200])  # a truncated gzip stream
        else:
            _nii(bad, np.zeros((10, 10, 2), np.float32))
        capsys.readouterr()
        assert main(["compress", str(bad), "-m", str(codec), "-o", str(tmp_path / "bad.fta")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and why in err, err
        assert not (tmp_path / "bad.fta").exists()
    png = tmp_path / "y.png"  # the three centre slices of the decoded volume, side by side
    assert main(["--quiet", "decompress", str(fta), "-m", str(codec), "-o", str(png)]) == 0
    from PIL import Image

    from functa.modalities.volume import centre_slices

    m = VolumeModality(**{k: v for k, v in json.loads((run / "config.json").read_text())["modality"].items()
                          if k != "name"})
    tiles = centre_slices(m.normalise(np.asarray(img.dataobj)[None])[0])
    shown = np.asarray(Image.open(png))
    assert shown.shape == (10, 3 * 10 + 4)
    np.testing.assert_array_equal(shown[:, :10], tiles["sagittal"])


def test_niivue_cubes_load_as_volumes(shared_data):
    path = shared_data / "mri_ct_volumes_niivue" / "volumes64_ras_uint8.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ds = load_dataset(path, "all")
    assert ds.data.shape == (11, 64, 64, 64) and detect_modality(ds) is VolumeModality
    mod = VolumeModality.from_dataset(ds)
    assert mod.lo == 0.0 and 200 < mod.hi <= 255
    flair = shared_data / "mri_ct_volumes_niivue" / "original" / "FLAIR.nii.gz"
    if flair.is_file():
        vol = VolumeModality(16, 16, 16).read_item(flair)
        assert vol.shape == (124, 160, 140) and np.isfinite(vol).all()
    series = shared_data / "mri_ct_volumes_niivue" / "original" / "pcasl.nii.gz"
    if series.is_file():
        with pytest.raises(DataError, match="pcasl.nii.gz"):
            VolumeModality(16, 16, 16).read_item(series)


def test_per_volume_normalisation_from_the_command_line(tmp_path, monkeypatch, capsys):
    """``--set data.normalisation=item``: training features are each volume's own min..max -> [0, 1],
    the choice is stored, and eval / encode / compress / decompress normalise every input volume by itself."""
    import functa.pipeline as pipeline
    from functa.config import load_config
    from functa.errors import ConfigError

    data = tmp_path / "scans"
    data.mkdir()
    vols = _volumes(8, 8)
    ranges = [(0.0, 1.0), (-1000.0, 3000.0), (5.0, 7.0), (1e4, 1e5)]  # very different intensity ranges
    for i, v in enumerate(vols):
        lo, hi = ranges[i % len(ranges)]
        u = (v - v.min()) / (v.max() - v.min())
        _nii(data / f"scan{i:02d}.nii.gz", lo + u * (hi - lo))
    seen = []
    from functa.modalities import VolumeModality

    sources = VolumeModality.sources

    def spy(self, train_ds, val_ds, *, patches, seed):
        out = sources(self, train_ds, val_ds, patches=patches, seed=seed)
        seen.append(out[0].features(np.arange(len(train_ds))))
        return out

    monkeypatch.setattr(VolumeModality, "sources", spy)
    run = tmp_path / "run"
    cfg = load_config(overrides=["train.steps=2", "data.normalisation=item", *FAST[1::2]])
    pipeline.fit(data, run, cfg, progress=False)
    monkeypatch.undo()
    feats = seen[0].numpy()
    assert len(feats) >= 6
    np.testing.assert_allclose(feats.min(axis=(1, 2)), 0.0, atol=1e-6)  # every training volume spans [0, 1]
    np.testing.assert_allclose(feats.max(axis=(1, 2)), 1.0, atol=1e-6)
    stored = json.loads((run / "config.json").read_text())
    assert stored["modality"]["normalisation"] == "volume" and stored["data"]["normalisation"] == "item"
    assert (stored["modality"]["lo"], stored["modality"]["hi"]) == (0.0, 1.0)
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0
    assert np.isfinite(json.loads(js.read_text())["results"]["per_step"][-1]["mean_psnr"])
    fs = tmp_path / "all.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "all"]) == 0
    codec = tmp_path / "codec"
    assert main(["--quiet", "codec", "build", "-m", str(run), "--functaset", str(fs), "-o", str(codec)]) == 0
    item = _nii(tmp_path / "x.nii.gz", 2e4 + 5e3 * _volumes(1, 8, seed=5)[0] / 1000)  # a range unlike training
    mod = pipeline.load_model(run)[1]
    x = mod.read_item(item)
    assert x.min() == 0.0 and x.max() == 1.0
    fta = tmp_path / "x.fta"
    assert main(["--quiet", "compress", str(item), "-m", str(codec), "-o", str(fta)]) == 0
    back = tmp_path / "y.nii.gz"
    assert main(["--quiet", "decompress", str(fta), "-m", str(codec), "-o", str(back)]) == 0
    y = np.asarray(nib.load(str(back)).dataobj)
    assert y.shape == (8, 8, 8) and y.min() >= 0.0 and y.max() <= 1.0  # normalised intensities
    # the option's name and where it applies
    with pytest.raises(ConfigError, match="data.normalisation=item"):
        load_config(overrides=["modality.normalisation=volume"])
    with pytest.raises(ConfigError, match="normalisation"):
        load_config(overrides=["data.normalisation=patch"])
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    with pytest.raises(ConfigError, match="image modality has no per-item normalisation"):
        pipeline.open_data(images, "all", {"normalisation": "item"})
