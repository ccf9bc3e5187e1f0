"""Classifier-free guidance on the shipped class-conditional MNIST model: accuracy, FID-MNIST and
within-class diversity against the guidance scale.

    python bench/conditional.py                       # checkpoints/mnist-cond, the table of docs/conditional.md
    python bench/conditional.py --scales 0 1 3 --n-per-class 20 --steps 10   # quicker
    python bench/conditional.py --from-json docs/conditional/guidance.jsonl --plot docs/conditional/guidance.png

For every guidance scale ``w`` it draws ``n_per_class`` samples of each digit (labels 0..9, the same
seeds for every ``w``) with ``sampler`` (DDRaM by default) and scores them with the package's MNIST
feature network (:mod:`lit_diffusion.evaluation.feature_net`):

* accuracy: the fraction of samples its classifier reads as the requested digit (its own accuracy on
  the held-out real digits is printed for reference);
* FID-MNIST against the 5,000 embedded digits (all classes; the samples are class-balanced);
* diversity: the within-class spread of the samples' features (mean over classes of the trace of the
  feature covariance) divided by the same for real digits: 1 = as diverse as the data, near 0 = collapse.

One line of JSON per scale goes to ``--out`` (appended); ``--plot`` draws accuracy and FID against ``w``.
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


def _within_class_spread(features: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([np.trace(np.cov(features[labels == k].T)) for k in np.unique(labels)]))


def measure(model_dir: str, scales, n_per_class: int, steps: int, sampler: str, batch: int, seed: int) -> list[dict]:
    from lit_diffusion.evaluation import image_metrics as IM
    from lit_diffusion.evaluation.feature_net import load_feature_net, mnist_digits, mnist_split, to_unit_images
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.core.utils import make_generators

    module = ScoreModule.from_pretrained(model_dir)
    K = module.num_classes
    if K is None:
        raise SystemExit(f"{model_dir} is not a class-conditional model")
    fnet = load_feature_net().eval()
    X, y = mnist_digits()
    _, _, Xt, yt = mnist_split()
    with torch.no_grad():
        real_acc = float((fnet.classify(to_unit_images(Xt)).argmax(1).numpy() == yt).mean())
        real_feat = fnet.features(X).numpy()
    real_spread = _within_class_spread(real_feat, np.asarray(y))
    labels = np.repeat(np.arange(K), n_per_class)
    rows = []
    for w in scales:
        t0 = time.perf_counter()
        out = []
        for i in range(0, len(labels), batch):
            idx = list(range(i, min(i + batch, len(labels))))
            res = sample(module.field(class_labels=torch.as_tensor(labels[idx]), guidance_scale=float(w)), module.sde,
                         shape=(len(idx),) + tuple(module.data_shape), sampler=sampler, steps=steps,
                         generator=make_generators([seed + j for j in idx]))
            out.append(res.samples.clamp(-1, 1))
        x = torch.cat(out)
        secs = time.perf_counter() - t0
        with torch.no_grad():
            pred = fnet.classify(to_unit_images(x)).argmax(1).numpy()
            feat = fnet.features(to_unit_images(x)).numpy()
        row = {
            "guidance_scale": float(w), "sampler": sampler, "steps": steps, "nfe": int(res.nfe),
            "n_samples": int(len(x)), "accuracy": float((pred == labels).mean()),
            "per_class_accuracy": [float((pred[labels == k] == k).mean()) for k in range(K)],
            "fid_mnist": IM.fid(x, "mnist", backend="mnist", value_range=(-1.0, 1.0))["value"],
            "diversity": _within_class_spread(feat, labels) / real_spread,
            "classifier_accuracy_on_real_digits": real_acc, "seconds": secs,
        }
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                          if k != "per_class_accuracy"}), flush=True)
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["guidance_scale"])
    w = [r["guidance_scale"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.4))
    ax[0].plot(w, [100 * r["accuracy"] for r in rows], "o-")
    ax[0].axhline(95, ls="--", c="0.5", lw=0.8)
    ax[0].set(xlabel="guidance scale w", ylabel="% read as the requested digit", title="accuracy")
    ax[1].plot(w, [r["fid_mnist"] for r in rows], "o-", c="C1")
    ax[1].set(xlabel="guidance scale w", ylabel="FID-MNIST (lower is better)", title="FID-MNIST vs the data")
    ax[2].plot(w, [r["diversity"] for r in rows], "o-", c="C2")
    ax[2].axhline(1, ls="--", c="0.5", lw=0.8)
    ax[2].set(xlabel="guidance scale w", ylabel="within-class spread / data's", title="diversity")
    r0 = rows[0]
    fig.suptitle(f"checkpoints/mnist-cond, {r0['sampler']} {r0['steps']} steps, {r0['n_samples']} samples per scale", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot -> {path}")


def grid(model_dir: str, w: float, path: str, steps: int, sampler: str, per_row: int = 10) -> None:
    """Digits 0..9 in rows, ``per_row`` samples each, at guidance ``w`` (upscaled to be readable)."""
    from PIL import Image

    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.core.utils import make_generators

    module = ScoreModule.from_pretrained(model_dir)
    labels = torch.arange(10).repeat_interleave(per_row)
    x = module.sample(len(labels), sampler=sampler, steps=steps, class_labels=labels, guidance_scale=w,
                      generator=make_generators(range(len(labels))))
    from torchvision.utils import make_grid

    g = make_grid(((x.clamp(-1, 1) + 1) / 2), nrow=per_row, padding=2, pad_value=1.0)
    im = Image.fromarray((g[0].numpy() * 255).round().astype(np.uint8)).resize((g.shape[2] * 3, g.shape[1] * 3), Image.NEAREST)
    im.save(path)
    print(f"grid -> {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "checkpoints", "mnist-cond"))
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    p.add_argument("--n-per-class", type=int, default=50)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="ddram")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="append one JSON line per scale")
    p.add_argument("--plot", default=None)
    p.add_argument("--from-json", nargs="*", default=None, help="plot these JSON-lines files instead of measuring")
    p.add_argument("--grid", default=None, help="also write a picture of guided samples (digits in rows)")
    p.add_argument("--grid-scale", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.from_json is not None:
        rows = [json.loads(line) for f in a.from_json for line in open(f) if line.strip()]
    else:
        rows = measure(a.model, a.scales, a.n_per_class, a.steps, a.sampler, a.batch, a.seed)
        if a.out:
            os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
            with open(a.out, "a") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
    if a.plot:
        plot(rows, a.plot)
    if a.grid:
        grid(a.model, a.grid_scale, a.grid, a.steps, a.sampler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
