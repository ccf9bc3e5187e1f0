"""Run by tests/cli/test_accelerate.py under ``accelerate launch --multi_gpu --num_processes 2``.

Trains with :func:`lit_diffusion.cli.accelerate_train.train` (the real loop, ``Accelerator(cpu=True)`` so the
processes talk over gloo) and makes every process write ``<out>/rank<r>.json`` with what it saw: the
world size, the distributed type, a hash of every batch it trained on, the loss of every step and the
final raw and EMA parameter vectors (as lists of floats) so the test can check the replicas agree.

Usage: accelerate_sync.py <out_dir> [accelerate_train options...]
"""

import hashlib
import json
import os
import sys

import torch


def main() -> None:
    out = sys.argv[1]
    from lit_diffusion.cli.accelerate_train import build_parser, train

    cfg = build_parser().parse_args(sys.argv[2:])
    seen: list = []
    losses: list = []

    def on_step(step, batch, loss, accelerator):
        seen.append(hashlib.sha1(batch.detach().cpu().numpy().tobytes()).hexdigest())
        losses.append(float(loss))

    # the diffusion times of every training forward (a function of the noise generator alone), as the
    # loop's network runner sees them
    from lit_diffusion.runtime.precision import NetworkRunner

    times: list = []
    call = NetworkRunner.forward

    def record_and_call(self, x, t, *a, **k):
        times.append(t[:4].tolist())
        return call(self, x, t, *a, **k)

    NetworkRunner.forward = record_and_call
    res = train(cfg, on_step=on_step)
    acc = res.accelerator
    m = res.module
    vec = torch.cat([p.detach().float().reshape(-1).cpu() for p in m.net.parameters()])
    ema = torch.cat([p.detach().float().reshape(-1).cpu() for p in m.ema.module.parameters()]) if m.ema is not None else vec
    info = {
        "rank": acc.process_index,
        "world_size": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "mixed_precision": str(acc.mixed_precision),
        "device": str(acc.device),
        "global_step": res.global_step,
        "batches": seen,
        "losses": losses,
        "params": vec.tolist(),
        "ema": ema.tolist(),
        "checkpoint": res.checkpoint,
        "times": times,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{acc.process_index}.json"), "w") as f:
        json.dump(info, f)


if __name__ == "__main__":
    main()
