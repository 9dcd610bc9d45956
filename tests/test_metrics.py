import math

import pytest
import torch

from functa.fitting import PsnrMeter, mse_per_item, psnr


def test_psnr_conventions_hand_computed():
    m = PsnrMeter()
    m.update(torch.tensor([0.01, 0.0001]))
    assert m.mean_psnr == pytest.approx(30.0)  # (20 + 40) / 2
    assert m.psnr_of_mean_mse == pytest.approx(-10 * math.log10(0.00505))  # 22.967 dB
    assert m.mean_psnr >= m.psnr_of_mean_mse  # Jensen


def test_mse_is_over_points_and_channels():
    pred = torch.zeros(2, 4, 3)
    target = torch.zeros(2, 4, 3)
    target[0, 0, 0] = 1.0
    assert torch.allclose(mse_per_item(pred, target), torch.tensor([1 / 12, 0.0]))
    assert float(psnr(torch.tensor(0.01))) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        mse_per_item(pred, target[:, :2])
