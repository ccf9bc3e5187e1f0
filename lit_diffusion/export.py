"""Export a trained image model as a diffusers pipeline folder.

:func:`export_pipeline` writes ``DDPMPipeline(unet=UNet2DModel, scheduler=SDEScheduler)`` with
``save_pretrained`` (safetensors weights); ``DiffusionPipeline.from_pretrained(out_dir)`` loads it
back and runs any sampler of :mod:`lit_diffusion.samplers` through our scheduler.

Time convention. Our :class:`lit_diffusion.networks.UNet` feeds the diffusers U-Net the timestep
``u = s t`` with ``s = time_scale / T`` (``t`` the SDE's continuous time). A pipeline hands the U-Net
the scheduler's timesteps unchanged, so the exported scheduler runs the *same* SDE written in the
time ``u`` (an exact time change, :func:`rescale_time`): for the linear-beta SDEs (VP, subVP,
contractive VP) ``beta_min/s, beta_max/s``; for VE only the horizon; for the OU processes
``theta/s, sigma/sqrt(s)``; always ``T' = s T`` and ``t_min' = s t_min``. The marginal
coefficients agree exactly, ``alpha'(s t) = alpha(t)``, ``sigma'(s t) = sigma(t)``, and every
prediction type (epsilon, score, denoiser, v) is a function of the state alone, so the exported
U-Net is a plain ``UNet2DModel`` that sees exactly the timesteps it was trained on.
"""

from __future__ import annotations

import copy
import math
import os

import torch
from torch import nn

from .sdes import ContractiveOU, LinearSDE, OU, VE, SDE_CLASSES

__all__ = ["export_pipeline", "rescale_time"]

_BETA_SDES = ("VP", "SubVP", "ContractiveVP")


def rescale_time(sde: LinearSDE, scale: float) -> tuple[str, dict]:
    """``(name, kwargs)`` of the SDE ``sde`` written in the time ``u = scale * t`` (exact)."""
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"rescale_time: scale={scale!r} is invalid; it must be a finite number > 0")
    name = type(sde).__name__
    if name not in SDE_CLASSES or type(sde) is not SDE_CLASSES[name]:
        raise ValueError(
            f"export: cannot express {name} for the diffusers scheduler; valid SDEs: {sorted(SDE_CLASSES)}"
        )
    hp = dict(sde.hparams())
    hp["T"] = hp["T"] * scale
    hp["t_min"] = hp["t_min"] * scale
    if name in _BETA_SDES:
        hp["beta_min"] = hp["beta_min"] / scale
        hp["beta_max"] = hp["beta_max"] / scale
    elif isinstance(sde, (OU, ContractiveOU)):
        hp["theta"] = hp["theta"] / scale
        hp["sigma"] = hp["sigma"] / math.sqrt(scale)
    elif not isinstance(sde, VE):  # pragma: no cover - every SDE_CLASSES entry is handled above
        raise ValueError(f"export: no time change known for {name}")
    return name, hp


def _unet_and_scale(net: nn.Module):
    from diffusers import UNet2DModel

    from .networks import UNet

    if isinstance(net, UNet):
        return net.unet, net.time_scale / net.T
    if isinstance(net, UNet2DModel):
        return net, 1.0
    raise TypeError(
        f"export_pipeline: the network is a {type(net).__name__}; only lit_diffusion.networks.UNet or a "
        "diffusers UNet2DModel can become a diffusers pipeline"
    )


def export_pipeline(
    ckpt_or_module,
    out_dir: str,
    sampler: str = "ddram",
    ema: bool = True,
    **scheduler_kwargs,
) -> str:
    """Write a ``DDPMPipeline`` folder for a trained image model and return ``out_dir``.

    Args:
        ckpt_or_module: a :class:`lit_diffusion.module.ScoreModule` or the path of a checkpoint it
            wrote (loaded with ``weights_only=True``).
        out_dir: the folder to write (``model_index.json``, ``unet/``, ``scheduler/``).
        sampler: the scheduler's sampler (see :class:`lit_diffusion.scheduler.SDEScheduler`).
        ema: export the EMA weights (default) or the raw ones.
        scheduler_kwargs: more :class:`~lit_diffusion.scheduler.SDEScheduler` settings
            (``schedule``, ``ode``, ``final_denoise``...).
    """
    from diffusers import DDPMPipeline

    from .module import ScoreModule
    from .scheduler import SDEScheduler

    if isinstance(ckpt_or_module, (str, os.PathLike)):
        module = ScoreModule.load_checkpoint(str(ckpt_or_module))
    elif isinstance(ckpt_or_module, ScoreModule):
        module = ckpt_or_module
    else:
        raise TypeError(f"export_pipeline: expected a ScoreModule or a checkpoint path; got {type(ckpt_or_module).__name__}")
    unet, scale = _unet_and_scale(module.sampling_net(ema))
    name, kwargs = rescale_time(module.sde, scale)
    sched = SDEScheduler(
        num_train_timesteps=max(int(round(kwargs["T"])), 1),
        prediction_type=module.prediction_type,
        sampler=sampler,
        sde=name,
        sde_kwargs=kwargs,
        **scheduler_kwargs,
    )
    unet = copy.deepcopy(unet).cpu().eval()
    if any(p.dtype != torch.float32 for p in unet.parameters()):
        unet = unet.to(torch.float32)
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    os.makedirs(out_dir, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return str(out_dir)
