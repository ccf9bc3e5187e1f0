"""What ``train.py`` and the Accelerate launcher set up around a run: the logger (wandb offline
without an account), the atomic checkpoint writer, and the embedded default run."""

from __future__ import annotations

import os

import lightning.pytorch as pl
from jsonargparse import lazy_instance

from ..core.sdes import VP
from ..training.data import SwissRollDataModule
from ..training.losses import DSM
from ..training.networks import TimeMLP

__all__ = ["LOGGERS", "wandb_mode", "make_logger", "with_atomic_checkpoint_io", "embedded_defaults"]

LOGGERS = ("wandb", "csv", "tensorboard", "none")


def wandb_mode() -> str:
    """``online`` when an account is configured (``WANDB_API_KEY`` or a netrc entry for
    api.wandb.ai), else ``offline``; an explicit ``WANDB_MODE`` always wins."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        with open(netrc) as f:
            if "api.wandb.ai" in f.read():
                return "online"
    except OSError:
        pass
    return "offline"


def make_logger(kind: str, log_dir: str, run_name: str):
    """A Lightning logger of ``kind`` writing under ``log_dir``."""
    if kind not in LOGGERS:
        raise ValueError(f"unknown logger {kind!r}; valid choices: {list(LOGGERS)}")
    if kind == "none":
        return False
    os.makedirs(log_dir, exist_ok=True)
    if kind == "csv":
        return pl.loggers.CSVLogger(log_dir, name=run_name)
    if kind == "tensorboard":
        return pl.loggers.TensorBoardLogger(log_dir, name=run_name)
    mode = wandb_mode()
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # no account: write locally, `wandb sync <run dir>` later
    return pl.loggers.WandbLogger(
        project=os.environ.get("WANDB_PROJECT", "lit_diffusion"),
        name=run_name,
        save_dir=log_dir,
        offline=mode == "offline",
    )


def with_atomic_checkpoint_io(plugins):
    """Add :class:`lit_diffusion.runtime.lightning_io.AtomicCheckpointIO` (temporary file in the checkpoint's
    own folder, fsync, ``os.replace``) unless a ``CheckpointIO`` plugin is configured already."""
    from lightning.fabric.plugins import CheckpointIO

    from ..runtime.lightning_io import AtomicCheckpointIO

    if plugins is None:
        plugins = []
    elif not isinstance(plugins, (list, tuple)):
        plugins = [plugins]
    plugins = list(plugins)
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins or None


def embedded_defaults() -> dict:
    """The embedded default run shared by ``train.py`` and the Accelerate launcher: swiss roll, small
    time-conditioned MLP, VP SDE, DSM, 2,000 steps (``configs/swissroll.yaml`` says the same)."""
    return {
        "model.net": lazy_instance(TimeMLP, dim=2, hidden=128, n_blocks=3),
        "model.sde": lazy_instance(VP),
        "model.loss": lazy_instance(DSM),
        "model.lr": 2e-3,
        "model.warmup_steps": 100,
        "model.ema_decay": 0.995,
        "data": lazy_instance(SwissRollDataModule, n_samples=20000, batch_size=256),
        "trainer.max_steps": 2000,
        "trainer.log_every_n_steps": 50,
        "trainer.gradient_clip_val": 1.0,
    }
