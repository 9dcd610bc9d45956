"""Build several canvas codecs (bits x entropy model) of one spatial base network from one encoding.

``functa codec build --data`` fits the training canvases for every codec it builds; for an RD curve of
several bit depths this script fits them once (the same library calls: ``_training_canvases`` and
``FunctaCodec.build``) and writes one codec directory per setting, as the command would.

    python bench/spatial_codec_build.py runs/photos_sp4x16 runs/photos -o runs/codecs/sp \\
        --bits 4 5 6 --entropy context per_dimension

Prints one JSON line per codec (ideal bits per latent value on the training canvases, build seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from functa.codec import CodecConfig, ContextConfig, FunctaCodec, QuantizerConfig
from functa.compression import _training_canvases
from functa.pipeline import load_model, model_loss, open_data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("-o", "--out", required=True, type=Path, help="prefix: codecs go to OUT_<entropy>_b<bits>")
    p.add_argument("--bits", type=int, nargs="+", default=[5])
    p.add_argument("--entropy", nargs="+", default=["context"])
    p.add_argument("--context-steps", type=int, default=2000)
    p.add_argument("--limit", type=int)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    field, modality, cfg = load_model(args.model)
    ds = open_data(args.data, "train", {**cfg.get("data", {}), "limit": args.limit}, False)
    t = time.perf_counter()
    latents = _training_canvases(field, modality, cfg, ds, int(cfg["run"]["train"]["inner_steps"]), False)
    print(json.dumps({"training_canvases": list(latents.shape), "encode_s": time.perf_counter() - t}), flush=True)
    for entropy in args.entropy:
        for bits in args.bits:
            t = time.perf_counter()
            config = CodecConfig(QuantizerConfig(bits=bits), entropy, context=ContextConfig(steps=args.context_steps),
                                 layout="canvas")
            codec = FunctaCodec.build(field, modality, cfg, latents, config)
            ideal, values = codec.ideal_bits(latents)
            out = Path(f"{args.out}_{entropy}_b{bits}")
            codec.save(out, args.model, {"built_from": {"data": args.data, "count": len(latents), "layout": "canvas"},
                                          "stats": {"ideal_bits_per_latent_dim": ideal / values}})
            print(json.dumps({"codec": str(out), "bits": bits, "entropy": entropy, "build_s": time.perf_counter() - t,
                              "ideal_bits_per_latent_value": ideal / values}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
