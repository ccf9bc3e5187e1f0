"""GPU check in one table: bf16 against fp32 sampling (speed and FID-MNIST) on the shipped MNIST model,
and Lightning against a plain PyTorch loop for bf16 training throughput.

    python bench/gpu.py                 # on a CUDA machine (~5 minutes on one H100/H200)
    python bench/gpu.py --dry-run       # CPU, tiny sizes, seconds: checks that every path runs (tests)

Sampling: ``lit_diffusion.sampling.samplers.sample`` with the default DDRaM at 20 network evaluations, the
network in fp32 or under bf16 autocast (the SDE arithmetic stays in float32), ``--n`` samples in batches
of ``--batch``; speed is samples per second after one warm-up batch, FID is FID-MNIST against the
held-out digits.  Training: the same ``ScoreModule`` (the shipped model's network, VP, DSM) on the
embedded MNIST digits for ``--train-steps`` steps after a warm-up, through ``lightning.Trainer``
(``precision="bf16-mixed"``) and through a hand-written loop with ``torch.autocast(bf16)``; samples
per second of each and their ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class _Runner:
    """``net(x, t)`` in float32 with the network's prediction type (as the losses expect)."""

    def __init__(self, net, prediction_type):
        self.net, self.prediction_type = net, prediction_type

    def __call__(self, x, t):
        return self.net(x, t).float()


def _module(args, device):
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import UNet

    if args.dry_run:
        return ScoreModule(net=UNet(preset="tiny", sample_size=28, in_channels=1), data_shape=[1, 28, 28], ema_decay=0)
    return ScoreModule.from_pretrained(args.model)


def sampling(args, device) -> list[dict]:
    from lit_diffusion.evaluation.image_metrics import fid
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.runtime.precision import NetworkRunner

    module = _module(args, device).to(device).eval()
    rows = []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        net = NetworkRunner(module.net, dtype, module.prediction_type)
        xs, secs = [], 0.0
        for b, b0 in enumerate(range(0, args.n + args.batch, args.batch)):  # first batch: warm-up
            m = args.batch
            g = torch.Generator(device=device).manual_seed(b)
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                x = sample(net, module.sde, shape=(m, 1, 28, 28), sampler="ddram", steps=10, generator=g, device=device).samples
            _sync(device)
            if b > 0:
                secs += time.perf_counter() - t0
                xs.append(x.float().cpu().numpy())
        x = np.concatenate(xs)[: args.n]
        value = fid(np.nan_to_num(x), "mnist-test", backend="mnist", value_range="-1,1")["value"] if not args.dry_run else float("nan")
        rows.append(dict(part="sampling ddram NFE 20", variant=name, samples_per_s=len(x) / secs, fid=value))
    return rows


def training(args, device) -> list[dict]:
    import lightning.pytorch as pl

    from lit_diffusion.training.image_data import MNISTDataModule

    dm = MNISTDataModule(batch_size=args.train_batch)
    dm.setup("fit")
    loader = dm.train_dataloader()
    rows = []

    # plain loop
    module = _module(args, device).to(device).train()
    opt = torch.optim.AdamW(module.net.parameters(), lr=1e-4)
    n, seen, t0 = 0, 0, None
    while n < args.train_steps + args.warmup:
        for batch in loader:
            x0 = module._batch(batch).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = module.loss.per_sample(_Runner(module.net, module.prediction_type), module.sde, x0.float()).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n += 1
            if n == args.warmup:
                _sync(device)
                t0, seen = time.perf_counter(), 0
            elif n > args.warmup:
                seen += x0.shape[0]
            if n >= args.train_steps + args.warmup:
                break
    _sync(device)
    plain = seen / (time.perf_counter() - t0)
    rows.append(dict(part="training bf16", variant="plain PyTorch loop", samples_per_s=plain, fid=float("nan")))

    # Lightning
    class Clock(pl.Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == args.warmup:
                _sync(device)
                self.t0 = time.perf_counter()

    module = _module(args, device)
    clock = Clock()
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision="bf16-mixed", max_steps=args.train_steps + args.warmup,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, gradient_clip_val=1.0, callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader)
    _sync(device)
    light = args.train_steps * args.train_batch / (time.perf_counter() - clock.t0)
    rows.append(dict(part="training bf16", variant="Lightning (ScoreModule + Trainer)", samples_per_s=light, fid=float("nan")))
    rows.append(dict(part="training bf16", variant="Lightning / plain", samples_per_s=light / plain, fid=float("nan")))
    return rows


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist"))
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny network, a few samples and steps")
    args = p.parse_args(argv)
    if args.dry_run:
        args.n, args.batch, args.train_steps, args.train_batch, args.warmup = 4, 4, 3, 8, 1
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench/gpu.py needs a CUDA device (use --dry-run to check it on the CPU)")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
    rows = sampling(args, device) + training(args, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)"
    print(f"\ndevice: {name}; torch {torch.__version__}\n")
    print("| part | variant | samples/s (or ratio) | FID-MNIST |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['part']} | {r['variant']} | {r['samples_per_s']:.3g} | {r['fid']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
