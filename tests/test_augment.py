"""Image augmentations used to encode several functa per training image."""

import numpy as np
import pytest

from functa.data.augment import ImageAugmentation


def _images(n=6, h=5, w=7):
    return np.arange(n * h * w * 1, dtype=np.uint8).reshape(n, h, w, 1)


def test_flip_and_crop_move_pixels_exactly():
    imgs = _images()
    aug = ImageAugmentation(("flip", "crop"), pad=2)
    params = np.array([[0, 2, 2], [1, 2, 2], [0, 0, 0], [0, 4, 4], [1, 1, 3], [0, 2, 2]])
    out = aug.apply(imgs, params)
    assert out.shape == imgs.shape
    assert np.array_equal(out[0], imgs[0])  # no flip, centred crop = identity
    assert np.array_equal(out[1], imgs[1][:, ::-1])  # pure flip
    assert np.array_equal(out[2][2:, 2:], imgs[2][:3, :5]) and (out[2][:2] == 0).all()  # shifted down-right
    assert np.array_equal(out[3][:3, :5], imgs[3][2:, 2:]) and (out[3][3:] == 0).all()  # shifted up-left
    flipped = imgs[4][:, ::-1]
    assert np.array_equal(out[4][1:, :6], flipped[:4, 1:])  # flip, then shift


def test_parameters_are_reproducible_and_independent_of_batching():
    aug = ImageAugmentation(seed=3)
    p = aug.parameters(100, copy=1)
    assert np.array_equal(p, aug.parameters(100, copy=1))
    assert not np.array_equal(p, aug.parameters(100, copy=2))
    assert set(np.unique(p[:, 0])) <= {0, 1} and p[:, 1:].min() >= 0 and p[:, 1:].max() <= 8
    assert (ImageAugmentation(("crop",)).parameters(50, 1)[:, 0] == 0).all()
    assert (ImageAugmentation(("flip",)).parameters(50, 1)[:, 1:] == 4).all()


def test_bad_settings():
    with pytest.raises(ValueError, match="subset"):
        ImageAugmentation(("rotate",))
    with pytest.raises(ValueError, match="images"):
        ImageAugmentation().apply(np.zeros((2, 4, 4)), np.zeros((2, 3), int))
