"""Pretrained-model folders: safetensors weights plus a JSON description, no pickles anywhere.

A folder written by :func:`save_pretrained` holds

* ``model.safetensors``: the sampling network's weights (the EMA weights by default);
* ``config.json``: ``{"format": "lit_diffusion", "hyper_parameters": {...}, "data_shape": [...],
  "prediction_type": ..., "global_step": ..., "info": {...}}``, where ``hyper_parameters`` are the
  :class:`~lit_diffusion.training.module.ScoreModule` arguments with the network, SDE and loss described by their
  registry names (``"UNet"``, ``"VP"``, ``"DSM"``).

:func:`read_pretrained` reads such a folder as data; ``ScoreModule.from_pretrained(folder)`` (and
``ScoreModule.load(path)``, which ``sample.py -c``, the export and the evaluation use) rebuilds the
module through the registry (every entry checked before anything is built) and loads the weights with
safetensors.  The shipped models in ``checkpoints/`` are such folders; ``python -m
lit_diffusion.cli.pretrained`` writes one from a training checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple, Optional

__all__ = ["save_pretrained", "read_pretrained", "PretrainedFolder", "is_pretrained_folder", "WEIGHTS", "CONFIG", "FORMAT"]

WEIGHTS, CONFIG, FORMAT = "model.safetensors", "config.json", "lit_diffusion"
AUTOENCODER = "autoencoder"  # sub-folder holding a latent model's AutoencoderKL


def is_pretrained_folder(folder) -> bool:
    """Whether ``folder`` looks like a :func:`save_pretrained` folder."""
    p = Path(folder)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def save_pretrained(module, folder, ema: bool = True, info: Optional[dict] = None) -> str:
    """Write ``module``'s sampling network (EMA by default) and description to ``folder``, replacing
    the folder as a whole (:class:`~lit_diffusion.runtime.checkpoint_io.atomic_folder`; other files
    already in it, such as a README, are kept)."""
    from safetensors.torch import save

    from ..runtime.checkpoint_io import atomic_folder
    from .registry import check_plain

    net = module.sampling_net(ema)
    state = {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}
    hp = {k: v for k, v in dict(module.hparams).items() if not str(k).startswith("_")}
    hp["ema_decay"] = 0.0  # the folder holds one set of weights: the module it rebuilds keeps no EMA
    cfg = {
        "format": FORMAT,
        "hyper_parameters": hp,
        "data_shape": None if module.data_shape is None else [int(s) for s in module.data_shape],
        "prediction_type": module.prediction_type,
        "weights": "ema" if (ema and module.ema is not None) else "raw",
        "info": dict(info or {}),
    }
    codec = getattr(module, "codec", None)
    if codec is not None:  # the folder carries its autoencoder, referred to relatively
        hp["autoencoder"] = AUTOENCODER
    check_plain(cfg, "config")
    # the folder is replaced as a whole: a reader (or a kill) never sees new weights beside an old config
    with atomic_folder(folder, keep_others=True) as tmp:
        if codec is not None:
            codec.vae.save_pretrained(os.path.join(tmp, AUTOENCODER), safe_serialization=True)
        with open(os.path.join(tmp, WEIGHTS), "wb") as f:
            f.write(save(state, metadata={"format": FORMAT}))
        with open(os.path.join(tmp, CONFIG), "w") as f:
            f.write(json.dumps(cfg, indent=2, sort_keys=True))
    return str(folder)


class PretrainedFolder(NamedTuple):
    """What a pretrained-model folder holds, read and checked as data (nothing built yet)."""

    hyper_parameters: dict
    state: dict
    data_shape: Optional[tuple]
    info: dict
    config_path: str
    weights_path: str


def read_pretrained(folder, map_location: str = "cpu") -> PretrainedFolder:
    """Read a :func:`save_pretrained` folder as data: its JSON description (format checked; the
    autoencoder must be a sub-folder, with no link out) and its safetensors weights.  The module is
    built from it by :meth:`lit_diffusion.training.module.ScoreModule.from_pretrained`, which checks
    the description through the registry first."""
    from safetensors.torch import load_file

    from ..runtime.checkpoint_io import CheckpointError, inside_folder

    folder = Path(folder)
    if not is_pretrained_folder(folder):
        raise CheckpointError(f"{str(folder)!r} is not a pretrained-model folder (needs {WEIGHTS} and {CONFIG})")
    inside_folder(folder, CONFIG)
    inside_folder(folder, WEIGHTS)
    try:
        cfg = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{str(folder / CONFIG)!r} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{str(folder / CONFIG)!r} is not a lit_diffusion config (format {FORMAT!r} expected)")
    hp = cfg.get("hyper_parameters") or {}
    if not isinstance(hp, dict):
        raise CheckpointError(f"{str(folder / CONFIG)!r}: hyper_parameters must be a JSON object")
    hp = dict(hp)
    if hp.get("autoencoder") is not None:
        ae = Path(str(hp["autoencoder"]))
        if ae.is_absolute() or ".." in ae.parts:
            raise CheckpointError(f"{str(folder / CONFIG)!r}: autoencoder must be a sub-folder of the model folder; got {str(ae)!r}")
        hp["autoencoder"] = inside_folder(folder, ae)  # its real path too: no link out of the folder
    try:
        state = load_file(str(folder / WEIGHTS), device=map_location)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{str(folder / WEIGHTS)!r} is not a valid safetensors file: {type(e).__name__}") from None
    shape = cfg.get("data_shape")
    return PretrainedFolder(hp, state, None if shape is None else tuple(int(v) for v in shape),
                            dict(cfg.get("info") or {}), str(folder / CONFIG), str(folder / WEIGHTS))
