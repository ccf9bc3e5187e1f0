"""Prior mismatch at T of every SDE: KL(q_T || prior) for analytic targets (docs/maths.md §1, §6).

    python bench/prior_mismatch.py            # prints the Markdown tables of docs/prior_mismatch.md

q_T is the forward marginal at T (exact for Gaussian mixtures), the prior is the SDE's
N(prior_mean, prior_var I) that the reverse process starts from.  For a Gaussian target the KL is
exact (closed form); for the mixture presets it is a Monte-Carlo estimate
E_{x ~ q_T}[log q_T(x) - log prior(x)] with its standard error (exact log-densities, 20000 samples).
For the standard OU the bound KL(q_T || N(0, I)) <= e^{-2T} KL(q_0 || N(0, I)) is printed beside the
value.  The contractive SDEs keep part of the data at T (SNR(T) bounded away from 0), so their KL is
large by design: this is the bias of starting the reverse process from their prior.
"""

from __future__ import annotations

import math

import torch

from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP
from lit_diffusion.core.targets import get_target

F64 = torch.float64

SDES = [
    ("OU (T=5, default)", OU()),
    ("OU (T=1)", OU(T=1.0)),
    ("VE (0.01, 50)", VE()),
    ("VP (0.1, 20)", VP()),
    ("SubVP (0.1, 20)", SubVP()),
    ("ContractiveOU (T=1)", ContractiveOU()),
    ("ContractiveVP (0.1, 2)", ContractiveVP()),
]


def kl_gaussian(mean_q, cov_q, mean_p, var_p):
    """KL(N(mean_q, cov_q) || N(mean_p 1, var_p I)), float64."""
    d = cov_q.shape[0]
    diff = mean_q - mean_p
    logdet = torch.linalg.slogdet(cov_q)[1].item()
    return 0.5 * (torch.trace(cov_q).item() / var_p - d + d * math.log(var_p) - logdet + (diff @ diff).item() / var_p)


def marginal_T(sde, target):
    T = torch.tensor(sde.T, dtype=F64)
    a, m, s2 = sde.alpha(T).item(), sde.mean_offset(T).item(), sde.sigma2(T).item()
    return a, m, s2


def kl_exact_gaussian(sde, mean, cov):
    a, m, s2 = marginal_T(sde, None)
    d = cov.shape[0]
    return kl_gaussian(a * mean + m, a**2 * cov + s2 * torch.eye(d, dtype=F64), sde.prior_mean, sde.prior_var)


def kl_mc_mixture(sde, target, n=20000, seed=0):
    qT = target.marginal(sde.T, sde)
    x = qT.sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    lq = target.log_prob(x, torch.tensor(sde.T, dtype=F64), sde)
    lp = sde.prior_logp(x)
    v = lq - lp
    return v.mean().item(), v.std().item() / math.sqrt(n)


def main():
    gauss = [
        ("N(1, 0.5²), d=1", torch.ones(1, dtype=F64), 0.25 * torch.eye(1, dtype=F64)),
        ("N(0, 0.25 I), d=16", torch.zeros(16, dtype=F64), 0.25 * torch.eye(16, dtype=F64)),
        ("N(2·1, 0.1 I), d=16", 2 * torch.ones(16, dtype=F64), 0.1 * torch.eye(16, dtype=F64)),
    ]
    print("### Exact KL(q_T || prior) in nats, Gaussian targets\n")
    print("| SDE | SNR(T) | α(T) | " + " | ".join(name for name, _, _ in gauss) + " |")
    print("|---|---|---|" + "---|" * len(gauss))
    for label, sde in SDES:
        T = torch.tensor(sde.T, dtype=F64)
        cells = []
        for _, mean, cov in gauss:
            kl = kl_exact_gaussian(sde, mean, cov)
            cell = f"{kl:.3g}"
            if isinstance(sde, OU) and not isinstance(sde, ContractiveOU) and sde.theta == 1.0 and sde.mu == 0.0:
                kl0 = kl_gaussian(mean, cov, 0.0, 1.0)
                cell += f" (bound {math.exp(-2 * sde.T) * kl0:.3g})"
            cells.append(cell)
        print(f"| {label} | {sde.snr(T).item():.3g} | {sde.alpha(T).item():.3g} | " + " | ".join(cells) + " |")

    presets = ["bimodal_1d", "ring8_2d", "swissroll_2d", "anisotropic_16d"]
    print("\n### Monte-Carlo KL(q_T || prior) in nats ± 1 SE, mixture presets (20000 samples)\n")
    print("| SDE | " + " | ".join(presets) + " |")
    print("|---|" + "---|" * len(presets))
    for label, sde in SDES:
        cells = []
        for name in presets:
            kl, se = kl_mc_mixture(sde, get_target(name))
            cells.append(f"{kl:.3g} ± {se:.1g}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\n### Share of the variance at T that still comes from the data: α²·tr C / (α²·tr C + d σ²)\n")
    print("| SDE | " + " | ".join(presets) + " |")
    print("|---|" + "---|" * len(presets))
    for label, sde in SDES:
        a, _, s2 = marginal_T(sde, None)
        cells = []
        for name in presets:
            tgt = get_target(name)
            tr = torch.trace(tgt.covariance()).item()
            cells.append(f"{a**2 * tr / (a**2 * tr + tgt.dim * s2):.3g}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
