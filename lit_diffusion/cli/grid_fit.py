"""``python -m lit_diffusion.cli.grid_fit -c checkpoints/mnist --steps 9``: fit multistep time grids to a
model (:mod:`lit_diffusion.sampling.grid_fit`) and save them beside it."""

from __future__ import annotations

import json
import os

import torch

from ..runtime.checkpoint_io import atomic_write_bytes
from ..sampling.grid_fit import fit_grid
from ..training.module import ScoreModule

__all__ = ["main"]


def main(argv=None) -> int:
    """``python -m lit_diffusion.cli.grid_fit -c checkpoints/mnist --steps 9``: fit a grid and save
    it beside the model (``<folder>/grids/multistep-<steps>.json``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lit_diffusion.cli.grid_fit", description=main.__doc__.split(":")[0])
    p.add_argument("-c", "--checkpoint", required=True, help="a pretrained-model folder or a train.py checkpoint")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="sampler steps of each grid to fit")
    p.add_argument("--n-calib", type=int, default=32)
    p.add_argument("--fine", type=int, default=64)
    p.add_argument("--refine", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder of the JSON files (default: <model folder>/grids)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--end-at-t-min", action="store_true",
                   help="end the grid at t_min (for runs without a final denoising evaluation); by default the end "
                   "point is fitted too, for runs that end with one (SDEScheduler's default, sample.py --final-denoise)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = ScoreModule.load(a.checkpoint)
    net = model.sampling_net(True)
    out = a.out or os.path.join(a.checkpoint if os.path.isdir(a.checkpoint) else os.path.dirname(a.checkpoint), "grids")
    recs = fit_grid(net, model.sde, list(a.steps), model.data_shape, n_calib=a.n_calib, fine=a.fine, refine=a.refine,
                    seed=a.seed, prediction_type=model.prediction_type, final_denoise=not a.end_at_t_min)
    for steps, rec in zip(a.steps, recs):
        path = os.path.join(out, f"multistep-{steps}.json")
        os.makedirs(out, exist_ok=True)
        atomic_write_bytes(json.dumps(rec, indent=1).encode(), path)
        print(f"{path}: {steps} steps, objective {rec['objective']:.4g} (log-SNR grid {rec['objective_log_snr_grid']:.4g}), "
              f"{rec['network_evaluations']} evaluations of {a.n_calib} samples, {rec['seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
