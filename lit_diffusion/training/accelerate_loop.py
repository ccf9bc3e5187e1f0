"""The Accelerate training loop: one :class:`TrainingRun` (build, restore, prepare, micro-step, log, save,
signals) with the same semantics as the Lightning path (the ScoreModule's loss, EMA rule and noise
seeds, Lightning's checkpoint schema)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lit_diffusion.training.checkpoint_schema import save_training_checkpoint
from lit_diffusion.training.pretrained import save_pretrained
from lit_diffusion.runtime.precision import NetworkRunner


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


def load_resume(path: str, module) -> dict:
    """The checkpoint to resume from: valid, trusted by the registry, same SDE/loss/network as ``module``."""
    from lit_diffusion.training.checkpoint_schema import check_resume

    return check_resume(path, module)


def build_module(cfg):
    """The ScoreModule and data module of the config (the same on every process: same seed)."""
    from accelerate.utils import set_seed

    from lit_diffusion.training.module import ScoreModule

    set_seed(int(cfg.seed))
    module = ScoreModule(**model_arguments(cfg.model))
    datamodule = instantiate_data(cfg.data)
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


class TrainingRun:
    """The state of one Accelerate training run: what the loop reads and updates between steps."""

    def __init__(self, cfg, opts, accelerator, ckpt_dir, on_step, signals):
        self.cfg, self.opts, self.acc, self.ckpt_dir = cfg, opts, accelerator, ckpt_dir
        self.on_step, self.signals = on_step, signals
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.module, self.datamodule = build_module(cfg)
        opt_cfg = self.module.configure_optimizers()
        self.optimizer = opt_cfg["optimizer"] if isinstance(opt_cfg, dict) else opt_cfg
        self.max_steps = opts["max_steps"]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: self.module.lr_factor(s, self.max_steps))
        self.step, self.micro = 0, 0
        self.history: list = []
        self.last_loss, self.tput = float("nan"), 0.0
        self.last_ckpt: Optional[str] = None
        self.run_id: Optional[str] = None
        clip = opts["gradient_clip_val"]
        self.clip = float(clip) if clip not in (None, 0, 0.0) else float("inf")

    def restore(self, ckpt_path: Optional[str]) -> None:
        """Resume from ``ckpt_path`` (``None``, ``"last"`` or a file), within this run only: the main
        process decides (:func:`lit_diffusion.training.run_folder.prepare_run`) and tells the others."""
        from accelerate.utils import broadcast_object_list

        from lit_diffusion.training.run_folder import prepare_run

        decision = [None, None, None]
        if self.acc.is_main_process:
            try:
                resume, run_id = prepare_run(self.ckpt_dir, ckpt_path, fits=lambda p: load_resume(p, self.module),
                                             write=True, log=self.acc.print)
                decision = [resume, run_id, None]
            except (ValueError, OSError) as e:  # CheckpointError, FileNotFoundError: every process stops
                decision = [None, None, e]
        if self.world > 1:
            broadcast_object_list(decision, from_process=0)
        resume, self.run_id, err = decision
        if err is not None:
            raise err
        if resume is None:
            return
        ckpt = load_resume(resume, self.module)
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
        # the loss's view of the (DDP-wrapped, Accelerator-autocast) network: float32 out
        self.runner = NetworkRunner(self.net, prediction_type=self.module.prediction_type)
        self.n_batches = len(self.loader)
        if self.n_batches < 1:
            raise ValueError("the training loader is empty (data smaller than one batch?)")
        self.micro = self.step * self.opts["accumulate_grad_batches"]
        if cfg.logger in ("tensorboard", "wandb"):
            acc.init_trackers(cfg.run_name, config=tracker_config(cfg, self.module))
        self.csv = CSVLog(os.path.join(cfg.log_dir, cfg.run_name, "metrics.csv")) if (
            cfg.logger == "csv" and acc.is_main_process) else None
        self.bar = None
        if acc.is_main_process and getattr(cfg, "progress_bar", None) != "none":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.max_steps, initial=self.step, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def noise_generator(self) -> torch.Generator:
        """The times and noise of this micro-batch on this process: a function of (seed, micro-batch,
        rank) only (lit_diffusion.training.module.noise_seed, the Lightning path's formula)."""
        from lit_diffusion.training.module import noise_seed

        g = torch.Generator(device=self.acc.device)
        g.manual_seed(noise_seed(int(self.module.hparams.get("seed") or 0), self.micro, self.rank))
        return g

    def micro_step(self, batch):
        """Loss, backward and (on a sync step) the clipped optimizer step of one micro-batch, as
        ScoreModule.training_step computes it (latents, labels with dropout)."""
        module, acc = self.module, self.acc
        g = self.noise_generator()
        x0, labels = module.training_inputs(batch, g)
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
            self.last_ckpt = save_training_checkpoint(acc, self.module, self.optimizer, self.scheduler, self.step, self.ckpt_dir, resume_state,
                                   run_id=self.run_id)
        acc.wait_for_everyone()
        return self.last_ckpt

    def maybe_stop_on_signal(self) -> None:
        from lit_diffusion.runtime.reliability import EXIT_CODES, TrainingInterrupted

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
        self.signals.stop_now(self.last_ckpt, self.step)  # from here a signal ends the process at once
        if self.acc.is_main_process:
            # the one model format: a pretrained folder (model.safetensors of the EMA network + config.json)
            save_pretrained(self.module, os.path.join(self.ckpt_dir, "pretrained"), info={"global_step": self.step})
        if self.bar is not None:
            self.bar.close()
        if self.cfg.logger in ("tensorboard", "wandb"):
            self.acc.end_training()
        return TrainResult(self.module, self.acc, self.step, self.last_loss, self.tput, self.last_ckpt, self.history)


def run_training(cfg, opts, accelerator, ckpt_dir, resume, on_step, signals) -> TrainResult:
    if getattr(cfg, "num_threads", None):
        torch.set_num_threads(int(cfg.num_threads))
    run = TrainingRun(cfg, opts, accelerator, ckpt_dir, on_step, signals)
    run.restore(resume)
    run.prepare()
    run.loop()
    return run.finish()


class CSVLog:
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


def tracker_config(cfg, module) -> dict:
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


def model_arguments(ns) -> dict:
    """``model`` namespace -> constructor kwargs; ``net``/``sde``/``loss`` descriptions are built by
    the registry (:func:`lit_diffusion.training.registry.build`: registered classes, JSON arguments)."""
    from jsonargparse import Namespace

    out = {}
    d = ns.as_dict() if isinstance(ns, Namespace) else dict(ns)
    for k, v in d.items():
        v = getattr(ns, k) if isinstance(ns, Namespace) else v
        out[k] = _build(v, k if k in ("net", "sde", "loss") else None)
    return out


def _build(v, kind: Optional[str]):
    from jsonargparse import Namespace

    from lit_diffusion.training.registry import build

    if isinstance(v, Namespace) and "class_path" in v:
        v = v.as_dict()
    if isinstance(v, dict) and "class_path" in v:
        if kind is None:
            raise ValueError(f"accelerate_train: a class description {v.get('class_path')!r} where none is expected")
        return build(v, kind)
    return v


def instantiate_data(v):
    from lit_diffusion.training.data import BaseDataModule

    obj = _build(v, "data")
    if not isinstance(obj, BaseDataModule):
        raise TypeError(f"data: expected a lit_diffusion.training.data.BaseDataModule; got {type(obj).__name__}")
    return obj
