"""Inpainting with the shipped MNIST model: held-out digits with their lower half regenerated.

    python bench/inpainting.py --picture docs/inpainting.png --out docs/inpainting.jsonl

For ``n`` held-out digits (never seen by the model or the feature network) the lower half is masked
and regenerated with replacement only (``resample 1``) and with RePaint resampling; the package's
MNIST classifier then reads each completed digit, and the fraction read as the original digit is
reported (the upper half alone often leaves the digit ambiguous, so 100 % is not expected), with the
mean squared error of the regenerated half against the original.  The picture shows, per row, the
original, the known upper half, and three completions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def complete(module, known: torch.Tensor, mask: torch.Tensor, resample: int, steps: int, seed: int) -> torch.Tensor:
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.core.utils import make_generators

    res = sample(module.field(), module.sde, shape=tuple(known.shape), sampler="ddram", steps=steps, known=known,
                 mask=mask, resample=resample, generator=make_generators(range(seed, seed + len(known))))
    return res.samples.clamp(-1, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "checkpoints", "mnist"))
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--resample", type=int, nargs="+", default=[1, 5])
    p.add_argument("--picture", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from lit_diffusion.evaluation.feature_net import load_feature_net, mnist_split, to_unit_images
    from lit_diffusion.training.module import ScoreModule

    module = ScoreModule.from_pretrained(a.model)
    fnet = load_feature_net().eval()
    _, _, Xt, yt = mnist_split()
    x = torch.as_tensor(Xt[: a.n], dtype=torch.float32).reshape(-1, 1, 28, 28) * 2 - 1
    y = np.asarray(yt[: a.n])
    mask = torch.ones(1, 1, 28, 28)
    mask[..., 14:, :] = 0.0  # keep the upper half, regenerate the lower one
    rows = []
    for r in a.resample:
        t0 = time.perf_counter()
        out = complete(module, x, mask, r, a.steps, seed=0)
        with torch.no_grad():
            pred = fnet.classify(to_unit_images(out)).argmax(1).numpy()
        row = {"resample": r, "steps": a.steps, "n": int(a.n), "nfe_per_sample": int(a.steps * 2 * r),
               "read_as_original": float((pred == y).mean()),
               "mse_regenerated_half": float(((out - x)[..., 14:, :] ** 2).mean()),
               "known_half_exact": bool(torch.equal(out[..., :14, :], x[..., :14, :])),
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    with torch.no_grad():
        base = fnet.classify(to_unit_images(x * mask - (1 - mask))).argmax(1).numpy()
    print(json.dumps({"upper_half_only_read_as_original": float((base == y).mean())}))
    if a.out:
        with open(a.out, "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    if a.picture:
        from PIL import Image
        from torchvision.utils import make_grid

        k = 8
        r = max(a.resample)
        comps = [complete(module, x[:k], mask, r, a.steps, seed=1000 * (j + 1)) for j in range(3)]
        shown = x[:k] * mask + (1 - mask) * 0.0  # the known half over a grey lower half
        tiles = torch.stack([x[:k], shown, *comps], 1).reshape(-1, 1, 28, 28)
        g = make_grid((tiles.clamp(-1, 1) + 1) / 2, nrow=5, padding=2, pad_value=1.0)
        im = Image.fromarray((g[0].numpy() * 255).round().astype(np.uint8))
        im.resize((im.width * 3, im.height * 3), Image.NEAREST).save(a.picture)
        print(f"picture -> {a.picture} (columns: original, known upper half, three completions with resample {r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
