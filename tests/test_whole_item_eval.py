"""A base network trained on patches is evaluated on stitched, un-padded whole items (COIN++)."""

import numpy as np
import pytest
import torch

from functa.codec.patches import from_patches, to_patches
from functa.data import ArrayDataset
from functa.fields import LatentModulatedSiren, SirenConfig
from functa.fitting import Batch, MSELoss, fit_latents, predict
from functa.modalities import ImageModality
from functa.pipeline import evaluate_whole_items


def test_whole_item_metrics_equal_a_manual_stitch():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 10, 13, 3), dtype=np.uint8)  # 10x13 is not a multiple of the 4x4 patch
    ds = ArrayDataset(images, None, {"source": "toy"})
    patch = ImageModality(height=4, width=4, channels=3)
    field = LatentModulatedSiren(SirenConfig(in_dim=2, out_dim=3, width=16, depth=3, latent_dim=6, w0=10.0))
    res = evaluate_whole_items(field, MSELoss(), patch, ds, steps=2, batch_size=7)  # batches cut items apart
    assert res["count"] == 3 and [r["step"] for r in res["per_step"]] == [0, 1, 2]
    x = patch.coordinates()[None]
    whole = ImageModality(height=10, width=13, channels=3)
    mses = []
    for img in images:
        patches, grid = to_patches(img, (4, 4))
        z = fit_latents(field, Batch(x, patch.to_features(patches)), 2).latents
        feats = predict(field, x, z).reshape(grid.num_patches, 4, 4, 3).numpy()
        recon = torch.from_numpy(from_patches(feats, grid)).reshape(1, -1, 3)
        mses.append(float(((recon - whole.to_features(img[None])) ** 2).mean()))
    last = res["per_step"][-1]
    assert last["mse"] == pytest.approx(np.mean(mses), rel=1e-5)
    assert last["mean_psnr"] == pytest.approx(np.mean([-10 * np.log10(m) for m in mses]), rel=1e-5)
    assert "psnr_quantised" in res  # the modality's extra metrics, on the whole items
