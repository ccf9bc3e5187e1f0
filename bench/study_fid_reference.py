#!/usr/bin/env python
"""Which digits judge a fitted grid (docs/samplers.md, "Targets and misses", fitted grids): the benchmark's rows
(``bench/real_model.py``'s pipeline loop, the same seeds and batches, so the same samples) scored by FID-MNIST
against three references at once: the 1,000 digits held out from the feature net's training (the benchmark's
judge), the feature net's 4,000 training digits (the reference the grids of ``bench/study_grid_fid_fit.py`` are
fitted against) and all 5,000 embedded digits.  One JSON line per row and seed, then the means per reference.

    python bench/study_fid_reference.py --nfe 6 --seeds 0 1 2 3 4 5 6 7 --out docs/study/fid_reference.jsonl
    python bench/study_fid_reference.py --dry-run --seeds 0 --n 8 --out /tmp/ref.jsonl
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import real_model  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ROWS = ("lit multistep 2, Gaussian start", "lit multistep 2, Gaussian start, fitted grid")
REFERENCES = ("held_out_1000", "train_4000", "all_5000")


def references():
    """``{name: reference}`` for ``real_model.fid_mnist`` (images in ``[-1, 1]``, or an embedded set's name)."""
    from lit_diffusion.evaluation.feature_net import mnist_split

    return {"held_out_1000": "mnist-test", "train_4000": mnist_split()[0] * 2.0 - 1.0, "all_5000": "mnist"}


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(HERE, "..", "checkpoints", "mnist"))
    p.add_argument("--fitted-dir", default=os.path.join(HERE, "..", "docs", "study", "grids_fid_fit_family"),
                   help="the grids of the 'fitted grid' rows (default: the family fit's, docs/study/grids_fid_fit_family)")
    p.add_argument("--rows", default=";".join(DEFAULT_ROWS), help="row labels of bench/real_model.py, as its --only takes them "
                   "(';'-separated; run in its order)")
    p.add_argument("--nfe", type=int, default=6)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--batch", type=int, default=500, help="as bench/real_model.py's (the batches fix the samples)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="JSON lines, one per row and seed")
    p.add_argument("--dry-run", action="store_true", help="tiny untrained network, mean |x| instead of FID: checks the loop")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = {label: (kind, opts) for label, kind, opts in real_model.SDE_SAMPLERS + real_model.ODE_SAMPLERS}
    try:
        named = real_model.wanted_rows(a.rows)  # parsed as --only is; unknown labels refused, naming the valid ones
    except ValueError as e:
        p.error(f"--rows: {str(e).removeprefix('--only: ')}")
    wanted = [label for label in rows if label in named]  # in the benchmark's order
    if not wanted:
        p.error(f"--rows {a.rows!r}: no row of bench/real_model.py named")
    module, time_scale, lit_model, _ = real_model.prepare_model(a.model, None, a.dry_run, "cpu", a.fitted_dir)
    refs = references()
    records = []
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        for label in wanted:
            kind, opts = rows[label]
            sched = real_model.make_scheduler(kind, opts, module.sde, time_scale, a.nfe)
            for seed in a.seeds:
                x, evals = real_model.run_loop(sched, lit_model, a.n, tuple(module.data_shape), seed, a.nfe, a.batch, "cpu")
                rec = {"sampler": label, "nfe": evals, "seed": seed, "n": a.n, "fitted_dir": os.path.relpath(a.fitted_dir)}
                if a.dry_run:  # a cheap stand-in for the FIDs: the same figure under every reference
                    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
                for name, ref in refs.items():
                    rec[name] = float(np.abs(x).mean()) if a.dry_run else real_model.fid_mnist(x, ref)
                print(json.dumps(rec), flush=True)
                fh.write(json.dumps(rec) + "\n")
                records.append(rec)
    for name in REFERENCES:
        means = {label: np.mean([r[name] for r in records if r["sampler"] == label]) for label in wanted}
        print(f"{name}: " + "; ".join(f"{label} {m:.2f}" for label, m in means.items()))
    return records


if __name__ == "__main__":
    main()
