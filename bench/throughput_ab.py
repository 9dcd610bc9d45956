"""A/B throughput of two versions of the library, interleaved in one run.

Checks out ``--base`` (a git revision, default ``HEAD~1``) into a temporary worktree and runs
``bench/throughput.py`` of each version alternately (A B B A A B ...), each run a fresh process
pinned to one core with one thread, so drifts of the shared machine hit both alike. Reports the
median and spread of the train step and encode batch times of each version and the speed ratio
``new / base`` (> 1: the working tree is faster).

Usage::

    python bench/throughput_ab.py --config C1 --rounds 6 --base 59023ac            # eager
    python bench/throughput_ab.py --config C1 --rounds 4 --base 59023ac --compile  # torch.compile

The last line of output is a single JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_one(tree: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(tree / "bench" / "throughput.py"), "--config", args.config, "--threads", "1",
           "--steps", str(args.steps), "--encode-batches", str(args.encode_batches),
           "--compile" if args.compile else "--no-compile"]
    if shutil.which("taskset") and args.core >= 0:
        cmd = ["taskset", "-c", str(args.core)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 2), "min": round(min(values), 2), "max": round(max(values), 2),
            "runs": [round(v, 2) for v in values]}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="C1")
    p.add_argument("--base", default="HEAD~1", help="git revision to compare the working tree against")
    p.add_argument("--rounds", type=int, default=6, help="runs of each version")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--encode-batches", type=int, default=10)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--core", type=int, default=1, help="CPU core to pin to (-1: no pinning)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="functa-ab-"))
    base_tree = tmp / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True,
                   capture_output=True)
    base_rev = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    trees = {"base": base_tree, "new": ROOT}
    results: dict[str, list[dict]] = {"base": [], "new": []}
    try:
        for r in range(args.rounds):
            order = ("base", "new") if r % 2 == 0 else ("new", "base")
            for name in order:
                res = run_one(trees[name], args)
                results[name].append(res)
                print(f"round {r} {name}: train {res['train_step_ms']:.1f} ms, encode {res['encode_batch_ms']:.1f} ms",
                      flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"name": "throughput-ab", "config": args.config, "base": base_rev, "compile": args.compile,
           "threads": 1, "pinned_core": args.core, "rounds": args.rounds}
    for key in ("train_step_ms", "encode_batch_ms"):
        for name in ("base", "new"):
            out[f"{name}_{key}"] = summary([r[key] for r in results[name]])
        # speed ratio of the working tree over the base, from the medians (> 1: new is faster)
        out[f"{key.split('_')[0]}_speed_ratio"] = round(out[f"base_{key}"]["median"] / out[f"new_{key}"]["median"], 4)
    out["new_executed_peak_fraction"] = {k: summary([r[k] for r in results["new"]]) for k in
                                         ("train_executed_peak_fraction", "encode_executed_peak_fraction")}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
