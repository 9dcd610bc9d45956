"""Scenes through the command line: fit on a Blender-layout folder, encode, eval, render a turntable,
novel view synthesis with and without a flow prior, and the errors a user meets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from functa.cli import main
from functa.modalities.cameras import orbit_poses

TINY = ["--preset", "scenes-cpu", "--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "modality.points_per_ray=6", "--set", "modality.views_per_step=2", "--set", "modality.pixels_per_view=16",
        "--set", "modality.encode_views=2", "--set", "modality.encode_pixels=32", "--set", "modality.context_pixels=32",
        "--set", "train.batch_size=2", "--set", "train.eval_items=2", "--set", "train.eval_every=4"]


def _blender_scenes(root: Path, scenes: int = 4, views: int = 5, size: int = 8) -> Path:
    """A Blender-layout folder: root/train|test/<scene>/transforms_train.json + RGBA PNGs."""
    rng = np.random.default_rng(0)
    for s in range(scenes):
        d = root / ("test" if s == scenes - 1 else "train") / f"scene{s}"
        d.mkdir(parents=True)
        poses = orbit_poses(views, 2.0, elevation_deg=20.0 + s)
        frames = []
        for k in range(views):
            rgba = np.concatenate([rng.integers(0, 256, (size, size, 3)), np.full((size, size, 1), 255)], -1)
            Image.fromarray(rgba.astype(np.uint8), "RGBA").save(d / f"r_{k}.png")
            frames.append({"file_path": f"./r_{k}", "transform_matrix": poses[k].tolist()})
        (d / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.9, "near": 1.0, "far": 3.0,
                                                            "frames": frames}))
    return root


@pytest.fixture(scope="module")
def scene_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scenes")
    data = _blender_scenes(tmp / "scenes")
    run = tmp / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--modality", "scene", "--steps", "4", *TINY]) == 0
    return data, run, tmp


def test_fit_records_the_scene_settings(scene_run):
    data, run, _ = scene_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["modality"]["name"] == "scene"
    assert cfg["modality"]["points_per_ray"] == 6 and cfg["modality"]["near"] == 1.0 and cfg["modality"]["far"] == 3.0
    assert cfg["field"]["w0"] == 5.0  # the scene modality's default (paper: SRN cars)
    assert cfg["field"]["out_dim"] == 4 and cfg["field"]["in_dim"] == 3
    final = cfg["training"]["final_eval"]["per_step"]
    assert len(final) == 4 and all(np.isfinite(r["psnr_of_mean_mse"]) for r in final)


def test_encode_eval_render_and_turntable(scene_run, capsys):
    data, run, tmp = scene_run
    fs = tmp / "scenes.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "train"]) == 0
    info = json.loads((fs / "manifest.json").read_text())
    assert info["count"] == 3 and info["header"]["latent_shape"] == [8]
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--split", "test"]) == 0
    assert "psnr_of_mean_mse" in capsys.readouterr().out
    # more context views for this evaluation only
    js = tmp / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--split", "test", "--json", str(js),
                 "--set", "modality.context_views=[0,2]", "--set", "modality.context_pixels=null"]) == 0
    ev = json.loads(js.read_text())
    assert ev["modality_settings"] == {"context_views": [0, 2], "context_pixels": None}
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--set", "modality.views=[1]"]) == 2
    assert "unknown scene modality settings ['views']" in capsys.readouterr().err
    out = tmp / "tt"
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--indices", "0:1", "--turntable", "5",
                 "-o", str(out)]) == 0
    item = out / "item000000"
    assert sorted(p.name for p in item.glob("frame_*.png")) == [f"frame_{k:03d}.png" for k in range(5)]
    assert len(list(item.glob("depth_*.png"))) == 5
    gif = Image.open(item / "turntable.gif")
    assert gif.n_frames == 5 and gif.size == (8, 8)
    assert Image.open(out / "grid.png").size == (8, 8)
    # a preview strip without --turntable; 2x resolution
    assert main(["--quiet", "render", "-m", str(run), "--functaset", str(fs), "--scale", "2", "-o", str(tmp / "r")]) == 0
    strip = Image.open(next((tmp / "r").glob("item000000_*.png")))
    assert strip.size == (4 * 16, 16)
    # turntables by fitting scenes first
    assert main(["--quiet", "render", "-m", str(run), "--data", str(data), "--split", "test", "--turntable", "2",
                 "--no-depth", "-o", str(tmp / "tt2")]) == 0
    assert not list((tmp / "tt2" / "item000000").glob("depth_*.png"))


def test_novel_view_synthesis_with_and_without_a_prior(scene_run, capsys):
    data, run, tmp = scene_run
    fs = tmp / "train.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "train"]) == 0
    flow = tmp / "flow"
    assert main(["--quiet", "flow", "train", str(fs), "-o", str(flow), "--set", "train.steps=5",
                 "--set", "model.layers=1", "--set", "model.hidden=[8]", "--set", "train.batch_size=3"]) == 0
    # samples of the prior are scenes: each drawn from several viewpoints, side by side
    samples = tmp / "samples"
    assert main(["--quiet", "flow", "sample", str(flow), "-o", str(samples), "-n", "2", "--no-neighbours"]) == 0
    grid = Image.open(samples / "sample_grid.png")
    assert grid.size == (2 * (4 * 8 + 2), 8 + 2)  # two strips of 4 views of 8x8, 2 px gaps
    out = tmp / "nvs"
    assert main(["--quiet", "nvs", str(data), "-m", str(run), "-o", str(out), "--prior", str(flow), "--steps", "3",
                 "--context", "0", "--novel", "1,3", "--mask", "left-half", "--pixels", "20"]) == 0
    printed = capsys.readouterr().out
    assert "no_prior: novel views PSNR" in printed and "prior: novel views PSNR" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["novel"] == [1, 3] and metrics["rows"] == ["no_prior", "prior", "ground_truth"]
    assert metrics["no_prior"]["novel_views"]["count"] == 1
    assert metrics["observed_pixels_per_view"] == 20  # of the 32 in the left half
    # one scene: 3 rows of (context + 2 novel views), 8 px each with 2 px gaps
    assert Image.open(out / "nvs_grid.png").size == (3 * 8 + 2 * 2, 3 * 8 + 2 * 2)


def test_nvs_help_and_errors(scene_run, capsys, tmp_path):
    data, run, _ = scene_run
    with pytest.raises(SystemExit) as e:
        main(["nvs", "--help"])
    assert e.value.code == 0 and "novel view synthesis" in capsys.readouterr().out
    assert main(["--quiet", "nvs", str(data), "-m", str(run), "-o", str(tmp_path / "x"), "--novel", "9"]) == 2
    assert "novel view 9 does not exist" in capsys.readouterr().err
    assert main(["--quiet", "nvs", str(data), "-m", str(run), "-o", str(tmp_path / "x"), "--mask", "nose"]) == 2
    assert "unknown mask 'nose'" in capsys.readouterr().err


def test_a_broken_pose_is_refused_naming_the_file(tmp_path, capsys):
    data = _blender_scenes(tmp_path / "bad", scenes=3)
    js = data / "train" / "scene1" / "transforms_train.json"
    meta = json.loads(js.read_text())
    meta["frames"][2]["transform_matrix"][0][0] *= 1.5  # not a rotation any more
    js.write_text(json.dumps(meta))
    assert main(["--quiet", "fit", str(data), "-o", str(tmp_path / "run"), "--modality", "scene", "--steps", "1",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert "transforms_train.json" in err and "frame 2" in err and "Traceback" not in err
    (data / "train" / "scene1" / "r_3.png").unlink()
    meta["frames"][2]["transform_matrix"][0][0] /= 1.5
    js.write_text(json.dumps(meta))
    assert main(["--quiet", "fit", str(data), "-o", str(tmp_path / "run"), "--modality", "scene", "--steps", "1",
                 *TINY]) == 2
    assert "missing frame" in capsys.readouterr().err


def test_turntables_are_for_scenes(tmp_path, capsys):
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(images / f"{i}.png")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(images), "-o", str(run), "--steps", "1", "--set", "field.width=8",
                 "--set", "field.depth=2", "--set", "field.latent_dim=4", "--set", "train.batch_size=2"]) == 0
    assert main(["--quiet", "render", "-m", str(run), "--data", str(images), "--split", "all", "--turntable", "3",
                 "-o", str(tmp_path / "tt")]) == 2
    assert "turntables and novel view synthesis are for scenes" in capsys.readouterr().err


def test_interpolation_turntable(scene_run):
    data, run, tmp = scene_run
    fs = tmp / "interp.functaset"
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs), "--split", "train"]) == 0
    out = tmp / "interp"
    assert main(["--quiet", "interpolate", str(fs), "-m", str(run), "--pair", "0", "2", "--turntable", "4",
                 "-o", str(out)]) == 0
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 4 and gif.size == (8, 8)
    info = json.loads((out / "interpolation.json").read_text())
    assert info["a"] == 0 and info["b"] == 2 and len(info["frame_files"]) == 4


def test_unknown_scene_settings_are_refused_before_reading_data(tmp_path, capsys):
    assert main(["--quiet", "fit", str(tmp_path / "nothing"), "-o", str(tmp_path / "run"), "--modality", "scene",
                 "--set", "modality.pointz_per_ray=3"]) == 2
    err = capsys.readouterr().err
    assert "modality.pointz_per_ray is not a setting of the scene modality" in err and "points_per_ray" in err


def test_build_modelnet_scenes_then_fit_them(tmp_path, capsys):
    """The dataset builder's folders load as scenes and meta-learn (the builder and the loader agree)."""
    vox = np.zeros((6, 8, 8, 8), np.uint8)
    vox[:, 2:6, 2:6, 1:7] = 1
    vox[3:, 3:5, 3:5, :] = 0  # two kinds of shape
    npz = tmp_path / "vox.npz"
    np.savez(npz, voxels=vox, label=np.array([2, 2, 2, 5, 5, 5], np.uint8),
             class_names=np.array(["bathtub", "bed", "chair", "desk", "dresser", "monitor"]))
    out = tmp_path / "scenes"
    assert main(["--quiet", "scenes", "build-modelnet", str(npz), "-o", str(out), "--views", "4", "--size", "8",
                 "--test-fraction", "0.3"]) == 0
    assert "6 scene(s) rendered" in capsys.readouterr().out
    from functa.data import load_dataset

    train, test = load_dataset(out, "train"), load_dataset(out, "test")
    assert len(train) + len(test) == 6 and train.num_views == 4 and train.image_shape == (8, 8)
    assert (train.near, train.far) == (0.8, 2.6) and train.meta["convention"] == "opengl"
    np.testing.assert_allclose(np.linalg.norm(train.poses[..., :3, 3], axis=-1), 1.7, rtol=1e-5)
    assert (train.data < 255).any() and (train.data == 255).any()  # shapes on a white background
    assert main(["--quiet", "fit", str(out), "-o", str(tmp_path / "run"), "--modality", "scene", "--steps", "2",
                 *TINY]) == 0
