"""Latent diffusion: training and sampling in the latent space of a diffusers ``AutoencoderKL``
(Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models").

The autoencoder is loaded from a *local* folder written by ``AutoencoderKL.save_pretrained`` (its
``config.json`` and safetensors weights; pickled ``.bin`` weights are refused).  It is frozen: it is
not trained, not in the optimizer and not in the checkpoint's ``state_dict``; the checkpoint records
its folder (``ScoreModule(autoencoder=PATH)``), and a pretrained-model folder or an exported pipeline
carries a copy of it.

Scaling: diffusion runs on ``z = s * E(x)`` where ``s`` is the autoencoder's ``scaling_factor``
(its config; ``latent_scaling`` overrides it), chosen so that the latents have roughly unit variance
like the pixels in ``[-1, 1]``; pictures are ``D(z / s)``.  Encoding draws from the encoder's
Gaussian posterior (``sample``, the latent-diffusion convention; ``mode`` uses its mean) with the
training step's generator, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["LatentCodec", "load_autoencoder", "ENCODE_MODES"]

ENCODE_MODES = ("sample", "mode")


def load_autoencoder(path) -> nn.Module:
    """A diffusers ``AutoencoderKL`` from a local folder (safetensors weights only), frozen, in eval
    mode.  Errors name the folder and what is missing."""
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"autoencoder={str(path)!r} is not a folder written by AutoencoderKL.save_pretrained "
            "(expected config.json and diffusion_pytorch_model.safetensors)"
        )
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(p), local_files_only=True, use_safetensors=True)
    except (OSError, EnvironmentError, ValueError) as e:
        raise FileNotFoundError(f"autoencoder={str(path)!r} could not be loaded as an AutoencoderKL: {e}") from None
    vae.requires_grad_(False)
    return vae.eval()


class LatentCodec:
    """``encode``/``decode`` between pixels and scaled latents with a frozen autoencoder.

    Not an ``nn.Module`` on purpose: the owner's ``state_dict``, optimizer and ``.to()`` never see it;
    it follows the device of its inputs.
    """

    def __init__(self, path, latent_scaling: Optional[float] = None, encode_mode: str = "sample"):
        if encode_mode not in ENCODE_MODES:
            raise ValueError(f"encode_mode={encode_mode!r} is invalid; valid choices: {list(ENCODE_MODES)}")
        self.path = os.fspath(path)
        self.vae = load_autoencoder(path)
        sf = latent_scaling if latent_scaling is not None else getattr(self.vae.config, "scaling_factor", None)
        if sf is None or not (float(sf) > 0):
            raise ValueError(f"latent scaling {sf!r} is invalid; give latent_scaling > 0 or set scaling_factor in the config")
        self.scaling = float(sf)
        self.encode_mode = encode_mode
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = int(self.vae.config.latent_channels)

    def _on(self, x: Tensor) -> nn.Module:
        p = next(self.vae.parameters())
        if p.device != x.device:
            self.vae.to(x.device)
        return self.vae

    def latent_shape(self, pixel_shape) -> tuple[int, ...]:
        """The latent shape of one image of shape ``(C, H, W)``."""
        c, h, w = pixel_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"images of size {h}x{w} are not divisible by the autoencoder's factor {self.factor}")
        return (self.latent_channels, h // self.factor, w // self.factor)

    @torch.no_grad()
    def encode(self, x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Scaled latents of pixel images ``x`` in ``[-1, 1]`` (float32)."""
        vae = self._on(x)
        if x.shape[1] != vae.config.in_channels:
            raise ValueError(f"the autoencoder takes {vae.config.in_channels}-channel images; got shape {tuple(x.shape)}")
        dist = vae.encode(x.float()).latent_dist
        z = dist.mode() if self.encode_mode == "mode" else dist.sample(generator=generator)
        return (z * self.scaling).float()

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Pixel images in ``[-1, 1]`` (float32, not clipped) of scaled latents ``z``."""
        vae = self._on(z)
        return vae.decode(z.float() / self.scaling).sample.float()
