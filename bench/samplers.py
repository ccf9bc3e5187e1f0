"""Sampler benchmark: error against exact samples versus NFE, and the cost of our
vectorised DDRaM step against a per-sample SciPy quadrature/root-finding version of the same step.

    python bench/samplers.py --quick          # small run (3 schedules, NFE 8/32/128)
    python bench/samplers.py                  # full grid (5 schedules, NFE 8..128)
    python bench/samplers.py --only overhead  # only the DDRaM step timing

Errors are measured against exact samples of the true marginal at ``t_min`` (so that early stopping
is not counted as sampler error): W1 (exact optimal transport with POT, or scipy in 1-D), sliced W2
(POT, 200 projections), MMD^2 (Gaussian kernel, median bandwidth) and, on the Gaussian target
``gauss_2d``, the Gaussian KL of the empirical moments (exact up to Monte-Carlo error for the affine
samplers).  The reverse process starts from the SDE's prior.  ``noise floor`` rows give the same
metrics between two independent exact sample sets.  PNG plots go to ``docs/``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lit_diffusion.core import sdes  # noqa: E402
from lit_diffusion.sampling.integrators import get_integrator  # noqa: E402
from lit_diffusion.sampling.samplers import get_stepper, sample  # noqa: E402
from lit_diffusion.core.schedules import SCHEDULES  # noqa: E402
from lit_diffusion.core.targets import GaussianMixture, get_target  # noqa: E402

F64 = torch.float64
DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")

CONFIGS = [  # (label, sampler, parametrization, options)
    ("EM", "euler", "score", {}),
    ("EI-score", "exponential_euler", "score", {}),
    ("EI-rel", "exponential_euler", "relative_score", {}),
    ("EI-den", "exponential_euler", "denoiser", {}),  # == localization
    ("DDRaM-score", "ddram", "score", {}),
    ("DDRaM-rel", "ddram", "relative_score", {}),
    ("DDRaM-den", "ddram", "denoiser", {}),
    ("PC(EM+1L)", "pc", "score", {"n_corrector": 1, "snr": 0.16}),
    ("MM", "moment_matching", "denoiser", {}),
]


def gauss_2d():
    return GaussianMixture.gaussian([1.0, -1.0], torch.tensor([0.25, 1.0], dtype=F64))


def get_bench_target(name):
    return gauss_2d() if name == "gauss_2d" else get_target(name)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def w1(x: np.ndarray, y: np.ndarray) -> float:
    if x.shape[1] == 1:
        from scipy.stats import wasserstein_distance

        return float(wasserstein_distance(x[:, 0], y[:, 0]))
    import ot

    M = ot.dist(x, y, metric="euclidean")
    a = np.full(len(x), 1.0 / len(x))
    b = np.full(len(y), 1.0 / len(y))
    return float(ot.emd2(a, b, M, numItermax=1_000_000))


def sliced_w2(x, y):
    import ot

    if x.shape[1] == 1:
        xs, ys = np.sort(x[:, 0]), np.sort(y[:, 0])
        return float(np.sqrt(np.mean((xs - ys) ** 2)))
    return float(ot.sliced_wasserstein_distance(x, y, n_projections=200, seed=0))


def mmd2(x, y, bw):
    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d2 / (2 * bw**2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def gauss_kl(x, mean, cov):
    """KL(N(empirical moments of x) || N(mean, cov))."""
    m = x.mean(0)
    S = np.cov(x.T).reshape(len(m), len(m))
    d = len(m)
    Ci = np.linalg.inv(cov)
    diff = m - mean
    return float(0.5 * (np.trace(Ci @ S) + diff @ Ci @ diff - d + np.log(np.linalg.det(cov) / np.linalg.det(S))))


# --------------------------------------------------------------------------------------------
# error vs NFE
# --------------------------------------------------------------------------------------------
N_PER_TARGET = {"bimodal_1d": 20000, "gauss_2d": 4000, "ring8_2d": 4000, "anisotropic_16d": 2000}
EMD_MAX = 1000  # exact OT and MMD on the first EMD_MAX samples (cost ~ n^3 / n^2)


def run_errors(targets, sde_names, schedules, nfes, n_scale=1.0, seed=0, out_csv=None):
    rows = []
    for tname in targets:
        target = get_bench_target(tname)
        n = max(200, int(N_PER_TARGET[tname] * n_scale))
        for sname in sde_names:
            sde = sdes.OU() if sname == "OU" else sdes.VP()
            ref_law = target.marginal(sde.t_min, sde)
            ref = ref_law.sample(n, torch.Generator().manual_seed(10_000 + seed), dtype=F64).numpy()
            ref2 = ref_law.sample(n, torch.Generator().manual_seed(20_000 + seed), dtype=F64).numpy()
            sub = ref[: min(n, 1000)]
            bw = float(np.median(np.sqrt(((sub[:, None] - sub[None]) ** 2).sum(-1))))
            mean, cov = ref_law.mean().numpy(), ref_law.covariance().numpy()

            def metrics(x):
                k = len(x) if target.dim == 1 else EMD_MAX
                r = dict(W1=w1(x[:k], ref[:k]), SW2=sliced_w2(x, ref), MMD2=mmd2(x[:EMD_MAX], ref[:EMD_MAX], bw))
                if tname == "gauss_2d":
                    r["gKL"] = gauss_kl(x, mean, cov)
                return r

            floor = metrics(ref2)
            rows.append(dict(target=tname, sde=sname, sampler="noise floor", schedule="-", nfe=0, time_s=0.0, **floor))
            for label, sampler, param, opts in CONFIGS:
                stepper = get_stepper(sampler, sde, param, **opts)
                for sched in schedules:
                    for nfe in nfes:
                        steps = max(1, nfe // stepper.evals_per_step)
                        t0 = time.perf_counter()
                        r = sample(target, sde, shape=(n, target.dim), sampler=sampler, parametrization=param,
                                   steps=steps, schedule=sched, generator=torch.Generator().manual_seed(seed),
                                   dtype=F64, **opts)
                        dt = time.perf_counter() - t0
                        x = r.samples.numpy()
                        if not np.isfinite(x).all():
                            m = dict(W1=math.inf, SW2=math.inf, MMD2=math.inf)
                            if tname == "gauss_2d":
                                m["gKL"] = math.inf
                        else:
                            m = metrics(x)
                        rows.append(dict(target=tname, sde=sname, sampler=label, schedule=sched, nfe=r.nfe, time_s=dt, **m))
                print(f"  done {tname} {sname} {label}", file=sys.stderr, flush=True)
    if out_csv:
        keys = ["target", "sde", "sampler", "schedule", "nfe", "W1", "SW2", "MMD2", "gKL", "time_s"]
        with open(out_csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in keys})
    return rows


def load_csv(path):
    rows = []
    with open(path) as f:
        for r in csv.DictReader(f):
            row = dict(target=r["target"], sde=r["sde"], sampler=r["sampler"], schedule=r["schedule"], nfe=int(r["nfe"]), time_s=float(r["time_s"]))
            for k in ("W1", "SW2", "MMD2", "gKL"):
                if r.get(k, "") != "":
                    row[k] = float(r[k])
            rows.append(row)
    return rows


def print_tables(rows, nfes, metric="W1"):
    print(f"\n### {metric} against exact samples vs NFE (rows: target / SDE / sampler / schedule)\n")
    head = "| target | SDE | sampler | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    print(head)
    print("|" + "---|" * (4 + len(nfes)))
    keyed = {}
    for r in rows:
        keyed.setdefault((r["target"], r["sde"], r["sampler"], r["schedule"]), {})[r["nfe"]] = r.get(metric, float("nan"))
    for (t, s, smp, sch), d in keyed.items():
        if smp == "noise floor":
            vals = " | ".join(f"{d[0]:.3g}" for _ in nfes)
        else:
            vals = " | ".join(f"{d.get(n, float('nan')):.3g}" for n in nfes)
        print(f"| {t} | {s} | {smp} | {sch} | {vals} |")


def claim_summary(rows, nfes, metric="W1", schedules=("bbdd", "log_snr", "edm", "geometric")):
    """The seed's claim: at equal NFE, DDRaM < EM and DDRaM < exponential Euler, with a schedule
    shrinking towards t_min.  DDRaM-rel is compared with EM and with the best exponential Euler."""
    print(f"\n### Claim check ({metric}): DDRaM-rel vs EM and vs the best exponential Euler, same schedule and NFE\n")
    print("| target | SDE | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
    print("|" + "---|" * (3 + len(nfes)))
    keyed = {}
    for r in rows:
        keyed[(r["target"], r["sde"], r["sampler"], r["schedule"], r["nfe"])] = r.get(metric)
    wins = total = wins_any = 0
    combos = sorted({(r["target"], r["sde"]) for r in rows})
    for t, s in combos:
        for sch in schedules:
            cells = []
            for n in nfes:
                d = keyed.get((t, s, "DDRaM-rel", sch, n))
                em = keyed.get((t, s, "EM", sch, n))
                ei = min((keyed.get((t, s, k, sch, n), math.inf) for k in ("EI-score", "EI-rel", "EI-den")), default=math.inf)
                if d is None or em is None:
                    cells.append("-")
                    continue
                ok = d < em and d < ei
                dbest = min(keyed.get((t, s, k, sch, n), math.inf) for k in ("DDRaM-score", "DDRaM-rel", "DDRaM-den"))
                wins_any += dbest < em and dbest < ei
                wins += ok
                total += 1
                cells.append(f"{'**' if ok else ''}{d:.3g}{'**' if ok else ''} / {em:.3g} / {ei:.3g}")
            if any(c != "-" for c in cells):
                print(f"| {t} | {s} | {sch} | " + " | ".join(cells) + " |")
    print(f"\nDDRaM-rel beats both EM and the best exponential Euler in {wins} of {total} cases "
          f"(cells: DDRaM-rel / EM / best EI; bold = DDRaM best); the best of the three DDRaM "
          f"parametrizations beats both in {wins_any} of {total}.")


def plot(rows, nfes, metric="W1", schedule="bbdd"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(DOCS, exist_ok=True)
    targets = sorted({r["target"] for r in rows})
    sde_names = sorted({r["sde"] for r in rows})
    paths = []
    for t in targets:
        fig, axes = plt.subplots(1, len(sde_names), figsize=(5.5 * len(sde_names), 4.2), squeeze=False)
        for ax, s in zip(axes[0], sde_names):
            floor = [r[metric] for r in rows if r["target"] == t and r["sde"] == s and r["sampler"] == "noise floor"]
            for label, *_ in CONFIGS:
                pts = sorted((r["nfe"], r[metric]) for r in rows if r["target"] == t and r["sde"] == s
                             and r["sampler"] == label and r["schedule"] == schedule and math.isfinite(r[metric]))
                if pts:
                    style = "-o" if label.startswith("DDRaM") else "--."
                    ax.loglog([p[0] for p in pts], [p[1] for p in pts], style, label=label, ms=4)
            if floor:
                ax.axhline(floor[0], color="k", lw=0.8, ls=":", label="noise floor")
            ax.set_title(f"{t}, {s}, schedule={schedule}")
            ax.set_xlabel("NFE")
            ax.set_ylabel(metric)
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(n) for n in nfes])
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        p = os.path.join(DOCS, f"samplers_{t}_{metric}.png")
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------------------------
# DDRaM step: vectorised vs per-sample SciPy reference
# --------------------------------------------------------------------------------------------
def scipy_ddram_step(sde, param, x, F_t, F_tau_fn, t, s, u, z1, z2):
    """How a naive reference computes one DDRaM step: for each sample, the midpoint by root-finding
    (brentq) on the quadrature CDF of Phi(s,.)|e(.)|, then Phi, W, V by scipy.integrate.quad, with
    plain-float (math module) coefficient functions of the VP / subVP SDE."""
    from scipy import integrate, optimize

    kappa = 1.0
    v = sde.prior_var
    bmin, bmax, T = sde.beta_min, sde.beta_max, sde.T  # VP / subVP, plain-float maths
    sub = isinstance(sde, sdes.SubVP)
    beta = lambda w: bmin + (w / T) * (bmax - bmin)
    Bf = lambda w: bmin * w + (bmax - bmin) * w * w / (2 * T)
    a_ = lambda w: -0.5 * beta(w)
    g2_ = lambda w: beta(w) * (1 - math.exp(-2 * Bf(w))) if sub else beta(w)
    alpha_ = lambda w: math.exp(-0.5 * Bf(w))
    sigma2_ = lambda w: (1 - math.exp(-Bf(w))) ** 2 if sub else 1 - math.exp(-Bf(w))

    def c(w):
        if param == "score":
            return a_(w)
        if param == "relative_score":
            return a_(w) + kappa * g2_(w) / v
        return a_(w) + kappa * g2_(w) / sigma2_(w)

    def abs_e(w):
        if param == "denoiser":
            return kappa * g2_(w) * alpha_(w) / sigma2_(w)
        return kappa * g2_(w)

    def Phi(a, b):  # exp int_b^a c
        return math.exp(integrate.quad(c, b, a)[0])

    def W(a, b):
        return integrate.quad(lambda w: Phi(a, w) * abs_e(w), a, b)[0]

    def V(a, b):
        return integrate.quad(lambda w: Phi(a, w) ** 2 * g2_(w), a, b)[0]

    m = lambda w: 0.0  # VP-type SDEs have no mean offset
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        Wst = W(s, t)
        cdf_gap = lambda w: integrate.quad(lambda q: Phi(s, q) * abs_e(q), s, w)[0] - u[i] * Wst
        tau = optimize.brentq(cdf_gap, s, t, xtol=1e-12)
        xc = x[i] - m(t)
        eta = math.sqrt(V(tau, t)) * z1[i]
        x_tau = Phi(tau, t) * xc + W(tau, t) * F_t[i] + eta + m(tau)
        F_tau = F_tau_fn(x_tau, tau)
        xs = Phi(s, t) * xc + Wst * F_tau + Phi(s, tau) * eta + math.sqrt(V(s, tau)) * z2[i]
        out[i] = xs + m(s)
    return out


def run_overhead(batch_sizes=(1, 64, 1024), d=16, scipy_max=64):
    print("\n### One DDRaM step: vectorised torch vs per-sample SciPy quad/brentq (same maths)\n")
    print("| SDE / parametrization | batch | ours (ms) | SciPy reference (ms) | ratio | max abs diff |")
    print("|---|---|---|---|---|---|")
    res = []
    for sde, param in [(sdes.VP(), "relative_score"), (sdes.SubVP(), "relative_score"), (sdes.VP(), "denoiser")]:
        integ = get_integrator(sde, param)  # built once (table for SubVP)
        stepper = get_stepper("ddram", sde, param)
        t, s = 0.5, 0.45
        for B in batch_sizes:
            g = torch.Generator().manual_seed(B)
            x = torch.randn(B, d, generator=g, dtype=F64)
            F_t = torch.randn(B, d, generator=g, dtype=F64)
            F_tau_fn = lambda xx, tt: np.tanh(xx) * (1 + tt)  # a field evaluated at the midpoint
            u = torch.rand(B, generator=g, dtype=F64)
            z1 = torch.randn(B, d, generator=g, dtype=F64)
            z2 = torch.randn(B, d, generator=g, dtype=F64)

            def ours():
                st = stepper.start(x, t, s, u=u)
                st.advance(F_t, z1)
                st.advance(torch.tanh(st.x_eval) * (1 + st.t_eval[:, None]), z2)
                return st.x

            ours()
            reps = max(3, int(200 / max(B, 1)))
            t0 = time.perf_counter()
            for _ in range(reps):
                y = ours()
            t_ours = (time.perf_counter() - t0) / reps * 1e3
            Bs = min(B, scipy_max)
            scipy_ddram_step(sde, param, x[:1].numpy(), F_t[:1].numpy(), F_tau_fn, t, s, u[:1].numpy(), z1[:1].numpy(), z2[:1].numpy())  # warm-up
            t0 = time.perf_counter()
            ref = scipy_ddram_step(sde, param, x[:Bs].numpy(), F_t[:Bs].numpy(), F_tau_fn, t, s, u[:Bs].numpy(), z1[:Bs].numpy(), z2[:Bs].numpy())
            t_ref = (time.perf_counter() - t0) * 1e3 * (B / Bs)
            diff = float(np.abs(ref - y[:Bs].numpy()).max())
            note = "" if Bs == B else f" (extrapolated from {Bs})"
            name = f"{type(sde).__name__} / {param}" + (" (table)" if not integ.closed_W else "")
            print(f"| {name} | {B} | {t_ours:.3g} | {t_ref:.4g}{note} | {t_ref / t_ours:.3g} | {diff:.1e} |")
            res.append((name, B, t_ours, t_ref, diff))
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small run: 3 schedules, NFE 8/32/128, n=500")
    p.add_argument("--only", choices=["errors", "overhead"], default=None)
    p.add_argument("--n-scale", type=float, default=None, help="scale of the per-target sample sizes (default 1, quick 0.5)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--csv", default="/tmp/lit_diffusion_bench_samplers.csv")
    p.add_argument("--from-csv", default=None, help="re-print the tables and re-draw the plots from a CSV of an earlier run")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        schedules, nfes, n = ["uniform", "bbdd", "log_snr"], [8, 32, 128], args.n_scale or 0.5
    else:
        schedules, nfes, n = list(SCHEDULES), [8, 16, 32, 64, 128], args.n_scale or 1.0
    targets = ["bimodal_1d", "ring8_2d", "anisotropic_16d", "gauss_2d"]
    print(f"# bench/samplers.py  torch {torch.__version__}, threads={args.threads}, n={ {k: int(v * n) for k, v in N_PER_TARGET.items()} }, schedules={schedules}, NFE={nfes}")
    if args.only != "overhead":
        t0 = time.time()
        if args.from_csv:
            rows = load_csv(args.from_csv)
            nfes = sorted({r["nfe"] for r in rows if r["nfe"] > 0})
            schedules = sorted({r["schedule"] for r in rows if r["schedule"] != "-"}, key=list(SCHEDULES).index)
        else:
            rows = run_errors(targets, ["OU", "VP"], schedules, nfes, n, out_csv=args.csv)
        for metric in ("W1", "SW2", "MMD2"):
            print_tables(rows, nfes, metric)
        print_tables([r for r in rows if r["target"] == "gauss_2d"], nfes, "gKL")
        claim_summary(rows, nfes, "W1", schedules=[s for s in schedules if s != "uniform"])
        claim_summary(rows, nfes, "SW2", schedules=[s for s in schedules if s != "uniform"])
        claim_summary([r for r in rows if r["target"] == "gauss_2d"], nfes, "gKL", schedules=[s for s in schedules if s != "uniform"])
        paths = plot(rows, nfes, "W1") + plot(rows, nfes, "SW2")
        paths += plot([r for r in rows if r["target"] == "gauss_2d"], nfes, "gKL", schedule="log_snr")
        print("\nplots:", ", ".join(os.path.relpath(q) for q in paths))
        print(f"errors section: {time.time() - t0:.0f} s; rows in {args.csv}")
    if args.only != "errors":
        run_overhead()


if __name__ == "__main__":
    main()
