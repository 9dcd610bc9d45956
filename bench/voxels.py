"""3-D shapes benchmark: every command a user runs, on the shared ModelNet10 32³ chairs and monitors.

Stages (``--stage``, repeatable; each runs ``python -m functa.cli ...`` in a subprocess and reads
the JSON files the commands write):

* ``quality``  meta-learn for ``--minutes`` at each latent size of ``--latents`` and evaluate on
  the fixed hashed test split: voxel accuracy and IoU after each inner step, steps, minutes;
* ``loss``     the same at ``--loss-latent`` with MSE on {0, 1} instead of BCE (the default is the
  better of the two);
* ``classify`` chair vs monitor: MLP on 256-d functa (encoded with ``--copies`` rescaled copies)
  against the 3D CNN on the voxel arrays, 3 seeds each, parameter counts and CPU minutes;
* ``generate`` a class-conditional flow on the functaset, samples rendered as meshes and PNGs,
  and a latent interpolation;
* ``impute``   shapes from half of their voxels and from a single-view depth scan, with and without
  an (unconditional) flow prior: IoU and accuracy on the hidden voxels;
* ``rss``      peak RSS of encoding >= 100k shapes (the paper's rescaling augmentation) with a small
  base network, against 1k and 10k shapes, to show it stays bounded.

Usage::

    python bench/voxels.py --stage quality --minutes 20 --out runs/voxels
    python bench/voxels.py --stage loss --stage classify --stage generate --stage impute --out runs/voxels
    python bench/voxels.py --stage rss --out runs/voxels

The last line of output is a single JSON object (also written to ``OUT/voxels_<stages>.json``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "modelnet10_vox32")
# the recipe for shapes on a CPU (docs/benchmarks.md): the shapes-cpu preset (width 64, depth 4, batch 8,
# 1,024 random voxels per item and step, constant Adam 3e-4), validating on all 136 test shapes
RECIPE = ["--preset", "shapes-cpu", "--set", "train.eval_items=136"]


THREADS = [2]


def functa(*args: str) -> float:
    """Run one ``functa`` command; returns its wall time in seconds (raises on a non-zero exit)."""
    cmd = [sys.executable, "-m", "functa.cli", "--quiet", "--threads", str(THREADS[0]), *args]
    print("$ functa " + " ".join(args), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def fit_eval(out: Path, name: str, minutes: float, extra: list[str]) -> dict:
    run = out / name
    if not (run / "config.json").is_file() or read(run / "config.json")["training"].get("wall_s") is None:
        functa("fit", DATA, "-o", str(run), "--time-limit", str(minutes * 60), "--steps", "1000000000",
               *RECIPE, *extra)
    functa("eval", DATA, "-m", str(run), "--json", str(out / f"{name}_eval.json"))
    cfg, ev = read(run / "config.json"), read(out / f"{name}_eval.json")
    return {"run": str(run), "steps": cfg["training"]["step"], "fit_wall_minutes": cfg["training"]["wall_s"] / 60,
            "loss": cfg["loss"], "field": cfg["field"], "test_items": ev["results"]["count"],
            "per_step": ev["results"]["per_step"], "final": ev["results"]["per_step"][-1]}


def stage_quality(args) -> dict:
    return {f"latent_{d}": fit_eval(args.out, f"bce_{d}", args.minutes, ["--set", f"field.latent_dim={d}"])
            for d in args.latents}


def stage_loss(args) -> dict:
    d = args.loss_latent
    return {"bce": fit_eval(args.out, f"bce_{d}", args.minutes, ["--set", f"field.latent_dim={d}"]),
            "mse": fit_eval(args.out, f"mse_{d}", args.minutes, ["--set", f"field.latent_dim={d}", "--loss", "mse"])}


def encoded(args, copies: int) -> tuple[Path, Path, Path]:
    run = args.out / f"bce_{args.task_latent}"
    train, test = args.out / f"train_c{copies}.functaset", args.out / "test.functaset"
    if not (train / "manifest.json").is_file() or not read(train / "manifest.json")["complete"]:
        extra = ["--augment", "scale", "--copies", str(copies)] if copies else []
        functa("encode", DATA, "-m", str(run), "-o", str(train), *extra)
    if not (test / "manifest.json").is_file() or not read(test / "manifest.json")["complete"]:
        functa("encode", DATA, "-m", str(run), "-o", str(test), "--split", "test")
    return run, train, test


def stage_classify(args) -> dict:
    _, train, test = encoded(args, args.copies)
    seeds = ["--set", "seeds=[0,1,2]"]
    t_mlp = functa("classify", "train", str(train), "--test", str(test), "-o", str(args.out / "clf_functa"), *seeds,
                   "--set", "model.width=128", "--set", "model.depth=4", "--set", "train.steps=3000")
    t_cnn = functa("classify", "baseline", DATA, "-o", str(args.out / "clf_cnn3d"), *seeds,
                   "--set", "model.channels=[16,32,64]", "--set", "model.width=128", "--set", "train.steps=3000",
                   "--set", "train.batch_size=64")
    mlp, cnn = read(args.out / "clf_functa" / "metrics.json"), read(args.out / "clf_cnn3d" / "metrics.json")
    row = lambda m, t: {k: m[k] for k in ("name", "parameters", "test_accuracy_mean", "test_accuracy_std")} | {  # noqa: E731
        "cpu_minutes_3_seeds": t / 60, "runs": m["runs"]}
    return {"functa_mlp": row(mlp, t_mlp), "cnn3d": row(cnn, t_cnn), "train_items": read(train / "manifest.json")["count"]}


def stage_generate(args) -> dict:
    run, train, test = encoded(args, args.copies)
    flow = args.out / "flow_conditional"
    functa("flow", "train", str(train), "--test", str(test), "-o", str(flow), "--set", "conditional=true",
           "--set", "train.steps=5000")
    functa("flow", "sample", str(flow), "-o", str(args.out / "flow_samples"), "-n", "8", "--temperature", "0.8",
           "--scale", "2")
    functa("interpolate", str(test), "-m", str(run), "-o", str(args.out / "interpolation"), "--pair", "0", "1",
           "--steps", "6", "--scale", "2")
    return {"flow": read(flow / "metrics.json"), "samples": read(args.out / "flow_samples" / "metrics.json")}


def stage_impute(args) -> dict:
    run, train, test = encoded(args, args.copies)
    prior = args.out / "flow_prior"
    if not (prior / "metrics.json").is_file():
        functa("flow", "train", str(train), "--test", str(test), "-o", str(prior), "--set", "train.steps=5000")
    res = {}
    for mask in ("x-half", "depth-scan"):
        out = args.out / f"impute_{mask}"
        functa("impute", DATA, "-m", str(run), "--prior", str(prior), "--mask", mask, "--indices", "0:32",
               "--steps", "300", "-o", str(out))
        m = read(out / "metrics.json")
        res[mask] = {k: m[k] for k in ("observed_fraction", "count", "grid")} | {
            name: {"hidden": m[name]["hidden"], "observed": m[name]["observed"]} for name in ("no_prior", "prior")}
    return res


def stage_rss(args) -> dict:
    """Peak RSS of ``functa encode`` of 1k, 10k and >= 100k shapes (rescaled copies, streamed)."""
    run = args.out / "rss_base"
    if not (run / "config.json").is_file():
        functa("fit", DATA, "-o", str(run), "--steps", "20", "--set", "field.width=16", "--set", "field.depth=3",
               "--set", "field.latent_dim=16", "--set", "train.batch_size=8", "--set", "train.points_per_step=512",
               "--set", "train.eval_items=16")
    res = {}
    for copies in args.rss_copies:
        out = args.out / f"rss_c{copies}.functaset"
        cmd = [sys.executable, "-c", "import resource, sys; from functa.cli import main; rc = main(sys.argv[1:]); "
               "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)",
               "--quiet", "--threads", str(THREADS[0]), "encode", DATA, "-m", str(run), "-o", str(out), "--split", "all"]
        cmd += ["--augment", "scale", "--copies", str(copies)] if copies else []
        print("$ functa encode ... --copies", copies, flush=True)
        t = time.perf_counter()
        text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        wall = time.perf_counter() - t
        kb = int(text.split("MAXRSS_KB")[1].split()[0])
        items = read(out / "manifest.json")["count"]
        res[f"copies_{copies}"] = {"items": items, "peak_rss_mb": kb / 1024, "wall_s": wall,
                                   "items_per_s": items / wall}
        print(json.dumps(res[f"copies_{copies}"]), flush=True)
    return res


STAGES = {"quality": stage_quality, "loss": stage_loss, "classify": stage_classify, "generate": stage_generate,
          "impute": stage_impute, "rss": stage_rss}


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", action="append", choices=sorted(STAGES), required=True)
    p.add_argument("--out", type=Path, default=Path("runs/voxels"))
    p.add_argument("--minutes", type=float, default=20.0, help="meta-learning minutes per run")
    p.add_argument("--latents", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--loss-latent", type=int, default=64)
    p.add_argument("--task-latent", type=int, default=256, help="base network of the downstream stages")
    p.add_argument("--copies", type=int, default=9, help="rescaled copies of the training shapes for downstream")
    p.add_argument("--threads", type=int, default=2, help="torch threads of every command")
    p.add_argument("--rss-copies", type=int, nargs="+", default=[0, 7, 73],
                   help="copies of the 1,354 shapes: 1,354 / 10,832 / 100,196 items")
    args = p.parse_args()
    THREADS[0] = args.threads
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"bench": "voxels", "data": DATA, "recipe": RECIPE}
    for s in args.stage:
        result[s] = STAGES[s](args)
    result["children_max_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (args.out / f"voxels_{'_'.join(args.stage)}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
