"""Data-parallel training with Hugging Face Accelerate: the alternative launcher to ``train.py``.

::

    # one process (CPU or one GPU)
    python -m lit_diffusion.accelerate_train --config configs/swissroll.yaml
    # 4 GPUs on one node, bf16 autocast
    accelerate launch --multi_gpu --num_processes 4 lit_diffusion/accelerate_train.py \\
        --config configs/mnist.yaml --mixed_precision bf16
    # resume where the last checkpoint left off
    accelerate launch ... lit_diffusion/accelerate_train.py --config configs/mnist.yaml --ckpt_path last

It trains the **same objects** as ``train.py``: the :class:`~lit_diffusion.module.ScoreModule` built from
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
diffusion noise and times are drawn from generators seeded by :func:`lit_diffusion.module.noise_seed`
of (``model.seed``, micro-batch index, rank) -- the formula of the Lightning path -- so the processes
never repeat each other's noise and a resumed run continues exactly as the uninterrupted run would
have (same data order, same noise).  The EMA follows the same rule as the Lightning path
(:meth:`lit_diffusion.ema.EMA.step`).  Logging: ``--logger csv`` writes ``<log_dir>/<run_name>/
metrics.csv`` (a header row, one row per log step), ``tensorboard``/``wandb`` go through Accelerate's
trackers with the run's configuration; a progress bar shows the steps (``--progress_bar none``).

Checkpoints (main process, atomically: temporary file + fsync + ``os.replace``) go to
``<ckpt_dir>/<run_name>/``: ``last.ckpt`` and the newest ``step=N.ckpt`` every ``ckpt_every_n_steps``
optimizer steps and at the end. They are Lightning-style dictionaries of plain types and tensors
(``state_dict`` with the EMA, ``hyper_parameters``, ``global_step``, ``optimizer_states``,
``lr_schedulers``), so ``torch.load(weights_only=True)`` and
:meth:`ScoreModule.load_checkpoint <lit_diffusion.module.ScoreModule.load_checkpoint>` read them (and
refuse a crafted pickle); the final weights are also written as ``model.safetensors``.

A NaN or inf loss stops every process with :class:`FloatingPointError` (the decision is taken on the
all-reduced gradient norm, so no process is left waiting) and the last good checkpoint is kept.

Python API: :func:`train` (returns a :class:`TrainResult`), :func:`build_parser`, :func:`main`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn

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

    from lit_diffusion.cli import embedded_defaults
    from lit_diffusion.data import BaseDataModule
    from lit_diffusion.module import ScoreModule

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


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    module: Any  # ScoreModule (unwrapped, with the trained weights and the EMA)
    accelerator: Any
    global_step: int
    last_loss: float
    samples_per_sec: float
    checkpoint: Optional[str]
    history: list = field(default_factory=list)  # (step, loss) at every log step


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
    from lit_diffusion.checkpoint_io import atomic_torch_save

    return atomic_torch_save(obj, path)


def _load_resume(path: str, module) -> dict:
    """The checkpoint to resume from: valid, trusted by the registry, same SDE/loss/network as ``module``."""
    from lit_diffusion.cli import check_resume

    return check_resume(path, module)


def _Runner(net: nn.Module, prediction_type: str):
    """The loss's view of the (DDP-wrapped, Accelerator-autocast) network: float32 out."""
    from lit_diffusion.runtime.precision import NetworkRunner

    return NetworkRunner(net, prediction_type=prediction_type)


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
    resume = cfg.ckpt_path
    if resume == "last":
        from lit_diffusion.checkpoint_io import latest_checkpoint

        resume = latest_checkpoint(ckpt_dir)
        if resume is None:
            warnings.warn(f"--ckpt_path last: no checkpoint in {ckpt_dir!r} yet; starting from scratch")
    elif resume is not None and not os.path.isfile(resume):
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
        return _train(cfg, opts, accelerator, ckpt_dir, resume, on_step, signals)
    finally:
        signals.restore()
        if lock is not None:
            lock.release()


def _lock_folder(accelerator, ckpt_dir: str):
    """Take the run lock of ``ckpt_dir`` on the main process; every process fails if it is held."""
    from accelerate.utils import broadcast_object_list

    from lit_diffusion.run_lock import FolderLockedError, RunLock

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

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _build_module(cfg):
    """The ScoreModule and data module of the config (the same on every process: same seed)."""
    from accelerate.utils import set_seed

    from lit_diffusion.module import ScoreModule

    set_seed(int(cfg.seed))
    module = ScoreModule(**_instantiate(cfg.model))
    datamodule = _instantiate_data(cfg.data)
    datamodule.setup("fit")
    if module.data_shape is None:
        shape = tuple(datamodule.data_shape)
        module.data_shape = module.codec.latent_shape(shape) if module.codec is not None else shape
        module.hparams["data_shape"] = list(module.data_shape)
    if module.num_classes is not None and getattr(datamodule, "num_classes", None) != module.num_classes:
        raise ValueError(
            f"the network has num_classes={module.num_classes} but the data module yields "
            f"{getattr(datamodule, 'num_classes', None)} classes"
        )
    return module, datamodule


class _Run:
    """The state of one Accelerate training run: what the loop reads and updates between steps."""

    def __init__(self, cfg, opts, accelerator, ckpt_dir, on_step, signals):
        self.cfg, self.opts, self.acc, self.ckpt_dir = cfg, opts, accelerator, ckpt_dir
        self.on_step, self.signals = on_step, signals
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.module, self.datamodule = _build_module(cfg)
        opt_cfg = self.module.configure_optimizers()
        self.optimizer = opt_cfg["optimizer"] if isinstance(opt_cfg, dict) else opt_cfg
        self.max_steps = opts["max_steps"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.module.lr_factor(s, self.max_steps))
        self.step, self.micro = 0, 0
        self.history: list = []
        self.last_loss, self.tput = float("nan"), 0.0
        self.last_ckpt: Optional[str] = None
        clip = opts["gradient_clip_val"]
        self.clip = float(clip) if clip not in (None, 0, 0.0) else float("inf")

    def restore(self, resume: Optional[str]) -> None:
        if resume is None:
            return
        ckpt = _load_resume(resume, self.module)
        self.module.load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer_states"):
            self.optimizer.load_state_dict(ckpt["optimizer_states"][0])
        if ckpt.get("lr_schedulers"):
            self.scheduler.load_state_dict(ckpt["lr_schedulers"][0])
        self.step = int(ckpt["global_step"])
        self.acc.print(f"resumed from {resume} at global step {self.step}")

    def prepare(self) -> None:
        acc, cfg = self.acc, self.cfg
        self.module.to(acc.device)
        self.net, self.optimizer, self.loader = acc.prepare(self.module.net, self.optimizer, self.datamodule.train_dataloader())
        self.runner = _Runner(self.net, self.module.prediction_type)
        self.n_batches = len(self.loader)
        if self.n_batches < 1:
            raise ValueError("the training loader is empty (data smaller than one batch?)")
        self.micro = self.step * self.opts["accumulate_grad_batches"]
        if cfg.logger in ("tensorboard", "wandb"):
            acc.init_trackers(cfg.run_name, config=_tracker_config(cfg, self.module))
        self.csv = _CSVLog(os.path.join(cfg.log_dir, cfg.run_name, "metrics.csv")) if (
            cfg.logger == "csv" and acc.is_main_process) else None
        self.bar = None
        if acc.is_main_process and getattr(cfg, "progress_bar", None) != "none":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def noise_generator(self) -> torch.Generator:
        """The times and noise of this micro-batch on this process: a function of (seed, micro-batch,
        rank) only (lit_diffusion.module.noise_seed, the Lightning path's formula)."""
        from lit_diffusion.module import noise_seed

        g = torch.Generator(device=self.acc.device)
        g.manual_seed(noise_seed(int(self.module.hparams.get("seed") or 0), self.micro, self.rank))
        return g

    def micro_step(self, batch):
        """Loss, backward and (on a sync step) the clipped optimizer step of one micro-batch, as
        ScoreModule.training_step computes it (latents, labels with dropout)."""
        module, acc = self.module, self.acc
        g = self.noise_generator()
        x0 = module.encode(module._batch(batch), g)
        labels = module._drop_labels(module._labels(batch, x0.shape[0]), g)
        with acc.accumulate(self.net):
            with torch.autocast(x0.device.type, enabled=False):
                per = module.loss.per_sample(self.runner, module.sde, x0.float(), generator=g, class_labels=labels)
            loss = per.float().mean()
            acc.backward(loss)
            if acc.sync_gradients:
                # all-reduced gradients: the same norm on every process, so all stop together
                self.norm = acc.clip_grad_norm_(self.net.parameters(), self.clip)
                self._check_finite(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro += 1
        return x0, loss

    def _check_finite(self, loss) -> None:
        local_ok = math.isfinite(float(loss.detach()))
        if self.acc.scaler is not None:
            # fp16: the GradScaler skips steps with inf gradients by design; decide on the losses of all
            # processes (one extra all-reduce) so that every process stops together
            flag = torch.tensor([0.0 if local_ok else 1.0], device=self.acc.device)
            finite = float(self.acc.reduce(flag, "sum")) == 0.0
        else:
            finite = math.isfinite(float(self.norm)) and local_ok
        if not finite and self.module.hparams.stop_on_nonfinite:
            raise FloatingPointError(
                f"non-finite training loss {float(loss.detach())} / gradient norm {float(self.norm)} at global step "
                f"{self.step} on process {self.rank}; stopping. The last good checkpoint is kept "
                f"({self.last_ckpt or 'none written yet'})."
            )

    def after_optimizer_step(self, x0, loss, seen: int) -> None:
        self.scheduler.step()
        self.step += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.module.ema is not None:  # the same rule as the Lightning path (EMA.step)
            self.module.ema.step(self.acc.unwrap_model(self.net))
        if self.on_step is not None:
            self.on_step(self.step, x0, loss.detach(), self.acc)

    def log(self, loss, seen: int, dt: float) -> None:
        self.tput = seen * self.world / dt if dt > 0 else 0.0
        self.last_loss = float(self.acc.reduce(loss.detach(), "mean"))
        self.history.append((self.step, self.last_loss))
        metrics = {"train/loss": self.last_loss, "train/lr": self.scheduler.get_last_lr()[0],
                   "train/grad_norm": float(self.norm), "train/samples_per_sec": self.tput}
        if self.cfg.logger in ("tensorboard", "wandb"):
            self.acc.log(metrics, step=self.step)
        if self.csv is not None:
            self.csv.write({"step": self.step, **metrics})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_loss:.4f}", samples_per_sec=f"{self.tput:.0f}")
        else:
            self.acc.print(f"step {self.step}/{self.max_steps}  loss {self.last_loss:.4f}  {self.tput:.0f} samples/s")

    def save(self) -> Optional[str]:
        acc = self.acc
        acc.wait_for_everyone()
        if acc.is_main_process:
            resume_state = {"micro": self.micro, "n_batches": self.n_batches, "data": self.datamodule,
                            "accumulate": self.opts["accumulate_grad_batches"]}
            self.last_ckpt = _save(acc, self.module, self.optimizer, self.scheduler, self.step, self.ckpt_dir, resume_state)
        acc.wait_for_everyone()
        return self.last_ckpt

    def maybe_stop_on_signal(self) -> None:
        from lit_diffusion.reliability import EXIT_CODES, TrainingInterrupted

        if self.step < self.max_steps and self.signals.any(self.acc):
            path = self.save()
            name = self.signals.signame or "SIGTERM"
            if self.bar is not None:  # end the bar's line before the message
                self.bar.close()
                self.bar = None
            self.acc.print(
                f"received {name}: saved a checkpoint at global step {self.step} -> {path}\n"
                f"resume with --ckpt_path last; exiting with status {EXIT_CODES.get(name, 1)}"
            )
            raise TrainingInterrupted(name, path, self.step)

    def epochs(self):
        """The batches from the current position on, epoch after epoch (skipping the ones a resumed
        run has consumed)."""
        epoch, skip = divmod(self.micro, self.n_batches)
        while True:
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            yield from (self.acc.skip_first_batches(self.loader, skip) if skip else self.loader)
            skip = 0
            epoch += 1

    def loop(self) -> None:
        log_every = max(self.opts["log_every_n_steps"], 1)
        t0, seen = time.perf_counter(), 0
        self.net.train()
        if self.step >= self.max_steps:
            return
        for batch in self.epochs():
            x0, loss = self.micro_step(batch)
            seen += x0.shape[0]
            if not self.acc.sync_gradients:
                continue
            self.after_optimizer_step(x0, loss, seen)
            if self.step % log_every == 0 or self.step == self.max_steps:
                self.log(loss, seen, time.perf_counter() - t0)
                t0, seen = time.perf_counter(), 0
            if self.step % int(self.cfg.ckpt_every_n_steps) == 0 and self.step < self.max_steps:
                self.save()
            self.maybe_stop_on_signal()
            if self.step >= self.max_steps:
                return

    def finish(self) -> TrainResult:
        self.save()
        if self.acc.is_main_process:
            _export_safetensors(self.module, os.path.join(self.ckpt_dir, "model.safetensors"))
        if self.bar is not None:
            self.bar.close()
        if self.cfg.logger in ("tensorboard", "wandb"):
            self.acc.end_training()
        return TrainResult(self.module, self.acc, self.step, self.last_loss, self.tput, self.last_ckpt, self.history)


def _train(cfg, opts, accelerator, ckpt_dir, resume, on_step, signals) -> TrainResult:
    if getattr(cfg, "num_threads", None):
        torch.set_num_threads(int(cfg.num_threads))
    run = _Run(cfg, opts, accelerator, ckpt_dir, on_step, signals)
    run.restore(resume)
    run.prepare()
    run.loop()
    return run.finish()


class _CSVLog:
    """``metrics.csv`` with a header row (appending to the file of a resumed run)."""

    FIELDS = ("step", "train/loss", "train/lr", "train/grad_norm", "train/samples_per_sec")

    def __init__(self, path: str):
        import csv

        os.makedirs(os.path.dirname(path), exist_ok=True)
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, fieldnames=self.FIELDS)
        if fresh:
            self.writer.writeheader()
            self.file.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: row.get(k) for k in self.FIELDS})
        self.file.flush()


def _tracker_config(cfg, module) -> dict:
    """The run's configuration for the trackers (wandb config, TensorBoard hparams): flat keys with
    scalar values (``model.lr``, ``model.sde.class_path``...), the SDE/loss/net descriptions included."""
    from jsonargparse import Namespace

    d = cfg.as_dict() if isinstance(cfg, Namespace) else dict(cfg)
    d.pop("config", None)
    d["model"] = {**dict(d.get("model") or {}), **{k: module.hparams[k] for k in ("net", "sde", "loss")}}
    flat: dict = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, u in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), u)
        elif v is None or isinstance(v, (bool, int, float, str)):
            flat[prefix] = v if v is not None else "None"
        else:
            flat[prefix] = json.dumps(v, default=str)

    walk("", d)
    return flat


def _instantiate(ns) -> dict:
    """``model`` namespace -> constructor kwargs; ``net``/``sde``/``loss`` descriptions are built by
    the registry (:func:`lit_diffusion.registry.build`: registered classes, JSON arguments)."""
    from jsonargparse import Namespace

    out = {}
    d = ns.as_dict() if isinstance(ns, Namespace) else dict(ns)
    for k, v in d.items():
        v = getattr(ns, k) if isinstance(ns, Namespace) else v
        out[k] = _build(v, k if k in ("net", "sde", "loss") else None)
    return out


def _build(v, kind: Optional[str]):
    from jsonargparse import Namespace

    from lit_diffusion.registry import build

    if isinstance(v, Namespace) and "class_path" in v:
        v = v.as_dict()
    if isinstance(v, dict) and "class_path" in v:
        if kind is None:
            raise ValueError(f"accelerate_train: a class description {v.get('class_path')!r} where none is expected")
        return build(v, kind)
    return v


def _instantiate_data(v):
    from lit_diffusion.data import BaseDataModule

    obj = _build(v, "data")
    if not isinstance(obj, BaseDataModule):
        raise TypeError(f"data: expected a lit_diffusion.data.BaseDataModule; got {type(obj).__name__}")
    return obj


def _progress(total: int, current: int, started: bool = True, processed: bool = True) -> dict:
    d = {"total": {"ready": total, "completed": total}, "current": {"ready": current, "completed": current}}
    for key in (("started",) if started else ()) + (("processed",) if processed else ()):
        d["total"][key], d["current"][key] = total, current
    return d


def lightning_loops(step: int, micro: int, n_batches: int, accumulate: int = 1) -> dict:
    """The ``loops`` entry of a Lightning checkpoint after ``step`` optimizer steps and ``micro``
    micro-batches (``n_batches`` per epoch), so that ``train.py --ckpt_path`` continues an Accelerate
    run at the right global step, epoch and batch."""
    epoch, in_epoch = divmod(int(micro), int(n_batches))
    steps_in_epoch = in_epoch // max(int(accumulate), 1)
    empty = {**_progress(0, 0), "is_last_batch": False}
    return {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": int(step)},
            "epoch_loop.batch_progress": {**_progress(int(micro), in_epoch), "is_last_batch": False},
            "epoch_loop.scheduler_progress": _progress(int(step), steps_in_epoch, started=False, processed=False),
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
                "step": _progress(int(step), steps_in_epoch, started=False, processed=False),
                "zero_grad": _progress(int(step), steps_in_epoch, processed=False),
            }},
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, started=False, processed=False),
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": dict(empty),
            "epoch_progress": {"total": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1, "processed": epoch},
                               "current": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1, "processed": epoch}},
        },
        "validate_loop": {"state_dict": {}, "batch_progress": dict(empty)},
        "test_loop": {"state_dict": {}, "batch_progress": dict(empty)},
        "predict_loop": {"state_dict": {}, "batch_progress": _progress(0, 0)},
    }


def _save(accelerator, module, optimizer, scheduler, step: int, ckpt_dir: str, resume_state: Optional[dict] = None) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    ckpt = {
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "hyper_parameters": dict(module.hparams),
        "global_step": int(step),
        "epoch": 0,
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "data_shape": None if module.data_shape is None else [int(s) for s in module.data_shape],
        "prediction_type": module.prediction_type,
        "launcher": "accelerate",
        "world_size": int(accelerator.num_processes),
        # what Lightning's loaders look for: ScoreModule.load_from_checkpoint reads this file too
        "pytorch-lightning_version": _lightning_version(),
        "hparams_name": "kwargs",
    }
    if resume_state is not None:  # what train.py needs to continue this run (one schema for both launchers)
        micro, n_batches = int(resume_state["micro"]), int(resume_state["n_batches"])
        ckpt["loops"] = lightning_loops(step, micro, n_batches, int(resume_state.get("accumulate", 1)))
        ckpt["epoch"] = micro // n_batches
        dm = resume_state["data"]
        ckpt[type(dm).__qualname__] = {"epoch": micro // n_batches, "batches": micro % n_batches,
                                       "batch_size": int(dm.batch_size), "world_size": int(accelerator.num_processes)}
    path = os.path.join(ckpt_dir, f"step={step}.ckpt")
    # last.ckpt first: a kill between the two writes leaves last.ckpt the newest checkpoint
    save_checkpoint_atomic(ckpt, os.path.join(ckpt_dir, "last.ckpt"))
    save_checkpoint_atomic(ckpt, path)
    for name in os.listdir(ckpt_dir):  # keep the newest step file only (as train.py does)
        if name.startswith("step=") and name.endswith(".ckpt") and name != os.path.basename(path):
            try:
                os.remove(os.path.join(ckpt_dir, name))
            except OSError:
                pass
    return path


def _lightning_version() -> str:
    import lightning

    return str(lightning.__version__)


def _export_safetensors(module, path: str) -> str:
    from safetensors.torch import save

    from lit_diffusion.checkpoint_io import atomic_write_bytes

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    meta = {"hyper_parameters": json.dumps(dict(module.hparams)), "prediction_type": module.prediction_type}
    atomic_write_bytes(save(state, metadata=meta), path)
    return path


def main(args=None) -> TrainResult:
    """Parse ``args`` (``sys.argv[1:]`` when None) and train."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    res = train(cfg)
    if res.accelerator.is_main_process:
        print(f"checkpoint: {res.checkpoint}", flush=True)
    return res


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
