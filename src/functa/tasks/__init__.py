"""Deep learning on functasets: preprocessing, classifiers, normalizing flows, diffusion,
inference from partial observations and latent-space tools.

Everything here works on plain tensors of latents ``(N, D)``; reading functasets and the
command line live one layer up (:mod:`functa.pipeline`, :mod:`functa.cli`).
"""
