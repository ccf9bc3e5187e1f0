"""Pretrained-model folders: safetensors weights plus a JSON description, no pickles anywhere.

A folder written by :func:`save_pretrained` holds

* ``model.safetensors``: the sampling network's weights (the EMA weights by default);
* ``config.json``: ``{"format": "lit_diffusion", "hyper_parameters": {...}, "data_shape": [...],
  "prediction_type": ..., "global_step": ..., "info": {...}}``, where ``hyper_parameters`` are the
  :class:`~lit_diffusion.module.ScoreModule` arguments with the network, SDE and loss described by their
  registry names (``"UNet"``, ``"VP"``, ``"DSM"``).

:func:`load_pretrained` rebuilds the module through the registry (every entry checked before anything
is built, :func:`lit_diffusion.module.check_hparams`) and loads the weights with safetensors.
``sample.py -c <folder>`` and ``ScoreModule.from_pretrained(folder)`` use it; the shipped models in
``checkpoints/`` are such folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

__all__ = ["save_pretrained", "load_pretrained", "is_pretrained_folder", "WEIGHTS", "CONFIG", "FORMAT"]

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


def load_pretrained(folder, map_location: str = "cpu"):
    """The :class:`~lit_diffusion.module.ScoreModule` of a :func:`save_pretrained` folder (no pickle;
    the description is checked by the registry before anything is built)."""
    from safetensors.torch import load_file

    from ..runtime.checkpoint_io import CheckpointError, inside_folder
    from .module import ScoreModule, check_hparams
    from .registry import UntrustedConfigError

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
    try:
        hp = check_hparams(dict(cfg.get("hyper_parameters") or {}), where=repr(str(folder / CONFIG)))
    except UntrustedConfigError as e:
        raise CheckpointError(str(e)) from None
    hp["ema_decay"] = 0.0
    if hp.get("autoencoder") is not None:
        ae = Path(str(hp["autoencoder"]))
        if ae.is_absolute() or ".." in ae.parts:
            raise CheckpointError(f"{str(folder / CONFIG)!r}: autoencoder must be a sub-folder of the model folder; got {str(ae)!r}")
        hp["autoencoder"] = inside_folder(folder, ae)  # its real path too: no link out of the folder
    module = ScoreModule(**hp)
    try:
        state = load_file(str(folder / WEIGHTS), device=map_location)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{str(folder / WEIGHTS)!r} is not a valid safetensors file: {type(e).__name__}") from None
    try:
        module.net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{str(folder / WEIGHTS)!r} does not fit the network of {CONFIG}: {e}") from None
    if cfg.get("data_shape") is not None:
        module.data_shape = tuple(int(s) for s in cfg["data_shape"])
    module.pretrained_info = dict(cfg.get("info") or {})
    return module.eval()


def main(argv=None) -> int:
    """``python -m lit_diffusion.pretrained --checkpoint run/last.ckpt --out checkpoints/mnist``: turn a
    training checkpoint into a pretrained-model folder (EMA weights, safetensors, no pickle)."""
    import argparse

    from .module import ScoreModule

    p = argparse.ArgumentParser(prog="python -m lit_diffusion.pretrained", description=main.__doc__.split(":")[0])
    p.add_argument("--checkpoint", "-c", required=True, help="a ScoreModule checkpoint written by train.py")
    p.add_argument("--out", "-o", required=True, help="the folder to write")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--info", default="{}", help="JSON object stored under 'info' (command, hardware, time...)")
    a = p.parse_args(argv)
    from ..runtime.checkpoint_io import read_checkpoint

    ckpt = read_checkpoint(a.checkpoint, require=("state_dict", "hyper_parameters"))
    module = ScoreModule.from_checkpoint_dict(ckpt, where=repr(a.checkpoint))
    info = {"global_step": int(ckpt.get("global_step", -1)), **json.loads(a.info)}
    save_pretrained(module, a.out, ema=not a.raw, info=info)
    print(f"wrote {a.out} ({WEIGHTS}, {CONFIG}) from {a.checkpoint} at global step {info['global_step']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
