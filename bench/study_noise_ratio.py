#!/usr/bin/env python
"""The Gaussian start's noise ratio (sigma/alpha where the run starts, docs/samplers.md "The Gaussian
start") swept through ``bench/real_model.py``: the multistep sampler in both forms from the moments saved
beside the model, one row per ratio; every other option of real_model.py applies.

    python bench/study_noise_ratio.py --nfe 5 6 8 10 --seeds 0 1
    python bench/study_noise_ratio.py --model checkpoints/mnist-cond --guidance 3 --nfe 5 10 20 --seeds 0 1
    python bench/study_noise_ratio.py --ratios 5 10 --nfe 5 --dry-run
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    p.add_argument("--ratios", type=float, nargs="+", default=[3, 5, 7, 14, 20, 30])
    a, rest = p.parse_known_args(argv)
    labels = []
    for rho in a.ratios:
        for form, rows, opts in (("", real_model.SDE_SAMPLERS, {}), (" ODE", real_model.ODE_SAMPLERS, {"ode": True})):
            label = f"lit multistep 2{form}, Gaussian start, noise ratio {rho:g}"
            rows.append((label, "lit-gauss", {"sampler": "multistep", "noise_ratio": float(rho), **opts}))
            labels.append(label)
    return real_model.main(rest + ["--only", ";".join(labels)])


if __name__ == "__main__":
    main()
