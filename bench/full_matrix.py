#!/usr/bin/env python
"""The whole comparison on the shipped unconditional model (``checkpoints/mnist``): every stock diffusers
scheduler the benchmark drives and our defaults, at 5, 6, 8, 10, 15, 20 and 50 evaluations, seeds 0 and 1,
FID-MNIST of 1,000 samples against the 1,000 held-out digits (docs/samplers.md, "The whole matrix").

No cell is run here: each is read from the ``bench/real_model.py`` run that measured it (``SOURCES`` names the
file and row of every cell, and the compiled file keeps it as ``"source"``), because the matrix took several
runs over several sessions (about 8 hours of this CPU at one thread).  Rows with more seeds are cut to seeds
0 and 1, so every cell is the same two seeds.  Writes the compiled rows (JSON lines), prints the markdown
table of ``bench/real_model.py`` and draws its figure (FID against evaluations, SDE and ODE panels).

    python bench/full_matrix.py --out docs/study/full_matrix_mnist.jsonl --plot docs/full_matrix_fid.png
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model  # noqa: E402

STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "study")
SEEDS = (0, 1)
NEW = "full_matrix_runs.jsonl"  # the cells measured for this matrix (the commands in docs/samplers.md)

#: our defaults: the figure's label -> {evaluations: (file, the row's label there)}.  ``sample()`` and
#: ``SDEScheduler`` start from ``T``; ``sample.py`` also takes the Gaussian start up to 9 steps and the grids
#: fitted to the model where they measured better (``checkpoints/mnist/grids``).  Cells at 50 evaluations and
#: the SDE form's at 15 come from the H200 run (figures of rows run on both machines agree to a few hundredths).
FROM_T_ODE = {5: ("short_run_end.jsonl", "lit multistep 2 ODE"), 6: ("short_run_end.jsonl", "lit multistep 2 ODE"),
              8: ("short_run_end.jsonl", "lit multistep 2 ODE"),
              10: ("gaussian_start_figure.jsonl", "lit multistep 2 ODE from T (default without moments)"),
              15: ("multistep_mnist_now.jsonl", "lit multistep 2 ODE"), 20: ("multistep_mnist_now.jsonl", "lit multistep 2 ODE"),
              50: ("gpu_mnist_15_50.jsonl", "lit multistep 2 ODE")}
FROM_T_SDE = {5: ("short_run_end.jsonl", "lit multistep 2"), 6: ("short_run_end.jsonl", "lit multistep 2"),
              8: ("short_run_end.jsonl", "lit multistep 2"),
              10: ("gaussian_start_figure.jsonl", "lit multistep 2 from T (default without moments)"),
              15: ("gpu_mnist_15_50.jsonl", "lit multistep 2"), 20: ("multistep_mnist_now.jsonl", "lit multistep 2"),
              50: ("gpu_mnist_15_50.jsonl", "lit multistep 2")}
SAMPLE_PY_ODE = {**FROM_T_ODE,
                 5: ("fid_fit_family.jsonl", "lit multistep 2 ODE, Gaussian start, fitted grid"),
                 6: ("fid_fit_family.jsonl", "lit multistep 2 ODE, Gaussian start, fitted grid"),
                 8: ("fid_fit_family.jsonl", "lit multistep 2 ODE, Gaussian start, fitted grid"),
                 10: ("gaussian_start_figure.jsonl", "lit multistep 2 ODE, Gaussian start")}
SAMPLE_PY_SDE = {**FROM_T_SDE,
                 5: ("fid_fit_family.jsonl", "lit multistep 2, Gaussian start, fitted grid"),
                 6: ("short_run_end.jsonl", "lit multistep 2, Gaussian start"),
                 8: ("fid_fit_family.jsonl", "lit multistep 2, Gaussian start, fitted grid"),
                 10: ("gaussian_start_figure.jsonl", "lit multistep 2, Gaussian start")}
OURS = {("SDE", "lit multistep 2, sample.py default"): SAMPLE_PY_SDE,
        ("SDE", "lit multistep 2 from T (sample(), SDEScheduler)"): FROM_T_SDE,
        ("ODE", "lit multistep 2 ODE, sample.py default"): SAMPLE_PY_ODE,
        ("ODE", "lit multistep 2 ODE from T (sample(), SDEScheduler)"): FROM_T_ODE}


def _stock(label, cells):
    return {n: (f, label) for n, f in cells.items()}


_G, _N, _M, _O, _F = "gaussian_start_figure.jsonl", "multistep_mnist_now.jsonl", "gpu_mnist_15_50.jsonl", "others_5_8.jsonl", \
    "fifteen_and_fifty.jsonl"
_S, _C = "six_evaluations_others.jsonl", "corrector_and_fitted_grids.jsonl"
#: the stock schedulers (each on the equivalent DDPM table, trailing spacing): (form, label) -> {evaluations: file}
STOCK = {
    ("SDE", "SDE-DPM-Solver++ 2M"): _stock("SDE-DPM-Solver++ 2M", {5: _G, 6: _G, 8: _G, 10: _G, 15: _F, 20: _G, 50: _M}),
    ("SDE", "DDPM ancestral"): _stock("DDPM ancestral", {5: "ddram_small_budgets.jsonl", 6: _S, 8: "ddram_small_budgets.jsonl",
                                                         10: "ddram_small_budgets.jsonl", 15: NEW,
                                                         20: "ddram_small_budgets.jsonl", 50: NEW}),
    ("SDE", "Euler ancestral"): _stock("Euler ancestral", {5: _O, 6: _S, 8: _O, 10: NEW, 15: NEW, 20: NEW, 50: NEW}),
    ("ODE", "UniPC"): _stock("UniPC", {5: _G, 6: _G, 8: _G, 10: _G, 15: _F, 20: _G, 50: _M}),
    ("ODE", "DPM-Solver++ 2M"): _stock("DPM-Solver++ 2M", {5: _G, 6: _G, 8: NEW, 10: NEW, 15: _F, 20: _M, 50: _M}),
    ("ODE", "DPM-Solver++ 3M"): _stock("DPM-Solver++ 3M", {5: _N, 6: _C, 8: _N, 10: NEW, 15: _F, 20: NEW, 50: NEW}),
    ("ODE", "DDIM"): _stock("DDIM", {5: _O, 6: _S, 8: _O, 10: "ddram_small_budgets.jsonl", 15: NEW, 20: NEW, 50: NEW}),
    ("ODE", "Heun"): _stock("Heun", {5: _O, 6: _S, 8: _O, 10: NEW, 15: NEW, 20: NEW, 50: NEW}),
}


def _rows(path):
    with open(path) as f:
        for i, line in enumerate(f):
            r = json.loads(line)
            if isinstance(r, dict) and "nfe_budget" in r and "fids" in r and r.get("guidance") in (None, 1, 1.0):
                yield i + 1, r


def _seeds(r):
    """The seeds of a row's ``fids``: its ``seeds`` when recorded, else 0, 1, ... (the order the runs used)."""
    return list(r.get("seeds") or range(len(r["fids"])))


def cell(form, label, nfe, source) -> dict:
    """The row of ``source = (file, label)`` at ``nfe``, cut to :data:`SEEDS`: the last such row of the file
    that holds both seeds (later runs of a file re-measure)."""
    fname, row_label = source
    found = None
    for line, r in _rows(os.path.join(STUDY, fname)):
        if r["sampler"] == row_label and r["nfe_budget"] == nfe and r["form"] == form:
            seeds = _seeds(r)
            if all(s in seeds for s in SEEDS):
                found = line, r, seeds
    if found is None:
        raise SystemExit(f"no row {row_label!r} ({form}) at {nfe} evaluations with seeds {SEEDS} in {fname}")
    line, r, seeds = found
    fids = [float(r["fids"][seeds.index(s)]) for s in SEEDS]
    return dict(form=form, sampler=label, nfe_budget=nfe, guidance=None, nfe=r["nfe"], fid=float(np.mean(fids)),
                fid_min=min(fids), fid_max=max(fids), fids=fids, seeds=list(SEEDS), n=r["n"],
                source=f"docs/study/{fname}:{line} ({row_label})")


def compile_matrix() -> list:
    out = []
    for table in (OURS, STOCK):
        for (form, label), cells in table.items():
            out.extend(cell(form, label, nfe, src) for nfe, src in sorted(cells.items()))
    return out


def ratios(rows) -> str:
    """Markdown: per form and budget, the best stock scheduler and each of our rows' FID over its FID."""
    nfes = sorted({r["nfe_budget"] for r in rows})
    out = ["| form | row | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    for form in ("SDE", "ODE"):
        best = {}
        for n in nfes:
            stock = [r for r in rows if r["form"] == form and r["nfe_budget"] == n and (form, r["sampler"]) in STOCK]
            best[n] = min(stock, key=lambda r: r["fid"]) if stock else None
        out.append(f"| {form} | best stock | " + " | ".join(f"{best[n]['sampler']} {best[n]['fid']:.2f}" if best[n] else ""
                                                         for n in nfes) + " |")
        for (f, label) in OURS:
            if f != form:
                continue
            cells = []
            for n in nfes:
                r = [x for x in rows if x["form"] == form and x["sampler"] == label and x["nfe_budget"] == n]
                cells.append(f"{r[0]['fid'] / best[n]['fid']:.2f}×" if r and best[n] else "")
            out.append(f"| {form} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="JSON lines file for the compiled rows (overwritten)")
    p.add_argument("--plot", default=None, help="PNG: FID against evaluations")
    a = p.parse_args(argv)
    rows = compile_matrix()
    if a.out:
        with open(a.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    if a.plot:
        real_model.plot(rows, a.plot)
    print(real_model.table(rows, digits=2))
    print()
    print(ratios(rows))
    return rows


if __name__ == "__main__":
    main()
