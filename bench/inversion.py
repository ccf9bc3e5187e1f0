"""Encode -> decode round trips on the shipped MNIST model: how exactly each ODE-form sampler maps
held-out digits to noise along the probability-flow ODE and back, at equal network evaluations.

    python bench/inversion.py --threads 1 --n 32

Samplers: multistep of order 1 (DDIM inversion, which is also exponential Euler on the denoiser), 2
(the default) and 3; exponential Euler on the score and on the relative score; DDRaM-ODE (two
evaluations a step, so half the steps; its midpoints drawn from per-digit generators, different ones
for encoding and decoding). Prints a table: evaluations each way, sampler, steps, the mean relative
error ||x' - x|| / ||x|| per digit, the root-mean-square and the largest pixel error (pixels in [-1, 1]),
the PSNR (peak-to-peak 2), and the seconds the round trip took."""

from __future__ import annotations

import argparse
import math
import time

import torch

SAMPLERS = {
    "multistep order 1 (DDIM inversion)": ("multistep", {"solver_order": 1}, 1),
    "multistep order 2 (default)": ("multistep", {"solver_order": 2}, 1),
    "multistep order 3": ("multistep", {"solver_order": 3}, 1),
    "exponential Euler, score": ("exponential_euler", {"parametrization": "score"}, 1),
    "exponential Euler, relative score": ("exponential_euler", {"parametrization": "relative_score"}, 1),
    "DDRaM-ODE": ("ddram", {}, 2),
}


def round_trip(model, x, evals, label):
    from lit_diffusion.sampling.inversion import decode, encode

    sampler, options, per_step = SAMPLERS[label]
    steps = max(1, evals // per_step)
    gens = [[torch.Generator().manual_seed(1000 * k + i) for i in range(x.shape[0])] for k in range(2)]
    z = encode(model, x, steps=steps, sampler=sampler, generator=gens[0], **options)
    return decode(model, z, steps=steps, sampler=sampler, generator=gens[1], **options), steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/mnist")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--evals", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS), metavar="LABEL")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from lit_diffusion.cli.evaluate import heldout_mnist_uint8
    from lit_diffusion.training.module import ScoreModule

    model = ScoreModule.load(a.model)
    x = heldout_mnist_uint8(a.n) / 127.5 - 1.0
    print(f"{a.n} held-out MNIST digits, model {a.model}")
    print("| evaluations each way | sampler | steps | relative error | RMSE | max error | PSNR (dB) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for evals in a.evals:
        for label in a.samplers:
            t0 = time.perf_counter()
            back, steps = round_trip(model, x, evals, label)
            dt = time.perf_counter() - t0
            err = (back - x).float()
            rel = float((err.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean())
            rmse = float(err.pow(2).mean().sqrt())
            psnr = 20 * math.log10(2.0 / rmse) if rmse > 0 else float("inf")
            print(f"| {evals} | {label} | {steps} | {rel:.4f} | {rmse:.4f} | {float(err.abs().max()):.3f} | {psnr:.1f} "
                  f"| {dt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
