"""The analytic study behind the samplers' defaults (docs/samplers.md, "Defaults").

For the presets ``anisotropic_16d`` and ``gauss_2d`` (metric: KL of the Gaussian fit to the exact
marginal at ``t_min``), ``ring8_2d`` and ``bimodal_1d`` (sliced W2, resp. W1 in 1-D, to 2,000 exact samples), the VP
and OU SDEs, four grids and 8-64 evaluations, 2,000 samples per run, one seed:

* ``--part sde``: DDRaM with each parametrization against exponential Euler (denoiser);
* ``--part ode``: the same in probability-flow form;
* ``--part pc``: predictor-corrector with its step-size rules against its predictor alone.

Each table cell is the error; ``--ratios`` divides by the reference sampler's error (exponential
Euler for sde/ode, Euler-Maruyama for pc).  Output: one JSON line per run (``--out``) and markdown
tables on stdout.

    python bench/sampler_defaults.py --part sde --ratios     # ~3 min on one CPU thread
    python bench/sampler_defaults.py --part ode --ratios
    python bench/sampler_defaults.py --part pc
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lit_diffusion.core import sdes  # noqa: E402
from lit_diffusion.evaluation.metrics import kl_gaussian_fit, sliced_wasserstein2, wasserstein_1d  # noqa: E402
from lit_diffusion.sampling.samplers import get_stepper, sample  # noqa: E402
from lit_diffusion.core.targets import get_target  # noqa: E402

F64 = torch.float64
PARTS = {
    "sde": (False, "EI-den", [
        ("EI-den", "exponential_euler", "denoiser", {}),
        ("DD-rel", "ddram", "relative_score", {}),
        ("DD-score", "ddram", "score", {}),
        ("DD-den", "ddram", "denoiser", {}),
        ("DD-auto", "ddram", "auto", {}),
        ("DD-auto-logsnr", "ddram", "auto", {"midpoint": "log_snr"}),
        ("DD1-auto", "ddram", "auto", {"evals_per_step": 1}),
    ]),
    "ode": (True, "EI-den", [
        ("EI-den", "exponential_euler", "denoiser", {}),
        ("DD-rel", "ddram", "relative_score", {}),
        ("DD-score", "ddram", "score", {}),
        ("DD-den", "ddram", "denoiser", {}),
        ("DD-auto", "ddram", "auto", {}),
        ("DD-auto-logsnr", "ddram", "auto", {"midpoint": "log_snr"}),
        ("DD1-auto", "ddram", "auto", {"evals_per_step": 1}),
    ]),
    "pc": (False, "EM", [
        ("EM", "euler", "score", {}),
        ("PC-sample", "pc", None, {"snr_norm": "sample"}),
        ("PC-batch", "pc", None, {"snr_norm": "batch"}),
        ("PC-capped", "pc", None, {"snr_norm": "capped"}),
    ]),
}
TARGETS = ("anisotropic_16d", "gauss_2d", "ring8_2d", "bimodal_1d")
SCHEDULES = ("uniform", "log_snr", "edm", "bbdd")
NFES = (8, 16, 32, 64)


def get_bench_target(name):
    if name == "gauss_2d":  # an anisotropic 2-D Gaussian: every affine sampler's error is exact up to Monte Carlo
        from lit_diffusion.core.targets import GaussianMixture

        return GaussianMixture.gaussian([1.0, -1.0], torch.tensor([0.25, 1.0], dtype=F64))
    return get_target(name)


def error(target_name, x: np.ndarray, law, ref: np.ndarray) -> float:
    if not np.isfinite(x).all():
        return float("inf")
    if target_name in ("anisotropic_16d", "gauss_2d"):
        return kl_gaussian_fit(x, law.mean().numpy(), law.covariance().numpy())["value"]
    if x.shape[1] == 1:
        return wasserstein_1d(x[:, 0], ref[:, 0])
    return sliced_wasserstein2(x, ref)["value"]


def run(part: str, n: int = 2000, out=None) -> list[dict]:
    ode, _, configs = PARTS[part]
    rows = []
    for tname, sname in itertools.product(TARGETS, ("VP", "OU")):
        target, sde = get_bench_target(tname), getattr(sdes, sname)()
        law = target.marginal(sde.t_min, sde)
        ref = law.sample(n, torch.Generator().manual_seed(1), dtype=F64).numpy()
        for (label, smp, par, opts), sched, nfe in itertools.product(configs, SCHEDULES, NFES):
            steps = max(1, nfe // get_stepper(smp, sde, par, ode, **opts).evals_per_step)
            x = sample(target, sde, shape=(n, target.dim), sampler=smp, parametrization=par, steps=steps, schedule=sched,
                       ode=ode, generator=torch.Generator().manual_seed(0), dtype=F64, **opts).samples.numpy()
            row = dict(part=part, target=tname, sde=sname, config=label, schedule=sched, nfe=nfe,
                       error=error(tname, x, law, ref), max_abs=float(np.nanmax(np.abs(x))))
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
    return rows


def tables(rows: list[dict], reference: str, ratios: bool) -> str:
    cells = collections.defaultdict(dict)
    for r in rows:
        cells[(r["target"], r["sde"], r["schedule"], r["nfe"])][r["config"]] = r["error"]
    configs = list(dict.fromkeys(r["config"] for r in rows))
    lines = ["| target | SDE | grid | NFE | " + " | ".join(configs) + " |", "|" + "---|" * (4 + len(configs))]
    for key in sorted(cells):
        c = cells[key]
        vals = [c[k] / c[reference] if ratios and k != reference else c[k] for k in configs]
        lines.append("| " + " | ".join(map(str, key)) + " | " + " | ".join(f"{v:.3g}" for v in vals) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=sorted(PARTS), default="sde")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--ratios", action="store_true", help="divide by the reference sampler's error")
    p.add_argument("--out", default=None, help="JSON lines file")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with open(a.out, "w") if a.out else open(os.devnull, "w") as f:
        rows = run(a.part, a.n, f)
    print(tables(rows, PARTS[a.part][1], a.ratios))
    return rows


if __name__ == "__main__":
    main()
