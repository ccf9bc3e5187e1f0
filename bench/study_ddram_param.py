#!/usr/bin/env python
"""Follow-up to docs/study.md: DDRaM with its default relative-score parametrization against DDRaM
with the denoiser parametrization, next to exponential Euler (denoiser), on the study's checkpoints
(same seeds, same sample counts and metrics as bench/study.py).

    python bench/study_ddram_param.py [--work /tmp/lit_diffusion_study]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from study import MAIN_METRIC, SDES, data, score  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", default="/tmp/lit_diffusion_study")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.sampling.samplers import sample

    variants = [("exponential_euler", "denoiser", 1), ("ddram", "relative_score", 2), ("ddram", "denoiser", 2)]
    for dataset, n, nfes in (("swissroll", 1000, (8, 16, 32, 64, 128)), ("mnist", 500, (8, 32, 128))):
        _, ref = data(dataset)
        key = MAIN_METRIC[dataset]
        extra = " / MMD²" if dataset == "swissroll" else ""
        print(f"\n{dataset}: {key}{extra} (n={n})\n")
        print("| SDE | sampler | parametrization | " + " | ".join(f"NFE {k}" for k in nfes) + " |")
        print("|---|---|---|" + "---|" * len(nfes))
        for sde in SDES:
            m = ScoreModule.load_checkpoint(str(Path(args.work) / f"{dataset}_{sde}.ckpt")).eval()
            for sampler, param, per in variants:
                cells = []
                for nfe in nfes:
                    g = torch.Generator().manual_seed(args.seed)
                    x = sample(m.field(), m.sde, shape=(n,) + tuple(m.data_shape), sampler=sampler, steps=nfe // per,
                               parametrization=param, generator=g).samples
                    r = score(dataset, x, ref)
                    cells.append(f"{r[key]:.4g}" + (f" / {r['mmd2']:.2g}" if dataset == "swissroll" else ""))
                print(f"| {sde} | {sampler} | {param} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - t0:.0f}s")
