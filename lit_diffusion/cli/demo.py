"""A self-contained demo: sample an analytic target by simulating the reverse SDE with the exact score.

    python -m lit_diffusion.demo --out outputs/demo.png [--target ring8_2d] [--sde VP] [--steps 500]

Plain Euler–Maruyama on the reverse-time SDE (docs/maths.md §1 and §5, Claustre, "Score-Based Diffusion Models via SDEs" eq. 13),
``X_s = X_t - h [a(t) X_t + b(t) - g(t)^2 s(X_t, t)] + g(t) sqrt(h) z``, on a uniform grid from
``T`` down to ``t_min``, started from the SDE's prior; the score ``s`` is the exact score of the
Gaussian-mixture target (``lit_diffusion.core.targets``), so the only errors are the discretisation, the
prior mismatch and early stopping.  The real samplers live in ``lit_diffusion.sampling.samplers``; this
module is the README's first command until training exists.  It writes a PNG scatter plot of the
samples next to exact samples of the target and prints their first two moments.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..core.sdes import get_sde
from ..core.targets import get_target

__all__ = ["euler_maruyama_exact", "run_demo", "main"]


@torch.no_grad()
def euler_maruyama_exact(target, sde, n: int, steps: int = 500, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``n`` samples of ``target`` (approximately) by reverse-time Euler–Maruyama with its exact score.

    Runs in float64 on the CPU; returns ``(n, d)``.
    """
    if steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; it must be an integer >= 1")
    dtype = torch.float64
    x = sde.prior_sampling((n, target.dim), generator=generator, dtype=dtype)
    ts = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=dtype)
    for k in range(steps):
        t, s = ts[k], ts[k + 1]
        h = t - s
        a, b = sde.drift_coefficients(t)
        g2 = sde.g2(t)
        score = target.score(x, t, sde)
        z = torch.randn(x.shape, generator=generator, dtype=dtype)
        x = x - h * (a * x + b - g2 * score) + torch.sqrt(g2 * h) * z
    return x


def run_demo(
    out: str | os.PathLike = "outputs/demo.png",
    target: str = "ring8_2d",
    sde: str = "VP",
    n: int = 2000,
    steps: int = 500,
    seed: int = 0,
) -> Path:
    """Sample ``target`` with ``sde`` (names as in :func:`~lit_diffusion.core.targets.get_target` and
    :func:`~lit_diffusion.core.sdes.get_sde`, default parameters), save a scatter plot to ``out`` and
    return its path.  1-D targets are drawn as histograms, higher dimensions as the first two axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tgt = get_target(target)
    s = get_sde(sde)
    gen = torch.Generator().manual_seed(seed)
    x = euler_maruyama_exact(tgt, s, n, steps, generator=gen)
    ref = tgt.sample(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    mean_err = (x.mean(0) - tgt.mean()).norm().item()
    cov = torch.cov(x.T).reshape(tgt.dim, tgt.dim)
    cov_err = (cov - tgt.covariance()).norm().item()
    print(f"{target} with {s!r}, Euler-Maruyama, {steps} steps, n={n}: |mean error| = {mean_err:.4f}, |cov error|_F = {cov_err:.4f}")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=tgt.dim > 1)
    for ax, data, title in [(axes[0], ref, "exact samples"), (axes[1], x, f"reverse SDE, EM {steps} steps")]:
        if tgt.dim == 1:
            ax.hist(data[:, 0].numpy(), bins=80, density=True, color="C0" if data is ref else "C1")
        else:
            ax.scatter(data[:, 0].numpy(), data[:, 1].numpy(), s=2, alpha=0.5, color="C0" if data is ref else "C1")
            ax.set_aspect("equal", adjustable="box")
        ax.set_title(title)
    fig.suptitle(f"{target}, {type(s).__name__} SDE, exact score")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m lit_diffusion.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/demo.png", help="PNG path to write (default: %(default)s)")
    p.add_argument("--target", default="ring8_2d", help="bimodal_1d, ring8_2d, swissroll_2d or anisotropic_16d")
    p.add_argument("--sde", default="VP", help="OU, VE, VP, SubVP, ContractiveOU or ContractiveVP (default parameters)")
    p.add_argument("--n", type=int, default=2000, help="number of samples")
    p.add_argument("--steps", type=int, default=500, help="Euler-Maruyama steps")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return run_demo(a.out, a.target, a.sde, a.n, a.steps, a.seed)


if __name__ == "__main__":
    main()
