"""Export a trained image model as a diffusers pipeline folder (safetensors weights).

What is written depends on what stock diffusers can run faithfully:

* **VP models, unconditional, in pixels** (the default, ``sampler=None``): a stock ``DDPMPipeline``
  with a stock ``DDPMScheduler`` whose ``trained_betas`` are the *equivalent discrete table*:
  ``alphas_cumprod[k] = alpha(k / s)^2`` at every integer timestep ``k`` the U-Net sees (``s`` the
  time scale below; ``k = 0`` uses ``t = 0.5 / s``, where ``alpha = 1`` would make DDPM's variance
  0/0).  The folder loads and generates with ``DiffusionPipeline.from_pretrained(folder)`` alone, in a
  fresh interpreter, and every diffusers scheduler swap (``DPMSolverMultistepScheduler.from_config
  (pipe.scheduler.config)``...) runs the trained process; so does
  ``SDEScheduler.from_config(pipe.scheduler.config, sampler="ddram")``.
* **everything else** -- VE / sub-VP / OU processes (whose prior is not ``N(0, I)``), class-conditional
  and latent models, or an explicit ``sampler=`` of ours: :class:`~lit_diffusion.integrations.pipelines.
  LitDiffusionPipeline` (right prior, class labels with guidance, autoencoder) with an
  :class:`~lit_diffusion.integrations.scheduler.SDEScheduler` running the trained SDE (a VP model keeps the stock
  table scheduler unless ``sampler=`` asks for ours).  Load with ``LitDiffusionPipeline.from_pretrained
  (folder)``, which runs no code from the folder.  ``DiffusionPipeline.from_pretrained(folder,
  trust_remote_code=True)`` also loads it but *runs the folder's* ``pipeline.py``: only for folders
  you wrote yourself (a crafted folder's file would run).

Our multistep scheduler carries what ``sample.py`` takes from a model folder (``model_files``): the Gaussian
start's moments, written beside the scheduler config, and the grids fitted to the model, per form.

Every folder has a ``README.md`` saying how to load it and which scheduler swaps are valid.

Time convention. Our :class:`lit_diffusion.training.networks.UNet` feeds the diffusers U-Net the timestep
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
import json
import math
import os
from typing import Optional

import torch
from torch import nn

from ..runtime.checkpoint_io import atomic_folder, atomic_write_bytes
from ..core.sdes import ContractiveOU, LinearSDE, OU, VE, SDE_CLASSES

__all__ = ["export_pipeline", "rescale_time", "vp_table"]

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

    from ..training.networks import UNet

    if isinstance(net, UNet):
        return net.unet, net.time_scale / net.T
    if isinstance(net, UNet2DModel):
        return net, 1.0
    raise TypeError(
        f"export_pipeline: the network is a {type(net).__name__}; only lit_diffusion.training.networks.UNet or a "
        "diffusers UNet2DModel can become a diffusers pipeline"
    )


_DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "v": "v_prediction", "denoiser": "sample"}
PIPELINE_FILE = "pipeline.py"
_PIPELINE_SHIM = (
    "# The pipeline class of this folder lives in the lit_diffusion package (pip install lit_diffusion).\n"
    "# Load with LitDiffusionPipeline.from_pretrained(folder) after `import lit_diffusion`, or with\n"
    "# DiffusionPipeline.from_pretrained(folder, trust_remote_code=True); this file only imports it.\n"
    "from lit_diffusion.integrations.pipelines import LitDiffusionPipeline  # noqa: F401\n"
)


def vp_table(sde: LinearSDE, scale: float, n: int) -> list[float]:
    """The DDPM ``betas`` of ``sde`` (a VP process) at the integer timesteps ``k = 0..n-1`` of a U-Net
    that sees ``u = scale * t``: ``alphas_cumprod[k] = alpha(k / scale)^2`` (``k = 0``: ``t = 0.5 /
    scale``)."""
    k = torch.arange(n, dtype=torch.float64)
    k[0] = 0.5
    abar = torch.exp(2 * sde.log_alpha(k / float(scale)))
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1 - abar / prev).tolist()


def _is_vp(sde: LinearSDE) -> bool:
    from ..core.discrete_vp import DiscreteVP
    from ..core.sdes import VP

    return type(sde) is VP or isinstance(sde, DiscreteVP)


def _load_module(ckpt_or_module):
    from ..training.module import ScoreModule

    if isinstance(ckpt_or_module, (str, os.PathLike)):
        return ScoreModule.load(ckpt_or_module)
    if isinstance(ckpt_or_module, ScoreModule):
        return ckpt_or_module
    raise TypeError(f"export_pipeline: expected a ScoreModule or a checkpoint path; got {type(ckpt_or_module).__name__}")


def _model_files(folder: str, module, scale: float, sampler, scheduler_kwargs: dict) -> dict:
    """The SDEScheduler keys that carry what ``sample.py`` takes from a model folder into the export: the
    Gaussian start (``data_moments.safetensors``, on unconditional multistep runs of at most
    :data:`~lit_diffusion.sampling.defaults.GAUSSIAN_START_RUN` steps; the scheduler saves the file beside its
    config) and the grids fitted to the model (``grids/``, each form's, in the U-Net's time ``u = scale t``).
    Nothing that ``scheduler_kwargs`` sets itself, and nothing for guided or other samplers."""
    from ..sampling.defaults import GAUSSIAN_START_RUN, resolve_sampler
    from ..sampling.gaussian_start import model_moments, moments_path
    from ..sampling.grid_fit import model_grid

    guided = scheduler_kwargs.get("guidance_scale") not in (None, 1, 1.0)
    if resolve_sampler(sampler or "auto") != "multistep" or guided or scheduler_kwargs.get("inverse"):
        return {}
    extra: dict = {}
    start = None
    if module.num_classes is None and "gaussian_start" not in scheduler_kwargs and "noise_ratio" not in scheduler_kwargs:
        start = model_moments(folder)
        if start is not None:
            extra = {"gaussian_start": moments_path(folder), "gaussian_start_steps": GAUSSIAN_START_RUN}
    if "schedule" in scheduler_kwargs or "fitted_grid" in scheduler_kwargs:
        return extra
    final = bool(scheduler_kwargs.get("final_denoise", True))
    grids: dict = {}
    for form in ("ode", "sde"):
        for steps in range(1, 101):
            t_s = start.start_time(module.sde) if start is not None and steps <= GAUSSIAN_START_RUN else None
            found = model_grid(folder, steps, final, form == "ode", t_s)
            if found is not None:
                grids.setdefault(form, []).append([t * scale for t in found[1]])
    return {**extra, "fitted_grid": grids} if grids else extra


def _scheduler(module, scale: float, sampler, scheduler_kwargs: dict):
    """A stock DDPMScheduler table for VP models (unless ``sampler`` asks for ours), else an
    SDEScheduler running the trained SDE in the U-Net's time units."""
    from .scheduler import SDEScheduler

    sde = module.sde
    if sampler is None and _is_vp(sde):
        from diffusers import DDPMScheduler

        pred = _DIFFUSERS_PREDICTIONS.get(module.prediction_type)
        if pred is None:
            raise ValueError(
                f"export_pipeline: a {module.prediction_type!r}-predicting network has no diffusers prediction_type; "
                "pass sampler= to export it with SDEScheduler"
            )
        n = max(int(round(float(sde.T) * scale)), 2)
        if scheduler_kwargs:
            raise ValueError(f"export_pipeline: {sorted(scheduler_kwargs)} are SDEScheduler settings; pass sampler= too")
        return DDPMScheduler(num_train_timesteps=n, trained_betas=vp_table(sde, scale, n), prediction_type=pred,
                             clip_sample=False, variance_type="fixed_small", timestep_spacing="trailing")
    name, kwargs = rescale_time(sde, scale)
    return SDEScheduler(
        num_train_timesteps=max(int(round(kwargs["T"])), 1), prediction_type=module.prediction_type,
        sampler=sampler or "auto", sde=name, sde_kwargs=kwargs, **scheduler_kwargs,
    )


def _carried(sched) -> str:
    """The README's sentence on what the scheduler carries from the model folder (empty when nothing)."""
    config = getattr(sched, "config", {})
    parts = []
    if config.get("gaussian_start"):
        parts.append(f"the Gaussian start (`scheduler/data_moments.safetensors`, on runs of at most "
                     f"{config.get('gaussian_start_steps') or 'any number of'} steps)")
    grids = config.get("fitted_grid")
    if isinstance(grids, dict):
        parts.append("the grids fitted to the model (" + "; ".join(
            f"{form} form: {', '.join(str(len(g) - 1) for g in gs)} steps" for form, gs in sorted(grids.items())) + ")")
    if not parts:
        return ""
    return ("\n\nThe scheduler carries what `sample.py` takes from the model folder: " + " and ".join(parts)
            + ". `SDEScheduler.from_config(pipe.scheduler.config, ...)` keeps them; pass `gaussian_start=None` or "
            "`fitted_grid=None` there to drop them.")


def _readme(stock: bool, module, sched, conditional: bool, latent: bool) -> str:
    load = (
        "from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained(folder)  # a stock DDPMPipeline"
        if stock else
        "from lit_diffusion import LitDiffusionPipeline\npipe = LitDiffusionPipeline.from_pretrained(folder)  "
        "# runs no code from the folder\n"
        "# DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) also works, but it RUNS the folder's\n"
        "# pipeline.py: use it only for a folder you wrote yourself"
    )
    vp_table_sched = type(sched).__name__ == "DDPMScheduler"
    swaps = (
        "Valid: every diffusers scheduler built with `from_config(pipe.scheduler.config)` (DDIM, DPM-Solver++, UniPC, "
        "Euler...), since the config holds the trained VP process as a DDPM table; and "
        "`SDEScheduler.from_config(pipe.scheduler.config, sampler=\"ddram\")`."
        if vp_table_sched else
        f"Valid: `SDEScheduler.from_config(pipe.scheduler.config, sampler=...)` only. The trained process "
        f"({sched.sde!r}) is not a DDPM table: a stock diffusers scheduler built from this config would run "
        "another process."
    )
    swaps += _carried(sched)
    call = "pipe(batch_size=16, num_inference_steps=50"
    if conditional:
        call += f", class_labels=[i % {module.num_classes} for i in range(16)], guidance_scale=3.0"
    call += ").images"
    return (
        "# lit_diffusion export\n\n"
        f"Network: `UNet2DModel` ({module.prediction_type} prediction){', class-conditional' if conditional else ''}"
        f"{', latent (with its AutoencoderKL in vae/)' if latent else ''}. Process: {module.sde!r}.\n\n"
        f"```python\n{load}\nimages = {call}\n```\n\nScheduler swaps: {swaps}\n"
    )


def export_pipeline(
    ckpt_or_module,
    out_dir: str,
    sampler: Optional[str] = None,
    ema: bool = True,
    model_files: bool = True,
    **scheduler_kwargs,
) -> str:
    """Write a diffusers pipeline folder for a trained image model and return ``out_dir``.

    Args:
        ckpt_or_module: a :class:`lit_diffusion.training.module.ScoreModule`, the path of a checkpoint it
            wrote (loaded with ``weights_only=True``) or a pretrained-model folder.
        out_dir: the folder to write (``model_index.json``, ``unet/``, ``scheduler/``, ``README.md``;
            ``vae/`` for a latent model, ``pipeline.py`` for a :class:`LitDiffusionPipeline`).
        sampler: ``None`` (default): a stock DDPM table scheduler for VP models, our ``auto`` (multistep) for the
            others; a name of :data:`lit_diffusion.integrations.scheduler.SCHEDULER_SAMPLERS`: that sampler of
            :class:`~lit_diffusion.integrations.scheduler.SDEScheduler` (with ``scheduler_kwargs``: ``schedule``,
            ``ode``, ``final_denoise``...).
        ema: export the EMA weights (default) or the raw ones.
        model_files: with our multistep sampler and a model folder (or a checkpoint in one), carry what
            ``sample.py`` takes from the folder into the scheduler, so that the pipeline runs what was measured:
            the Gaussian start (``data_moments.safetensors``, copied into ``scheduler/``; unconditional models,
            runs of at most 9 steps) and the fitted grids of ``grids/`` (config key ``fitted_grid``, per form).
    """
    module = _load_module(ckpt_or_module)
    unet, scale = _unet_and_scale(module.sampling_net(ema))
    if model_files and isinstance(ckpt_or_module, (str, os.PathLike)) and (sampler is not None or not _is_vp(module.sde)):
        path = os.fspath(ckpt_or_module)
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        scheduler_kwargs = {**_model_files(folder, module, scale, sampler, scheduler_kwargs), **scheduler_kwargs}
    sched = _scheduler(module, scale, sampler, scheduler_kwargs)
    unet = copy.deepcopy(unet).cpu().eval()
    if any(p.dtype != torch.float32 for p in unet.parameters()):
        unet = unet.to(torch.float32)
    conditional = module.num_classes is not None
    codec = getattr(module, "codec", None)
    stock = type(sched).__name__ == "DDPMScheduler" and not conditional and codec is None
    # the folder is replaced as a whole: a kill never leaves a mix of two exports or truncated weights
    with atomic_folder(out_dir) as tmp:
        _write_export(tmp, stock, unet, sched, codec, module, conditional)
    return str(out_dir)


def _write_export(out_dir: str, stock: bool, unet, sched, codec, module, conditional: bool) -> None:
    from diffusers import DDPMPipeline

    from .pipelines import LitDiffusionPipeline

    if stock:
        DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(out_dir, safe_serialization=True)
    else:
        vae = None
        if codec is not None:
            vae = copy.deepcopy(codec.vae).cpu().eval()
            vae.register_to_config(scaling_factor=codec.scaling)
        LitDiffusionPipeline(unet=unet, scheduler=sched, vae=vae).save_pretrained(out_dir, safe_serialization=True)
        index_path = os.path.join(out_dir, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [PIPELINE_FILE[:-3], "LitDiffusionPipeline"]
        if vae is None:
            index.pop("vae", None)
        atomic_write_bytes(json.dumps(index, indent=2, sort_keys=True).encode(), index_path)
        atomic_write_bytes(_PIPELINE_SHIM.encode(), os.path.join(out_dir, PIPELINE_FILE))
    atomic_write_bytes(_readme(stock, module, sched, conditional, codec is not None).encode(), os.path.join(out_dir, "README.md"))
