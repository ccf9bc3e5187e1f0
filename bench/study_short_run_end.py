#!/usr/bin/env python
"""Where short multistep runs end (docs/samplers.md "The end of short runs"): the final denoising
evaluation replaces the last step, and the grid ends at a fraction of the way from ``t_min`` to where
the uniform grid of one more step puts its last point (``MULTISTEP_SHORT_RUN_END``, 0.5 by default).
One row per fraction and form, from ``T`` and from the Gaussian start (the moments beside the model),
through ``bench/real_model.py``; every other option of real_model.py applies.

    python bench/study_short_run_end.py --nfe 5 --seeds 2 --fractions 1 0.75 0.62 0.5 0.37 0.25
    python bench/study_short_run_end.py --nfe 5 6 --seeds 2 --fractions 1 0.5 --gaussian-start
    python bench/study_short_run_end.py --fractions 0.5 1 --only-default --dry-run
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    p.add_argument("--gaussian-start", action="store_true", help="start from the moments beside the model")
    p.add_argument("--forms", nargs="+", choices=["ode", "sde"], default=["ode", "sde"])
    p.add_argument("--only-default", action="store_true", help="also the default row of each form (its own grid)")
    a, rest = p.parse_known_args(argv)
    start = {"gaussian_start": real_model.MOMENTS} if a.gaussian_start else {}
    # the default row of each form (from T or from the start), whose label the fraction rows extend
    default = {form: f"lit multistep 2{' ODE' if form == 'ode' else ''}{', Gaussian start' if start else ''}" for form in a.forms}
    labels = list(default.values()) if a.only_default else []
    for f in a.fractions:
        for form in a.forms:
            rows, opts = (real_model.ODE_SAMPLERS, {"ode": True}) if form == "ode" else (real_model.SDE_SAMPLERS, {})
            label = f"{default[form]}, end fraction {f:g}"
            rows.append((label, "lit-end-fraction", {"sampler": "multistep", "end_fraction": float(f), **opts, **start}))
            labels.append(label)
    return real_model.main(rest + ["--only", ";".join(labels)])


if __name__ == "__main__":
    main()
