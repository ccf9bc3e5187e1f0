"""``python -m lit_diffusion.cli.grid_fit -c checkpoints/mnist --steps 9``: fit multistep time grids to a
model (:mod:`lit_diffusion.sampling.grid_fit`) and save them beside it."""

from __future__ import annotations

import json
import os

import torch

from ..runtime.checkpoint_io import atomic_write_bytes
from ..sampling.grid_fit import FIT_METHODS, fit_grid, grid_file_name
from .sample_models import load_model, model_folder

__all__ = ["main"]


def main(argv=None) -> int:
    """``python -m lit_diffusion.cli.grid_fit -c checkpoints/mnist --steps 9``: fit a grid and save
    it beside the model (``<folder>/grids/multistep-<steps>.json``, where ``sample.py`` finds it)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m lit_diffusion.cli.grid_fit", description=main.__doc__.split(":")[0])
    p.add_argument("-c", "--checkpoint", required=True, help="a pretrained-model folder, a train.py checkpoint or a diffusers "
                   "pipeline folder (unet/ + scheduler/; grids in the scheduler's time units)")
    p.add_argument("--steps", type=int, nargs="+", required=True, help="sampler steps of each grid to fit")
    p.add_argument("--method", default="terminal", choices=FIT_METHODS,
                   help="terminal: pattern search on the terminal error of the ODE against accurate solutions (default, "
                   "the measured best on the shipped model); local: dynamic programme over local errors")
    p.add_argument("--n-calib", type=int, default=None, help="calibration draws (default 64 terminal, 32 local)")
    p.add_argument("--max-evals", type=int, default=60, help="terminal: solutions tried per budget")
    p.add_argument("--n-holdout", type=int, default=64, help="terminal: held-out draws that measure start and fitted grid")
    p.add_argument("--corrector", action="store_true",
                   help="terminal: fit for the multistep sampler with its corrector on (the shipped grids were fitted without it)")
    p.add_argument("--gaussian-start", nargs="?", const="model", default=None, metavar="FILE",
                   help="terminal: fit the grids of runs from a Gaussian start (the moments saved beside the model, or FILE); "
                   "saved as multistep-<steps>-gaussian.json, which sample.py takes for such runs")
    p.add_argument("--noise-ratio", type=float, default=None, help="with --gaussian-start: sigma/alpha of the start (default 10)")
    p.add_argument("--fine", type=int, default=64, help="local: points of the fine grid")
    p.add_argument("--refine", type=int, default=3, help="local: sub-steps per fine interval of the calibration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder of the JSON files (default: <model folder>/grids)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--end-at-t-min", action="store_true",
                   help="end the grid at t_min (for runs without a final denoising evaluation); by default the end "
                   "point is fitted too, for runs that end with one (SDEScheduler's default, sample.py --final-denoise)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    folder = model_folder(a.checkpoint)
    start = None
    if a.gaussian_start is not None:
        from ..sampling.gaussian_start import as_gaussian_start, moments_path

        # (beside the model, or beside an exported pipeline's scheduler config)
        start = as_gaussian_start(moments_path(folder) if a.gaussian_start == "model" else a.gaussian_start, a.noise_ratio)
    elif a.noise_ratio is not None:
        raise ValueError("--noise-ratio only applies with --gaussian-start")
    model = load_model(a.checkpoint, ema=True)
    net = model.net
    if model.data_shape is None:
        raise ValueError(f"the checkpoint {a.checkpoint!r} does not record its data shape")
    out = a.out or os.path.join(folder, "grids")
    recs = fit_grid(net, model.sde, list(a.steps), model.data_shape, n_calib=a.n_calib, fine=a.fine, refine=a.refine,
                    seed=a.seed, prediction_type=model.prediction_type, final_denoise=not a.end_at_t_min,
                    method=a.method, max_evals=a.max_evals, n_holdout=a.n_holdout if a.method == "terminal" else 0,
                    corrector=a.corrector, gaussian_start=start)
    for steps, rec in zip(a.steps, recs):
        path = os.path.join(out, grid_file_name(steps, not a.end_at_t_min, start is not None))
        os.makedirs(out, exist_ok=True)
        atomic_write_bytes(json.dumps(rec, indent=1).encode(), path)
        print(f"{path}: {_summary(rec)}", flush=True)
    return 0


def _summary(rec: dict) -> str:
    """One line on a fitted grid: its objective against the grid it is compared with, and its cost."""
    if rec["method"] == "local":
        return (f"{rec['steps']} steps, summed local error {rec['objective']:.4g} (log-SNR grid {rec['objective_log_snr_grid']:.4g}), "
                f"{rec['network_evaluations']} evaluations of {rec['n_calib']} samples, {rec['seconds']:.0f} s")
    line = (f"{rec['steps']} steps, terminal error {rec['objective']:.4g} (default grid {rec['objective_start_grid']:.4g}) "
            f"on {rec['n_calib']} draws")
    if "holdout" in rec:
        h = rec["holdout"]
        line += f", held out {h['fitted_grid']:.4g} (default {h['start_grid']:.4g}) on {h['n']}"
    return line + f", {rec['objective_evaluations']} solutions, {rec['seconds']:.0f} s (+{rec['reference_seconds']:.0f} s of references)"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
