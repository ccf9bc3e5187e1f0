#!/usr/bin/env python
"""Training throughput: our Lightning loop (``ScoreModule`` + ``Trainer``) against a plain PyTorch loop.

Both loops train the same network (``TimeMLP``, same initial weights), on the same data (the swiss
roll data module's loader: same batches in the same order), with the same loss (DSM on the VP SDE,
``loss.per_sample`` with the network under autocast and the loss in float32, exactly as
``ScoreModule.training_step`` does), optimizer (AdamW), learning-rate schedule
(``ScoreModule.lr_factor``), gradient clipping (norm 1.0), EMA update after every step, and precision
(fp32, or bf16 autocast around the network).  The plain loop is what one would write by hand:

    for x0 in loader:
        loss = dsm(net, sde, x0); loss.backward(); clip; opt.step(); sched.step(); opt.zero_grad(); ema.update(net)

Lightning variants:

* ``lightning``: ``Trainer(logger=CSVLogger, log_every_n_steps=50, enable_progress_bar=False,
  enable_checkpointing=False)`` and the ``ScoreModule`` defaults -- the loop itself with its logging
  (every metric every ``log_every_n_steps`` steps);
* ``lightning every-step``: the same with ``ScoreModule(log_every_step=True)`` (``train/loss`` logged
  at every step);
* ``lightning+train.py``: ``lightning`` plus what ``train.py`` adds by default: the tqdm progress bar and the
  ``NonFiniteGuard`` callback (one gradient norm and one host sync per step).

Timing: samples/s over ``--steps`` optimizer steps after ``--warmup`` steps, measured from the end of
step ``warmup`` to the end of the last step (data loading included on both sides), both in wall-clock
time and in this process's CPU time (``time.process_time``; with one thread it measures the work done
and is far less sensitive to other processes on a shared machine).  The variants run interleaved
``--rounds`` times; the table gives medians and the median of the per-round ratios to the plain loop.

    python bench/train_throughput.py                       # fp32 and bf16, the train.py default model
    python bench/train_throughput.py --precision bf16 --hidden 256 --batch 512 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("WANDB_MODE", "offline")
warnings.filterwarnings("ignore")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

import torch  # noqa: E402


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rate(args, t0, t1) -> tuple[float, float]:
    """(samples/s of wall time, samples/s of this process's CPU time)."""
    n = args.steps * args.batch
    return n / (t1[0] - t0[0]), n / (t1[1] - t0[1])


def make_parts(args):
    from lit_diffusion.training.data import SwissRollDataModule
    from lit_diffusion.training.networks import TimeMLP

    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=args.hidden, n_blocks=args.blocks)
    dm = SwissRollDataModule(n_samples=args.n_samples, batch_size=args.batch)
    dm.setup("fit")
    return net, dm


def _module(net, args, log_every_step: bool = False):
    from lit_diffusion.training.module import ScoreModule

    return ScoreModule(net=net, sde="VP", loss="dsm", lr=2e-3, warmup_steps=100, ema_decay=0.995,
                       log_every_step=log_every_step)


# --------------------------------------------------------------------------------------------
# plain PyTorch loop
# --------------------------------------------------------------------------------------------
def run_plain(args, precision: str) -> float:
    net, dm = make_parts(args)
    module = _module(net, args)  # only for its loss / sde / EMA / lr_factor objects
    net, sde, loss_fn, ema = module.net, module.sde, module.loss, module.ema
    total = args.warmup + args.steps
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, betas=(0.9, 0.999), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: module.lr_factor(s, total))
    bf16 = precision == "bf16"

    class Runner:
        prediction_type = module.prediction_type

        def __call__(self, x, t):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return net(x, t).float()

    runner = Runner()
    step, t_start = 0, None
    net.train()
    while step < total:
        for x0 in dm.train_dataloader():
            g = torch.Generator().manual_seed(1_000_003 * step + 17)  # per-step generator, as ScoreModule does
            per = loss_fn.per_sample(runner, sde, x0.float(), generator=g)
            loss = per.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update(net)
            step += 1
            if step == args.warmup:
                t_start = _now()
            if step >= total:
                break
    return _rate(args, t_start, _now())


# --------------------------------------------------------------------------------------------
# Lightning loop
# --------------------------------------------------------------------------------------------
def run_lightning(args, precision: str, train_py_extras: bool, log_every_step: bool = False) -> float:
    import lightning.pytorch as pl

    from lit_diffusion.runtime.reliability import NonFiniteGuard

    net, dm = make_parts(args)
    module = _module(net, args, log_every_step)
    total = args.warmup + args.steps

    class Clock(pl.Callback):
        t_start = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == args.warmup:
                self.t_start = _now()

    clock = Clock()
    callbacks = [clock]
    if train_py_extras:
        callbacks += [NonFiniteGuard(), pl.callbacks.TQDMProgressBar(refresh_rate=1)]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=total,
            precision="bf16-mixed" if precision == "bf16" else "32-true",
            logger=pl.loggers.CSVLogger(tmp, name="bench"),
            log_every_n_steps=50,
            enable_progress_bar=train_py_extras,
            enable_checkpointing=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            callbacks=callbacks,
            default_root_dir=tmp,
        )
        streams = sys.stdout, sys.stderr
        if train_py_extras:  # the bar is drawn (its cost is measured) but not shown
            sys.stdout = sys.stderr = open(os.devnull, "w")
        try:
            trainer.fit(module, datamodule=dm)
            t_end = _now()
        finally:
            if train_py_extras:
                sys.stdout.close()
                sys.stdout, sys.stderr = streams
    return _rate(args, clock.t_start, t_end)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    p.add_argument("--hidden", type=int, default=128, help="TimeMLP width (train.py default: 128)")
    p.add_argument("--blocks", type=int, default=3, help="TimeMLP residual blocks (train.py default: 3)")
    p.add_argument("--batch", type=int, default=256, help="batch size (train.py default: 256)")
    p.add_argument("--n_samples", type=int, default=20000)
    p.add_argument("--steps", type=int, default=300, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)
    for name in ("hidden", "blocks", "batch", "steps", "warmup", "rounds", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)} is invalid; it must be >= 1")
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    variants = {
        "plain": lambda prec: run_plain(args, prec),
        "lightning": lambda prec: run_lightning(args, prec, False, log_every_step=False),
        "lightning every-step": lambda prec: run_lightning(args, prec, False, log_every_step=True),
        "lightning+train.py": lambda prec: run_lightning(args, prec, True, log_every_step=False),
    }
    print(f"# TimeMLP(hidden={args.hidden}, n_blocks={args.blocks}), batch {args.batch}, {args.steps} timed steps "
          f"after {args.warmup}, {args.rounds} interleaved rounds, {args.threads} thread(s), torch {torch.__version__}")
    print("# 'cpu' = samples per second of process CPU time (robust to other load on a shared machine), "
          "'wall' = per second of wall-clock time")
    print(f"{'precision':<10} {'loop':<20} {'cpu samples/s':>14} {'cpu ratio':>10} {'wall samples/s':>15} {'wall ratio':>11}"
          "  per-round cpu ratios")
    for prec in precisions:
        res = {k: [] for k in variants}
        for _ in range(args.rounds):
            for k, fn in variants.items():
                res[k].append(fn(prec))
        for k in variants:
            wall = [r[0] for r in res[k]]
            cpu = [r[1] for r in res[k]]
            rw = [a[0] / b[0] for a, b in zip(res[k], res["plain"])]
            rc = [a[1] / b[1] for a, b in zip(res[k], res["plain"])]
            print(f"{prec:<10} {k:<20} {statistics.median(cpu):>14.0f} {statistics.median(rc):>10.3f} "
                  f"{statistics.median(wall):>15.0f} {statistics.median(rw):>11.3f}  " + " ".join(f"{r:.3f}" for r in rc),
                  flush=True)


if __name__ == "__main__":
    main()
