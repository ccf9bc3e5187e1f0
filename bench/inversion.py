"""Encode -> decode round trips on the shipped MNIST model: how exactly the probability-flow ODE,
integrated by the multistep solver (order 1 is DDIM inversion), maps held-out digits to noise and back.

    python bench/inversion.py --threads 1 --n 32

Prints a table: steps each way, solver order, the root-mean-square and the largest pixel error of the
reconstruction (pixels in [-1, 1]), its PSNR (peak-to-peak 2), and the seconds the round trip took."""

from __future__ import annotations

import argparse
import math
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="checkpoints/mnist")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from lit_diffusion.cli.evaluate import heldout_mnist_uint8
    from lit_diffusion.sampling.inversion import decode, encode
    from lit_diffusion.training.module import ScoreModule

    model = ScoreModule.load(a.model)
    x = heldout_mnist_uint8(a.n) / 127.5 - 1.0
    print(f"{a.n} held-out MNIST digits, model {a.model}")
    print("| steps each way | order | RMSE | max error | PSNR (dB) | seconds |")
    print("|---|---|---|---|---|---|")
    for steps in a.steps:
        for order in a.orders:
            t0 = time.perf_counter()
            z = encode(model, x, steps=steps, solver_order=order)
            back = decode(model, z, steps=steps, solver_order=order)
            dt = time.perf_counter() - t0
            err = (back - x).float()
            rmse = float(err.pow(2).mean().sqrt())
            psnr = 20 * math.log10(2.0 / rmse) if rmse > 0 else float("inf")
            print(f"| {steps} | {order} | {rmse:.4f} | {float(err.abs().max()):.3f} | {psnr:.1f} | {dt:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
