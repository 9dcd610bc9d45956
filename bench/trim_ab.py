"""Speed and peak memory of ``functa encode`` with and without the periodic heap trim, interleaved.

Each run is a fresh process (so ``ru_maxrss`` is its own) encoding the same data with the same base
network, alternately with ``pipeline.HEAP_SLACK_MB`` at its default and with trimming off.

Usage::

    taskset -c 1 python bench/trim_ab.py RUN DATA --copies 2 --rounds 3

The last line of output is a single JSON object (medians of items/s and peak RSS per variant).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import resource, sys, time, torch
torch.set_num_threads(1)
from functa import pipeline
from functa.fitting import tune_cpu_allocator
tune_cpu_allocator()
run, data, out, copies, trim = sys.argv[1:6]
if trim == "off":
    pipeline.HEAP_SLACK_MB = 10**9
t = time.perf_counter()
fs = pipeline.encode(run, data, out, split="all", augment=("scale",) if int(copies) else (), copies=int(copies),
                     progress=False)
wall = time.perf_counter() - t
print(len(fs), wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run")
    p.add_argument("data")
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    res: dict[str, dict[str, list[float]]] = {v: {"items_per_s": [], "peak_rss_mb": []} for v in ("trim", "off")}
    for r in range(args.rounds):
        for variant in (("trim", "off") if r % 2 == 0 else ("off", "trim")):
            out = tempfile.mkdtemp(prefix="trim_ab_")
            try:
                text = subprocess.run([sys.executable, "-c", CHILD, args.run, args.data, out + "/x.functaset",
                                       str(args.copies), variant], check=True, capture_output=True, text=True).stdout
            finally:
                shutil.rmtree(out, ignore_errors=True)
            n, wall, rss = (float(v) for v in text.split()[-3:])
            res[variant]["items_per_s"].append(n / wall)
            res[variant]["peak_rss_mb"].append(rss)
            print(variant, json.dumps({"items_per_s": n / wall, "peak_rss_mb": rss}), flush=True)
    summary = {"bench": "trim_ab", "copies": args.copies, "rounds": args.rounds, "runs": res,
               **{f"{v}_{k}_median": statistics.median(x) for v, d in res.items() for k, x in d.items()}}
    summary["speed_ratio_trim_over_off"] = summary["trim_items_per_s_median"] / summary["off_items_per_s_median"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
