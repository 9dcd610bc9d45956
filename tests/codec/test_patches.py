import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from functa.codec import PatchGrid, from_patches, to_patches


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda k: st.tuples(st.lists(st.integers(1, 23), min_size=k, max_size=k),
                                                     st.lists(st.integers(1, 9), min_size=k, max_size=k))),
       st.integers(0, 3))
def test_patch_stitch_round_trip_is_exact(shapes, channels):
    shape, patch = shapes
    rng = np.random.default_rng(sum(shape) * 31 + sum(patch))
    item = rng.random((*shape, channels) if channels else tuple(shape))
    patches, grid = to_patches(item, tuple(patch))
    assert patches.shape[0] == grid.num_patches == int(np.prod([-(-s // p) for s, p in zip(shape, patch)]))
    assert patches.shape[1:1 + len(patch)] == tuple(patch)
    assert np.array_equal(from_patches(patches, grid), item)


def test_order_and_reflect_padding():
    x = np.arange(20).reshape(4, 5)
    p, grid = to_patches(x, (2, 3))
    assert grid.counts == (2, 2) and grid.padded == (4, 6)
    assert p[0].tolist() == [[0, 1, 2], [5, 6, 7]]
    assert p[1].tolist() == [[3, 4, 3], [8, 9, 8]]  # column 5 reflects column 3
    assert p[2].tolist() == [[10, 11, 12], [15, 16, 17]]


def test_kodak_sized_image_gives_384_patches():
    assert PatchGrid((512, 768), (32, 32)).num_patches == 384  # COIN++'s Kodak setting
