#!/usr/bin/env python
"""Grids fitted by FID-MNIST instead of the terminal error (docs/samplers.md, "Targets and misses", fitted
grids): the pattern search of ``lit_diffusion.sampling.grid_fit`` (``pattern_search``) with, as its
objective, the Fréchet distance between the feature-net features of ``--n-calib`` samples of the multistep
sampler on the candidate grid (the same per-sample generators for every candidate: common random numbers,
seeds 20000 on, none of the benchmark's) and those of the 4,000 training digits of the feature net (never
the 1,000 held-out digits that ``bench/real_model.py`` scores against).  Writes one grid file per budget
into ``--out``; ``bench/real_model.py --fitted-dir DIR`` then measures them on the benchmark's seeds.

    python bench/study_grid_fid_fit.py --steps 4 5 --gaussian-start --out /tmp/fid_grids
    python bench/study_grid_fid_fit.py --steps 7 --form ode --n-calib 1000 --gaussian-start --family --quick --threads 2 --out DIR
    python bench/real_model.py --nfe 5 6 --seeds 0 1 --fitted-dir /tmp/fid_grids \\
        --only "lit multistep 2, Gaussian start;lit multistep 2, Gaussian start, fitted grid"
    python bench/study_grid_fid_fit.py --steps 2 --n-calib 8 --max-evals 3 --dry-run --out /tmp/fid_grids
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model  # noqa: E402

CALIBRATION_SEED = 20_000


def fid_objective(net, module, n: int, ode: bool, start, feats_ref, feature_net, seed: int = CALIBRATION_SEED, eta=None):
    """``grid -> FID-MNIST`` of ``n`` multistep samples on ``grid`` (final denoising evaluation), seeds
    ``seed ...`` (default :data:`CALIBRATION_SEED`), against the reference features ``feats_ref`` (both through ``feature_net``);
    ``inf`` for a non-finite run.  ``eta``: the SDE form's stochasticity (None: the sampler's default)."""
    options = {} if eta is None else {"eta": float(eta)}
    from lit_diffusion.core.utils import make_generators
    from lit_diffusion.evaluation.metrics import frechet_distance
    from lit_diffusion.sampling.samplers import sample

    def objective(grid) -> float:
        x = sample(net, module.sde, shape=(n,) + tuple(module.data_shape), sampler="multistep", ode=ode, timesteps=grid,
                   final_denoise=True, gaussian_start=start, prediction_type=module.prediction_type, check_finite=False,
                   generator=make_generators(range(seed, seed + n)), **options).samples
        if not torch.isfinite(x).all():
            return math.inf
        return float(frechet_distance(features(feature_net, x.clamp(-1, 1), "-1,1"), feats_ref)["value"])

    return objective


#: the two-parameter family of ``--family``: where the grid ends (``end_fraction`` of ``step_grid``: 0.5 is the
#: default of short runs) and how its points are spaced (``t_i = t_end + (t_s - t_end)(1 - i/n)^p``; ``p = 1``:
#: uniform in ``t``, the default spacing of short runs; ``p < 1``: shorter steps near the start ``t_s``)
#: (a first family, fractions 0.3-0.8 x powers 0.8-1.6, put every best at power 0.8 at 5 and 6 evaluations
#: with powers above 1 far worse: docs/samplers.md, fitted grids)
FAMILY_END_FRACTIONS = (0.3, 0.5, 0.7)
FAMILY_POWERS = (0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
#: ``--quick``: the four members that hold the full family's best or a grid within its calibration noise
#: at 5 / 6 / 8 evaluations on the shipped model (its pick is the full family's at SDE 8, ODE 6 and 8), the
#: default grid scored beside them: 5 grids, 4.3 min at 8 evaluations on this CPU (docs/samplers.md, fitted grids)
QUICK_END_FRACTIONS = (0.5, 0.7)
QUICK_POWERS = (0.5, 0.7)


def family_grid(t_start: float, t_end: float, steps: int, power: float) -> torch.Tensor:
    """``steps + 1`` times (float64) from ``t_start`` down to ``t_end``, ``t_i = t_end + (t_start - t_end)
    (1 - i / steps) ** power``: uniform in ``t`` at ``power = 1``, crowded towards ``t_end`` above."""
    u = 1.0 - torch.arange(steps + 1, dtype=torch.float64) / steps
    return t_end + (t_start - t_end) * u ** float(power)


def family_search(sde, default: torch.Tensor, t_s, objective, ode: bool, fractions=FAMILY_END_FRACTIONS, powers=FAMILY_POWERS):
    """Score the ``default`` grid (:func:`~lit_diffusion.sampling.grid_fit.start_grid`, float64) and every grid
    of the family (:data:`FAMILY_END_FRACTIONS` x :data:`FAMILY_POWERS`) from its first time; returns
    ``(grid, best, objective(default grid), evaluations, table)``, ``table`` a list of ``(end_fraction,
    power, objective)``.  Two degrees of freedom instead of one a grid point: a fit by a noisy objective (FID
    of a finite sample) that chases the calibration samples' own noise far less (the pick is still the
    lowest of a noisy table: docs/samplers.md, fitted grids)."""
    from lit_diffusion.sampling.defaults import default_schedule, step_grid

    steps, t_start = len(default) - 1, float(default[0])
    schedule = default_schedule("multistep", ode, steps)
    best_grid, first = default, objective(default)
    print(f"  {steps} steps, default grid: {first:.3f}", flush=True)
    best, table, evals = first, [], 1
    for f in fractions:
        t_end = float(step_grid(sde, "multistep", steps, schedule, True, T=t_s, end_fraction=f)[-1])
        for p in powers:
            grid = family_grid(t_start, t_end, steps, p)
            same = torch.allclose(grid, default, rtol=0, atol=1e-9)
            value = first if same else objective(grid)
            evals += 0 if same else 1
            table.append((f, p, value))
            print(f"  {steps} steps, end fraction {f}, power {p}: {value:.3f}", flush=True)
            if value < best:
                best_grid, best = grid, value
    return best_grid, best, first, evals, table


def features(feature_net, images, value_range):
    """``feature_net``'s features (float64 numpy) of ``images`` in ``value_range`` ("-1,1", "0,1", ...)."""
    from lit_diffusion.evaluation.feature_net import to_unit_images

    with torch.no_grad():
        return feature_net(to_unit_images(images, value_range)).double().numpy()


def _npz_samples(path: str):
    """The ``samples`` array of a ``sample.py`` output file (``samples.npz``), as float32."""
    with np.load(path, allow_pickle=False) as f:
        if "samples" not in f:
            raise ValueError(f"--reference-samples {path!r}: no 'samples' array (sample.py's samples.npz has one)")
        return f["samples"].astype(np.float32)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist"))
    p.add_argument("--steps", type=int, nargs="+", required=True, help="sampler steps of each grid (the run has one more evaluation)")
    p.add_argument("--form", choices=["sde", "ode"], default="sde")
    p.add_argument("--gaussian-start", action="store_true", help="runs from the moments beside the model")
    p.add_argument("--n-calib", type=int, default=256)
    p.add_argument("--max-evals", type=int, default=40)
    p.add_argument("--calib-seed", type=int, default=CALIBRATION_SEED, help="the first calibration sample's seed "
                   "(another set of calibration samples: a second opinion on a noisy table)")
    p.add_argument("--family", action="store_true", help="score the two-parameter family of grids (end point x "
                   "spacing) instead of the pattern search over every point")
    p.add_argument("--fractions", type=float, nargs="+", default=None, help="the family's end fractions "
                   f"(default {list(FAMILY_END_FRACTIONS)}; --quick: {list(QUICK_END_FRACTIONS)})")
    p.add_argument("--powers", type=float, nargs="+", default=None, help="the family's spacing powers "
                   f"(default {list(FAMILY_POWERS)}; --quick: {list(QUICK_POWERS)})")
    p.add_argument("--quick", action="store_true", help="with --family: its four-member version (minutes, not half an hour)")
    p.add_argument("--out", required=True, help="folder of the grid files (multistep-<steps>[-gaussian]-<form>.json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference-samples", nargs="+", default=None, metavar="NPZ",
                   help="score against these samples (sample.py's samples.npz, in [-1, 1]: the model's own law, drawn with "
                        "many evaluations) instead of the feature net's 4,000 training digits")
    p.add_argument("--eta", type=float, default=None, help="SDE form: the stochasticity of every scored run (default: the "
                   "sampler's, 1 from the Gaussian start)")
    p.add_argument("--dry-run", action="store_true", help="tiny untrained network: checks the loop")
    a = p.parse_args(argv)
    if a.quick and not a.family:
        p.error("--quick only applies with --family")
    if a.eta is not None and a.form == "ode":
        p.error(f"--eta {a.eta} applies to the SDE form only (--form sde)")
    own_law = [_npz_samples(f) for f in a.reference_samples or ()]  # (a bad file refused before the model loads)
    a.fractions = a.fractions or list(QUICK_END_FRACTIONS if a.quick else FAMILY_END_FRACTIONS)
    a.powers = a.powers or list(QUICK_POWERS if a.quick else FAMILY_POWERS)
    torch.set_num_threads(a.threads)
    from lit_diffusion.evaluation.feature_net import load_feature_net, mnist_split
    from lit_diffusion.sampling.gaussian_start import as_gaussian_start
    from lit_diffusion.sampling.grid_fit import GRID_FORMAT, grid_file_name, pattern_search, start_grid

    module = real_model.load(a.model, a.dry_run)
    net, sde = module.sampling_net(True), module.sde
    start = as_gaussian_start(os.path.join(a.model, "data_moments.safetensors"), None) if a.gaussian_start else None
    t_s = None if start is None else start.start_time(sde)
    feature_net = load_feature_net()  # loaded once, not once a candidate grid
    if own_law:
        feats_ref = features(feature_net, torch.from_numpy(np.concatenate(own_law)), "-1,1")
    else:
        digits = mnist_split()[0][: 64 if a.dry_run else None]
        feats_ref = features(feature_net, digits, "0,1")  # mnist_split: floats in [0, 1]
    objective = fid_objective(net, module, a.n_calib, a.form == "ode", start, feats_ref, feature_net, a.calib_seed, a.eta)
    os.makedirs(a.out, exist_ok=True)
    records = []
    for steps in a.steps:
        t0 = time.perf_counter()
        grid0 = start_grid(sde, steps, a.form == "ode", True, T=t_s).double()
        table = None
        if a.family:
            grid, best, first, evals, table = family_search(sde, grid0, t_s, objective, a.form == "ode", a.fractions, a.powers)
        else:
            grid, best, first, evals = pattern_search(sde, grid0, objective, a.max_evals)
        method = ("fid, quick family (end point x spacing)" if a.quick else "fid, family (end point x spacing)") if a.family \
            else "fid, pattern search"
        rec = {"format": GRID_FORMAT, "sampler": "multistep", "steps": steps, "method": f"{method} (bench/study_grid_fid_fit.py)",
               "forms": [a.form], "timesteps": grid.tolist(), "start_timesteps": grid0.tolist(), "objective": best,
               "objective_start_grid": first, "final_denoise": True, "n_calib": a.n_calib, "calib_seed": a.calib_seed, "eta": a.eta,
               "reference": a.reference_samples or "feature net's 4,000 training digits", "objective_evaluations": evals,
               "seconds": time.perf_counter() - t0, "gaussian_start": None if start is None else {"noise_ratio": start.noise_ratio, "start_time": t_s},
               "family_table": table}
        path = os.path.join(a.out, grid_file_name(steps, True, start is not None, a.form))
        with open(path, "w") as fh:
            json.dump(rec, fh, indent=1)
        print(f"{path}: {steps} steps, FID-MNIST of {a.n_calib} calibration samples {first:.3f} -> {best:.3f} "
              f"({evals} grids, {rec['seconds']:.0f} s)", flush=True)
        records.append(rec)
    return records


if __name__ == "__main__":
    main()
