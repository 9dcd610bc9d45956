"""Audio and 3-D medical volumes (issue 12): every command a user runs, on the shared data.

Stages (``--stage``, repeatable; each runs ``python -m functa.cli ...`` in a subprocess, pinned to
``--core`` with one thread, and reads the JSON files the commands write):

* ``speech``  meta-learn on 400-sample patches of the LibriSpeech train split (2 utterances, 16 kHz)
  for ``--minutes``, build codecs at 3-6 bits, and ``codec-bench`` the held-out utterance (whole,
  14.8 s) against MP3 (LAME CBR) and Opus: kbps, PSNR, SNR;
* ``volume``  meta-learn on 16³ patches of the niivue 64³ cubes, build codecs at 3-6 bits, and
  ``codec-bench`` the held-out cube and the MNI ICBM152 2009a T1 template (``--mni``, whole,
  197×233×189) against per-slice JPEG 2000 and WebP and 3-D SPERR: bits per voxel;
* ``fsdd``    spoken digits: meta-learn on 400-sample patches (8 kHz, clips padded / cut to 0.5 s),
  encode every clip as its 10 patch latents, an MLP on them against the 1-D waveform CNN, 3 seeds;
* ``speed``   compress / decompress throughput of the speech and volume codecs (median of
  ``--repeats`` runs): seconds of audio per second and voxels per second.

The MNI template ships in the nilearn wheel (no download at run time; fetch the wheel once)::

    pip download nilearn==0.14.1 --no-deps -d wheels
    unzip -j wheels/nilearn-0.14.1-py3-none-any.whl 'nilearn/datasets/data/mni_icbm152_t1_*' -d mni

Usage::

    python bench/audio_volumes.py --stage speech --stage volume --stage fsdd --out runs/av --mni mni/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz
    python bench/audio_volumes.py --stage speed --out runs/av --mni mni/...nii.gz

The last line of output is one JSON object (also written to ``OUT/audio_volumes_<stages>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPEECH = SHARED / "librispeech_samples"
CUBES = SHARED / "mri_ct_volumes_niivue" / "volumes64_ras_uint8.npz"
FSDD = SHARED / "fsdd_spoken_digits" / "fsdd.npz"
BITS = (3, 4, 5, 6)
FSDD_DATA = ["--set", "data.audio_length=4000", "--set", "data.audio_pad=true"]


def cli(core: int, *args: str) -> float:
    """Run ``functa ARGS`` pinned to one core and one thread; returns its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t = time.perf_counter()
    subprocess.run(["taskset", "-c", str(core), sys.executable, "-m", "functa.cli", "--quiet", *map(str, args)],
                   check=True, env=env)
    return time.perf_counter() - t


def fit_and_codecs(core: int, data: Path, run: Path, minutes: float, steps: int, extra: list[str]) -> dict:
    wall = cli(core, "fit", data, "-o", run, "--set", f"train.steps={steps}", "--time-limit", int(60 * minutes), *extra)
    for b in BITS:
        cli(core, "codec", "build", "-m", run, "--data", data, "-o", f"{run}_c{b}", "--bits", b)
    return {"train_minutes": wall / 60}


def bench(core: int, data: Path, run: Path, out: Path, standard: list[str], targets: list[float]) -> dict:
    codecs = [a for b in BITS for a in ("-m", f"{run}_c{b}")]
    cli(core, "codec-bench", data, *codecs, "-o", out, "--standard", *standard, "--targets", *targets)
    return json.loads((out / "rd.json").read_text())


def stage_speech(a) -> dict:
    run = a.out / "speech"
    res = fit_and_codecs(a.core, SPEECH, run, a.minutes, 1300, ["--set", "data.patch=[400]", "--set", "field.w0=50",
                                                               "--set", "field.latent_dim=64"])
    res["rd"] = bench(a.core, SPEECH, run, a.out / "rd_speech", ["mp3", "opus"], [6, 8, 12, 16, 24, 32, 48, 64])
    return res


def stage_volume(a) -> dict:
    run = a.out / "volume"
    res = fit_and_codecs(a.core, CUBES, run, a.minutes, 320, ["--set", "data.patch=[16,16,16]", "--set",
                                                             "field.latent_dim=64", "--set", "train.batch_size=8"])
    std = ["jpeg2000-slices", "webp-slices", "sperr"]
    targets = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0]
    res["rd_cubes"] = bench(a.core, CUBES, run, a.out / "rd_cubes", std, targets)
    if a.mni:
        res["rd_mni"] = bench(a.core, a.mni, run, a.out / "rd_mni", std, targets)
    return res


def stage_fsdd(a) -> dict:
    run, out = a.out / "fsdd", {}
    out["train_s"] = cli(a.core, "fit", FSDD, "-o", run, *FSDD_DATA, "--set", "data.patch=[400]", "--set", "field.w0=50",
                         "--set", "field.latent_dim=64", "--set", "train.steps=1100", "--time-limit", int(60 * a.minutes))
    for split in ("train", "test"):
        out[f"encode_{split}_s"] = cli(a.core, "encode", FSDD, "-m", run, "-o", a.out / f"fsdd_{split}", "--split", split)
    out["mlp_s"] = cli(a.core, "classify", "train", a.out / "fsdd_train", "--test", a.out / "fsdd_test", "-o",
                       a.out / "fsdd_mlp", "--set", "seeds=[0,1,2]", "--set", "classifier=mlp")
    out["transformer_s"] = cli(a.core, "classify", "train", a.out / "fsdd_train", "--test", a.out / "fsdd_test",
                               "-o", a.out / "fsdd_transformer", "--set", "seeds=[0,1,2]", "--set", "train.steps=1500")
    out["cnn_s"] = cli(a.core, "classify", "baseline", FSDD, "-o", a.out / "fsdd_cnn", *FSDD_DATA, "--set",
                       "seeds=[0,1,2]", "--set", "train.steps=1000", "--set", "train.lr=3e-3", "--set",
                       "train.ema_decay=0.99", "--set", "train.warmup_steps=100", "--set", "train.eval_every=250")
    for name in ("fsdd_mlp", "fsdd_transformer", "fsdd_cnn"):
        out[name] = json.loads((a.out / name / "metrics.json").read_text())
    return out


def stage_speed(a) -> dict:
    """Median compress / decompress seconds of one whole item (``functa.compression.compress_file`` /
    ``decompress_file``, their own ``encode_s`` / ``decode_s``: file reading and writing excluded), in
    this process pinned to ``--core`` with one thread, after one warm-up run."""
    import torch

    from functa.compression import compress_file, decompress_file

    os.sched_setaffinity(0, {a.core})
    torch.set_num_threads(1)
    items = {"speech": (a.out / "speech_c5", sorted(SPEECH.glob("5703-*.ogg"))[0], "wav", "s of audio")}
    if a.mni:
        items["mni"] = (a.out / "volume_c5", Path(a.mni), "nii.gz", "voxels")
    out = {}
    for name, (codec, item, suffix, unit) in items.items():
        fta, back = a.out / f"speed_{name}.fta", a.out / f"speed_{name}.{suffix}"
        enc, dec = [], []
        for r in range(a.repeats + 1):  # the first run warms up
            e = compress_file(codec, item, fta)
            d = decompress_file(codec, fta, back)
            if r:
                enc.append(e["encode_s"])
                dec.append(d["decode_s"])
        size = e["shape"][0] / 16000 if unit == "s of audio" else float(np.prod(e["shape"]))
        out[name] = {"item": str(item), "shape": e["shape"], "unit": unit, "compress_s": enc, "decompress_s": dec,
                     "encode_per_s": size / statistics.median(enc), "decode_per_s": size / statistics.median(dec),
                     "rate": e["rate"], "rate_unit": e["rate_unit"], "quality": e["quality"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", action="append", required=True, choices=["speech", "volume", "fsdd", "speed"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--mni", type=Path, help="the MNI T1 template .nii.gz (see the module docstring)")
    p.add_argument("--minutes", type=float, default=13.0, help="meta-learning minutes per base network")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--core", type=int, default=1)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    stages = {"speech": stage_speech, "volume": stage_volume, "fsdd": stage_fsdd, "speed": stage_speed}
    result = {"name": "audio-volumes", "stages": a.stage}
    for s in a.stage:
        result[s] = stages[s](a)
    (a.out / f"audio_volumes_{'_'.join(a.stage)}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
