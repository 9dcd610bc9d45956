import math

import pytest
import torch

from functa.fitting import MetricMeter, PsnrMetrics, mse_per_item, psnr


def test_psnr_conventions_hand_computed():
    m = MetricMeter(PsnrMetrics())
    # two items of one point: squared errors 0.01 and 0.0001 (PSNR 20 dB and 40 dB)
    m.update(torch.tensor([[[0.1]], [[0.01]]]), torch.zeros(2, 1, 1))
    s = m.as_dict()
    assert s["mean_psnr"] == pytest.approx(30.0)  # (20 + 40) / 2
    assert s["psnr_of_mean_mse"] == pytest.approx(-10 * math.log10(0.00505))  # 22.967 dB
    assert s["mean_psnr"] >= s["psnr_of_mean_mse"] and s["count"] == 2  # Jensen


def test_masked_psnr_counts_only_masked_points():
    pred, target = torch.tensor([[[0.1], [0.5]]]), torch.zeros(1, 2, 1)
    values = PsnrMetrics().per_item(pred, target, torch.tensor([[[1.0], [0.0]]]))
    assert float(values["mse"][0]) == pytest.approx(0.01) and float(values["psnr"][0]) == pytest.approx(20.0)


def test_mse_is_over_points_and_channels():
    pred = torch.zeros(2, 4, 3)
    target = torch.zeros(2, 4, 3)
    target[0, 0, 0] = 1.0
    assert torch.allclose(mse_per_item(pred, target), torch.tensor([1 / 12, 0.0]))
    assert float(psnr(torch.tensor(0.01))) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        mse_per_item(pred, target[:, :2])
