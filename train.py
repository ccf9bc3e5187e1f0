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
    from lit_diffusion.runtime.processes import exit_early_on_signal

    exit_early_on_signal()  # a signal before training starts: exit 143/130 at once (nothing to save yet)
    from lit_diffusion.cli.train_checks import take_run_lock
    from lit_diffusion.runtime.run_lock import FolderLockedError

    try:  # the run lock first, before Lightning is imported: a second run is refused at once
        lock = take_run_lock(sys.argv[1:])
    except FolderLockedError as e:
        print(f"train.py: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    try:
        from lit_diffusion.cli.train import main

        main(lock=lock)  # reads sys.argv
    finally:
        if lock is not None:
            lock.release()
