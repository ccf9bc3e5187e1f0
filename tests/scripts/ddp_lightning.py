"""Run by tests/training/test_ddp.py as a plain ``python ddp_lightning.py <out_dir> <max_steps>`` subprocess.

Lightning's ``strategy="ddp"``, ``accelerator="cpu"``, ``devices=2`` re-launches this script as a
second process (gloo).  Each process trains the same tiny :class:`ScoreModule` on the swiss roll and
writes ``<out_dir>/rank<r>.json``: world size, global rank, the hash of every batch it trained on,
per-step losses and the final raw and EMA parameter vectors.  Rank 0 also leaves
``<out_dir>/final.ckpt`` (``trainer.save_checkpoint``, through :class:`AtomicCheckpointIO`).
"""

import hashlib
import json
import os
import sys

import torch

torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402

from lit_diffusion.runtime.lightning_io import AtomicCheckpointIO  # noqa: E402
from lit_diffusion.training.data import SwissRollDataModule  # noqa: E402
from lit_diffusion.training.module import ScoreModule  # noqa: E402
from lit_diffusion.training.networks import TimeMLP  # noqa: E402


class Recorder(pl.Callback):
    def __init__(self, out: str):
        self.out = out
        self.batches: list = []
        self.losses: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches.append(hashlib.sha1(batch.detach().cpu().numpy().tobytes()).hexdigest())
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))

    def on_train_end(self, trainer, pl_module):
        vec = torch.cat([p.detach().reshape(-1) for p in pl_module.net.parameters()])
        ema = torch.cat([p.detach().reshape(-1) for p in pl_module.ema.module.parameters()])
        info = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "process_group_backend": getattr(trainer.strategy, "_process_group_backend", None),
            "global_step": trainer.global_step,
            "batches": self.batches,
            "losses": self.losses,
            "params": vec.tolist(),
            "ema": ema.tolist(),
            "pid": os.getpid(),
            "times": getattr(self, "times", []),
        }
        with open(os.path.join(self.out, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(info, f)


def main() -> None:
    out, max_steps = sys.argv[1], int(sys.argv[2])
    os.makedirs(out, exist_ok=True)
    pl.seed_everything(0, verbose=False)
    module = ScoreModule(
        net=TimeMLP(dim=2, hidden=16, n_blocks=1, time_dim=8), sde="VP", loss="dsm", warmup_steps=2, ema_decay=0.9
    )
    data = SwissRollDataModule(n_samples=512, batch_size=32)
    # the diffusion times of every training forward: a function of the noise generator alone
    times: list = []
    module.net.register_forward_pre_hook(lambda m, args: times.append(args[1][:4].tolist()) if m.training else None)
    recorder = Recorder(out)
    recorder.times = times
    trainer = pl.Trainer(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        callbacks=[recorder],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(os.path.join(out, "final.ckpt"))


if __name__ == "__main__":
    main()
