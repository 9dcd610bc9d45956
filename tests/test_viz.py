"""functa.viz: occupancy meshes (marching cubes, OBJ/PLY export) and numpy/PIL views."""

from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import functa.viz as viz
from functa.viz import VIEW_EXTENT, occupancy_mesh, shaded_view, slices, write_mesh, write_png
from functa.viz import views as views_module

VIZ_DIR = Path(viz.__file__).parent


def ball(n: int, radius: float = 0.3, centre=(0.5, 0.5, 0.5)) -> np.ndarray:
    """``(n, n, n)`` {0, 1} occupancy of a ball, sampled at the voxel centres ``(i + 0.5) / n``."""
    g = (np.arange(n) + 0.5) / n
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    d2 = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2
    return (d2 <= radius**2).astype(np.float32)


def needs_mesh_deps():
    pytest.importorskip("skimage")
    return pytest.importorskip("trimesh")


def non_white(image: np.ndarray) -> np.ndarray:
    return image.min(axis=2) < 255


# ----------------------------------------------------------------------------- package layering


def test_public_api():
    assert set(viz.__all__) == {
        "MESH_FORMATS", "VIEW_EXTENT", "occupancy_mesh", "shaded_view", "slices", "write_mesh", "write_png",
    }


# ----------------------------------------------------------------------------- meshes


@pytest.mark.parametrize("n", [32, 64])
def test_ball_mesh_vertices_lie_on_the_sphere(n):
    trimesh = needs_mesh_deps()
    r = 0.3
    vertices, faces = occupancy_mesh(ball(n, r))
    assert vertices.dtype == np.float32 and vertices.shape[1] == 3
    assert faces.dtype == np.int64 and faces.shape[1] == 3 and len(faces) > 0
    distance = np.linalg.norm(vertices - 0.5, axis=1)
    assert np.abs(distance - r).max() <= 0.5 / n
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * r**3, rel=0.05)


def test_resolutions_overlay():
    needs_mesh_deps()
    v32, _ = occupancy_mesh(ball(32))
    v64, _ = occupancy_mesh(ball(64))
    np.testing.assert_allclose(v32.min(axis=0), v64.min(axis=0), atol=1 / 32)
    np.testing.assert_allclose(v32.max(axis=0), v64.max(axis=0), atol=1 / 32)
    np.testing.assert_allclose(v64.mean(axis=0), 0.5, atol=1e-3)


def test_shape_touching_the_border_closes():
    trimesh = needs_mesh_deps()
    grid = np.zeros((8, 8, 8), np.float32)
    grid[:4] = 1.0  # the half x < 0.5, touching five faces of the cube
    vertices, faces = occupancy_mesh(grid)
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    assert mesh.is_watertight
    np.testing.assert_allclose(vertices.min(axis=0), [0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(vertices.max(axis=0), [0.5, 1, 1], atol=1e-6)
    assert mesh.volume == pytest.approx(0.5, rel=0.05)


def test_spacing_maps_voxel_centres():
    needs_mesh_deps()
    grid = np.zeros((4, 6, 8), np.float32)
    grid[1:3, 2:4, 3:5] = 1.0
    default, _ = occupancy_mesh(grid)
    scaled, _ = occupancy_mesh(grid, spacing=(1.0, 2.0, 3.0))
    # voxel i at (i + 0.5) * spacing; the surface lies halfway between voxel centres
    np.testing.assert_allclose(scaled.min(axis=0), [1.0, 4.0, 9.0], atol=1e-5)
    np.testing.assert_allclose(scaled.max(axis=0), [3.0, 8.0, 15.0], atol=1e-5)
    np.testing.assert_allclose(default.min(axis=0), [1 / 4, 2 / 6, 3 / 8], atol=1e-6)


def test_soft_occupancy_level():
    needs_mesh_deps()
    n = 32
    g = (np.arange(n) + 0.5) / n
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    dist = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2 + (z - 0.5) ** 2)
    prob = 1.0 / (1.0 + np.exp((dist - 0.25) * 40.0))  # smooth occupancy, 0.5 at radius 0.25
    vertices, _ = occupancy_mesh(prob)
    np.testing.assert_allclose(np.linalg.norm(vertices - 0.5, axis=1), 0.25, atol=0.005)
    inner, _ = occupancy_mesh(prob, level=0.9)
    assert np.linalg.norm(inner - 0.5, axis=1).max() < 0.25


@pytest.mark.parametrize("grid", [np.zeros((8, 8, 8)), np.ones((8, 8, 8)), np.full((5, 6, 7), 0.49)])
def test_empty_or_full_grid_gives_empty_mesh(grid):
    needs_mesh_deps()
    vertices, faces = occupancy_mesh(grid)
    assert vertices.shape == (0, 3) and vertices.dtype == np.float32
    assert faces.shape == (0, 3) and faces.dtype == np.int64


def test_occupancy_mesh_rejects_bad_input():
    needs_mesh_deps()
    with pytest.raises(ValueError, match="shape"):
        occupancy_mesh(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        occupancy_mesh(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match="level"):
        occupancy_mesh(ball(8), level=0.0)
    with pytest.raises(ValueError, match="spacing"):
        occupancy_mesh(ball(8), spacing=(1.0, -1.0, 1.0))


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".PLY"])
def test_mesh_file_round_trip(tmp_path, suffix):
    trimesh = needs_mesh_deps()
    vertices, faces = occupancy_mesh(ball(24, 0.35))
    path = write_mesh(vertices, faces, tmp_path / f"ball{suffix}")
    assert path == tmp_path / f"ball{suffix}"
    loaded = trimesh.load(path, process=False)
    assert len(loaded.vertices) == len(vertices)
    assert len(loaded.faces) == len(faces)
    np.testing.assert_allclose(loaded.vertices, vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, faces)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left over


def test_write_mesh_replaces_existing_file(tmp_path):
    trimesh = needs_mesh_deps()
    path = tmp_path / "m.obj"
    path.write_text("old contents\n")
    vertices, faces = occupancy_mesh(ball(16))
    write_mesh(vertices, faces, path)
    assert len(trimesh.load(path, process=False).vertices) == len(vertices)


def test_write_mesh_rejects_unknown_suffix_and_empty_mesh(tmp_path):
    needs_mesh_deps()
    vertices, faces = occupancy_mesh(ball(16))
    with pytest.raises(ValueError, match=r"\.stl"):
        write_mesh(vertices, faces, tmp_path / "m.stl")
    with pytest.raises(ValueError, match="empty"):
        write_mesh(*occupancy_mesh(np.zeros((8, 8, 8))), tmp_path / "empty.obj")
    with pytest.raises(ValueError, match="face indices"):
        write_mesh(vertices, faces + len(vertices), tmp_path / "bad.ply")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing", ["skimage.measure", "trimesh"])
def test_missing_optional_dependency_message(monkeypatch, tmp_path, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'functa\[mesh\]'"):
        if missing == "trimesh":
            write_mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), tmp_path / "t.obj")
        else:
            occupancy_mesh(ball(8))


# ----------------------------------------------------------------------------- shaded views


def test_empty_grid_renders_white():
    image = shaded_view(np.zeros((16, 16, 16)), size=40)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert (image == 255).all()


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("angles", [(30, 45), (0, 0), (75, -120)])
def test_ball_renders_as_a_disc_of_the_right_area(n, angles):
    size, r = 128, 0.3
    image = shaded_view(ball(n, r), size=size, elevation=angles[0], azimuth=angles[1])
    mask = non_white(image)
    expected = math.pi * (r * size / VIEW_EXTENT) ** 2  # orthographic: a disc of radius r
    assert mask.sum() == pytest.approx(expected, rel=0.2)
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - size / 2) < 2 and abs(cols.mean() - size / 2) < 2


def test_shading_varies_across_the_surface():
    image = shaded_view(ball(32), size=128)
    grey = image.astype(np.float64).mean(axis=2)[non_white(image)]
    assert grey.std() > 15
    assert grey.max() - grey.min() > 80


def test_z_is_up():
    size = 128
    # a small ball high up, from the default (elevated) view
    image = shaded_view(ball(32, 0.12, centre=(0.5, 0.5, 0.8)), size=size)
    rows, _ = np.nonzero(non_white(image))
    assert rows.size > 0 and rows.max() < size / 2
    # the whole top half of the cube, seen from the side
    grid = np.zeros((32, 32, 32), np.float32)
    grid[:, :, 16:] = 1.0
    rows, _ = np.nonzero(non_white(shaded_view(grid, size=size, elevation=0, azimuth=0)))
    assert rows.size > 0 and np.mean(rows < size / 2) > 0.99


def test_azimuth_zero_puts_y_to_the_right():
    size = 96
    image = shaded_view(ball(32, 0.12, centre=(0.5, 0.8, 0.5)), size=size, elevation=0, azimuth=0)
    _, cols = np.nonzero(non_white(image))
    assert cols.size > 0 and cols.min() > size / 2


def test_near_surfaces_hide_far_ones():
    # two balls on the line of sight along -x (azimuth 0): only the near (x = 0.75) one is seen,
    # and it is brighter than the far one seen alone (depth cue)
    near = ball(32, 0.15, centre=(0.75, 0.5, 0.5))
    far = ball(32, 0.15, centre=(0.25, 0.5, 0.5))
    both = shaded_view(np.maximum(near, far), size=64, elevation=0, azimuth=0)
    np.testing.assert_array_equal(both, shaded_view(near, size=64, elevation=0, azimuth=0))
    alone = shaded_view(far, size=64, elevation=0, azimuth=0)
    assert both[non_white(both)].mean() > alone[non_white(alone)].mean()


def test_chunking_does_not_change_the_image(monkeypatch):
    grid = np.maximum(ball(24, 0.2, centre=(0.3, 0.4, 0.5)), ball(24, 0.25, centre=(0.65, 0.6, 0.55)))
    reference = shaded_view(grid, size=48, elevation=20, azimuth=130)
    monkeypatch.setattr(views_module, "_SAMPLE_BUDGET", 257)
    monkeypatch.setattr(views_module, "_RAY_CHUNK", 100)
    np.testing.assert_array_equal(shaded_view(grid, size=48, elevation=20, azimuth=130), reference)


def test_anisotropic_grid_and_level():
    grid = np.zeros((16, 24, 40), np.float32)
    grid[4:12, 6:18, 10:30] = 0.7
    assert non_white(shaded_view(grid, size=32)).any()
    assert not non_white(shaded_view(grid, size=32, level=0.8)).any()


def test_shaded_view_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        shaded_view(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="size"):
        shaded_view(ball(8), size=0)


# ----------------------------------------------------------------------------- slices and PNG


def test_slices_tiles_z_slices_side_by_side():
    grid = np.random.default_rng(0).random((6, 5, 8)).astype(np.float32)
    image = slices(grid, count=4)
    assert image.shape == (5, 4 * 6) and image.dtype == np.uint8
    for k, z in enumerate([1, 3, 5, 7]):
        tile = image[:, 6 * k: 6 * (k + 1)]
        np.testing.assert_array_equal(tile, np.rint(grid[:, ::-1, z].T * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="count"):
        slices(grid, count=9)


def test_slices_orientation_x_right_y_up():
    grid = np.zeros((4, 4, 1), np.float32)
    grid[3, 3, 0] = 1.0  # largest x, largest y
    image = slices(grid, count=1)
    assert image[0, 3] == 255 and image.sum() == 255


@pytest.mark.parametrize("image", [np.zeros((7, 9), np.uint8), np.full((7, 9, 3), 200, np.uint8)])
def test_write_png_round_trip(tmp_path, image):
    path = write_png(image, tmp_path / "sub" / "view.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    with pytest.raises(ValueError, match="uint8"):
        write_png(image.astype(np.float32), tmp_path / "bad.png")
