#!/usr/bin/env python
"""How far each ODE sampler lands from the exact solution of its own probability-flow ODE, sample by
sample, on a real network: the error that FID blurs (under strong guidance FID against the data rewards
samples that miss the guided law, docs/samplers.md "Guidance 3").

Every row of ``bench/real_model.py`` (same pipeline loop, same prior draws: seed 0, ``--n`` samples in
one batch) is run at each budget and compared with the *same* prior draws carried by a reference sampler
at ``--reference-nfe`` evaluations: ours (``lit ...`` rows) against ``lit multistep 2 ODE``, diffusers'
against ``UniPC`` (each family's reference ends where that family ends: ours at ``t_min``, diffusers' at
the first entry of the DDPM table). Reported: the root-mean-square difference per pixel (images in
[-1, 1]), the mean over samples; the line ``floor`` is the difference between the two references.

    python bench/study_trajectory_error.py --model checkpoints/mnist-cond --guidance 3 --n 64 --threads 1
    python bench/study_trajectory_error.py --n 64 --nfe 5 10 20 --threads 1
    python bench/study_trajectory_error.py --model checkpoints/mnist-cond --guidance 3 --nfe 5 6 8 --threads 1 \
        --only "UniPC;DPM-Solver++ 2M" --end-fractions 1 0.75 0.5 0.35
    python bench/study_trajectory_error.py --dry-run
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model as rm  # noqa: E402

ROWS = ("lit multistep 2 ODE;lit multistep 2 ODE uniform grid;lit multistep 2 ODE, corrector off;lit multistep 2 ODE + corrector;"
        "lit multistep 3 ODE;UniPC;DPM-Solver++ 2M;DPM-Solver++ 3M;DDIM")


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist"))
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10, 15, 20])
    p.add_argument("--reference-nfe", type=int, default=200)
    p.add_argument("--only", default=ROWS, help="ODE rows of bench/real_model.py, separated by semicolons")
    p.add_argument("--end-fractions", type=float, nargs="*", default=[],
                   help="also the ODE multistep rows whose short run ends at these fractions (bench/study_short_run_end.py)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON lines file to append results to")
    p.add_argument("--dry-run", action="store_true", help="tiny untrained network, 4 samples, NFE 4 against 8")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dry_run:
        a.n, a.nfe, a.reference_nfe = 4, [4], 8
    # (SDEScheduler is told of the guidance, as a pipeline would)
    module, time_scale, lit_model, diffusers_model = rm.prepare_model(a.model, a.guidance, a.dry_run, torch.device("cpu"))
    sde, shape = module.sde, tuple(module.data_shape)
    models = {"lit": lit_model, "diffusers": diffusers_model}
    rows = {label: (kind, opts) for label, kind, opts in rm.ODE_SAMPLERS}
    extra = [f"lit multistep 2 ODE, end fraction {f:g}" for f in a.end_fractions]
    rows.update({lab: ("lit-end-fraction", {"sampler": "multistep", "ode": True, "end_fraction": f})
                 for lab, f in zip(extra, a.end_fractions)})

    def run(label, nfe):
        kind, opts = rows[label]
        family = "lit" if kind.startswith("lit") else "diffusers"
        sched = rm.make_scheduler(kind, opts, sde, time_scale, nfe)
        with torch.no_grad():
            x, evals = rm.run_loop(sched, models[family], a.n, shape, 0, nfe, a.n, torch.device("cpu"))
        return x, evals, family

    ref = {"lit": run("lit multistep 2 ODE", a.reference_nfe)[0], "diffusers": run("UniPC", a.reference_nfe)[0]}
    rms = lambda u, v: float(np.sqrt(((u - v) ** 2).reshape(len(u), -1).mean(1)).mean())  # noqa: E731
    out = [dict(sampler="floor", nfe=a.reference_nfe, rms=rms(ref["lit"], ref["diffusers"]))]
    print(f"floor (ours against diffusers' reference, {a.reference_nfe} evaluations): {out[0]['rms']:.4f}", flush=True)
    for label in [s.strip() for s in a.only.split(";")] + extra:
        for nfe in a.nfe:
            try:
                x, evals, family = run(label, nfe)
            except ValueError as e:  # no fitted grid for this budget, say
                print(f"{label:40s} NFE {nfe:3d}: skipped ({e})", flush=True)
                continue
            out.append(dict(sampler=label, nfe_budget=nfe, nfe=evals, rms=rms(x, ref[family])))
            print(f"{label:40s} NFE {evals:3d}/{nfe:3d}  RMS to its reference {out[-1]['rms']:.4f}", flush=True)
    for row in out:
        row.update(guidance=a.guidance, n=a.n, reference_nfe=a.reference_nfe, model=os.path.basename(os.path.normpath(a.model)))
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in out)
    return out


if __name__ == "__main__":
    main()
