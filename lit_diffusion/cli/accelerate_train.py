"""Data-parallel training with Hugging Face Accelerate: the alternative launcher to ``train.py``.

::

    # one process (CPU or one GPU)
    python -m lit_diffusion.accelerate_train --config configs/swissroll.yaml
    # 4 GPUs on one node, bf16 autocast
    accelerate launch --multi_gpu --num_processes 4 lit_diffusion/accelerate_train.py \\
        --config configs/mnist.yaml --mixed_precision bf16
    # resume where the last checkpoint left off
    accelerate launch ... lit_diffusion/accelerate_train.py --config configs/mnist.yaml --ckpt_path last

It trains the **same objects** as ``train.py``: the :class:`~lit_diffusion.training.module.ScoreModule` built from
the ``model:`` section of the same YAML configs (its ``net``, ``sde`` and ``loss``, the optimizer and
the learning-rate schedule of :meth:`ScoreModule.lr_factor`, its EMA), the data module of the
``data:`` section, and ``trainer.max_steps`` / ``trainer.gradient_clip_val`` /
``trainer.accumulate_grad_batches`` / ``trainer.log_every_n_steps`` / ``trainer.precision`` of the
``trainer:`` section (every other Lightning ``Trainer`` key is accepted, and ignored with a warning when
not at its default), and ``num_threads``.  The loss is evaluated exactly as in
``ScoreModule.training_step``: the network runs under the Accelerator's autocast (``bf16``/``fp16``),
the SDE arithmetic and the loss in float32.

Data parallelism: ``accelerator.prepare`` wraps the network in DDP (gradients all-reduced, replicas
identical) and shards the training loader across processes (each process sees different batches of
``data.batch_size`` samples, reshuffled every epoch from a seed shared by all processes).  The
diffusion noise and times are drawn from generators seeded by :func:`lit_diffusion.training.module.noise_seed`
of (``model.seed``, micro-batch index, rank) -- the formula of the Lightning path -- so the processes
never repeat each other's noise and a resumed run continues exactly as the uninterrupted run would
have (same data order, same noise).  The EMA follows the same rule as the Lightning path
(:meth:`lit_diffusion.training.ema.EMA.step`).  Logging: ``--logger csv`` writes ``<log_dir>/<run_name>/
metrics.csv`` (a header row, one row per log step), ``tensorboard``/``wandb`` go through Accelerate's
trackers with the run's configuration; a progress bar shows the steps (``--progress_bar none``).

Checkpoints (main process, atomically: temporary file + fsync + ``os.replace``) go to
``<ckpt_dir>/<run_name>/``: ``last.ckpt`` and the newest ``step=N.ckpt`` every ``ckpt_every_n_steps``
optimizer steps and at the end. They are Lightning-style dictionaries of plain types and tensors
(``state_dict`` with the EMA, ``hyper_parameters``, ``global_step``, ``optimizer_states``,
``lr_schedulers``), so ``torch.load(weights_only=True)`` and
:meth:`ScoreModule.load_checkpoint <lit_diffusion.training.module.ScoreModule.load_checkpoint>` read them (and
refuse a crafted pickle); the final weights are also written as ``model.safetensors``.

A NaN or inf loss stops every process with :class:`FloatingPointError` (the decision is taken on the
all-reduced gradient norm, so no process is left waiting) and the last good checkpoint is kept.

Python API: :func:`train` (returns a :class:`TrainResult`), :func:`build_parser`, :func:`main`.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor

__all__ = ["build_parser", "train", "main", "TrainResult", "MIXED_PRECISION", "LOGGERS", "save_checkpoint_atomic"]

MIXED_PRECISION = ("no", "bf16", "fp16")
LOGGERS = ("none", "csv", "tensorboard", "wandb")
# trainer keys this loop understands (the rest of a Lightning ``trainer:`` section is ignored)
_TRAINER_KEYS = ("max_steps", "gradient_clip_val", "accumulate_grad_batches", "log_every_n_steps", "precision")
_PRECISION_MAP = {
    None: None, "32": "no", "32-true": "no", 32: "no", "bf16": "bf16", "bf16-mixed": "bf16",
    "16": "fp16", "16-mixed": "fp16", 16: "fp16",
}


# --------------------------------------------------------------------------------------------
# command line (same YAML configs as train.py)
# --------------------------------------------------------------------------------------------
def build_parser(exit_on_error: bool = True):
    """A jsonargparse parser reading the ``train.py`` configs (``model``, ``data``, ``trainer``...)."""
    from jsonargparse import ArgumentParser, ActionConfigFile

    from lit_diffusion.cli.train_setup import embedded_defaults
    from lit_diffusion.training.data import BaseDataModule
    from lit_diffusion.training.module import ScoreModule

    p = ArgumentParser(
        prog="accelerate_train.py",
        description="Data-parallel training of a ScoreModule with Hugging Face Accelerate.",
        exit_on_error=exit_on_error,
    )
    p.add_argument("--config", action=ActionConfigFile, help="a YAML config (the train.py configs work)")
    p.add_class_arguments(ScoreModule, "model")
    p.add_subclass_arguments(BaseDataModule, "data")
    # every Lightning Trainer key is accepted (the train.py configs parse unchanged, and
    # --trainer.max_steps N works); only _TRAINER_KEYS are used, other non-default ones are warned about
    import lightning.pytorch as pl

    p.add_class_arguments(pl.Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)
    p.add_argument("--num_threads", type=Optional[int], default=None, help="torch CPU threads (train.py option)")
    p.add_argument("--samples", type=Optional[dict], default=None, help="(train.py pictures; ignored here)")
    p.add_argument("--mixed_precision", type=Optional[Literal["no", "bf16", "fp16"]], default=None,
                   help="autocast precision (default: trainer.precision, else 'no', else the accelerate config)")
    p.add_argument("--cpu", type=bool, default=False, help="force the CPU (Accelerator(cpu=True)); gloo between processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the network initialisation and the data order")
    p.add_argument("--run_name", type=str, default="swissroll")
    p.add_argument("--ckpt_dir", type=str, default="checkpoints")
    p.add_argument("--ckpt_every_n_steps", type=int, default=500)
    p.add_argument("--ckpt_path", type=Optional[str], default=None, help="'last' or a checkpoint file to resume from")
    p.add_argument("--logger", type=Literal["none", "csv", "tensorboard", "wandb"], default="none")
    p.add_argument("--log_dir", type=str, default="logs")
    p.add_argument("--progress_bar", type=Optional[str], default=None, help="tqdm (default) or none: the step progress bar")
    p.set_defaults(embedded_defaults())
    return p


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001
        return False


def _trainer_defaults() -> dict:
    import inspect

    import lightning.pytorch as pl

    return {k: v.default for k, v in inspect.signature(pl.Trainer.__init__).parameters.items()}


def _trainer_options(trainer) -> dict:
    if hasattr(trainer, "as_dict"):
        trainer = trainer.as_dict()
    trainer = dict(trainer or {})
    defaults = _trainer_defaults()
    unknown = sorted(
        k for k, v in trainer.items()
        if k not in _TRAINER_KEYS and not (k in defaults and _same(v, defaults[k])) and v is not None
    )
    if unknown:
        warnings.warn(f"accelerate_train: ignoring Lightning-only trainer options {unknown}; used: {list(_TRAINER_KEYS)}")
    opts = {
        "max_steps": int(trainer.get("max_steps") if trainer.get("max_steps") not in (None, -1) else 2000),
        "gradient_clip_val": trainer.get("gradient_clip_val"),
        "accumulate_grad_batches": int(trainer.get("accumulate_grad_batches") or 1),
        "log_every_n_steps": int(trainer.get("log_every_n_steps") or 50),
        "precision": trainer.get("precision"),
    }
    if opts["max_steps"] < 1:
        raise ValueError(f"trainer.max_steps={opts['max_steps']!r} is invalid; it must be >= 1")
    if opts["accumulate_grad_batches"] < 1:
        raise ValueError(f"trainer.accumulate_grad_batches={opts['accumulate_grad_batches']!r} is invalid; it must be >= 1")
    if opts["precision"] not in _PRECISION_MAP:
        raise ValueError(f"trainer.precision={opts['precision']!r} is not supported here; valid choices: "
                         f"{[k for k in _PRECISION_MAP if k is not None]}")
    return opts


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def save_checkpoint_atomic(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync'ed and moved into
    place with ``os.replace`` (a reader never sees a half-written ``path``)."""
    from lit_diffusion.runtime.checkpoint_io import atomic_torch_save

    return atomic_torch_save(obj, path)


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def train(
    cfg,
    on_step: Optional[Callable[[int, Tensor, Tensor, Any], None]] = None,
    accelerator=None,
) -> TrainResult:
    """Train from a parsed config (a namespace of :func:`build_parser`).

    ``on_step(step, batch, loss, accelerator)`` is called on every process after every optimizer step
    (tests use it to record the shard each process saw).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    opts = _trainer_options(cfg.trainer)
    mp = cfg.mixed_precision if cfg.mixed_precision is not None else _PRECISION_MAP[opts["precision"]]
    if mp is not None and mp not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision={mp!r} is invalid; valid choices: {list(MIXED_PRECISION)}")
    if cfg.logger not in LOGGERS:
        raise ValueError(f"logger={cfg.logger!r} is invalid; valid choices: {list(LOGGERS)}")
    if int(cfg.ckpt_every_n_steps) < 1:
        raise ValueError(f"ckpt_every_n_steps={cfg.ckpt_every_n_steps!r} is invalid; it must be >= 1")
    ckpt_dir = os.path.join(cfg.ckpt_dir, cfg.run_name)
    resume = cfg.ckpt_path  # decided within the run by TrainingRun.restore (lit_diffusion.training.run_folder)
    if resume not in (None, "last") and not os.path.isfile(resume):
        raise FileNotFoundError(f"--ckpt_path {resume!r}: no such checkpoint file (or use 'last')")

    if accelerator is None:
        log_with = {"none": None, "csv": None}.get(cfg.logger, cfg.logger)
        accelerator = Accelerator(
            mixed_precision=mp,
            cpu=bool(cfg.cpu),
            gradient_accumulation_steps=opts["accumulate_grad_batches"],
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            log_with=log_with,
            project_dir=cfg.log_dir,
        )
    lock = _lock_folder(accelerator, ckpt_dir)
    signals = _SignalFlag()
    try:
        return run_training(cfg, opts, accelerator, ckpt_dir, resume, on_step, signals)
    finally:
        signals.restore()
        if lock is not None:
            lock.release()


def _lock_folder(accelerator, ckpt_dir: str):
    """Take the run lock of ``ckpt_dir`` on the main process; every process fails if it is held."""
    from accelerate.utils import broadcast_object_list

    from lit_diffusion.runtime.run_lock import FolderLockedError, RunLock

    lock, msg = None, [None]
    if accelerator.is_main_process:
        try:
            lock = RunLock(ckpt_dir).acquire()
        except FolderLockedError as e:
            msg = [str(e)]
    if accelerator.num_processes > 1:
        broadcast_object_list(msg, from_process=0)
    if msg[0] is not None:
        raise FolderLockedError(msg[0])
    return lock


class _SignalFlag:
    """SIGTERM/SIGINT set a flag that the loop reads between two optimizer steps."""

    def __init__(self):
        import signal
        import threading

        self.signame: Optional[str] = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        import signal

        self.signame = self.signame or signal.Signals(signum).name

    def any(self, accelerator) -> bool:
        """Whether any process received a signal (one all-reduce when there are several)."""
        local = self.signame is not None
        if accelerator.num_processes == 1:
            return local
        flag = torch.tensor([1.0 if local else 0.0], device=accelerator.device)
        return float(accelerator.reduce(flag, "sum")) > 0

    def stop_now(self, checkpoint: Optional[str], step: int) -> None:
        """Training is over and saved: a signal received meanwhile, or from now on, ends the process."""
        from lit_diffusion.runtime.reliability import TrainingInterrupted, exit_on_signal

        if self.signame is not None:
            raise TrainingInterrupted(self.signame, checkpoint, step)
        if self._old:
            exit_on_signal(checkpoint, step)

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


from lit_diffusion.training.accelerate_loop import TrainResult, run_training  # noqa: E402


def main(args=None) -> TrainResult:
    """Parse ``args`` (``sys.argv[1:]`` when None) and train."""
    from lit_diffusion.cli.config_files import check_config_files, register_classes, split_register_flags, translate_former_paths

    argv = sys.argv[1:] if args is None else list(args)
    argv, paths = split_register_flags(argv)
    try:  # configs are data: class paths are checked before jsonargparse imports anything
        register_classes(paths)
        argv = translate_former_paths(argv)
        check_config_files(argv)
    except ValueError as e:
        print(f"accelerate_train.py: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    parser = build_parser()
    cfg = parser.parse_args(argv)
    res = train(cfg)
    if res.accelerator.is_main_process:
        print(f"checkpoint: {res.checkpoint}", flush=True)
    return res


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
