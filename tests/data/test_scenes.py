"""Posed multi-view scene loaders: Blender transforms json, SRN folders, scene npz; splits, cameras, errors."""

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import functa.data.scenes as scenes_mod
from functa.data import (
    DataError,
    SceneDataset,
    array_limit,
    load_blender_scenes,
    load_dataset,
    load_scene_npz,
    load_srn_scenes,
    sniff_format,
)
from functa.data import __all__ as data_all

W, H = 4, 3
ANGLE = 0.6911112070083618
FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def rigid(theta: float, t=(0.0, 0.0, 4.0)) -> np.ndarray:
    """A camera-to-world rigid transform: rotation by ``theta`` about y, then translation ``t``."""
    c, s = math.cos(theta), math.sin(theta)
    m = np.eye(4)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[:3, 3] = t
    return m


def rgba_view(seed: int, w: int = W, h: int = H) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    a[0, 0] = (200, 100, 0, 128)
    return a


def on_white(rgba: np.ndarray) -> np.ndarray:
    """The reference: round(255 * (rgb/255 * a/255 + (1 - a/255)))."""
    rgb, a = rgba[..., :3] / 255.0, rgba[..., 3:4] / 255.0
    return np.round(255 * (rgb * a + (1 - a))).astype(np.uint8)


def write_blender(d: Path, n_views=2, *, seed=0, size=(W, H), json_name="transforms_train.json", extra=None,
                  poses=None, suffix="", ext=".png", mode="RGBA", subdir="train", angle=ANGLE):
    """A Blender scene in ``d``; returns the RGBA views and poses written."""
    (d / subdir).mkdir(parents=True, exist_ok=True)
    frames, views = [], []
    poses = [rigid(0.3 * i + seed) for i in range(n_views)] if poses is None else poses
    for i in range(n_views):
        rgba = rgba_view(seed * 100 + i, *size)
        views.append(rgba)
        Image.fromarray(rgba, "RGBA").convert(mode).save(d / subdir / f"r_{i}{ext}")
        frames.append({"file_path": f"./{subdir}/r_{i}{suffix}", "transform_matrix": np.asarray(poses[i]).tolist()})
    doc = {"camera_angle_x": angle, "frames": frames, **(extra or {})}
    (d / json_name).write_text(json.dumps(doc))
    return np.stack(views), np.stack(poses)


def is_test(name: str, fraction: float) -> bool:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little") % 1000 < round(1000 * fraction)


def test_public_api():
    assert {"SceneDataset", "load_blender_scenes", "load_srn_scenes", "load_scene_npz"} <= set(data_all)


# ------------------------------------------------------------------------------------------ Blender


@pytest.fixture
def split_root(tmp_path):
    root = tmp_path / "scenes"
    near_far = {"near": 2.0, "far": 6.0}
    written = {n: write_blender(root / s / n, seed=k, extra=near_far)
               for k, (s, n) in enumerate([("train", "b"), ("train", "a"), ("test", "c")])}
    return root, written


def test_blender_split_folders(split_root):
    root, written = split_root
    ds = load_blender_scenes(root, "train", progress=False)
    assert isinstance(ds, SceneDataset)
    assert ds.data.shape == (2, 2, H, W, 3) and ds.data.dtype == np.uint8
    assert ds.meta["names"] == ["a", "b"]  # sorted by name
    views_a, poses_a = written["a"]
    np.testing.assert_array_equal(ds.data[0], on_white(views_a))
    # the known pixel (200, 100, 0, a=128): 200*128/255 + 127 = 227.4, 100*128/255 + 127 = 177.2, 127
    assert ds.data[0, 0, 0, 0].tolist() == [227, 177, 127]
    np.testing.assert_allclose(ds.poses[0], poses_a, atol=1e-6)
    np.testing.assert_allclose(ds.focal, 0.5 * W / math.tan(0.5 * ANGLE), rtol=1e-6)
    assert ds.focal.shape == (2, 2)
    assert (ds.near, ds.far) == (2.0, 6.0)
    assert ds.meta["near_far"] == "dataset" and ds.meta["convention"] == "opengl"
    assert ds.meta["kind"] == "scene" and ds.meta["format"] == "blender-scenes" and ds.meta["split"] == "train"
    assert ds.meta["split_rule"] == "folders"

    test = load_blender_scenes(root, "test", progress=False)
    assert test.meta["names"] == ["c"]
    np.testing.assert_array_equal(test.data[0], on_white(written["c"][0]))
    assert load_blender_scenes(root, "all", progress=False).meta["names"] == ["a", "b", "c"]
    limited = load_blender_scenes(root, "train", limit=1, progress=False)
    assert limited.meta["names"] == ["a"] and len(limited) == 1

    over = load_blender_scenes(root, "train", near=1.0, far=9.0, progress=False)
    assert (over.near, over.far, over.meta["near_far"]) == (1.0, 9.0, "argument")


def test_blender_view_order_and_focal_per_file(tmp_path):
    d = tmp_path / "scene"
    _, p_train = write_blender(d, 1, subdir="train", json_name="transforms_train.json", seed=1)
    _, p_test = write_blender(d, 1, subdir="test", json_name="transforms_test.json", seed=2, angle=1.0)
    _, p_val = write_blender(d, 1, subdir="val", json_name="transforms_val.json", seed=3, angle=0.5)
    ds = load_blender_scenes(d, "train", progress=False)
    np.testing.assert_allclose(ds.poses[0], np.concatenate([p_train, p_val, p_test]), atol=1e-6)
    want = [0.5 * W / math.tan(0.5 * a) for a in (ANGLE, 0.5, 1.0)]
    np.testing.assert_allclose(ds.focal[0], want, rtol=1e-6)
    # no near/far stored: the default from the camera distances (all at 4 from the origin)
    assert ds.meta["near_far"] == "default"
    assert ds.near == pytest.approx(2.0) and ds.far == pytest.approx(6.0)


def test_blender_hashed_split(tmp_path):
    names = [f"scene{i:02d}" for i in range(12)]
    for k, n in enumerate(names):
        write_blender(tmp_path / n, 1, seed=k, size=(2, 2))
    expect_test = [n for n in names if is_test(n, 0.5)]
    expect_train = [n for n in names if not is_test(n, 0.5)]
    assert expect_test and expect_train  # the fixture exercises both sides
    train = load_blender_scenes(tmp_path, "train", test_fraction=0.5, progress=False)
    test = load_blender_scenes(tmp_path, "test", test_fraction=0.5, progress=False)
    assert train.meta["names"] == expect_train and test.meta["names"] == expect_test
    assert train.meta["split_rule"] == "hash"
    assert load_blender_scenes(tmp_path, "all", progress=False).meta["names"] == names
    assert load_blender_scenes(tmp_path, "test", test_fraction=0.5, limit=1, progress=False).meta["names"] == expect_test[:1]


def test_blender_single_scene_root_every_split(tmp_path):
    d = tmp_path / "lego"
    views, _ = write_blender(d, 3)
    for split in ("train", "test", "all"):
        ds = load_blender_scenes(d, split, progress=False)
        assert ds.meta["names"] == ["lego"] and ds.meta["split_rule"] == "single" and ds.meta["split"] == split
        np.testing.assert_array_equal(ds.data[0], on_white(views))


def test_blender_plain_transforms_json_and_jpg_and_gray(tmp_path):
    d = tmp_path / "s"
    write_blender(d, 2, json_name="transforms.json", ext=".jpg", mode="RGB")  # "./train/r_0" -> r_0.jpg
    for i in range(2):  # uniform colours survive JPEG (almost) exactly
        Image.new("RGB", (W, H), (10, 200, 90)).save(d / "train" / f"r_{i}.jpg", quality=100)
    ds = load_blender_scenes(d, "train", progress=False)
    assert ds.data.shape == (1, 2, H, W, 3)
    assert np.abs(ds.data.astype(int) - [10, 200, 90]).max() <= 2

    g = tmp_path / "g"
    write_blender(g, 1, suffix=".png", mode="LA")  # explicit suffix; grey + alpha expanded to RGB
    la = np.asarray(Image.open(g / "train" / "r_0.png"))
    ds = load_blender_scenes(g, "train", progress=False)
    lum, a = la[..., 0:1] / 255.0, la[..., 1:2] / 255.0
    np.testing.assert_array_equal(ds.data[0, 0], np.round(255 * (np.repeat(lum, 3, -1) * a + 1 - a)).astype(np.uint8))


def test_blender_opencv_json_converted(tmp_path):
    d = tmp_path / "s"
    _, poses = write_blender(d, 2, extra={"camera_convention": "opencv"})
    ds = load_blender_scenes(d, "train", progress=False)
    np.testing.assert_allclose(ds.poses[0], poses @ FLIP, atol=1e-6)
    assert ds.meta["convention"] == "opencv"
    # the argument is used when the json has no convention
    e = tmp_path / "e"
    _, poses = write_blender(e, 1)
    ds = load_blender_scenes(e, "train", convention="opencv", progress=False)
    np.testing.assert_allclose(ds.poses[0], poses @ FLIP, atol=1e-6)


# ---------------------------------------------------------------------------------- Blender errors


def test_missing_frame(tmp_path):
    d = tmp_path / "s"
    write_blender(d, 2)
    (d / "train" / "r_1.png").unlink()
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 1: missing frame './train/r_1'"):
        load_blender_scenes(d, "train", progress=False)


def test_non_orthonormal_rotation(tmp_path):
    bad = rigid(0.2)
    bad[:3, :3] *= 1.5
    d = tmp_path / "s"
    write_blender(d, 3, poses=[rigid(0), bad, rigid(0.4)])
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 1: the pose is not a camera-to-world rigid"):
        load_blender_scenes(d, "train", progress=False)
    reflect = rigid(0.1) @ np.diag([1.0, 1.0, -1.0, 1.0])
    write_blender(d, 2, poses=[reflect, rigid(0.1)])
    with pytest.raises(DataError, match=r"frame 0: .*det R = -1"):
        load_blender_scenes(d, "train", progress=False)


def test_mismatched_sizes_and_view_counts(tmp_path):
    write_blender(tmp_path / "train" / "a", 2)
    write_blender(tmp_path / "train" / "b", 2, size=(5, 3))
    with pytest.raises(DataError, match=r"scene 'b' view 0 is 5x3, expected 4x3"):
        load_blender_scenes(tmp_path, "train", progress=False)
    write_blender(tmp_path / "train" / "b", 3)
    with pytest.raises(DataError, match=r"transforms_train\.json: scene 'b' has 3 views, expected 2 \(as scene 'a'\)"):
        load_blender_scenes(tmp_path, "train", progress=False)


def test_conflicting_conventions(tmp_path):
    d = tmp_path / "s"
    write_blender(d, 1, extra={"camera_convention": "opencv"})
    with pytest.raises(DataError, match=r"transforms_train\.json: the camera convention 'opencv' .* conflicts with "
                                        r"the convention argument 'opengl'"):
        load_blender_scenes(d, "train", convention="opengl", progress=False)
    with pytest.raises(DataError, match="unknown camera convention 'blender'"):
        load_blender_scenes(d, "train", convention="blender", progress=False)
    write_blender(tmp_path / "m" / "train" / "a", 1)
    write_blender(tmp_path / "m" / "train" / "b", 1, extra={"camera_convention": "opencv"})
    with pytest.raises(DataError, match=r"b/transforms_train\.json: camera convention 'opencv' differs from 'opengl'"):
        load_blender_scenes(tmp_path / "m", "train", progress=False)


def test_near_far_must_agree(tmp_path):
    write_blender(tmp_path / "train" / "a", 1, extra={"near": 2.0, "far": 6.0})
    write_blender(tmp_path / "train" / "b", 1, extra={"near": 1.0, "far": 6.0})
    with pytest.raises(DataError, match=r"b/transforms_train\.json: stored near 1 differs from 2"):
        load_blender_scenes(tmp_path, "train", progress=False)
    ds = load_blender_scenes(tmp_path, "train", near=0.5, progress=False)  # the argument settles it
    assert (ds.near, ds.far, ds.meta["near_far"]) == (0.5, 6.0, "argument")


def test_oversize_and_malformed_json(tmp_path, monkeypatch):
    d = tmp_path / "s"
    write_blender(d, 1)
    monkeypatch.setattr(scenes_mod, "JSON_MAX_BYTES", 50)
    with pytest.raises(DataError, match=r"transforms_train\.json: JSON file of \d+ bytes is larger than the limit of 50"):
        load_blender_scenes(d, "train", progress=False)
    monkeypatch.undo()
    (d / "transforms_train.json").write_text('{"camera_angle_x": 0.5, "frames": [')
    with pytest.raises(DataError, match=r"transforms_train\.json: malformed JSON"):
        load_blender_scenes(d, "train", progress=False)
    (d / "transforms_train.json").write_text(json.dumps({"frames": []}))
    with pytest.raises(DataError, match=r"transforms_train\.json: no 'camera_angle_x'"):
        load_blender_scenes(d, "train", progress=False)
    frame = {"file_path": "./train/r_0", "transform_matrix": [[1, 0, 0]]}
    (d / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.5, "frames": [frame]}))
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 0: 'transform_matrix' must be a 4x4"):
        load_blender_scenes(d, "train", progress=False)
    good = {**frame, "transform_matrix": rigid(0).tolist()}
    m = rigid(0).tolist()
    m[0][3] = "x"
    (d / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.5,
                                                         "frames": [good, {**frame, "transform_matrix": m}]}))
    with pytest.raises(DataError, match=r"frame 1: 'transform_matrix' must be a 4x4"):
        load_blender_scenes(d, "train", progress=False)
    text = json.dumps({"camera_angle_x": 0.5, "frames": [good]})
    (d / "transforms_train.json").write_text(text.replace("4.0", "1e999"))
    with pytest.raises(DataError, match=r"frame 0: 'transform_matrix' holds non-finite numbers"):
        load_blender_scenes(d, "train", progress=False)
    (d / "transforms_train.json").write_text(text.replace("4.0", "NaN"))
    with pytest.raises(DataError, match=r"malformed JSON .*non-finite number NaN"):
        load_blender_scenes(d, "train", progress=False)


def test_decoded_size_over_limit_checked_before_decoding(tmp_path, monkeypatch):
    write_blender(tmp_path / "s", 2)
    decoded = []
    monkeypatch.setattr(scenes_mod, "_decode_frame", lambda *a: decoded.append(a))
    with array_limit(2 * H * W * 3 - 1), pytest.raises(DataError, match=r"1 scenes x 2 views of 4x3 RGB needs 72 bytes"):
        load_blender_scenes(tmp_path / "s", "train", progress=False)
    assert decoded == []


def test_cameras_at_origin_need_bounds(tmp_path):
    write_blender(tmp_path / "s", 1, poses=[np.eye(4)])
    with pytest.raises(DataError, match=r"transforms_train\.json: no ray bounds stored and none derivable"):
        load_blender_scenes(tmp_path / "s", "train", progress=False)
    ds = load_blender_scenes(tmp_path / "s", "train", near=0.1, far=2.0, progress=False)
    assert (ds.near, ds.far) == (0.1, 2.0)


def test_no_scenes_for_split(tmp_path):
    write_blender(tmp_path / "train" / "a", 1)
    with pytest.raises(DataError, match=r"no Blender scenes found for split 'test'"):
        load_blender_scenes(tmp_path, "test", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no Blender scenes found for split 'train'"):
        load_blender_scenes(tmp_path / "empty", "train", progress=False)


# ---------------------------------------------------------------------------------------------- SRN


def write_srn(d: Path, poses, *, size=(W, H), intrinsics="50. 2. 1.5 0.\n0. 0. 0.\n1.\n3 4\n", seed=0):
    (d / "rgb").mkdir(parents=True)
    (d / "pose").mkdir()
    (d / "intrinsics.txt").write_text(intrinsics)
    views = []
    for i, p in enumerate(poses):
        rgb = np.random.default_rng(seed + i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        views.append(rgb)
        Image.fromarray(rgb).save(d / "rgb" / f"{i:06d}.png")
        (d / "pose" / f"{i:06d}.txt").write_text(" ".join(f"{x:.17g}" for x in np.asarray(p).reshape(-1)))
    return np.stack(views)


def test_srn_scenes(tmp_path):
    # an OpenCV camera at (0, 0, -2) looking down +z (at the origin), +y down
    cv = np.eye(4)
    cv[:3, 3] = (0, 0, -2)
    views = write_srn(tmp_path / "train" / "car1", [cv, rigid(0.5, (1, 0, 1))])
    write_srn(tmp_path / "test" / "car2", [cv, cv])
    ds = load_srn_scenes(tmp_path, "train", progress=False)
    assert ds.meta["names"] == ["car1"] and ds.meta["format"] == "srn-scenes"
    np.testing.assert_array_equal(ds.data[0], views)
    # OpenGL: the camera looks down -z, so its z axis column is negated (and +y flips to up)
    want = np.array([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, -2], [0, 0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(ds.poses[0, 0], want)
    np.testing.assert_allclose(ds.poses[0, 1], rigid(0.5, (1, 0, 1)) @ FLIP, atol=1e-6)
    np.testing.assert_array_equal(ds.focal, [[50.0, 50.0]])
    assert ds.meta["convention"] == "opencv" and ds.meta["near_far"] == "default"
    assert ds.near == pytest.approx(0.5 * math.sqrt(2)) and ds.far == pytest.approx(1.5 * 2)
    assert load_srn_scenes(tmp_path, "all", near=0.8, far=1.8, progress=False).meta["names"] == ["car1", "car2"]
    with pytest.raises(DataError, match=r"camera convention 'opencv' .* conflicts with the convention argument 'opengl'"):
        load_srn_scenes(tmp_path, "train", convention="opengl", progress=False)


def test_srn_focal_rescaled_and_missing_frame(tmp_path):
    d = tmp_path / "s"
    write_srn(d, [np.eye(4) @ rigid(0.1)], size=(8, 6))  # intrinsics for 4x3 images, views stored at 8x6
    ds = load_srn_scenes(d, "test", progress=False)
    assert ds.meta["names"] == ["s"] and ds.focal[0, 0] == pytest.approx(100.0)
    (d / "pose" / "000007.txt").write_text(" ".join(["0"] * 16))
    with pytest.raises(DataError, match=r"000007\.txt: missing frame '000007'"):
        load_srn_scenes(d, "train", progress=False)
    (d / "pose" / "000007.txt").unlink()
    (d / "pose" / "000000.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"000000\.txt: expected 16 numbers"):
        load_srn_scenes(d, "train", progress=False)
    (d / "pose" / "000000.txt").write_text("1 " * (1 << 20))
    with pytest.raises(DataError, match=r"000000\.txt: text file of \d+ bytes is larger than the limit"):
        load_srn_scenes(d, "train", progress=False)


# ---------------------------------------------------------------------------------------------- npz


def write_npz(path: Path, **arrays):
    np.savez(path, **arrays)
    return path


def test_scene_npz_single(tmp_path):
    rgba = np.stack([rgba_view(i) for i in range(3)])
    poses = np.stack([rigid(0.2 * i) for i in range(3)]).astype(np.float32)
    p = write_npz(tmp_path / "one.npz", images=rgba, poses=poses, focal=np.float32(7.5),
                  convention=np.array("opencv"), near=np.float32(1.0), far=np.float64(5.0))
    for split in ("train", "test"):
        ds = load_scene_npz(p, split)
        assert ds.data.shape == (1, 3, H, W, 3) and ds.meta["names"] == ["one"]
        np.testing.assert_array_equal(ds.data[0], on_white(rgba))
        np.testing.assert_allclose(ds.poses[0], poses @ FLIP.astype(np.float32), atol=1e-6)
        np.testing.assert_array_equal(ds.focal, np.full((1, 3), 7.5))
        assert (ds.near, ds.far, ds.meta["near_far"], ds.meta["convention"]) == (1.0, 5.0, "dataset", "opencv")
    with pytest.raises(DataError, match="conflicts with the convention argument 'opengl'"):
        load_scene_npz(p, "train", convention="opengl")

    bare = write_npz(tmp_path / "bare.npz", images=rgba[..., :3], poses=poses, focal=np.full(3, 9.0))
    with pytest.raises(DataError, match=r"bare\.npz: the camera convention cannot be determined: add a 'convention' "
                                        r"array \('opengl' or 'opencv'\) or pass data\.camera_convention$"):
        load_scene_npz(bare, "train")
    ds = load_scene_npz(bare, "train", convention="opengl")
    np.testing.assert_array_equal(ds.data[0], rgba[..., :3])
    np.testing.assert_allclose(ds.poses[0], poses)
    assert ds.meta["near_far"] == "default" and ds.focal.tolist() == [[9.0, 9.0, 9.0]]
    (tmp_path / "transforms_train.json").write_text("{}")  # a NeRF Blender export beside it: OpenGL
    assert load_scene_npz(bare, "train").meta["convention"] == "opengl"


def test_scene_npz_multi_hashed(tmp_path):
    s, v = 10, 2
    images = np.stack([np.full((v, 2, 2, 3), 10 * i, np.uint8) for i in range(s)])
    poses = np.broadcast_to(rigid(0.1), (s, v, 4, 4)).astype(np.float32)
    p = write_npz(tmp_path / "many.npz", images=images, poses=poses, focal=np.arange(1, s + 1, dtype=np.float32),
                  convention=np.array("opengl"))
    test = load_scene_npz(p, "test", test_fraction=0.5)
    want = [i for i in range(s) if is_test(str(i), 0.5)]
    assert 0 < len(want) < s
    assert test.meta["names"] == [str(i) for i in want] and test.meta["split_rule"] == "hash"
    np.testing.assert_array_equal(test.data[:, 0, 0, 0, 0], [10 * i for i in want])
    np.testing.assert_array_equal(test.focal[:, 1], [i + 1 for i in want])
    train = load_scene_npz(p, "train", test_fraction=0.5, limit=2)
    assert train.meta["names"] == [str(i) for i in range(s) if not is_test(str(i), 0.5)][:2]
    names = np.array([f"obj{i}" for i in range(s)])
    q = write_npz(tmp_path / "named.npz", images=images, poses=poses, focal=np.float32(3), names=names,
                  convention=np.array("opengl"))
    assert load_scene_npz(q, "test", test_fraction=0.5).meta["names"] == [n for n in names if is_test(n, 0.5)]
    assert load_scene_npz(q, "all").meta["names"] == names.tolist()
    one = write_npz(tmp_path / "one.npz", images=images[:1], poses=poses[:1], focal=np.float32(3), names=names[:1],
                    convention=np.array("opengl"))
    for split in ("train", "test"):  # (1, V, ...) is one scene: every split
        assert load_scene_npz(one, split).meta["names"] == ["obj0"]


def test_scene_npz_bad_layouts_and_limit(tmp_path):
    poses = np.stack([rigid(0.0)] * 2).astype(np.float32)
    p = write_npz(tmp_path / "a.npz", images=np.zeros((2, 8, 8, 4), np.uint8), poses=poses, focal=np.float32(3),
                  convention=np.array("opengl"))
    with array_limit(2 * 8 * 8 * 4 - 1), pytest.raises(DataError, match=r"a\.npz: array 'images': uint8 \(2, 8, 8, 4\) "
                                                                        r"needs 512 bytes, more than the limit"):
        load_scene_npz(p, "train")
    bad = write_npz(tmp_path / "b.npz", images=np.zeros((2, 8, 8, 2), np.uint8), poses=poses, focal=np.float32(3))
    with pytest.raises(DataError, match=r"b\.npz: array 'images' must be uint8"):
        load_scene_npz(bad, "train")
    bad = write_npz(tmp_path / "c.npz", images=np.zeros((2, 8, 8, 3), np.uint8), poses=poses[:1], focal=np.float32(3))
    with pytest.raises(DataError, match=r"c\.npz: array 'poses' must be float \(2, 4, 4\)"):
        load_scene_npz(bad, "train")
    skew = poses.copy()
    skew[1, 0, 1] = 0.5
    bad = write_npz(tmp_path / "d.npz", images=np.zeros((2, 8, 8, 3), np.uint8), poses=skew, focal=np.float32(3),
                    convention=np.array("opengl"))
    with pytest.raises(DataError, match=r"d\.npz: array 'poses' scene 0 view 1: the pose is not a camera-to-world"):
        load_scene_npz(bad, "train")
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as zf:  # never np.load: an object member is refused
        zf.writestr("images.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
                    .ljust(128, b" ")[:127] + b"\n")
        zf.writestr("poses.npy", b"")
        zf.writestr("focal.npy", b"")
    with pytest.raises(DataError, match=r"pickled\.npz: array .images.: holds Python objects"):
        load_scene_npz(tmp_path / "pickled.npz", "train")


def test_lego_npz(shared_data):
    path = shared_data / "nerf_synthetic_lego" / "lego_100.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    ds = load_dataset(path, "train")
    assert isinstance(ds, SceneDataset) and ds.meta["format"] == "scene-npz"
    assert ds.data.shape == (1, 100, 100, 100, 3) and ds.poses.shape == (1, 100, 4, 4)
    assert ds.focal[0, 0] == pytest.approx(0.5 * 100 / math.tan(0.5 * 0.6911112070083618), rel=1e-5)
    assert ds.meta["convention"] == "opengl" and ds.meta["names"] == ["lego_100"]
    assert ds.data[0, 0, 0, 0].tolist() == [255, 255, 255]  # transparent background on white
    dist = np.linalg.norm(ds.poses[0, :, :3, 3], axis=1)
    np.testing.assert_allclose(dist, 4.031, atol=0.01)
    assert len(load_dataset(path, "test")) == 1


# ---------------------------------------------------------------------------------------- dispatch


def test_sniff_and_load_dataset_dispatch(tmp_path):
    blender = tmp_path / "blender"
    write_blender(blender / "test" / "x", 1, extra={"camera_convention": "opencv"})
    write_blender(tmp_path / "hashed" / "y", 1)
    write_blender(tmp_path / "single", 1)
    srn = tmp_path / "srn"
    write_srn(srn / "car", [rigid(0.3)])
    (tmp_path / "npz").mkdir()
    npz = write_npz(tmp_path / "npz" / "s.npz", images=np.zeros((1, 2, 2, 3), np.uint8),
                    poses=rigid(0.0)[None].astype(np.float32), focal=np.float32(2))
    assert sniff_format(blender) == "blender-scenes"  # transforms json in test/<scene>/
    assert sniff_format(tmp_path / "hashed") == "blender-scenes"  # in a child
    assert sniff_format(tmp_path / "single") == "blender-scenes"  # in the root, though it holds images too
    assert sniff_format(tmp_path / "single" / "train") == "image-folder"
    assert sniff_format(srn) == "srn-scenes" and sniff_format(srn / "car") == "srn-scenes"
    assert sniff_format(npz) == "scene-npz" and sniff_format(tmp_path / "npz") == "scene-npz"

    ds = load_dataset(blender, "test", near=1.0, far=3.0, progress=False)
    assert ds.meta["format"] == "blender-scenes" and (ds.near, ds.far) == (1.0, 3.0)
    with pytest.raises(DataError, match="conflicts with the convention argument 'opengl'"):
        load_dataset(blender, "test", camera_convention="opengl")
    assert load_dataset(srn, progress=False).meta["format"] == "srn-scenes"
    ds = load_dataset(tmp_path / "npz", camera_convention="opencv", far=9.0)
    assert ds.meta["format"] == "scene-npz" and ds.meta["convention"] == "opencv" and ds.far == 9.0
    np.testing.assert_array_equal(ds.poses[0, 0], rigid(0.0) @ FLIP)
    with pytest.raises(DataError, match="the camera convention cannot be determined"):
        load_dataset(npz)


def test_a_scene_folder_without_its_images_points_at_the_npz_beside_it(tmp_path):
    """The layout of ../shared/data/nerf_synthetic_lego: the original json kept, the images as npz files."""
    from functa.data import load_dataset

    pose = np.eye(4)
    pose[2, 3] = 4.0
    (tmp_path / "transforms_train.json").write_text(json.dumps(
        {"camera_angle_x": 0.7, "frames": [{"file_path": "./train/r_0", "transform_matrix": pose.tolist()}]}))
    np.savez(tmp_path / "views_8.npz", images=np.zeros((1, 8, 8, 4), np.uint8), poses=pose[None].astype(np.float32),
             focal=np.float32(8.0))
    with pytest.raises(DataError, match=r"missing frame.*also holds views_8.npz: pass one of them"):
        load_dataset(tmp_path, "train")
    assert load_dataset(tmp_path / "views_8.npz", "train").meta["convention"] == "opengl"  # the json beside it


# ------------------------------------------------------------------------- fuzzer regressions (bench/fuzz_scenes.py)


def test_fuzz_overlong_file_path_is_a_data_error(tmp_path):
    # Path.is_file raised OSError (ENAMETOOLONG) for a file_path longer than the file system allows
    _, poses = write_blender(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "transforms_train.json").read_text())
    doc["frames"][1]["file_path"] = "a" * 5000
    (tmp_path / "s" / "transforms_train.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 1: bad 'file_path' 'aaaa.*File name too long"):
        load_dataset(tmp_path / "s", "train", progress=False)


def test_fuzz_npz_that_is_a_named_pipe_is_refused_not_waited_on(tmp_path):
    import os

    os.mkfifo(tmp_path / "scenes.npz")  # opening it for reading blocked forever
    with pytest.raises(DataError, match=r"scenes\.npz: not a regular file"):
        load_scene_npz(tmp_path / "scenes.npz", "train")
    (tmp_path / "zero.npz").symlink_to("/dev/zero")  # zipfile read it without end
    with pytest.raises(DataError, match=r"zero\.npz: not a regular file"):
        load_scene_npz(tmp_path / "zero.npz", "train")


def test_fuzz_scene_names_that_are_not_utf8_hash(tmp_path):
    # str.encode("utf-8") raised UnicodeEncodeError for a lone surrogate in an npz 'names' array
    poses = np.stack([np.stack([rigid(0.2 * j + i) for j in range(2)]) for i in range(8)]).astype(np.float32)
    names = np.array([f"s{i}\ud800" for i in range(8)])
    p = write_npz(tmp_path / "m.npz", images=np.zeros((8, 2, 4, 4, 3), np.uint8), poses=poses,
                  focal=np.float32(3), convention=np.array("opengl"), names=names)
    train = load_scene_npz(p, "train", test_fraction=0.5, progress=False)
    test = load_scene_npz(p, "test", test_fraction=0.5, progress=False)
    assert sorted(train.meta["names"] + test.meta["names"]) == sorted(names.tolist())
    assert scenes_mod.is_test_name("lego", 0.1) == is_test("lego", 0.1)  # valid names hash as before


@pytest.mark.parametrize("file_path", ["/", "./train/", "./"])
def test_fuzz_file_path_naming_a_directory(tmp_path, file_path):
    # Path.with_name raised ValueError ("has an empty name") for a file_path of "/"
    write_blender(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "transforms_train.json").read_text())
    doc["frames"][0]["file_path"] = file_path
    (tmp_path / "s" / "transforms_train.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"transforms_train\.json: frame 0: 'file_path' .* names a directory, not an "
                                        r"image file"):
        load_dataset(tmp_path / "s", "train", progress=False)


def _srn_scene_dir(tmp_path):
    d = tmp_path / "srn"
    write_srn(d, [rigid(0.2 * i) @ FLIP for i in range(2)])
    return d


def test_fuzz_srn_scene_without_intrinsics_is_not_an_image_folder(tmp_path):
    # a scene with rgb/ and pose/ but its intrinsics.txt deleted was loaded as a plain image folder (no cameras)
    d = _srn_scene_dir(tmp_path)
    (d / "intrinsics.txt").unlink()
    with pytest.raises(DataError, match=r"srn/intrinsics\.txt: cannot read \(No such file or directory\)"):
        load_dataset(d, "train", progress=False)


@pytest.mark.parametrize("kind", ["dev-zero", "directory"])
def test_fuzz_camera_files_that_are_not_regular_files(tmp_path, kind):
    # intrinsics.txt / transforms.json as a link to /dev/zero or a directory: the scene was not recognised
    # (loaded as an image folder), or /dev/zero was read up to the size limit
    def replace_with_special(path: Path) -> None:
        path.unlink()
        path.symlink_to("/dev/zero") if kind == "dev-zero" else path.mkdir()

    d = _srn_scene_dir(tmp_path)
    replace_with_special(d / "intrinsics.txt")
    with pytest.raises(DataError, match=r"srn/intrinsics\.txt: not a regular file \(a text file must be a file\)"):
        load_dataset(d, "train", progress=False)
    b = tmp_path / "blender"
    write_blender(b, json_name="transforms.json")
    replace_with_special(b / "transforms.json")
    with pytest.raises(DataError, match=r"blender/transforms\.json: not a regular file \(a JSON file must be a file\)"):
        load_dataset(b, "train", progress=False)


def test_special_files_at_the_load_path_are_refused_unopened(tmp_path):
    """A named pipe would block and /dev/zero never ends: both are refused before anything is read."""
    import os

    from functa.data import load_dataset
    from functa.data.safeio import Npz

    pipe = tmp_path / "views.npz"
    os.mkfifo(pipe)
    zero = tmp_path / "zero.npz"
    zero.symlink_to("/dev/zero")
    for path in (pipe, zero):
        with pytest.raises(DataError, match="not a regular file"):
            load_dataset(path, "train")
        with pytest.raises(DataError, match="not a regular file"):
            Npz(path)
