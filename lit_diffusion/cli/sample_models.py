"""``sample.py``'s models: a Lightning checkpoint, a pretrained-model folder or a diffusers pipeline
folder, loaded into one :class:`LoadedModel` (network, SDE, prediction type, shape, decoder)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..runtime.checkpoint_io import CheckpointError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    net: nn.Module
    sde: object
    prediction_type: str
    data_shape: Optional[tuple]
    kind: str  # "lightning" or "diffusers"
    info: dict = dc_field(default_factory=dict)
    decode: Optional[Callable[[Tensor], Tensor]] = None  # latent models: latents -> pixels


def _of_module(module, ema: bool, kind: str) -> LoadedModel:
    """A :class:`~lit_diffusion.training.module.ScoreModule` from :meth:`ScoreModule.load` (the one
    loader of our formats) as a :class:`LoadedModel` (its EMA network when asked and present)."""
    ema = bool(ema) and module.ema is not None
    shape = tuple(module.data_shape) if module.data_shape is not None else None
    info = {"sde": repr(module.sde), **getattr(module, "pretrained_info", {})}
    if kind == "lightning":
        info.update(ema=ema, **module.checkpoint_info)
    return LoadedModel(module.sampling_net(ema).eval(), module.sde, module.prediction_type, shape, kind, info,
                       None if module.codec is None else module.codec.decode)


def load_lightning(path, ema: bool = True) -> LoadedModel:
    """A :class:`~lit_diffusion.training.module.ScoreModule` checkpoint (``weights_only=True``)."""
    from ..training.module import ScoreModule

    return _of_module(ScoreModule.load_checkpoint(str(path)).eval(), ema, "lightning")


def load_diffusers(folder) -> LoadedModel:
    """A diffusers pipeline folder: ``unet/`` (``UNet2DModel``) + ``scheduler/scheduler_config.json``."""
    from ..core.parametrizations import canonical_prediction
    from ..integrations.scheduler import SDEScheduler

    folder = Path(folder)
    unet_dir, cfg_file = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    missing = [str(p.relative_to(folder)) for p in (unet_dir / "config.json", cfg_file) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{str(folder)!r} is not a diffusers pipeline folder: missing {missing} "
            "(expected unet/ with a UNet2DModel and scheduler/scheduler_config.json)"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("the scheduler config is not a JSON object")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read {str(cfg_file)!r}: {type(e).__name__}: {e}") from e
    from diffusers import UNet2DModel

    from ..training.networks import UNet

    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not load the UNet2DModel in {str(unet_dir)!r}: {type(e).__name__}: {e}") from e
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        from ..integrations.scheduler_files import saved_moments

        if cfg.get("gaussian_start") is not None:  # an export's moments, saved beside the config
            cfg["gaussian_start"] = saved_moments(cfg_file.parent, cfg["gaussian_start"])
        scheduler = SDEScheduler.from_config(cfg)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"scheduler config {str(cfg_file)!r} is not usable: {type(e).__name__}: {e}") from e
    pred = canonical_prediction(scheduler.config.prediction_type)
    size = unet.config.sample_size
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    shape = (int(unet.config.in_channels),) + hw
    decode = None
    if (folder / "vae" / "config.json").is_file():  # a latent export: decode with its autoencoder
        from ..training.autoencoder import LatentCodec

        try:
            decode = LatentCodec(folder / "vae").decode
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"the autoencoder in {str(folder / 'vae')!r} is not usable: {e}") from None
    return LoadedModel(
        UNet.around(unet.eval(), pred), scheduler.sde, pred, shape, "diffusers",
        {"sde": repr(scheduler.sde), "scheduler_class": json.loads(cfg_file.read_text()).get("_class_name")}, decode,
    )


def pipeline_grid(folder, steps: int, final_denoise: bool, ode: bool, top: float) -> Optional[tuple[str, list]]:
    """``(where, timesteps)`` of the grid of ``steps`` steps that an exported pipeline folder's scheduler config
    holds for the form (``fitted_grid``, export_pipeline's model files), or None: only a grid that starts at
    ``top`` (the run's first time: a Gaussian start's, else ``T``) and ends as the run does."""
    from ..integrations.scheduler_config import fitted_grids

    cfg_file = Path(folder) / "scheduler" / "scheduler_config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    if not isinstance(cfg, dict) or bool(cfg.get("final_denoise", True)) != bool(final_denoise):
        return None
    for g in fitted_grids(cfg.get("fitted_grid"), bool(ode)):
        if len(g) - 1 == int(steps) and abs(g[0] - float(top)) <= 1e-6 * max(1.0, abs(float(top))):
            return f"{cfg_file} (fitted_grid, {'ODE' if ode else 'SDE'} form)", g
    return None


def model_folder(path) -> str:
    """The folder of a model, where its fitted grids and data moments are saved: ``path`` itself when it is
    a folder (a pretrained-model or diffusers pipeline folder), else the folder holding the checkpoint."""
    path = str(path)
    return path if Path(path).is_dir() else str(Path(path).parent)


def load_model(path, ema: bool = True) -> LoadedModel:
    """A Lightning checkpoint file or a diffusers pipeline folder (errors name the path)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} does not exist (give a .ckpt file, a pretrained-model folder such as "
            "checkpoints/mnist, or a diffusers pipeline folder)"
        )
    if p.is_dir():
        from ..training.module import ScoreModule
        from ..training.pretrained import is_pretrained_folder

        if is_pretrained_folder(p):
            return _of_module(ScoreModule.load(p), ema, "pretrained")
        return load_diffusers(p)
    if p.suffix in (".safetensors", ".json", ".bin"):
        from ..training.pretrained import is_pretrained_folder

        folder = p.parent
        what = "a pretrained-model folder" if is_pretrained_folder(folder) else "a model or pipeline folder"
        raise ValueError(
            f"checkpoint {str(path)!r} is one file of {what}: pass the folder itself, -c {str(folder)!r} "
            "(or a .ckpt file written by train.py)"
        )
    return load_lightning(p, ema=ema)
