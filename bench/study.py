#!/usr/bin/env python
"""The sampler study: quality against NFE on swiss roll and MNIST for VP, OU and
contractive OU, four samplers, samples side by side at 8/32/128 NFE, and bf16 against fp32.

CPU-sized by default (no GPU in the task that wrote it): small time-conditioned MLPs trained for a
few thousand steps; every number below comes from ``lit_diffusion.evaluation.metrics``.

    python bench/study.py                       # everything (~25 min on 2 busy CPU cores)
    python bench/study.py --datasets swissroll  # one data set
    python bench/study.py --quick               # smoke run (tiny training, few NFE)

Writes ``<out>/results.json``, ``<out>/*.png`` (default ``docs/study``) and the checkpoints to
``<work>`` (default ``/tmp/lit_diffusion_study``; sample.py reads them, see docs/study.md), and
prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLERS = ("euler", "exponential_euler", "ddram", "pc")
LABELS = {"euler": "Euler–Maruyama", "exponential_euler": "exponential Euler", "ddram": "DDRaM", "pc": "PC (EM + 1 Langevin)"}
NFES = (8, 16, 32, 64, 128)
SDES = ("VP", "OU", "COU")


def make_sde(name: str):
    from lit_diffusion.core.sdes import OU, VP, ContractiveOU

    if name == "VP":
        return VP(beta_min=0.1, beta_max=20.0, T=1.0, t_min=1e-3)
    if name == "OU":
        return OU(theta=1.0, mu=0.0, sigma=2**0.5, T=5.0, t_min=1e-3)
    if name == "COU":
        return ContractiveOU(theta=1.0, mu=0.0, sigma=2**0.5, T=1.0, t_min=1e-3)
    raise ValueError(name)


def steps_for(sampler: str, nfe: int) -> int:
    return nfe // (2 if sampler in ("ddram", "pc") else 1)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def data(dataset: str):
    """(train tensor, held-out tensor) in the model's space."""
    if dataset == "swissroll":
        from lit_diffusion.core.targets import swiss_roll

        return swiss_roll(18000, seed=0), swiss_roll(2000, seed=1)
    from lit_diffusion.evaluation.feature_net import mnist_split

    Xtr, _, Xte, _ = mnist_split()  # the feature net's split: FID against the 1,000 held-out digits
    return torch.as_tensor(Xtr) * 2 - 1, torch.as_tensor(Xte) * 2 - 1


def train(dataset: str, sde_name: str, steps: int, work: Path, seed: int = 0) -> Path:
    import lightning.pytorch as pl

    from lit_diffusion.training.data import TensorDataModule
    from lit_diffusion.training.losses import DSM
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP

    path = work / f"{dataset}_{sde_name}.ckpt"
    if path.exists():
        return path
    pl.seed_everything(seed, verbose=False)
    sde = make_sde(sde_name)
    xtr, _ = data(dataset)
    if dataset == "swissroll":
        net = TimeMLP(dim=2, hidden=128, n_blocks=3, T=sde.T, prediction_type="epsilon")
        dm = TensorDataModule(xtr, batch_size=256, val_fraction=0.0)
        lr = 2e-3
    else:
        # denoiser (x0) prediction: an epsilon-predicting MLP of width 256 < 784 cannot even copy
        # the 784-dim noise at large t (a rank-256 bottleneck: eps-MSE >= 1 - 256/784 = 0.67, measured
        # 0.69 on a first run); the denoiser lives near the digit manifold and the conversion to
        # epsilon/score adds the skip term x - alpha D exactly (docs/maths.md §2)
        net = TimeMLP(dim=784, hidden=256, n_blocks=2, T=sde.T, prediction_type="denoiser")
        dm = TensorDataModule(xtr, batch_size=128, val_fraction=0.0)
        lr = 1e-3
    module = ScoreModule(net=net, sde=sde, loss=DSM(), lr=lr, warmup_steps=100, ema_decay=0.995)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0, limit_val_batches=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    trainer.save_checkpoint(str(tmp))
    os.replace(tmp, path)
    print(f"  trained {dataset}/{sde_name}: {steps} steps in {time.perf_counter() - t0:.0f}s -> {path}", flush=True)
    return path


# ------------------------------------------------------------------------------------------------
# sampling and metrics
# ------------------------------------------------------------------------------------------------
def draw(module, sampler: str, nfe: int, n: int, seed: int, precision: str = "fp32", x_T=None):
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.cli.sample_models import PRECISIONS
    from lit_diffusion.runtime.precision import NetworkRunner

    net = NetworkRunner(module.sampling_net(ema=True), PRECISIONS[precision], module.prediction_type)
    net.eval()
    g = torch.Generator().manual_seed(seed)
    shape = (n,) + tuple(module.data_shape)
    t0 = time.perf_counter()
    out = sample(net, module.sde, x_T=x_T, shape=shape, sampler=sampler, steps=steps_for(sampler, nfe), generator=g)
    dt = time.perf_counter() - t0
    x = out.samples.float()
    return x, out.nfe, dt


def score(dataset: str, x: torch.Tensor, ref: torch.Tensor) -> dict:
    from lit_diffusion.evaluation import metrics
    from lit_diffusion.evaluation import image_metrics

    if not torch.isfinite(x).all():
        return {"nonfinite": int((~torch.isfinite(x)).any(dim=tuple(range(1, x.ndim))).sum())}
    if dataset == "swissroll":
        a, b = x.numpy(), ref.numpy()
        return {
            "sw2": metrics.sliced_wasserstein2(a, b)["value"],
            "w1": metrics.wasserstein1(a, b, n_max=1000)["value"],
            "mmd2": metrics.mmd2(a, b, bandwidth=0.2)["value"],  # fixed kernel width: comparable across runs
        }
    r = image_metrics.fid(x.clamp(-1, 1).numpy(), "mnist-test", backend="mnist", value_range=(-1, 1))
    return {"fid_mnist": r["value"], "n_samples": r["n_samples"], "n_reference": r["n_reference"]}


MAIN_METRIC = {"swissroll": "sw2", "mnist": "fid_mnist"}


# ------------------------------------------------------------------------------------------------
# pictures
# ------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


YLABEL = {"sw2": "sliced W2 vs held-out", "fid_mnist": "FID-MNIST vs 1,000 held-out", "mmd2": "MMD² (h=0.2) vs held-out", "w1": "W1 vs held-out"}


def plot_curves(res: dict, dataset: str, out: Path, floor: float, key: Optional[str] = None, suffix: str = ""):
    plt = _plt()
    key = key or MAIN_METRIC[dataset]
    fig, axes = plt.subplots(1, len(SDES), figsize=(4.2 * len(SDES), 3.6), sharey=True)
    for ax, sde in zip(axes, SDES):
        for s in SAMPLERS:
            pts = [(r["nfe"], r[key]) for r in res["runs"] if r["sde"] == sde and r["sampler"] == s and r["precision"] == "fp32" and key in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=LABELS[s])
        ax.axhline(floor, color="k", ls=":", lw=1, label="data vs held-out")
        ax.set_xscale("log", base=2)
        ax.set_yscale("symlog", linthresh=1e-3) if key == "mmd2" else ax.set_yscale("log")
        ax.set_title(f"{dataset}, {sde}")
        ax.set_xlabel("NFE (network evaluations)")
    axes[0].set_ylabel(YLABEL[key])
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{dataset}_quality_vs_nfe{suffix}.png", dpi=110)
    plt.close(fig)


def plot_grid(samples: dict, dataset: str, sde: str, out: Path, ref: torch.Tensor):
    plt = _plt()
    cols = (8, 32, 128)
    fig, axes = plt.subplots(len(SAMPLERS), len(cols), figsize=(3.0 * len(cols), 3.0 * len(SAMPLERS)))
    for i, s in enumerate(SAMPLERS):
        for j, nfe in enumerate(cols):
            ax = axes[i, j]
            x = samples.get((sde, s, nfe))
            ax.set_xticks([])
            ax.set_yticks([])
            if x is None:
                continue
            if dataset == "swissroll":
                r = ref[:1000].numpy()
                ax.scatter(r[:, 0], r[:, 1], s=1, c="0.8")
                xs = x[:1000].numpy()
                ax.scatter(xs[:, 0], xs[:, 1], s=1, c="C0")
                ax.set_xlim(-2.2, 2.2)
                ax.set_ylim(-2.2, 2.2)
            else:
                ax.imshow(image_grid(x[:36], 6), cmap="gray", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{nfe} NFE")
            if j == 0:
                ax.set_ylabel(LABELS[s], fontsize=9)
    fig.suptitle(f"{dataset}, {sde}")
    fig.tight_layout()
    fig.savefig(out / f"{dataset}_{sde}_samples.png", dpi=90)
    plt.close(fig)


def image_grid(x: torch.Tensor, ncol: int) -> np.ndarray:
    x = ((x.clamp(-1, 1) + 1) / 2).numpy()[:, 0]
    n, h, w = x.shape
    nrow = math.ceil(n / ncol)
    g = np.ones((nrow * (h + 1) + 1, ncol * (w + 1) + 1))
    for k in range(n):
        r, c = divmod(k, ncol)
        g[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = x[k]
    return g


# ------------------------------------------------------------------------------------------------
def run_dataset(dataset: str, args, out: Path, work: Path) -> dict:
    from lit_diffusion.training.module import ScoreModule

    n = args.n_swissroll if dataset == "swissroll" else args.n_mnist
    steps = args.train_steps_swissroll if dataset == "swissroll" else args.train_steps_mnist
    xtr, ref = data(dataset)
    floor = score(dataset, xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))[:n]], ref)
    res = {"dataset": dataset, "n_samples": n, "n_reference": len(ref), "train_steps": steps, "floor": floor, "runs": [], "exact_start": [], "train_seconds": {}}
    samples = {}
    for sde_name in SDES:
        t0 = time.perf_counter()
        ckpt = train(dataset, sde_name, steps, work)
        res["train_seconds"][sde_name] = time.perf_counter() - t0
        module = ScoreModule.load_checkpoint(str(ckpt)).eval()
        for s in SAMPLERS:
            for nfe in (args.nfes if dataset == "swissroll" else args.nfes_mnist):
                x, used, dt = draw(module, s, nfe, n, seed=args.seed)
                row = {"sde": sde_name, "sampler": s, "nfe": used, "precision": "fp32", "seconds": dt, **score(dataset, x, ref)}
                res["runs"].append(row)
                print("   ", json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
                if nfe in (8, 32, 128):
                    samples[(sde_name, s, nfe)] = x[:1000]
        # prior bias: the same sampler started from the exact law of X_T (forward-noised held-out data)
        g = torch.Generator().manual_seed(args.seed + 1)
        xr = ref[:n]
        xT = module.sde.perturb(xr, torch.full((len(xr),), module.sde.T), torch.randn(xr.shape, generator=g))
        for s in ("exponential_euler",):
            x, used, dt = draw(module, s, 128, len(xr), seed=args.seed, x_T=xT)
            row = {"sde": sde_name, "sampler": s, "nfe": used, "start": "exact X_T", **score(dataset, x, ref)}
            res["exact_start"].append(row)
            print("    exact-start", json.dumps(row), flush=True)
        # bf16 against fp32 (VP only): speed and quality, side by side, same seed
        if sde_name == "VP":
            for s in SAMPLERS:
                for prec in ("fp32", "bf16"):
                    draw(module, s, 8, min(n, 256), seed=0, precision=prec)  # warm-up
                    x, used, dt = draw(module, s, 32, n, seed=args.seed, precision=prec)
                    row = {"sde": sde_name, "sampler": s, "nfe": used, "precision": prec, "seconds": dt, "bench": "precision", **score(dataset, x, ref)}
                    res.setdefault("precision", []).append(row)
                    print("    precision", json.dumps(row), flush=True)
        plot_grid(samples, dataset, sde_name, out, ref)
    replot(res, dataset, out)
    return res


def replot(res: dict, dataset: str, out: Path):
    plot_curves(res, dataset, out, res["floor"][MAIN_METRIC[dataset]])
    if dataset == "swissroll":
        plot_curves(res, dataset, out, res["floor"]["mmd2"], key="mmd2", suffix="_mmd")


def tables(all_res: dict) -> str:
    lines = []
    for dataset, res in all_res.items():
        key = MAIN_METRIC[dataset]
        lines.append(f"\n### {dataset}: {key} (n={res['n_samples']} samples vs {res['n_reference']} held-out; floor data-vs-held-out = {res['floor'][key]:.4g})\n")
        nfes = sorted({r["nfe"] for r in res["runs"]})
        lines.append("| SDE | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
        lines.append("|---|---|" + "---|" * len(nfes))
        for sde in SDES:
            for s in SAMPLERS:
                vals = {r["nfe"]: r.get(key, float("nan")) for r in res["runs"] if r["sde"] == sde and r["sampler"] == s}
                lines.append(f"| {sde} | {LABELS[s]} | " + " | ".join(f"{vals.get(k, float('nan')):.4g}" for k in nfes) + " |")
        if dataset == "swissroll":
            lines.append(f"\nMMD² (Gaussian kernel h = 0.2; floor {res['floor']['mmd2']:.3g}):\n")
            lines.append("| SDE | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
            lines.append("|---|---|" + "---|" * len(nfes))
            for sde in SDES:
                for s in SAMPLERS:
                    vals = {r["nfe"]: r.get("mmd2", float("nan")) for r in res["runs"] if r["sde"] == sde and r["sampler"] == s}
                    lines.append(f"| {sde} | {LABELS[s]} | " + " | ".join(f"{vals.get(k, float('nan')):.2g}" for k in nfes) + " |")
            lines.append("\nW1 (POT exact OT, 1,000 vs 1,000) and MMD² at 128 NFE:\n")
            lines.append("| SDE | sampler | W1 | MMD² |")
            lines.append("|---|---|---|---|")
            for r in res["runs"]:
                if r["nfe"] == max(nfes):
                    lines.append(f"| {r['sde']} | {LABELS[r['sampler']]} | {r.get('w1', float('nan')):.4g} | {r.get('mmd2', float('nan')):.3g} |")
            lines.append(f"\nfloor: W1 {res['floor']['w1']:.4g}, MMD² {res['floor']['mmd2']:.3g}")
        lines.append("\nPrior bias (exponential Euler, 128 NFE): sampler started from the prior vs from the exact law of X_T:\n")
        lines.append("| SDE | from prior | from exact X_T |")
        lines.append("|---|---|---|")
        for e in res["exact_start"]:
            prior = [r.get(key, float("nan")) for r in res["runs"] if r["sde"] == e["sde"] and r["sampler"] == e["sampler"] and r["nfe"] == e["nfe"]]
            lines.append(f"| {e['sde']} | {prior[0] if prior else float('nan'):.4g} | {e.get(key, float('nan')):.4g} |")
        if res.get("precision"):
            lines.append(f"\nbf16 vs fp32 (VP, 32 NFE, n={res['n_samples']}, same seed):\n")
            lines.append(f"| sampler | fp32 s | bf16 s | bf16/fp32 time | fp32 {key} | bf16 {key} |")
            lines.append("|---|---|---|---|---|---|")
            for s in SAMPLERS:
                rows = {r["precision"]: r for r in res["precision"] if r["sampler"] == s}
                if len(rows) == 2:
                    a, b = rows["fp32"], rows["bf16"]
                    lines.append(f"| {LABELS[s]} | {a['seconds']:.2f} | {b['seconds']:.2f} | {b['seconds'] / a['seconds']:.2f} | {a.get(key, float('nan')):.4g} | {b.get(key, float('nan')):.4g} |")
        lines.append("\ntraining seconds per model: " + ", ".join(f"{k} {v:.0f}" for k, v in res["train_seconds"].items()))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["swissroll", "mnist"], choices=["swissroll", "mnist"])
    p.add_argument("--out", default=str(ROOT / "docs" / "study"))
    p.add_argument("--work", default="/tmp/lit_diffusion_study")
    p.add_argument("--train-steps-swissroll", type=int, default=2000)
    p.add_argument("--train-steps-mnist", type=int, default=2000)
    p.add_argument("--n-swissroll", type=int, default=1000)
    p.add_argument("--n-mnist", type=int, default=500)
    p.add_argument("--nfes", type=int, nargs="+", default=list(NFES), help="NFE values (swiss roll)")
    p.add_argument("--nfes-mnist", type=int, nargs="+", default=[8, 32, 128], help="NFE values (MNIST)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads were 6x slower)")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 training steps, 200 samples, NFE 8 32 128")
    p.add_argument("--replot", action="store_true", help="only redraw the curves and tables from <out>/results.json")
    args = p.parse_args(argv)
    if args.replot:
        saved = json.loads((Path(args.out) / "results.json").read_text())["results"]
        for d, res in saved.items():
            replot(res, d, Path(args.out))
        txt = tables(saved)
        print(txt)
        (Path(args.out) / "tables.md").write_text(txt + "\n")
        return
    if args.quick:
        args.train_steps_swissroll = args.train_steps_mnist = 200
        args.n_swissroll = args.n_mnist = 200
        args.nfes = args.nfes_mnist = [8, 32, 128]
        args.work = args.work + "_quick"
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    all_res = {}
    if (out / "results.json").exists():  # keep the other data set's results
        all_res = {k: v for k, v in json.loads((out / "results.json").read_text())["results"].items() if k not in args.datasets}
    t0 = time.perf_counter()
    for d in args.datasets:
        print(f"== {d}", flush=True)
        all_res[d] = run_dataset(d, args, out, work)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "results": all_res}, indent=1))
    txt = tables(all_res)
    print(txt)
    (out / "tables.md").write_text(txt + f"\n\ntotal wall time {time.perf_counter() - t0:.0f}s\n")
    print(f"total wall time {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
