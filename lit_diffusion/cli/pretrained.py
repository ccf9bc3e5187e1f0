"""``python -m lit_diffusion.cli.pretrained -c run/last.ckpt -o checkpoints/mnist``: a pretrained-model
folder (:mod:`lit_diffusion.training.pretrained`) from a training checkpoint."""

from __future__ import annotations

import json

from ..runtime.checkpoint_io import read_checkpoint
from ..training.module import ScoreModule
from ..training.pretrained import CONFIG, WEIGHTS, save_pretrained

__all__ = ["main"]


def main(argv=None) -> int:
    """``python -m lit_diffusion.cli.pretrained --checkpoint run/last.ckpt --out checkpoints/mnist``: turn a
    training checkpoint into a pretrained-model folder (EMA weights, safetensors, no pickle)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lit_diffusion.cli.pretrained", description=main.__doc__.split(":")[0])
    p.add_argument("--checkpoint", "-c", required=True, help="a ScoreModule checkpoint written by train.py")
    p.add_argument("--out", "-o", required=True, help="the folder to write")
    p.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    p.add_argument("--info", default="{}", help="JSON object stored under 'info' (command, hardware, time...)")
    a = p.parse_args(argv)
    ckpt = read_checkpoint(a.checkpoint, require=("state_dict", "hyper_parameters"))
    module = ScoreModule.from_checkpoint_dict(ckpt, where=repr(a.checkpoint))
    info = {"global_step": int(ckpt.get("global_step", -1)), **json.loads(a.info)}
    save_pretrained(module, a.out, ema=not a.raw, info=info)
    print(f"wrote {a.out} ({WEIGHTS}, {CONFIG}) from {a.checkpoint} at global step {info['global_step']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
