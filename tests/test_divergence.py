"""A run whose loss blows up stops with a clear message and never saves the diverged state."""

import json
import math

import pytest

from functa.cli import main
from functa.errors import DivergenceError
from functa.fitting.meta import DivergenceWatch, MetaLearningConfig

from test_cli import FAST, image_folder


def feed(watch, losses):
    for step, value in enumerate(losses, 1):
        watch.train_loss(value, step)


def test_watch_ignores_noise_and_catches_a_blow_up(tmp_path):
    noisy = [0.1 / (1 + 0.05 * i) * (1.5 if i % 3 == 0 else 1.0) for i in range(200)]
    feed(DivergenceWatch(10.0, tmp_path, 0, None), noisy)  # a decreasing, noisy loss never triggers
    watch = DivergenceWatch(10.0, tmp_path, 0, None)
    watch.saved(100)
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: the running mean .* keeps the checkpoint of "
                                              r"step 100; lower train.outer_lr or set train.grad_clip"):
        feed(watch, noisy[:150] + [5.0] * 50)


def test_watch_catches_a_run_that_blows_up_at_once():
    # the first loss is the reference: a loss that grows from the first steps is caught
    with pytest.raises(DivergenceError, match="nothing was saved"):
        feed(DivergenceWatch(10.0, None, 0, 1.0), [0.2 * 1.3**i for i in range(40)])


def test_watch_validation_and_off_switch():
    watch = DivergenceWatch(10.0, None, 0, 0.5)
    watch.val_loss(0.01, 100)
    watch.val_loss(0.05, 200)
    with pytest.raises(DivergenceError, match=r"validation loss is 0.2, over 10x its best 0.01 \(step 100\).*"
                                              r"train.grad_clip \(now 0.5\)"):
        watch.val_loss(0.2, 300)
    with pytest.raises(DivergenceError):
        DivergenceWatch(10.0, None, 0, None).val_loss(math.nan, 1)
    off = DivergenceWatch(None, None, 0, None)
    feed(off, [0.1, 1e9] * 20)
    off.val_loss(math.inf, 1)
    with pytest.raises(ValueError, match="divergence_factor"):
        MetaLearningConfig(divergence_factor=1.0)


def test_fit_with_a_huge_learning_rate_stops_with_exit_code_2(tmp_path, capsys):
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    rc = main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "200", *FAST, "--set", "train.outer_lr=1.0",
               "--set", "train.grad_clip=null", "--set", "train.warmup_steps=0", "--set", "train.save_every=1000",
               "--set", "train.eval_every=1000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "diverged at step" in err[0] and "nothing was saved" in err[0]
    assert not (run / "model.safetensors").exists()


def test_eval_reports_the_loss_per_step(tmp_path):
    data = image_folder(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "8", *FAST]) == 0
    js = tmp_path / "eval.json"
    assert main(["--quiet", "eval", str(data), "-m", str(run), "--json", str(js)]) == 0
    per_step = json.loads(js.read_text())["results"]["per_step"]
    assert per_step[-1]["loss"] < per_step[0]["loss"]  # MSE after the inner steps is lower than with zero latents
    # MSE and PSNR agree: psnr_of_mean_mse is -10 log10 of the mean loss (features in [0, 1])
    assert per_step[-1]["psnr_of_mean_mse"] == pytest.approx(-10 * math.log10(per_step[-1]["loss"]), abs=1e-3)
