"""Speed and memory of NeRF scenes: rays per second of meta-learning and of rendering, and the peak memory
of one meta-learning step at the paper's sampling (16 views x 512 pixels x 32 points per scene), with and
without per-inner-step checkpointing.

Each configuration runs in a fresh subprocess (so its peak RSS is its own), configurations interleaved,
``--reps`` rounds; JSON on stdout (medians and spreads). Run pinned to one core:

    OMP_NUM_THREADS=1 taskset -c 1 python bench/scene_speed.py --reps 3 > bench/results/scene_speed.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = {
    # name: (scenes per step, views, pixels per view, points per ray, checkpoint_inner, mode)
    "train_scenes_cpu": (4, 4, 128, 16, False, "train"),
    "train_scenes_cpu_autograd": (4, 4, 128, 16, False, "train-autograd"),
    "train_paper_sampling": (1, 16, 512, 32, False, "train"),
    "train_paper_sampling_checkpointed": (1, 16, 512, 32, True, "train"),
    "render_4_views_64px": (1, 4, 4096, 32, False, "render"),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(name: str, steps: int) -> dict:
    import numpy as np
    import torch

    from functa.data.scene_dataset import SceneDataset
    from functa.fields import field_from_config
    from functa.fitting import MetaLearner, MetaLearningConfig
    from functa.modalities import SceneModality
    from functa.modalities.cameras import orbit_poses

    torch.manual_seed(0)
    b, v, p, pts, ckpt, mode = CONFIGS[name]
    s, views, size = 4, 50, 64
    rng = np.random.default_rng(0)
    poses = np.stack([orbit_poses(views, 1.7, elevation_deg=float(e)) for e in rng.uniform(-60, 60, s)])
    ds = SceneDataset(rng.integers(0, 256, (s, views, size, size, 3), dtype=np.uint8), None,
                      {"near": 0.8, "far": 2.6}, poses=poses, focal=90.0)
    base = {k: val for k, val in SceneModality.from_dataset(ds).to_config().items() if k != "name"}
    m = SceneModality(**{**base, "views_per_step": v, "pixels_per_view": min(p, size * size), "points_per_ray": pts})
    field = field_from_config({"name": "latent_modulated_siren", "in_dim": 3, "out_dim": 4, "width": 64, "depth": 4,
                               "latent_dim": 128, "w0": 5.0, "output_offset": 0.5})  # the scenes-cpu network
    train, _ = m.sources(ds, ds, patches=False, seed=0)
    times = []
    rss0 = _rss_mb()
    if mode.startswith("train"):
        learner = MetaLearner(field, MetaLearningConfig(batch_size=b, outer_lr=1e-4, checkpoint_inner=ckpt))
        if mode == "train-autograd":  # the whole inner gradient by autograd (no explicit SIREN adjoint)
            from dataclasses import replace

            from functa.fitting import OuterObjective

            learner.inner = replace(learner.inner, fast_path=False)
            learner.objective = OuterObjective(field, learner.inner)
        rays = b * v * p
        for k in range(steps + 1):
            batch = train.sample(np.arange(b), np.random.default_rng(k))
            t0 = time.perf_counter()
            learner.train_step(batch)
            times.append(time.perf_counter() - t0)
    else:
        z = torch.zeros(1, 128)
        poses_k = m.camera_path(v)
        rays = v * size * size
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            m.render_views(field, z, poses_k)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = statistics.median(times[1:])
    return {"name": name, "scenes": b, "views": v, "pixels_per_view": p, "points_per_ray": pts,
            "checkpoint_inner": ckpt, "inner_gradient": "autograd" if mode == "train-autograd" else "explicit",
            "rays_per_step": rays, "field_points_per_step": rays * pts,
            "seconds_per_step": t, "rays_per_s": rays / t, "peak_rss_mb": peak, "rss_before_mb": rss0,
            "peak_minus_before_mb": peak - rss0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.steps)))
        return
    rows: dict[str, list[dict]] = {n: [] for n in CONFIGS}
    for _ in range(args.reps):  # interleaved: every configuration once per round
        for name in CONFIGS:
            out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {}
    for name, rs in rows.items():
        sps = [r["seconds_per_step"] for r in rs]
        mem = [r["peak_minus_before_mb"] for r in rs]
        summary[name] = {**{k: rs[0][k] for k in ("scenes", "views", "pixels_per_view", "points_per_ray",
                                                   "checkpoint_inner", "rays_per_step", "field_points_per_step")},
                         **({"inner_gradient": rs[0]["inner_gradient"]} if "inner_gradient" in rs[0] else {}),
                         "seconds_per_step_median": statistics.median(sps), "seconds_per_step_min": min(sps),
                         "seconds_per_step_max": max(sps),
                         "rays_per_s_median": rs[0]["rays_per_step"] / statistics.median(sps),
                         "peak_rss_growth_mb_median": statistics.median(mem), "peak_rss_mb_median":
                         statistics.median(r["peak_rss_mb"] for r in rs)}
    print(json.dumps({"bench": "scene_speed", "reps": args.reps, "steps": args.steps, "field": "width 64, depth 4, "
                      "latent 128 (scenes-cpu)", "results": summary}, indent=1))


if __name__ == "__main__":
    main()
