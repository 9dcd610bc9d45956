"""Data-parallel meta-learning under torchrun (gloo, 2 processes on the CPU) against one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

from functa import distributed
from test_cli import image_folder

TINY = ["--set", "field.width=16", "--set", "field.depth=3", "--set", "field.latent_dim=8",
        "--set", "train.batch_size=4", "--set", "train.eval_items=8", "--set", "train.eval_every=3",
        "--set", "train.save_every=3", "--set", "train.warmup_steps=1"]


def _fit(data, out, steps, nproc=1, extra=()):
    args = ["-m", "functa", "--quiet", "--threads", "1", "fit", str(data), "-o", str(out), "--steps", str(steps),
            *TINY, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    else:
        cmd = [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _weights(run):
    return load_file(str(run / "train_state.safetensors"))


def _assert_close(a, b, tol=1e-6):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=tol, rtol=0, err_msg=k)


def test_two_processes_train_the_same_base_network_as_one(tmp_path):
    data = image_folder(tmp_path / "data", n=16)
    one, two = _fit(data, tmp_path / "one", 6), _fit(data, tmp_path / "two", 6, nproc=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    _assert_close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    state = json.loads((tmp_path / "two" / "train_state.json").read_text())
    assert state["step"] == 6 and [r["step"] for r in state["history"]] == [3, 6]  # rank 0 evaluated, once
    assert two.stdout.count("saved base network") == 1  # only rank 0 reports
    assert (tmp_path / "two" / "model.safetensors").exists()


def test_a_run_resumes_with_another_number_of_processes(tmp_path):
    data = image_folder(tmp_path / "data", n=16)
    constant = ["--set", "train.schedule=constant"]  # --steps 3 then 6 must not change the learning rates
    assert _fit(data, tmp_path / "whole", 6, extra=constant).returncode == 0
    first = _fit(data, tmp_path / "split", 3, nproc=2, extra=constant)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _fit(data, tmp_path / "split", 6, extra=constant)
    assert second.returncode == 0, second.stderr[-2000:]
    _assert_close(_weights(tmp_path / "whole"), _weights(tmp_path / "split"))


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path):
    data = image_folder(tmp_path / "data", n=16)
    r = _fit(data, tmp_path / "odd", 2, nproc=2, extra=["--set", "train.batch_size=5"])
    assert r.returncode != 0
    assert "cannot be split evenly across 2 processes" in r.stderr


def test_single_process_collectives_are_no_ops():
    import torch

    t = torch.ones(3)
    distributed.all_reduce_mean_([t])
    assert torch.equal(t, torch.ones(3))
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.mean(2.5) == 2.5 and distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.shard(8) == slice(0, 8)


def test_two_processes_train_the_same_flow_as_one(tmp_path):
    from functa.cli import main

    data = image_folder(tmp_path / "data", n=16)
    run, fs = tmp_path / "base", tmp_path / "train.functaset"
    assert main(["--quiet", "fit", str(data), "-o", str(run), "--steps", "2", *TINY]) == 0
    assert main(["--quiet", "encode", str(data), "-m", str(run), "-o", str(fs)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    flow = ["-m", "functa", "--quiet", "--threads", "1", "flow", "train", str(fs), "--set", "train.steps=4",
            "--set", "train.batch_size=8", "--set", "train.eval_every=2", "--set", "model.dropout=0.0",
            "--set", "model.hidden=[16,16]", "--set", "model.layers=2"]
    one = subprocess.run([sys.executable, *flow, "-o", str(tmp_path / "f1")], capture_output=True, text=True,
                         timeout=300, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          *flow, "-o", str(tmp_path / "f2")], capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    _assert_close(_weights(tmp_path / "f1"), _weights(tmp_path / "f2"), tol=1e-5)
    assert json.loads((tmp_path / "f2" / "metrics.json").read_text())["train_nll_nats_per_dim"] == pytest.approx(
        json.loads((tmp_path / "f1" / "metrics.json").read_text())["train_nll_nats_per_dim"], abs=1e-4)
    assert two.stdout.count("train_nll_nats_per_dim") == 1  # only rank 0 prints


def test_commands_that_do_not_scale_out_refuse_several_processes(tmp_path, monkeypatch, capsys):
    from functa.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--quiet", "encode", str(tmp_path), "-m", str(tmp_path), "-o", str(tmp_path / "fs")]) == 2
    err = capsys.readouterr().err
    assert "functa encode does not run on several processes yet (WORLD_SIZE=2)" in err
    assert not (tmp_path / "fs").exists()
