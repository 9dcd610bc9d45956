"""Crash safety: SIGKILL at every file operation and at random moments, advisory locks on outputs,
stale temporary files, file modes.

The sweep runs ``bench/crash.py`` (one driver process that forks a child per run and SIGKILLs it
before its k-th file operation, for every k, then resumes): every resumed ``fit`` and ``encode``
must be bit-identical to the uninterrupted one. ``FUNCTA_CRASH_FULL=1`` runs the bench's larger
default sweep (4 checkpoints, 20 random kills of each command).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from functa import atomic
from functa.atomic import LOCK_FILE, atomic_write_bytes, file_mode, output_lock, remove_stale_tmp
from functa.cli import main
from functa.errors import ArtefactError, LockError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import crash  # noqa: E402  (bench/crash.py: the kill driver and the tiny settings)

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGKILL"),
                                reason="needs fork and SIGKILL (POSIX)")

COMMON = ["--quiet", "--threads", "1", "--device", "cpu"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "functa.cli", *COMMON, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny images and an uninterrupted 4-step ``fit`` of them (checkpoint after every step)."""
    root = tmp_path_factory.mktemp("crash")
    data = crash.make_images(root / "images")
    run = root / "reference"
    p = _cli("fit", data, "-o", run, "--steps", 4, *crash.FIT_SETTINGS)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return {"root": root, "data": data, "run": run, "result": crash.fit_result(run)}


# ---------------------------------------------------------------------------- kills

def test_kill_at_every_file_operation_resumes_bit_identically(tmp_path):
    full = os.environ.get("FUNCTA_CRASH_FULL") == "1"
    args = [] if full else ["--steps", "2", "--random", "3"]
    report_path = tmp_path / "crash.json"
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "crash.py"), *args, "--json", str(report_path)],
                         env=_env(), capture_output=True, text=True, timeout=1800)
    assert report_path.exists(), res.stderr[-3000:]
    report = json.loads(report_path.read_text())
    for kind in ("fit", "encode"):
        r = report[kind]
        assert r["kill_points"] == r["file_operations_per_run"] > 20, r  # every operation of a whole run
        assert r["failures"] == [] and r["kills"] == r["bit_identical"], r
    assert report["failures"] == 0 and report["kills"] == report["bit_identical"] > 100
    # killing fit between model.safetensors and config.json was reached and reported as what it is
    assert report["fit"]["probes"].get("interrupted", 0) >= 1
    assert res.returncode == 0


def test_sigkill_at_random_moments_of_real_processes(tiny, tmp_path):
    """``functa fit`` in its own interpreter, SIGKILLed at a random moment of its work (and again
    while resuming), then resumed: the weights are bit-identical to the uninterrupted run's."""
    rng = random.Random()
    run = tmp_path / "run"
    delays = []
    for _ in range(2):
        p = _cli("fit", tiny["data"], "-o", run, "--steps", 4, *crash.FIT_SETTINGS)
        deadline = time.monotonic() + 120
        while _lock_pid(run) != p.pid and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)  # until the interpreter has imported torch and taken the lock: it starts writing
        delays.append(rng.uniform(0.0, 0.6))
        time.sleep(delays[-1])
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    p = _cli("fit", tiny["data"], "-o", run, "--steps", 4, *crash.FIT_SETTINGS)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert crash.fit_same(tiny["result"], crash.fit_result(run)), f"kills after {delays} s"
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


def _lock_pid(directory):
    try:
        return int((directory / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def test_kill_between_weights_and_config_is_reported_as_interrupted(tiny, tmp_path, capsys):
    """The state a kill between the two renames of a base-network save leaves: new weights, old
    config. encode says so (and that fit resumes), not that the weights were modified."""
    from functa.fields import field_from_config
    from functa.io import MODEL_FILE, save_tensors, weights_metadata

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.safetensors", "config.json", "train_state.safetensors", "train_state.json"):
        (run / name).write_bytes((tiny["run"] / name).read_bytes())
    cfg = json.loads((run / "config.json").read_text())
    torch.manual_seed(1)
    state = field_from_config(cfg["field"]).state_dict()
    save_tensors(run / MODEL_FILE, state, metadata=weights_metadata(state))
    assert main(["--quiet", "encode", str(tiny["data"]), "-m", str(run), "-o", str(tmp_path / "fs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "interrupted while saving" in err and "rerun fit to resume" in err and "modified" not in err
    assert len(err.splitlines()) == 1
    # fit resumes and rewrites a consistent pair
    assert main(["--quiet", "fit", str(tiny["data"]), "-o", str(run), "--steps", "4", *crash.FIT_SETTINGS]) == 0
    assert (run / MODEL_FILE).read_bytes() == tiny["result"]["model"]
    # weights changed by hand are still called modified
    raw = bytearray((run / MODEL_FILE).read_bytes())
    raw[-1] ^= 0xFF
    (run / MODEL_FILE).write_bytes(bytes(raw))
    assert main(["--quiet", "encode", str(tiny["data"]), "-m", str(run), "-o", str(tmp_path / "fs")]) == 2
    assert "modified" in capsys.readouterr().err


def test_train_state_is_one_file_and_old_checkpoints_still_resume(tmp_path):
    from functa.fields import LatentModulatedSiren, SirenConfig
    from functa.fitting import MetaLearner, MetaLearningConfig
    from functa.io import STATE_KEY, save_tensors, tensor_metadata

    torch.manual_seed(0)
    field = LatentModulatedSiren(SirenConfig(width=8, depth=2, latent_dim=4))
    learner = MetaLearner(field, MetaLearningConfig(steps=5, batch_size=2))
    learner.step_count = 3
    learner.save_state(tmp_path)
    assert json.loads(tensor_metadata(tmp_path / "train_state.safetensors")[STATE_KEY])["step"] == 3
    # a kill after the tensor file's rename leaves train_state.json one checkpoint behind: the tensor file wins
    stale = json.loads((tmp_path / "train_state.json").read_text())
    stale["step"] = 2
    (tmp_path / "train_state.json").write_text(json.dumps(stale))
    other = MetaLearner(LatentModulatedSiren(SirenConfig(width=8, depth=2, latent_dim=4)), learner.config)
    assert other.load_state(tmp_path)["step"] == 3 and other.step_count == 3
    # checkpoints written before the state was stored in the tensor file are read from the JSON
    tensors = {f"model.{k}": v for k, v in field.state_dict().items()}
    save_tensors(tmp_path / "train_state.safetensors", tensors)
    other.load_state(tmp_path)
    assert other.step_count == 2


def test_task_model_and_codec_saves_interrupted_are_named(tmp_path):
    from functa.codec import FunctaCodec
    from functa.io import save_tensors, weights_metadata
    from functa.tasks.checkpoint import load_task_model, save_task_model
    from functa.tasks.flow import FlowConfig, LatentFlow

    flow = LatentFlow(FlowConfig(dim=4, layers=2, hidden=(8,)))
    save_task_model(tmp_path / "flow", "flow", flow)
    state = {f"model.{k}": v + 1 if v.is_floating_point() else v for k, v in flow.state_dict().items()}
    save_tensors(tmp_path / "flow" / "model.safetensors", state, metadata=weights_metadata(state))
    with pytest.raises(ArtefactError, match="interrupted while saving.*rerun the train command"):
        load_task_model(tmp_path / "flow")
    codec = tmp_path / "codec"
    codec.mkdir()
    save_tensors(codec / "codec.safetensors", {"quantizer.mean": torch.zeros(4)})
    with pytest.raises(ArtefactError, match="incomplete codec.*interrupted"):
        FunctaCodec.load(codec)


# ---------------------------------------------------------------------------- locks

def _hold_lock(path):
    code = ("import sys, time\nfrom functa.atomic import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_writer_gets_a_lock_error_and_a_killed_holder_leaves_no_stale_lock(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    holder = _hold_lock(out)
    try:
        expected = f"{out} is being written by another functa process (pid {holder.pid})"
        commands = [["fit", str(tiny["data"]), "-o", str(out), "--steps", "1"],
                    ["encode", str(tiny["data"]), "-m", str(tiny["run"]), "-o", str(out)],
                    ["codec", "build", "-m", str(tiny["run"]), "--data", str(tiny["data"]), "-o", str(out)],
                    ["classify", "train", "x.functaset", "-o", str(out)],
                    ["classify", "baseline", str(tiny["data"]), "-o", str(out)],
                    ["flow", "train", "x.functaset", "-o", str(out)],
                    ["diffusion", "train", "x.functaset", "-o", str(out)]]
        for argv in commands:
            assert main(["--quiet", *argv]) == 2, argv
            err = capsys.readouterr().err
            assert err.strip().endswith(expected) and len(err.strip().splitlines()) == 1, err
        with pytest.raises(LockError, match="being written by another functa process"):
            with output_lock(out):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    with output_lock(out) as d:  # the kernel released the killed holder's lock
        assert (d / LOCK_FILE).exists()
        with output_lock(out):  # re-entrant within a process
            pass
    assert (out / LOCK_FILE).read_text() == ""  # released: no pid left behind


def test_two_concurrent_encodes_into_one_functaset(tiny, tmp_path):
    """Two real encodes with different --steps into the same output: exactly one succeeds, the
    other exits 2 (locked while the first runs, or refused: the output holds other settings), and
    what remains is the successful one's."""
    fs = tmp_path / "same.functaset"
    procs = [_cli("encode", tiny["data"], "-m", tiny["run"], "-o", fs, "--steps", steps) for steps in (1, 2)]
    results = [(p.returncode, out, err) for p, (out, err) in ((p, p.communicate(timeout=300)) for p in procs)]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    winner = 1 + [rc for rc, _, _ in results].index(0)
    loser_err = next(err for rc, _, err in results if rc == 2).strip().splitlines()[-1]
    assert "being written by another functa process" in loser_err or "already holds a functaset" in loser_err
    assert str(fs) in loser_err
    manifest = json.loads((fs / "manifest.json").read_text())
    assert manifest["complete"] and manifest["header"]["encoding"]["inner_steps"] == winner


def test_a_failed_command_leaves_no_empty_output(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--quiet", "fit", str(tmp_path / "no-such-data"), "-o", str(out)]) == 2
    assert "no-such-data" in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------------------- hygiene

def test_stale_tmp_files_are_removed_when_the_lock_is_taken(tmp_path):
    out = tmp_path / "out"
    (out / "seed0").mkdir(parents=True)
    stale = [out / ".model.safetensors.ab_cd123.tmp", out / ".config.json.0123abcd.tmp",
             out / "seed0" / ".train_state.json.zz9_zz9z.tmp"]
    kept = [out / "notes.tmp", out / ".x.tmp", out / "model.safetensors", out / ".config.json.ABCDEFGH.tmp"]
    for f in stale + kept:
        f.write_bytes(b"x")
    with output_lock(out):
        assert not any(f.exists() for f in stale)
        assert all(f.exists() for f in kept)
    # the helper on its own, deeper trees untouched beyond its depth
    (out / "a" / "b").mkdir(parents=True)
    deep = out / "a" / "b" / ".m.safetensors.abcdefgh.tmp"
    deep.write_bytes(b"x")
    assert remove_stale_tmp(out) == [] and deep.exists()
    assert remove_stale_tmp(out, depth=2) == [deep]


def test_no_other_temporary_file_writers():
    """Every temporary file is made by functa.atomic (mode 0o666 & ~umask, removed on failure)."""
    offenders = []
    for path in (ROOT / "src" / "functa").rglob("*.py"):
        if path.name == "atomic.py":
            continue
        text = path.read_text()
        offenders += [f"{path.name}: {w}" for w in ("mkstemp", "NamedTemporaryFile", "mktemp(") if w in text]
    assert offenders == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_files_get_0666_minus_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert file_mode() == 0o666 & ~mask
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~mask
        with output_lock(tmp_path / "out") as out:
            assert (out / LOCK_FILE).stat().st_mode & 0o777 == 0o666 & ~mask
    finally:
        os.umask(old)


def test_functaset_chunks_and_json_follow_the_umask(tmp_path):
    from functa.functaset import FunctasetWriter

    old = os.umask(0o027)
    try:
        w = FunctasetWriter(tmp_path / "fs", {"base_network": {"sha256": "0" * 64}, "latent_dim": 2}, total=2,
                            chunk_size=1)
        w.append(torch.zeros(2, 2), np.zeros(2), np.arange(2), {"loss": torch.zeros(2)})
        w.close()
    finally:
        os.umask(old)
    modes = {f.name: f.stat().st_mode & 0o777 for f in (tmp_path / "fs").iterdir()}
    assert modes and set(modes.values()) == {0o640}, modes


def test_lock_is_a_noop_where_flock_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "fcntl", None)
    with output_lock(tmp_path / "o") as d:
        with output_lock(tmp_path / "o"):
            assert d.is_dir()
