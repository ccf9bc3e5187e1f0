"""``python -m lit_diffusion.cli``: the same as ``python train.py``."""

from .train import main

main()
