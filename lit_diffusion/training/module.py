"""``ScoreModule``: a LightningModule that trains any score network with any SDE and loss.

The three parts are pluggable by config (jsonargparse ``class_path`` + ``init_args``, or the
shorthand ``--model.sde VP --model.sde.beta_max 20``):

* ``net``: any ``nn.Module`` called as ``net(x, t)`` with a declared ``prediction_type``
  (``epsilon``, ``score``, ``denoiser`` or ``v``; docs/maths.md §2), e.g.
  :class:`lit_diffusion.training.networks.TimeMLP` or :class:`lit_diffusion.training.networks.UNet`;
* ``sde``: a :class:`lit_diffusion.core.sdes.LinearSDE` (§1) or its name;
* ``loss``: a loss of :mod:`lit_diffusion.training.losses` (DSM/SSM/ISM/ESM, §3) or its name.

Precision: the network runs in whatever precision the Trainer gives (``bf16-mixed`` autocast,
``bf16-true`` weights...), while the SDE arithmetic and the loss run in float32 (autocast is switched
off around the loss and back on around each network call).

Logged (every ``trainer.log_every_n_steps`` steps): ``train/loss``, the loss split into
``time_buckets`` equal-width buckets of ``t`` (``train/loss_t0.00-0.25`` ...), ``train/lr``,
``train/grad_norm`` (before clipping), ``train/samples_per_sec`` (all processes together) and
``val/loss`` on the held-out split.  Pictures of samples come from
:class:`lit_diffusion.training.callbacks.SamplePictures`.

Checkpoints hold only plain types: the hyperparameters describe ``net``/``sde``/``loss`` as
``{"class_path", "init_args"}`` dictionaries, so ``torch.load(..., weights_only=True)`` reads them and
:meth:`ScoreModule.load_checkpoint` rebuilds the module from them.
"""

from __future__ import annotations

import math
import time
from typing import Literal, Optional, Union

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from ..runtime.precision import NetworkRunner
from .ema import EMA
from ..core.parametrizations import canonical_prediction
from .losses import ScoreMatchingLoss
from ..core.sdes import LinearSDE

__all__ = ["ScoreModule", "describe", "build_from_config", "noise_seed"]

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant", "linear")


from .loading import LoadingMixin  # noqa: E402
from .module_parts import (  # noqa: E402,F401  (re-exported: module.describe / noise_seed as before)
    BatchesMixin, SamplingMixin, build_loss, build_net, build_sde, build_from_config, describe, noise_seed,
)


# --------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------
class ScoreModule(LoadingMixin, SamplingMixin, BatchesMixin, pl.LightningModule):
    """Train ``net`` on ``loss(net, sde, x0)``.

    Args:
        net: the score network (``net(x, t)``; must declare ``prediction_type`` unless given here).
        sde: the forward SDE (object, name such as ``"VP"``, or class_path dict). Default ``VP()``.
        loss: the training loss (object, name ``"dsm"``/``"ssm"``/``"ism"``, or class_path dict).
        prediction_type: overrides ``net.prediction_type``.
        optimizer: ``adamw`` (default), ``adam`` or ``sgd``.
        lr, weight_decay, betas: optimizer settings.
        warmup_steps: linear learning-rate warm-up from 0.
        lr_schedule: after warm-up, ``cosine`` (to ``min_lr_ratio * lr`` at the end of training),
            ``linear`` (same end point) or ``constant``.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        ema_decay: EMA decay (0 disables the EMA); ``ema_warmup``: decay warm-up
            ``min(decay, (1+n)/(ema_warmup+n))``; ``ema_every_n_steps``: update interval.
        autoencoder: latent diffusion: the folder of a diffusers ``AutoencoderKL`` (frozen; see
            :mod:`lit_diffusion.training.autoencoder`). Batches are encoded on the fly, the network and
            ``data_shape`` live in the latent space, and :meth:`sample` decodes to pixels.
        latent_scaling: the latent scale (default: the autoencoder's ``scaling_factor``).
        p_uncond: class-conditional networks only: the probability that a training label is
            replaced by the "no label" token, so that one network learns the conditional and the
            unconditional model of classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion
            Guidance"; 0.1 by default).
        compile: train through ``torch.compile(net)`` (``True``: the default backend, inductor; or a
            backend name such as ``"aot_eager"``). The weights, checkpoints and sampling use the
            plain network; only the training and validation forward passes are compiled.
        time_buckets: number of equal-width buckets of ``t`` in ``[0, T]`` for the split loss log.
        data_shape: shape of one sample (inferred from the first batch when not given; needed
            by :meth:`sample`).
        stop_on_nonfinite: raise ``FloatingPointError`` on a NaN/inf loss (the last good checkpoint
            is kept).
        seed: the loss's random draws (times and noise) at optimizer step ``k`` on process ``r``
            come from a generator seeded with ``(seed, k, r)``, so a resumed run repeats the
            uninterrupted one exactly; ``None``: the global torch RNG.
        log_every_step: ``True`` logs ``train/loss`` (and shows it in the progress bar) at every
            step; ``False`` (default) logs it every ``trainer.log_every_n_steps`` steps like the other
            metrics, saving Lightning's per-call logging cost (about 2 ms per step on a slow CPU: the
            Lightning loop goes from 0.84 to 0.93 of a plain loop for the 2-D default, see
            docs/throughput.md).
    """

    def __init__(
        self,
        net: Optional[nn.Module] = None,
        sde: Optional[LinearSDE] = None,
        loss: Optional[ScoreMatchingLoss] = None,
        prediction_type: Optional[Literal["epsilon", "score", "denoiser", "v", "relative_score"]] = None,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 100,
        lr_schedule: Literal["cosine", "constant", "linear"] = "cosine",
        min_lr_ratio: float = 0.0,
        ema_decay: float = 0.999,
        ema_warmup: int = 10,
        ema_every_n_steps: int = 1,
        autoencoder: Optional[str] = None,
        latent_scaling: Optional[float] = None,
        p_uncond: float = 0.1,
        compile: Union[bool, str] = False,
        time_buckets: int = 4,
        data_shape: Optional[list[int]] = None,
        stop_on_nonfinite: bool = True,
        seed: Optional[int] = 0,
        log_every_step: bool = False,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"ScoreModule: unknown optimizer {optimizer!r}; valid choices: {list(OPTIMIZERS)}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"ScoreModule: unknown lr_schedule {lr_schedule!r}; valid choices: {list(LR_SCHEDULES)}")
        if not (math.isfinite(float(lr)) and float(lr) > 0):
            raise ValueError(f"ScoreModule: lr={lr!r} is invalid; it must be a finite number > 0")
        if int(warmup_steps) < 0:
            raise ValueError(f"ScoreModule: warmup_steps={warmup_steps!r} is invalid; it must be >= 0")
        if not (0.0 <= float(min_lr_ratio) <= 1.0):
            raise ValueError(f"ScoreModule: min_lr_ratio={min_lr_ratio!r} is invalid; it must be in [0, 1]")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not (0 <= seed < 2**32)):
            raise ValueError(f"ScoreModule: seed={seed!r} is invalid; it must be an integer in [0, 2**32) or None (global RNG)")
        if not (0.0 <= float(p_uncond) <= 1.0):
            raise ValueError(f"ScoreModule: p_uncond={p_uncond!r} is invalid; it must be in [0, 1]")
        if not isinstance(compile, (bool, str)):
            raise ValueError(f"ScoreModule: compile={compile!r} is invalid; give true/false or a torch.compile backend name")
        if int(time_buckets) < 1:
            raise ValueError(f"ScoreModule: time_buckets={time_buckets!r} is invalid; it must be >= 1")
        self.net = build_net(net)
        self.sde = build_sde(sde)
        self.loss = build_loss(loss)
        if prediction_type is None and getattr(self.net, "prediction_type", None) is None:
            raise ValueError(
                f"ScoreModule: {type(self.net).__name__} declares no prediction_type; pass prediction_type=, one of "
                "['epsilon', 'score', 'denoiser', 'v']"
            )
        self.prediction_type = canonical_prediction(prediction_type or self.net.prediction_type)
        self.ema: Optional[EMA] = (
            EMA(self.net, ema_decay, ema_warmup, ema_every_n_steps) if float(ema_decay) > 0 else None
        )
        self.data_shape = None if data_shape is None else tuple(int(s) for s in data_shape)
        self.codec = None
        if autoencoder is not None:
            from .autoencoder import LatentCodec

            self.codec = LatentCodec(autoencoder, latent_scaling)

        # hyperparameters: plain types only (weights_only checkpoint loading)
        self.save_hyperparameters(ignore=["net", "sde", "loss", "betas", "data_shape"])
        hp = {k: v for k, v in self.hparams.items() if k not in ("_instantiator", "_class_path")}
        hp.update(
            net=describe(self.net, "net"), sde=describe(self.sde, "sde"), loss=describe(self.loss, "loss"),
            betas=[float(b) for b in betas], data_shape=None if self.data_shape is None else list(self.data_shape),
        )
        # once more with the full dictionary: the loggers receive the SDE, loss and network too
        # (Lightning logs the hyper-parameters as first saved)
        self.save_hyperparameters(hp)

        # torch.compile of the training forward: kept out of the module tree (no second state_dict copy)
        self.__dict__["_compiled_net"] = None
        self._ema_last_step = -1
        self._tput_t0: Optional[float] = None
        self._tput_samples = 0
        self._gens: dict = {}

    # ------------------------------------------------------------------ fields and sampling
    def _train_net(self) -> nn.Module:
        """The network the training forward calls: ``torch.compile(net)`` with ``compile``."""
        flag = self.hparams.get("compile", False)
        if not flag:
            return self.net
        if self.__dict__.get("_compiled_net") is None:
            kw = {} if flag is True else {"backend": str(flag)}
            self.__dict__["_compiled_net"] = torch.compile(self.net, **kw)
        return self.__dict__["_compiled_net"]

    def _loss_terms(self, x0: Tensor, generator=None, class_labels=None) -> tuple[Tensor, Optional[Tensor]]:
        # the network in the Trainer's precision (autocast state captured now), float32 out
        runner = NetworkRunner(self._train_net(), prediction_type=self.prediction_type, autocast_from=x0.device.type)
        with torch.autocast(x0.device.type, enabled=False):
            per = self.loss.per_sample(runner, self.sde, x0.float(), generator=generator, class_labels=class_labels)
        return per.float(), runner.last_t

    def _step_generator(self, device) -> Optional[torch.Generator]:
        seed = self.hparams.get("seed", None)
        if seed is None:
            return None
        g = self._gens.get(str(device))
        if g is None:
            g = self._gens[str(device)] = torch.Generator(device=device)
        rank = self.global_rank if self._trainer is not None else 0
        micro = 0
        if self._trainer is not None:  # index of this batch since the beginning of training (restored on resume)
            micro = int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready) - 1
        g.manual_seed(noise_seed(int(seed), micro, int(rank)))
        return g

    def _should_log(self) -> bool:
        trainer = self._trainer
        if trainer is None:
            return False
        every = max(int(trainer.log_every_n_steps), 1)
        return (self.global_step + 1) % every == 0 or trainer.fast_dev_run

    def training_step(self, batch, batch_idx):
        g = self._step_generator(self._batch(batch).device)
        x0, y = self.training_inputs(batch, g)
        if self.data_shape is None:
            self.data_shape = tuple(x0.shape[1:])
            self.hparams["data_shape"] = list(self.data_shape)
        per, t = self._loss_terms(x0, generator=g, class_labels=y)
        loss = per.mean()
        if not torch.isfinite(loss):
            if self.hparams.stop_on_nonfinite:
                raise FloatingPointError(
                    f"non-finite training loss {loss.item()} at global step {self.global_step} "
                    f"(batch {batch_idx}); stopping. The last good checkpoint is kept."
                )
        log = self._should_log()
        if log or self.hparams.get("log_every_step", False):
            self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=x0.shape[0])
        if log:
            if t is not None and t.shape[0] == per.shape[0]:
                self._log_buckets(per.detach(), t.reshape(-1).to(per.device), "train")
            sched = self.lr_schedulers()
            if sched is not None:
                self.log("train/lr", float(sched.get_last_lr()[0]), on_step=True, on_epoch=False)
        return loss

    def _log_buckets(self, per: Tensor, t: Tensor, stage: str) -> None:
        n = int(self.hparams.time_buckets)
        T = float(self.sde.T)
        idx = torch.clamp((t.float() / T * n).long(), 0, n - 1)
        sums = torch.zeros(n, device=per.device).index_add_(0, idx, per.float())
        counts = torch.bincount(idx, minlength=n)
        for i in range(n):
            if int(counts[i]) > 0:
                self.log(
                    f"{stage}/loss_t{i * T / n:.2f}-{(i + 1) * T / n:.2f}",
                    sums[i] / counts[i],
                    on_step=stage == "train",
                    on_epoch=stage != "train",
                    batch_size=int(counts[i]),
                )

    def validation_step(self, batch, batch_idx):
        x0 = self._batch(batch)
        g = torch.Generator(device=x0.device).manual_seed(1000 + batch_idx)
        x0 = self.encode(x0, g)
        y = self._labels(batch, x0.shape[0])
        if type(self.loss).__name__ in ("SSM", "ISM"):
            # these losses differentiate the network w.r.t. x: leave inference mode for them
            with torch.inference_mode(False), torch.enable_grad():
                per, t = self._loss_terms(x0.clone(), generator=g, class_labels=None if y is None else y.clone())
                per = per.detach()
        else:
            per, t = self._loss_terms(x0, generator=g, class_labels=y)
        self.log("val/loss", per.mean(), on_step=False, on_epoch=True, prog_bar=True, batch_size=x0.shape[0])
        if t is not None and t.shape[0] == per.shape[0]:
            self._log_buckets(per.detach(), t.reshape(-1).to(per.device), "val")
        return per.mean()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._should_log():
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def on_fit_start(self) -> None:
        from lightning.pytorch.callbacks import WeightAveraging

        clash = [type(cb).__name__ for cb in self.trainer.callbacks if isinstance(cb, WeightAveraging)]
        if clash and self.ema is not None:
            raise ValueError(
                f"ScoreModule keeps its own EMA of the weights (ema_decay={self.hparams.ema_decay}); the callback "
                f"{clash} would overwrite the weights with a second average, and the checkpoint and samples would no "
                "longer be the package's EMA. Remove the callback, or set model.ema_decay 0 to use Lightning's averaging"
            )
        dm = getattr(self.trainer, "datamodule", None)
        data_k = getattr(dm, "num_classes", None) if dm is not None else None
        if self.num_classes is not None and data_k is not None and int(data_k) != self.num_classes:
            raise ValueError(
                f"ScoreModule: the network has num_classes={self.num_classes} but the data have {data_k} classes"
            )
        if self.num_classes is not None and dm is not None and data_k is None and hasattr(dm, "num_classes"):
            raise ValueError(
                f"ScoreModule: the network is class-conditional (num_classes={self.num_classes}) but "
                f"{type(dm).__name__} yields no labels"
            )

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self._tput_t0 is None:
            self._tput_t0 = time.perf_counter()
            self._tput_samples = 0

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA right after each optimizer step (so that a checkpoint written at the end of this batch
        # already holds it; accumulation-only batches take no step and do not update)
        if self.ema is not None:
            self.ema.step(self.net)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # throughput (all processes): samples per second since the last log
        self._tput_samples += int(self._batch(batch).shape[0])
        if self._should_log() and self._tput_t0 is not None:
            dt = time.perf_counter() - self._tput_t0
            if dt > 0:
                world = self.trainer.world_size if self._trainer is not None else 1
                self.log("train/samples_per_sec", self._tput_samples * world / dt, on_step=True, on_epoch=False)
            self._tput_t0 = time.perf_counter()
            self._tput_samples = 0

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # LightningCLI's instantiator (jsonargparse) is never written: loaders rebuild through the registry
        for key in ("_instantiator", "_class_path"):
            checkpoint.get("hyper_parameters", {}).pop(key, None)
        checkpoint["data_shape"] = None if self.data_shape is None else [int(s) for s in self.data_shape]
        checkpoint["prediction_type"] = self.prediction_type

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        shape = checkpoint.get("data_shape")
        if shape is not None:
            self.data_shape = tuple(int(s) for s in shape)

    # ------------------------------------------------------------------ optimisation
    def lr_factor(self, step: int, total: Optional[int]) -> float:
        """Multiplier of ``lr`` at optimizer step ``step`` (warm-up, then the schedule)."""
        hp = self.hparams
        w = int(hp.warmup_steps)
        if w > 0 and step < w:
            return (step + 1) / w
        if hp.lr_schedule == "constant" or not total or total <= w:
            return 1.0
        frac = min(max((step - w) / max(total - w, 1), 0.0), 1.0)
        lo = float(hp.min_lr_ratio)
        if hp.lr_schedule == "linear":
            return lo + (1 - lo) * (1 - frac)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * frac))

    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.net.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.betas[0], weight_decay=hp.weight_decay)
        elif hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.AdamW(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        total = None
        if self._trainer is not None:
            est = self.trainer.estimated_stepping_batches
            total = int(est) if est is not None and math.isfinite(est) else None
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_factor(step, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
