#!/usr/bin/env python
"""Train a score-based diffusion model (LightningCLI).

    python train.py                                     # swiss roll, small MLP, a few minutes on CPU
    python train.py --config configs/mnist.yaml --model.sde VP --model.sde.beta_max 20 --trainer.devices 4
    python train.py --ckpt_path last                    # resume where the last checkpoint left off
    python train.py --help                              # every option

See docs/training.md.
"""


import sys

if __name__ == "__main__":
    if any(a in ("-h", "--help") for a in sys.argv[1:]):  # short and fast: no Lightning import
        from lit_diffusion.cli.train_checks import short_help

        print(short_help())
        sys.exit(0)
    from lit_diffusion.cli import main

    main()  # LightningCLI reads sys.argv itself
