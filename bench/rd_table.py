"""Summarise ``rd.json`` files of ``functa codec-bench``: every point (rate, PSNR, the other quality
measures, times) and the BD-rates of the functa curves, recomputed with the current
:func:`functa.codec.rd.bd_rate` (PCHIP; ``--method cubic`` for Bjøntegaard's polynomial fit).

Usage::

    python bench/rd_table.py runs/rd_speech/rd.json [--out bench/results/rd_speech.json]

Prints one JSON object per file; ``--out`` writes the table (the rd.json with its BD-rates recomputed
and ``bd_method`` recorded) for ``bench/results``. ``--mean OUT`` writes one table averaging the
files point by point (the same codecs and targets on different items, e.g. the folds of a
leave-one-out run: the mean of per-item rates and PSNRs, as over items within one file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from functa.codec.rd import bd_rate


def recompute(table: dict, method: str) -> dict:
    res = table["results"]
    rate = "rate" if "rate" in next(iter(res.values()))[0] else "bpp"  # tables before the rename say bpp
    payload = "payload_rate" if rate == "rate" else "payload_bpp"

    def bd(a, b, key):
        return bd_rate([p[key] for p in a], [p["psnr"] for p in a], [p[key] for p in b], [p["psnr"] for p in b],
                       method)

    functa = {k: v for k, v in res.items() if k.startswith("functa")}
    table = dict(table)
    table["bd_rate_percent"] = {k: {o: bd(v, w, rate) for o, w in res.items() if o != k} for k, v in functa.items()}
    table["bd_rate_payload_percent"] = {k: {o: bd(v, w, payload) for o, w in functa.items() if o != k}
                                        for k, v in functa.items()}
    table["bd_method"] = method
    return table


def mean_table(tables: list[dict], sources: list[str]) -> dict:
    """The point-by-point mean (weighted by item counts) of tables with the same curves and points."""
    out = {**tables[0], "data": [t["data"] for t in tables], "items": sum(t["items"] for t in tables),
           "sources": sources, "results": {}}
    for name, points in tables[0]["results"].items():
        rows = []
        for k, first in enumerate(points):
            pts = [t["results"][name][k] for t in tables]
            w = [t["items"] for t in tables]
            row = dict(first)
            for key, v in first.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and key != "count":
                    row[key] = sum(p[key] * n for p, n in zip(pts, w)) / sum(w)
            row["quality"] = {m: sum(p["quality"][m] * n for p, n in zip(pts, w)) / sum(w) for m in first["quality"]}
            row["count"] = sum(p["count"] for p in pts)
            rows.append(row)
        out["results"][name] = rows
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rd", type=Path, nargs="+")
    p.add_argument("--method", default="pchip", choices=["pchip", "cubic"])
    p.add_argument("--out", type=Path, help="write the recomputed table here (one input file only)")
    p.add_argument("--mean", type=Path, help="write the point-by-point mean of the input tables here")
    a = p.parse_args()
    if a.mean:
        tables = [json.loads(f.read_text()) for f in a.rd]
        a.mean.write_text(json.dumps(mean_table(tables, [str(f) for f in a.rd]), indent=1))
        a.rd = [a.mean]
    for path in a.rd:
        table = recompute(json.loads(path.read_text()), a.method)
        unit = table.get("rate_unit", "bpp")
        points = {k: [{"label": q["label"], unit: round(q.get("rate", q.get("bpp")), 4), "psnr": round(q["psnr"], 2),
                       **{m: round(v, 2) for m, v in q.get("quality", {}).items()}} for q in v]
                  for k, v in table["results"].items()}
        print(json.dumps({"file": str(path), "points": points, "bd_rate_percent": table["bd_rate_percent"]}))
        if a.out:
            a.out.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
