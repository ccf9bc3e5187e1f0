"""Offsets, per-sample spread and cost of the training losses on an analytic target (docs/maths.md §3).

    python bench/loss_variance.py [--n 8192] [--sde VP] [--target ring8_2d]

For a fixed 'network' (the exact epsilon of the target plus a random MLP perturbation, float64) and
common random numbers, prints for each loss: its mean, its offset from ESM (which must not depend on
the network; the second network's offset is printed beside it), the per-sample standard deviation
(the Monte-Carlo noise of one training step) and the wall time per call relative to DSM, measured
side by side in one process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_losses import PerturbedExact  # noqa: E402  (the same perturbed networks as the tests)

from lit_diffusion.training.losses import DSM, ESM, ISM, SSM  # noqa: E402
from lit_diffusion.core.sdes import get_sde  # noqa: E402
from lit_diffusion.core.targets import get_target  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--sde", default="VP")
    p.add_argument("--target", default="ring8_2d")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    sde, target = get_sde(a.sde), get_target(a.target)
    x0 = target.sample(a.n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    nets = [PerturbedExact(target, sde, 1), PerturbedExact(target, sde, 2)]
    cases = [
        ("ESM", lambda w, i: ESM(target, weighting=w, importance_sampling=i)),
        ("DSM", lambda w, i: DSM(weighting=w, importance_sampling=i)),
        ("SSM gauss, VR, 1 proj", lambda w, i: SSM(weighting=w, importance_sampling=i)),
        ("SSM gauss, no VR, 1 proj", lambda w, i: SSM(variance_reduction=False, weighting=w, importance_sampling=i)),
        ("SSM rademacher, no VR, 4 proj", lambda w, i: SSM(projections=4, distribution="rademacher", variance_reduction=False, weighting=w, importance_sampling=i)),
        ("ISM (exact divergence)", lambda w, i: ISM(weighting=w, importance_sampling=i)),
    ]
    for weighting, importance in [("sigma2", False), ("likelihood", False), ("likelihood", True)]:
        print(f"\n### {a.target}, {sde!r}, weighting={weighting}, importance_sampling={importance}, n={a.n}\n")
        print("| loss | mean (net 1) | offset from ESM, net 1 | offset, net 2 | per-sample std | time / DSM time |")
        print("|---|---|---|---|---|---|")
        esm_vals = [ESM(target, weighting=weighting, importance_sampling=importance).per_sample(n, sde, x0, torch.Generator().manual_seed(5)).detach() for n in nets]
        t_dsm = None
        for name, make in cases:
            loss = make(weighting, importance)
            vals = []
            t0 = time.perf_counter()
            for n in nets:
                vals.append(loss.per_sample(n, sde, x0, torch.Generator().manual_seed(5)).detach())
            dt = time.perf_counter() - t0
            if name == "DSM":
                t_dsm = dt
            offs = [v - e for v, e in zip(vals, esm_vals)]
            se = [o.std().item() / math.sqrt(a.n) for o in offs]
            rel = f"{dt / t_dsm:.2f}" if t_dsm else "—"
            print(
                f"| {name} | {vals[0].mean().item():.4f} | {offs[0].mean().item():.4f} ± {se[0]:.4f} | "
                f"{offs[1].mean().item():.4f} ± {se[1]:.4f} | {vals[0].std().item():.3g} | {rel} |"
            )


if __name__ == "__main__":
    main()
