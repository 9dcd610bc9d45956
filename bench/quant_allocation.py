"""Which per-dimension step sizes give the best rate-distortion? (offline, ideal code lengths)

Compares three allocations of uniform quantisation steps over latent dimensions, each swept over a
scale to trace a curve: one step for all dimensions (COIN++'s global statistics), steps
proportional to each dimension's std (per-dimension statistics, thesis 6.4.1), and steps
proportional to 1/sqrt(sensitivity) (sensitivity g_i = mean squared change of the output per unit
change of latent i; the high-rate optimum for MSE with entropy coding). Rates are ideal code
lengths under per-dimension tables fitted on the training latents (min count 1), PSNR is the mean
per-image PSNR of the dequantised reconstructions.

Usage::

    python bench/quant_allocation.py CODEC_DIR TRAIN_FUNCTASET DATA [--items 300]
"""
import argparse, json, numpy as np, torch
from functa.codec import FunctaCodec
from functa.functaset import Functaset
from functa.codec.rd import bd_rate
from functa.fitting import Batch, fit_latents
from functa.fitting.metrics import mse_per_item, psnr
from functa.pipeline import open_data
torch.set_num_threads(2)
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("codec"); ap.add_argument("functaset"); ap.add_argument("data"); ap.add_argument("--items", type=int, default=300)
args = ap.parse_args()
codec = FunctaCodec.load(args.codec)
field, mod = codec.field, codec.modality
L = codec.latent_dim
fs = Functaset(args.functaset)
ztr = fs.arrays()["latents"].double()  # (N, D) training latents
x = mod.coordinates()[None]
M = args.items
test = open_data(args.data, "test", {"limit": M}, False)
y = mod.to_features(np.asarray(test.data[:M]))
zte = torch.cat([fit_latents(field, Batch(x, y[i:i+100]), 3).latents.detach() for i in range(0, M, 100)]).double()


def mean_psnr(z):  # latents (M, D) -> mean over test items of per-item PSNR of the reconstruction
    with torch.no_grad():
        pred = torch.cat([field(x, z[i:i+100].float()) for i in range(0, M, 100)]).clamp(0, 1)
    return float(psnr(mse_per_item(pred, y)).mean())


# sensitivity g_i = E ||d f / d z_i||^2 (mean over points/channels), finite differences on 128 train items
zb = ztr[:128].float(); eps = 1e-3
with torch.no_grad():
    base = field(x, zb)
    g = torch.zeros(L)
    for i in range(L):
        zp = zb.clone(); zp[:, i] += eps
        out = field(x, zp)
        g[i] = ((out - base) / eps).pow(2).mean()
g = g.double()
mean, sd = ztr.mean(0), ztr.std(0)
def run(step):  # step (D,) in latent units; symbols = round((z-mean)/step); per-dim tables from train with min_count 1
    qtr = torch.round((ztr - mean) / step).long(); qte = torch.round((zte - mean) / step).long()
    lo = torch.minimum(qtr.min(0).values, qte.min(0).values); hi = torch.maximum(qtr.max(0).values, qte.max(0).values)
    bits = 0.0
    for d in range(L):
        n = int(hi[d] - lo[d] + 1)
        c = torch.bincount(qtr[:, d] - lo[d], minlength=n).double(); c[c == 0] = 1  # (coverage of test handled by min count)
        p = c / c.sum()
        bits += float(-p[qte[:, d] - lo[d]].log2().sum())
    return bits / M / float(np.prod(mod.shape)), mean_psnr(qte * step + mean)
res = {}
for name, base_step in (("global", torch.full((L,), float(ztr.std()))), ("sigma", sd), ("sensitivity", 1 / g.sqrt() * float(sd.mean() * g.sqrt().mean()))):
    pts = []
    for s in (0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.9):
        pts.append(run(base_step * s))
    res[name] = pts
    print(name, [(round(b, 4), round(p, 3)) for b, p in pts], flush=True)
unquantised = mean_psnr(zte)
print("unquantised psnr", unquantised)
for a in res:
    for b in res:
        if a < b:
            A, B = res[a], res[b]
            print(a, "vs", b, bd_rate([p[0] for p in A], [p[1] for p in A], [p[0] for p in B], [p[1] for p in B]))
print(json.dumps({"bench": "quant_allocation", "codec": args.codec, "latent_dim": L, "items": M,
                  "curves_bpp_psnr": res, "unquantised_psnr": unquantised,
                  "bd_rate_percent_vs_global": {k: bd_rate([p[0] for p in v], [p[1] for p in v], [p[0] for p in res["global"]], [p[1] for p in res["global"]]) for k, v in res.items() if k != "global"},
                  "sensitivity_min_median_max": [float(g.min()), float(g.median()), float(g.max())],
                  "std_min_median_max": [float(sd.min()), float(sd.median()), float(sd.max())]}))
print("g spread", float(g.min()), float(g.median()), float(g.max()), "corr(log g, log sd)", float(np.corrcoef(g.log(), sd.log())[0, 1]))
