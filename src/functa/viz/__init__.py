"""Meshes and PNG views of 3-D occupancy fields: the lowest layer (numpy, PIL, optional extras).

Shapes: ``values`` are ``(X, Y, Z)`` float grids in ``[0, 1]`` with array axes ``[x, y, z]``,
z up, voxel ``i`` at ``(i + 0.5) / N`` in the unit cube.

* :func:`occupancy_mesh` → ``(vertices (V, 3) float32, faces (F, 3) int64)`` by marching cubes;
  :func:`write_mesh` → ``.obj`` / ``.ply``. Both need ``pip install 'functa[mesh]'``
  (scikit-image, trimesh), imported only when called.
* :func:`shaded_view` → ``(size, size, 3)`` uint8 render; :func:`slices` → ``(Y, count * X)`` uint8;
  :func:`write_png` writes either. numpy and PIL only.

This package imports no other functa module.
"""

from .mesh import MESH_FORMATS, occupancy_mesh, write_mesh
from .views import VIEW_EXTENT, shaded_view, slices, write_png

__all__ = [
    "MESH_FORMATS",
    "VIEW_EXTENT",
    "occupancy_mesh",
    "shaded_view",
    "slices",
    "write_mesh",
    "write_png",
]
