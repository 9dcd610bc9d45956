"""Ctrl-C and SIGTERM end work between steps: held back inside a step, raised after it."""

import os
import signal

import pytest

from functa.interrupts import terminate_as_interrupt, whole_step


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_inside_a_step_is_raised_once_the_step_is_done(sig):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with whole_step():
            os.kill(os.getpid(), sig)
            done.append("rest of the step")
    assert done == ["rest of the step"]


def test_handlers_are_restored_and_a_quiet_step_raises_nothing():
    before = signal.getsignal(signal.SIGTERM)
    with whole_step():
        pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_sigterm_becomes_a_keyboard_interrupt():
    before = signal.getsignal(signal.SIGTERM)
    try:
        terminate_as_interrupt()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(1000))  # the handler runs at the next bytecode
    finally:
        signal.signal(signal.SIGTERM, before)


def test_meta_learning_interrupted_by_sigterm_saves_a_whole_step(tmp_path):
    """A SIGTERM during step 3 of a CLI fit: exit code 130 and a checkpoint at step 3."""
    import json

    import numpy as np
    from PIL import Image

    from functa.cli import main
    from functa.fitting import meta

    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for i in range(count):
            d = tmp_path / "data" / split / "c"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(d / f"{i}.png")
    original = meta.MetaLearner.train_step

    def train_step(self, batch):
        if self.step_count == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step
        return original(self, batch)

    before = signal.getsignal(signal.SIGTERM)
    meta.MetaLearner.train_step = train_step
    try:
        code = main(["--quiet", "fit", str(tmp_path / "data"), "-o", str(tmp_path / "run"), "--steps", "10",
                     "--set", "field.width=8", "--set", "field.depth=2", "--set", "field.latent_dim=4",
                     "--set", "train.batch_size=2", "--set", "train.eval_items=2", "--set", "train.save_every=100"])
    finally:
        meta.MetaLearner.train_step = original
        signal.signal(signal.SIGTERM, before)
    assert code == 130
    assert json.loads((tmp_path / "run" / "train_state.json").read_text())["step"] == 3
