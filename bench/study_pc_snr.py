#!/usr/bin/env python
"""Why predictor–corrector diverges on the 2-D swiss roll in docs/study.md: fraction of far-away
samples (|x| > 3; the data lie within |x| < 2) against the corrector's snr, on the VP checkpoint
written by bench/study.py.

    python bench/study_pc_snr.py [--ckpt /tmp/lit_diffusion_study/swissroll_VP.ckpt]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt", default="/tmp/lit_diffusion_study/swissroll_VP.ckpt")
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(1)
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.sampling.samplers import sample

    m = ScoreModule.load_checkpoint(args.ckpt).eval()
    print("| snr | steps (NFE = 2 x steps) | fraction with abs(x) > 3 | max abs(x) | median abs(x) |")
    print("|---|---|---|---|---|")
    for snr in (0.16, 0.05, 0.01):
        for steps in (16, 64):
            g = torch.Generator().manual_seed(0)
            x = sample(m.field(), m.sde, shape=(args.n, 2), sampler="pc", steps=steps, snr=snr, generator=g).samples
            r = x.norm(dim=1)
            print(f"| {snr} | {steps} | {(r > 3).float().mean().item():.3f} | {r.max().item():.3g} | {r.median().item():.3f} |")
    x = sample(m.field(), m.sde, shape=(args.n, 2), sampler="euler", steps=128, generator=torch.Generator().manual_seed(0)).samples
    r = x.norm(dim=1)
    print(f"| Euler–Maruyama (no corrector) | 128 | {(r > 3).float().mean().item():.3f} | {r.max().item():.3g} | {r.median().item():.3f} |")


if __name__ == "__main__":
    main()
