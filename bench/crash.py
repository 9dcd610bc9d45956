"""Kill ``functa fit`` and ``functa encode`` at every file operation and at random moments; check
that the resumed result is bit-identical to an uninterrupted run.

One driver process imports functa once, then forks a child per run (a fresh interpreter per run
would spend most of the time importing torch): a child runs ``functa.cli.main`` with the file
operations of the process counted (``os.open`` for writing, ``os.fsync``, ``os.chmod``,
``os.replace``, ``os.rename``, ``os.unlink``, ``os.mkdir``, ``os.rmdir``, ``os.ftruncate``,
``os.pwrite``) and sends itself SIGKILL just before the k-th one, so every state between two
operations is reached once, with no test hook in the library. After each kill a probe child
opens what the killed run left (``load_base_network`` / ``Functaset(verify=True)``): it must be
either readable or refused with the "interrupted while saving" message, never called modified or
corrupt. Then a normal child resumes the run, and the result is compared with the uninterrupted
run's, byte for byte: ``model.safetensors`` and the tensors of ``train_state.safetensors``
(its metadata records wall times), or every functaset chunk and the manifest's chunk list,
counts and sums. Random kills: a child is killed after a random delay (up to the uninterrupted
run's duration), possibly again while resuming, then resumed.

    python bench/crash.py                       # full sweep of fit and encode + 40 random kills
    python bench/crash.py --random 0 --every 3  # every third operation only, no random kills

Prints (and with ``--json PATH`` writes) ``{"kills": N, "bit_identical": N, ...}``; exits 1 if any
resumed run differs or a probe saw a misleading state.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

FIT_SETTINGS = ["--set", "field.width=8", "--set", "field.depth=2", "--set", "field.latent_dim=4",
                "--set", "train.batch_size=4", "--set", "train.eval_items=4", "--set", "train.eval_every=1000",
                "--set", "train.save_every=1", "--set", "train.warmup_steps=1"]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def make_images(root: Path, train: int = 8, test: int = 4, size: int = 8) -> Path:
    """A tiny grayscale image folder (two classes)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            d = root / split / f"class{i % 2}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(d / f"{i}.png")
    return root


# ---------------------------------------------------------------------------- children

def warm_up() -> None:
    """Import everything a run imports, once, in the driver (every child is forked from it).

    No tensor is computed here: the children get a process whose thread pools are not started.
    """
    import torch
    import torch._dynamo  # noqa: F401  (the first torch.optim.Adam imports it: seconds)

    import functa.cli  # noqa: F401
    import functa.compression  # noqa: F401
    import functa.downstream  # noqa: F401
    import functa.pipeline  # noqa: F401

    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])


def _install_counter(kill_at: int | None) -> list[int]:
    """Count the process's file operations; SIGKILL itself just before operation ``kill_at`` (1-based)."""
    count = [0]

    def wrap(name):
        real = getattr(os, name)

        def op(*args, **kwargs):
            if name != "open" or (len(args) > 1 and args[1] & WRITE_FLAGS):
                count[0] += 1
                if count[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(os, name, op)

    for name in ("open", "fsync", "chmod", "replace", "rename", "unlink", "remove", "mkdir", "rmdir", "ftruncate",
                 "pwrite"):
        wrap(name)
    return count


def run_child(argv: list[str], kill_at: int | None = None, kill_after_s: float | None = None) -> dict:
    """Run ``functa.cli.main(argv)`` in a forked child; returns its exit status, whether it was
    killed, the file operations it performed and its duration."""
    read_end, write_end = os.pipe()
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        rc = 99
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            if os.environ.get("FUNCTA_CRASH_STDERR") != "1":
                os.dup2(devnull, 2)
            count = _install_counter(kill_at)
            from functa.cli import main

            rc = main(argv)
            os.write(write_end, str(count[0]).encode())
        finally:
            os._exit(rc)
    os.close(write_end)
    done, status = 0, 0
    if kill_after_s is not None:
        deadline = t0 + kill_after_s
        while time.perf_counter() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.002)
        else:
            os.kill(pid, signal.SIGKILL)
    if not done:
        _, status = os.waitpid(pid, 0)
    ops = os.read(read_end, 64).decode()
    os.close(read_end)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"killed": killed, "rc": None if killed else os.waitstatus_to_exitcode(status),
            "ops": int(ops) if ops else None, "s": time.perf_counter() - t0}


def probe(kind: str, path: Path) -> str:
    """What a reader sees in ``path`` now (in a forked child): ``ok``, ``absent`` or the error message."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        msg = "?"
        try:
            if kind == "fit":
                from functa.io import load_base_network

                if not (path / "config.json").exists():
                    msg = "absent"
                else:
                    load_base_network(path)
                    msg = "ok"
            else:
                from functa.functaset import MANIFEST, Functaset

                if not (path / MANIFEST).exists():
                    msg = "absent"
                else:
                    Functaset(path, verify=True).arrays()
                    msg = "ok"
        except Exception as e:  # the message is the result
            msg = f"{type(e).__name__}: {e}"
        finally:
            os.write(write_end, msg.encode()[:4000])
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    msg = os.read(read_end, 4096).decode()
    os.close(read_end)
    return msg


def probe_ok(msg: str) -> bool:
    """A reader may find a complete artefact, none yet, or be told that a save was interrupted."""
    return msg in ("ok", "absent") or "interrupted while saving" in msg


# ---------------------------------------------------------------------------- comparing results

def _tensor_part(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's tensor entries and data, without its metadata."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n:]


def fit_result(run: Path) -> dict:
    return {"model": (run / "model.safetensors").read_bytes(),
            "config_sha256": json.loads((run / "config.json").read_text())["sha256"],
            "train_state": _tensor_part(run / "train_state.safetensors"),
            "step": json.loads((run / "train_state.json").read_text())["step"]}


def fit_same(a: dict, b: dict) -> bool:
    import hashlib

    return (a["model"] == b["model"] and a["train_state"] == b["train_state"] and a["step"] == b["step"]
            and b["config_sha256"] == hashlib.sha256(b["model"]).hexdigest())


def encode_result(fs: Path) -> dict:
    manifest = json.loads((fs / "manifest.json").read_text())
    return {"chunks": [(c["file"], c["count"], c["sha256"], (fs / c["file"]).read_bytes()) for c in manifest["chunks"]],
            "count": manifest["count"], "complete": manifest["complete"], "sums": manifest["sums"],
            "header": manifest["header"]}


# ---------------------------------------------------------------------------- sweeps

class Sweep:
    def __init__(self, work: Path, kind: str, argv_for, result, same, prepare=None) -> None:
        self.work, self.kind, self.argv_for, self.result, self.same = work, kind, argv_for, result, same
        self.prepare = prepare
        self.kills = self.identical = 0
        self.failures: list[dict] = []
        self.probes: dict[str, int] = {}
        out = work / f"{kind}-reference"
        ref = run_child(self.argv_for(out))
        if ref["rc"] != 0:
            raise SystemExit(f"the uninterrupted {kind} failed (rc {ref['rc']}); FUNCTA_CRASH_STDERR=1 shows why")
        self.reference, self.ops, self.duration = self.result(out), ref["ops"], ref["s"]

    def _check(self, out: Path, what: dict) -> None:
        msg = probe(self.kind, out)
        key = "ok" if msg == "ok" else "absent" if msg == "absent" else \
            "interrupted" if "interrupted while saving" in msg else "other"
        self.probes[key] = self.probes.get(key, 0) + 1
        if not probe_ok(msg):
            self.failures.append({**what, "probe": msg})

    def _finish(self, out: Path, what: dict) -> None:
        res = run_child(self.argv_for(out))
        self.kills += 1
        if res["rc"] == 0 and self.same(self.reference, self.result(out)):
            self.identical += 1
        else:
            self.failures.append({**what, "resume_rc": res["rc"], "identical": False})
        shutil.rmtree(out, ignore_errors=True)

    def at_operation(self, k: int) -> None:
        out = self.work / f"{self.kind}-op{k}"
        first = run_child(self.argv_for(out), kill_at=k)
        if not first["killed"]:
            self.failures.append({"op": k, "error": f"not killed (rc {first['rc']})"})
            return
        self._check(out, {"op": k})
        self._finish(out, {"op": k})

    def at_random(self, rng: random.Random, index: int) -> None:
        out = self.work / f"{self.kind}-random{index}"
        delays = []
        for _ in range(rng.choice((1, 1, 2))):  # sometimes the resumed run is killed too
            delay = rng.uniform(0.0, self.duration)
            delays.append(round(delay, 4))
            run_child(self.argv_for(out), kill_after_s=delay)
            self._check(out, {"delays_s": delays})
        self._finish(out, {"delays_s": delays})

    def summary(self, points: int) -> dict:
        return {"file_operations_per_run": self.ops, "kill_points": points, "kills": self.kills,
                "bit_identical": self.identical, "uninterrupted_s": round(self.duration, 3),
                "probes": self.probes, "failures": self.failures[:20]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="meta-learning steps (a checkpoint after each)")
    ap.add_argument("--every", type=int, default=1, help="kill at every N-th file operation")
    ap.add_argument("--max-ops", type=int, help="sweep only the first N operations of each run")
    ap.add_argument("--random", type=int, default=20, help="random-moment kills of fit and of encode each")
    ap.add_argument("--only", choices=["fit", "encode"], help="sweep one command only")
    ap.add_argument("--batch-size", type=int, default=8, help="encode: items per batch")
    ap.add_argument("--chunk-size", type=int, default=5, help="encode: items per chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary directory)")
    args = ap.parse_args(argv)

    warm_up()

    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="functa-crash-", dir=args.workdir))
    rng = random.Random(args.seed)
    report: dict = {"command": " ".join(["python", "bench/crash.py", *(argv if argv is not None else sys.argv[1:])])}
    try:
        data = make_images(work / "images")
        common = ["--quiet", "--threads", "1", "--device", "cpu"]

        def fit_argv(out: Path) -> list[str]:
            return [*common, "fit", str(data), "-o", str(out), "--steps", str(args.steps), *FIT_SETTINGS]

        model = work / "model"
        if run_child(fit_argv(model))["rc"] != 0:
            raise SystemExit("fit failed; FUNCTA_CRASH_STDERR=1 shows why")

        def encode_argv(out: Path) -> list[str]:
            # an augmented copy, chunks of 5 rows, batches of 8: chunk, batch and copy boundaries all differ
            return [*common, "encode", str(data), "-m", str(model), "-o", str(out), "--batch-size",
                    str(args.batch_size), "--chunk-size", str(args.chunk_size), "--augment", "flip", "--copies", "1"]

        sweeps = []
        if args.only in (None, "fit"):
            sweeps.append(Sweep(work, "fit", fit_argv, fit_result, fit_same))
        if args.only in (None, "encode"):
            sweeps.append(Sweep(work, "encode", encode_argv, encode_result, lambda a, b: a == b))
        for sweep in sweeps:
            last = sweep.ops if args.max_ops is None else min(sweep.ops, args.max_ops)
            points = list(range(1, last + 1, args.every))
            for k in points:
                sweep.at_operation(k)
            for i in range(args.random):
                sweep.at_random(rng, i)
            report[sweep.kind] = sweep.summary(len(points))
        report["kills"] = sum(report[s.kind]["kills"] for s in sweeps)
        report["bit_identical"] = sum(report[s.kind]["bit_identical"] for s in sweeps)
        report["failures"] = sum(len(s.failures) for s in sweeps)
        report["wall_s"] = round(time.perf_counter() - t0, 1)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if report["failures"] == 0 and report["kills"] == report["bit_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
