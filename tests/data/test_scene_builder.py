"""Posed voxel renders in the NeRF Blender layout (functa.data.scene_builder)."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from functa.data.scene_builder import (
    DEFAULT_LIGHT,
    build_modelnet_scenes,
    look_at_poses,
    ray_voxel_hits,
    render_voxels,
    scene_split,
    sphere_cameras,
)

LIGHT = np.asarray(DEFAULT_LIGHT) / np.linalg.norm(DEFAULT_LIGHT)


def _pixel_rays(pose: np.ndarray, focal: float, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays (origins, directions) ``(size * size, 3)`` of the documented pixel convention, row-major."""
    v, u = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cam = np.stack([(u + 0.5 - size / 2) / focal, -(v + 0.5 - size / 2) / focal, -np.ones_like(u, float)], -1)
    d = cam.reshape(-1, 3) @ pose[:3, :3].astype(np.float64).T
    o = np.broadcast_to(pose[:3, 3].astype(np.float64), d.shape)
    return torch.from_numpy(o.copy()), torch.from_numpy(d)


def _shade(normal: np.ndarray, cam_z: np.ndarray, ambient=0.3, headlight=0.25, albedo=0.8) -> np.ndarray:
    key = max(0.0, float(normal @ LIGHT))
    head = max(0.0, float(normal @ cam_z))
    return np.round(255 * albedo * (ambient + (1 - ambient) * ((1 - headlight) * key + headlight * head)))


# ------------------------------------------------------------------------------------------ cameras


def test_look_at_poses_orthonormal_and_aimed_at_origin():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((64, 3)) * 2.5
    poles = np.array([[0, 0, 2.0], [0, 0, -3.0]])
    poses = look_at_poses(np.concatenate([centres, poles]))
    assert poses.shape == (66, 4, 4) and poses.dtype == np.float32
    r = poses[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(np.einsum("kji,kjl->kil", r, r), np.broadcast_to(np.eye(3), r.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-5)
    np.testing.assert_allclose(poses[:, :3, 3], np.concatenate([centres, poles]), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(poses[:, 3], np.broadcast_to([0, 0, 0, 1], (66, 4)))
    # the camera looks down its -z axis: -z points from the centre at the origin
    all_c = np.concatenate([centres, poles])
    np.testing.assert_allclose(-r[:, :, 2], -all_c / np.linalg.norm(all_c, axis=1, keepdims=True), atol=1e-5)
    # +y has a positive world-z component (upright), +x is horizontal, away from the poles
    assert (r[:64, 2, 1] > 1e-3).all()
    np.testing.assert_allclose(r[:64, 2, 0], 0.0, atol=1e-5)
    # a camera straight above, looking down, uses world +y as its up: x right = +x world, y up = +y world
    np.testing.assert_allclose(r[64], np.eye(3), atol=1e-6)
    assert np.isfinite(poses).all()


def test_look_at_poses_camera_on_x_axis():
    pose = look_at_poses(np.array([2.0, 0.0, 0.0]))[0]
    # on +x looking at the origin: right is world +y, up world +z, camera z world +x
    np.testing.assert_allclose(pose[:3, :3], [[0, 0, 1], [1, 0, 0], [0, 1, 0]], atol=1e-6)
    with pytest.raises(ValueError):
        look_at_poses(np.zeros((1, 3)))


def test_sphere_cameras_deterministic_on_sphere():
    a = sphere_cameras(2000, 2.0, seed=11)
    b = sphere_cameras(2000, 2.0, seed=11)
    c = sphere_cameras(2000, 2.0, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 2.0)
    assert np.abs(a.mean(0)).max() < 0.12  # uniform: centred; about half above and half below
    assert 0.45 < (a[:, 2] > 0).mean() < 0.55
    h = sphere_cameras(500, 3.0, seed=1, hemisphere=True)
    assert (h[:, 2] >= 0).all() and np.allclose(np.linalg.norm(h, axis=1), 3.0)
    assert abs(h[:, 2].mean() - 1.5) < 0.2  # uniform on the hemisphere: E[z] = r / 2
    with pytest.raises(ValueError):
        sphere_cameras(0, 2.0, seed=0)


# ------------------------------------------------------------------------------------ ray casting


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dda_matches_dense_sampling(dtype):
    gen = torch.Generator().manual_seed(5)
    occ = torch.rand(8, 8, 8, generator=gen) < 0.06
    n = 200
    o = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    o = o / o.norm(dim=1, keepdim=True) * 1.4
    o[:10] = (torch.rand(10, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.8  # some start inside the cube
    d = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * 1.2 - o
    res = ray_voxel_hits(occ, o.to(dtype), d.to(dtype))
    # reference: the first occupied sample along each ray, t in [0, 3) with a step of 1e-4
    step = 1e-4
    ts = torch.arange(0, 3, step, dtype=torch.float64)
    ref_hit, ref_vox, ref_t = [], [], []
    for start in range(0, n, 25):
        p = o[start:start + 25, None] + ts[None, :, None] * d[start:start + 25, None]
        ijk = torch.floor((p + 0.5) * 8).long()
        inside = ((ijk >= 0) & (ijk < 8)).all(-1)
        ijk = ijk.clamp(0, 7)
        full = occ[ijk[..., 0], ijk[..., 1], ijk[..., 2]] & inside
        first = full.to(torch.int8).argmax(1)
        ref_hit.append(full.any(1))
        ref_vox.append(ijk[torch.arange(len(first)), first])
        ref_t.append(ts[first])
    hit, vox, t = torch.cat(ref_hit), torch.cat(ref_vox), torch.cat(ref_t)
    assert 40 < int(hit.sum()) < 160  # both kinds of rays present
    assert torch.equal(res["hit"], hit)
    assert torch.equal(res["voxel"][hit], vox[hit])
    assert (res["voxel"][~hit] == -1).all() and torch.isinf(res["t"][~hit]).all()
    assert ((res["t"][hit] - t[hit]).abs() <= step + (1e-4 if dtype == torch.float32 else 1e-9)).all()
    # the normal is the entry face: opposite to the ray along the entry axis, one axis only
    nrm = res["normal"][hit].double()
    assert torch.equal(nrm.abs().sum(1), torch.ones(int(hit.sum()), dtype=torch.float64))
    entered = res["t"][hit] > 0
    assert ((nrm * d[hit]).sum(1)[entered] < 0).all()


def test_dda_empty_grid_and_axis_parallel_rays():
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    res = ray_voxel_hits(occ, torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, -1.0]]))
    assert not res["hit"].any()
    occ[1, 2, 0] = True  # x in [-0.25, 0], y in [0, 0.25], z in [-0.5, -0.25]
    o = torch.tensor([[-0.1, 0.1, 2.0], [-0.1, 0.1, -2.0], [0.1, 0.1, 2.0], [-3.0, 0.1, -0.3]], dtype=torch.float64)
    d = torch.tensor([[0, 0, -1.0], [0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0]], dtype=torch.float64)
    res = ray_voxel_hits(occ, o, d)
    assert res["hit"].tolist() == [True, True, False, True]
    np.testing.assert_allclose(res["t"][[0, 1, 3]].numpy(), [2.25, 1.5, 2.75], atol=1e-12)
    assert res["normal"][[0, 1, 3]].tolist() == [[0, 0, 1], [0, 0, -1], [-1, 0, 0]]
    assert res["voxel"][0].tolist() == [1, 2, 0]


# -------------------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("headlight", [0.0, 0.25])
def test_single_centre_voxel_seen_from_above(headlight):
    occ = torch.zeros(9, 9, 9, dtype=torch.bool)
    occ[4, 4, 4] = True  # spans [-1/18, 1/18]^3
    size, focal, dist = 32, 100.0, 2.0
    pose = look_at_poses(np.array([[0.0, 0.0, dist]]))
    img = render_voxels(occ, pose, focal, size, headlight=headlight)
    assert img.shape == (1, size, size, 4) and img.dtype == np.uint8
    img = img[0]
    # only the top face is visible: pixel centres whose rays meet the plane z = h inside |x|, |y| <= h
    h = 1 / 18
    half = focal * h / (dist - h)  # footprint half-width in pixels (2.86)
    c = np.arange(size) + 0.5 - size / 2
    inside = np.abs(c) <= half
    expected = inside[:, None] & inside[None, :]
    assert expected.sum() == 36
    np.testing.assert_array_equal(img[..., 3] == 255, expected)
    np.testing.assert_array_equal(np.unique(img[..., 3]), [0, 255])
    value = _shade(np.array([0, 0, 1.0]), np.array([0, 0, 1.0]), headlight=headlight)
    # 185 = round(204 * (0.3 + 0.7 * n.l)), n.l = 1 / sqrt(1.34); with the headlight (n.c = 1): 189
    assert value == (185 if headlight == 0 else 189)
    np.testing.assert_array_equal(img[expected][:, :3], np.full((36, 3), value))
    np.testing.assert_array_equal(img[~expected], np.broadcast_to([255, 255, 255, 0], ((~expected).sum(), 4)))


def test_image_orientation_upright():
    size, focal = 32, 60.0
    occ = torch.zeros(8, 8, 8, dtype=torch.bool)
    occ[3, 3, 7] = True  # near the top (+z)
    side = render_voxels(occ, look_at_poses(np.array([[2.0, 0.0, 0.0]])), focal, size)[0]
    rows = np.nonzero(side[..., 3])[0]
    assert rows.size and rows.max() < size / 2  # +z appears in the top half of the image
    occ = torch.zeros(8, 8, 8, dtype=torch.bool)
    occ[7, 3, 3] = True  # +x
    occ[3, 7, 3] = True  # +y
    top = render_voxels(occ, look_at_poses(np.array([[0.0, 0.0, 2.0]])), focal, size)[0]
    ys, xs = np.nonzero(top[..., 3])
    assert (xs > size / 2).any() and (ys < size / 2).any()  # +x to the right, +y up on screen
    assert not ((xs < size / 2 - 1) & (ys > size / 2 + 1)).any()


def test_render_matches_per_pixel_rays_and_shading():
    gen = torch.Generator().manual_seed(2)
    occ = torch.rand(6, 7, 5, generator=gen) < 0.15  # non-cubic: scaled by 7 and centred
    poses = look_at_poses(sphere_cameras(4, 1.8, seed=9))
    size, focal = 24, 30.0
    img = render_voxels(occ, poses, focal, size)
    for k, pose in enumerate(poses):
        o, d = _pixel_rays(pose, focal, size)
        res = ray_voxel_hits(occ, o, d)
        hit = res["hit"].numpy().reshape(size, size)
        assert 10 < hit.sum() < size * size
        np.testing.assert_array_equal(img[k, ..., 3], np.where(hit, 255, 0))
        colours = np.array([_shade(n, pose[:3, 2].astype(np.float64)) for n in res["normal"].numpy()[hit.ravel()]])
        np.testing.assert_array_equal(img[k][hit][:, :3], np.repeat(colours[:, None], 3, 1))
        assert (img[k][~hit] == [255, 255, 255, 0]).all()


def test_supersample_averages_sub_rays():
    gen = torch.Generator().manual_seed(4)
    occ = torch.rand(8, 8, 8, generator=gen) < 0.1
    poses = look_at_poses(sphere_cameras(2, 2.0, seed=1))
    lo = render_voxels(occ, poses, 20.0, 16, supersample=2).astype(np.float64)
    hi = render_voxels(occ, poses, 40.0, 32).astype(np.float64)  # the sub-rays of the 2x2 supersampling
    a = hi[..., 3:] / 255
    block = lambda x: x.reshape(2, 16, 2, 16, 2, -1).mean((2, 4))  # noqa: E731
    alpha = block(a)
    np.testing.assert_allclose(lo[..., 3:], np.round(alpha * 255), atol=0.5)
    assert set(np.unique(lo[..., 3])) <= {0, 64, 128, 191, 255} and len(np.unique(lo[..., 3])) >= 4
    premul = block(hi[..., :3] * a)
    rgb = np.where(alpha > 0, premul / np.maximum(alpha, 1e-12), 255)
    np.testing.assert_allclose(lo[..., :3], rgb, atol=1.0)  # hi is already rounded to uint8


# ----------------------------------------------------------------------------------- scene folders


@pytest.fixture
def voxel_npz(tmp_path):
    rng = np.random.default_rng(0)
    vox = (rng.random((6, 8, 8, 8)) < 0.2).astype(np.uint8)
    labels = np.array([0, 1, 0, 1, 1, 0], dtype=np.uint8)
    path = tmp_path / "shapes.npz"
    np.savez(path, voxels=vox, label=labels, class_names=np.array(["box", "ball"]))
    return path


def _scenes(out):
    return sorted(p for split in ("train", "test") for p in (out / split).glob("*") if p.is_dir())


def test_build_layout_json_and_split(voxel_npz, tmp_path):
    out = tmp_path / "scenes"
    summary = build_modelnet_scenes(voxel_npz, out, views=3, size=16, test_fraction=0.5, seed=7, progress=False)
    names = ["box_0000", "ball_0001", "box_0002", "ball_0003", "ball_0004", "box_0005"]
    expected_split = {
        n: "test" if int.from_bytes(hashlib.sha256(n.encode()).digest()[:8], "little") % 1000 < 500 else "train"
        for n in names}
    assert {scene_split(n, 0.5) for n in names} == {"train", "test"}  # this fixture exercises both splits
    assert {p.name: p.parent.name for p in _scenes(out)} == expected_split
    assert summary["scenes"] == 6 and summary["rendered"] == 6 and summary["skipped"] == 0
    focal = 0.5 * 16 / math.tan(0.375)  # camera_angle_x 0.75 (the default)
    all_poses = []
    for folder in _scenes(out):
        meta = json.loads((folder / "transforms_train.json").read_text())
        assert set(meta) == {"camera_angle_x", "near", "far", "camera_convention", "frames"}
        assert meta["camera_angle_x"] == 0.75 and meta["near"] == 0.8 and meta["far"] == 2.6
        assert meta["camera_convention"] == "opengl"
        assert [f["file_path"] for f in meta["frames"]] == ["./r_0", "./r_1", "./r_2"]
        poses = np.array([f["transform_matrix"] for f in meta["frames"]])
        assert poses.shape == (3, 4, 4)
        np.testing.assert_allclose(np.linalg.norm(poses[:, :3, 3], axis=1), 1.7, atol=1e-5)
        all_poses.append(poses)
        assert sorted(p.name for p in folder.iterdir()) == ["r_0.png", "r_1.png", "r_2.png", "transforms_train.json"]
        index = int(folder.name.split("_")[1])
        from functa.data import load_dataset
        occ = torch.from_numpy(load_dataset(voxel_npz, "all").data[index]).bool()
        want = render_voxels(occ, poses.astype(np.float32), focal, 16)
        for k in range(3):
            with Image.open(folder / f"r_{k}.png") as im:
                assert im.mode == "RGBA" and im.size == (16, 16)
                np.testing.assert_array_equal(np.asarray(im), want[k])
    assert not np.allclose(all_poses[0], all_poses[1])  # each scene has its own cameras
    builder = json.loads((out / "builder.json").read_text())
    assert builder["settings"]["source_sha256"] == hashlib.sha256(voxel_npz.read_bytes()).hexdigest()
    assert builder["settings"]["views"] == 3 and builder["settings"]["size"] == 16
    assert builder["complete"] is True and builder["scenes"] == 6
    n_test = sum(s == "test" for s in expected_split.values())
    test_classes = [n.split("_")[0] for n, s in expected_split.items() if s == "test"]
    assert sum(builder["counts"]["test"].values()) == n_test
    assert builder["counts"]["test"] == {c: test_classes.count(c) for c in set(test_classes)}
    assert builder["counts"] == summary["counts"]


def test_build_resumes_and_filters(voxel_npz, tmp_path):
    out = tmp_path / "scenes"
    kwargs = dict(views=2, size=8, classes=["ball"], limit=2, progress=False)
    first = build_modelnet_scenes(voxel_npz, out, **kwargs)
    scenes = _scenes(out)
    assert sorted(p.name for p in scenes) == ["ball_0001", "ball_0003"] and first["rendered"] == 2
    stamps = {p: p.stat().st_mtime_ns for s in scenes for p in s.iterdir()}
    (scenes[0] / "transforms_train.json").unlink()  # an incomplete scene (killed before its json)
    (scenes[0] / ".r_0.png.abcd1234.tmp").write_bytes(b"partial")  # a killed writer's temporary file
    second = build_modelnet_scenes(voxel_npz, out, **kwargs)
    assert second["rendered"] == 1 and second["skipped"] == 1
    assert (scenes[0] / "transforms_train.json").is_file()
    assert not (scenes[0] / ".r_0.png.abcd1234.tmp").exists()
    for p, stamp in stamps.items():
        if p.parent == scenes[1]:
            assert p.stat().st_mtime_ns == stamp  # the complete scene was not touched
    third = build_modelnet_scenes(voxel_npz, out, **kwargs)
    assert third["rendered"] == 0 and third["skipped"] == 2
    assert build_modelnet_scenes(voxel_npz, out, views=2, size=8, progress=False)["rendered"] == 4
    assert json.loads((out / "builder.json").read_text())["scenes"] == 6
    with pytest.raises(ValueError, match="other settings"):
        build_modelnet_scenes(voxel_npz, out, views=3, size=8, progress=False)
    with pytest.raises(ValueError, match="class"):
        build_modelnet_scenes(voxel_npz, tmp_path / "other", classes=["chair"], progress=False)


@pytest.mark.parametrize("bad", [dict(views=0), dict(size=4), dict(size=2048), dict(near=0.0), dict(near=2.0, far=1.5),
                                 dict(radius=0.8), dict(near=1.5), dict(test_fraction=1.0), dict(limit=0),
                                 dict(camera_angle_x=0.0), dict(seed=-1), dict(classes=["chair"])])
def test_build_rejects_bad_arguments(voxel_npz, tmp_path, bad):
    with pytest.raises(ValueError):
        build_modelnet_scenes(voxel_npz, tmp_path / "scenes", progress=False, **bad)
    assert not (tmp_path / "scenes").exists()


def test_render_batches_and_chunks_agree(monkeypatch):
    import functa.data.scene_builder as sb

    gen = torch.Generator().manual_seed(8)
    occ = torch.rand(8, 8, 8, generator=gen) < 0.1
    poses = look_at_poses(sphere_cameras(5, 2.0, seed=3))
    whole = render_voxels(occ, poses, 30.0, 16)
    assert (whole[..., 3] == 255).sum() > 50
    np.testing.assert_array_equal(render_voxels(occ, poses, 30.0, 16, chunk=37), whole)
    monkeypatch.setattr(sb, "_RENDER_RAYS", 300)  # one view at a time
    np.testing.assert_array_equal(render_voxels(occ, poses, 30.0, 16), whole)
    np.testing.assert_array_equal(render_voxels(occ, poses[2:3], 30.0, 16), whole[2:3])
