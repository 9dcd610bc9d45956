"""Deep learning on functasets: preprocessing, classifiers, normalizing flows, diffusion,
inference from partial observations and latent-space tools.

Everything here works on plain tensors of latents ``(N, D)`` (the DDPM's UNet, :mod:`.unet`, on
latent grids ``(N, *grid, C)``); reading functasets and the
command line live one layer up (:mod:`functa.pipeline`, :mod:`functa.cli`).
"""
