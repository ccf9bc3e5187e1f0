"""Training callbacks: pictures of samples during training, and sample quality at validation
(:class:`SampleQuality`).

:class:`SamplePictures` draws ``n_samples`` samples every ``every_n_steps`` optimizer steps (and at the
end of training) with a configurable sampler from the EMA network, saves a PNG (a 2-D scatter over
held-out data for vectors, an image grid for images) and logs it to wandb / TensorBoard when one of
those loggers is attached. ``last_path`` holds the newest PNG.
"""

from __future__ import annotations

import os
from typing import Optional

import lightning.pytorch as pl
import torch
from torch import Tensor

__all__ = ["SamplePictures", "SampleQuality", "save_samples_png"]


def save_samples_png(samples: Tensor, path: str, reference: Optional[Tensor] = None, title: str = "") -> str:
    """Save ``samples`` as a PNG: a scatter (over ``reference`` data, in grey) for 1-D/2-D vectors,
    the first two coordinates for higher dimensions, or an image grid for ``(N, C, H, W)``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    samples = samples.detach().float().cpu()
    if samples.ndim == 4:
        from ..runtime.pictures import image_grid

        g = image_grid(samples)
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.axis("off")
    else:
        s = samples.reshape(samples.shape[0], -1)
        fig, ax = plt.subplots(figsize=(6, 6))
        if s.shape[1] == 1:
            bins = 80
            if reference is not None:
                ax.hist(reference.reshape(-1).numpy(), bins=bins, density=True, alpha=0.4, color="grey", label="data")
            ax.hist(s[:, 0].numpy(), bins=bins, density=True, alpha=0.6, label="samples")
        else:
            if reference is not None:
                r = reference.detach().float().cpu().reshape(reference.shape[0], -1)
                ax.scatter(r[:, 0], r[:, 1], s=2, c="grey", alpha=0.3, label="data")
            ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:blue", alpha=0.6, label="samples")
            ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    from ..runtime.checkpoint_io import atomic_write

    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return path


class SamplePictures(pl.Callback):
    """Draw and save pictures of samples during training.

    Args:
        every_n_steps: draw after every this many optimizer steps (0: only at the end of training).
        n_samples: number of samples (2-D scatter) or images in the grid.
        sampler, steps: passed to :meth:`lit_diffusion.training.module.ScoreModule.sample`.
        ema: sample from the EMA weights.
        seed: the samples of every picture use the same seeded generator.
        out_dir: folder for the PNGs (default: ``<trainer.default_root_dir>/samples``).
        n_reference: held-out points drawn in grey behind a 2-D scatter.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        n_samples: int = 1000,
        sampler: str = "euler",
        steps: int = 100,
        ema: bool = True,
        seed: int = 0,
        out_dir: Optional[str] = None,
        n_reference: int = 2000,
    ):
        super().__init__()
        if int(every_n_steps) < 0:
            raise ValueError(f"SamplePictures: every_n_steps={every_n_steps!r} is invalid; it must be >= 0")
        if int(n_samples) < 1 or int(steps) < 1:
            raise ValueError(f"SamplePictures: n_samples={n_samples!r} and steps={steps!r} must be >= 1")
        self.every_n_steps = int(every_n_steps)
        self.n_samples = int(n_samples)
        self.sampler = sampler
        self.steps = int(steps)
        self.ema = bool(ema)
        self.seed = int(seed)
        self.out_dir = out_dir
        self.n_reference = int(n_reference)
        self.last_path: Optional[str] = None
        self._last_step = -1

    def _dir(self, trainer: "pl.Trainer") -> str:
        return self.out_dir or os.path.join(trainer.default_root_dir, "samples")

    def _reference(self, trainer) -> Optional[Tensor]:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "eval_data"):
            try:
                return dm.eval_data(self.n_reference)
            except Exception:  # noqa: BLE001 - a picture without reference is fine
                return None
        return None

    def draw(self, trainer: "pl.Trainer", pl_module) -> Optional[str]:
        if pl_module.data_shape is None:
            return None
        g = torch.Generator().manual_seed(self.seed)
        K = getattr(pl_module, "num_classes", None)
        # a class-conditional model draws the classes in turn (0, 1, ..., K-1, 0, ...), conditionally
        labels = None if K is None else torch.arange(self.n_samples) % K
        x = pl_module.sample(
            self.n_samples, sampler=self.sampler, steps=self.steps, ema=self.ema, generator=g, class_labels=labels
        )
        step = trainer.global_step
        path = os.path.join(self._dir(trainer), f"samples_step{step:07d}.png")
        ref = self._reference(trainer) if x.ndim == 2 else None
        save_samples_png(x, path, reference=ref, title=f"step {step} ({self.sampler}, {self.steps} steps)")
        self.last_path = path
        self._last_step = step
        self._log(trainer, path, x, step)
        return path

    def _log(self, trainer, path: str, x: Tensor, step: int) -> None:
        for logger in trainer.loggers:
            name = type(logger).__name__
            try:
                if name == "WandbLogger":
                    logger.log_image(key="samples", images=[path], step=step)
                elif name == "TensorBoardLogger":
                    from PIL import Image
                    import numpy as np

                    img = np.asarray(Image.open(path).convert("RGB"))
                    logger.experiment.add_image("samples", img, global_step=step, dataformats="HWC")
            except Exception as e:  # noqa: BLE001 - logging a picture must never stop training
                pl.utilities.rank_zero.rank_zero_warn(f"SamplePictures: could not log the picture to {name}: {e}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            if trainer.is_global_zero:
                self.draw(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and trainer.global_step != self._last_step:
            self.draw(trainer, pl_module)


class SampleQuality(pl.Callback):
    """Sample quality during validation, not only the loss: every ``every_n_validations`` validation
    runs, ``n_samples`` samples of the EMA network (``sampler``, ``steps``) are scored against the
    held-out split of the data module and logged to every logger:

    * vectors: ``val/w1`` (exact optimal transport on up to 1,000 points) and ``val/mmd2``;
    * 1x28x28 images: ``val/fid_mnist`` and ``val/kid_mnist`` (the offline MNIST feature network,
      :mod:`lit_diffusion.evaluation.metrics`);
    * other images: nothing (no offline Inception network; a warning says so once).

    With ``likelihood_n > 0`` (default 0: off) the same validations also log the likelihood of the
    first ``likelihood_n`` held-out points through the probability-flow ODE
    (:mod:`lit_diffusion.evaluation.likelihood`: Hutchinson divergence, one Rademacher probe,
    ``dopri5`` at ``likelihood_rtol``): ``val/bpd`` and ``val/bpd_se`` for images (held-out values in
    ``[-1, 1]`` read as 8-bit, uniformly dequantized), ``val/nll`` (nats per dimension) for vectors.

    Scores are computed on the global-zero process and logged with ``rank_zero_only``; class-conditional
    models draw the classes in turn (conditional samples, guidance 1).
    """

    def __init__(self, every_n_validations: int = 1, n_samples: int = 500, steps: int = 20, sampler: str = "auto",
                 seed: int = 0, likelihood_n: int = 0, likelihood_rtol: float = 1e-3):
        super().__init__()
        if int(every_n_validations) < 0:
            raise ValueError(f"SampleQuality: every_n_validations={every_n_validations!r} is invalid; it must be >= 0 (0: off)")
        if int(n_samples) < 2 or int(steps) < 1:
            raise ValueError(f"SampleQuality: n_samples={n_samples!r} must be >= 2 and steps={steps!r} >= 1")
        if int(likelihood_n) < 0 or not 0 < float(likelihood_rtol) < 1:
            raise ValueError(f"SampleQuality: likelihood_n={likelihood_n!r} must be >= 0 (0: off) and "
                             f"likelihood_rtol={likelihood_rtol!r} in (0, 1)")
        self.every = int(every_n_validations)
        self.n_samples, self.steps, self.sampler, self.seed = int(n_samples), int(steps), sampler, int(seed)
        self.likelihood_n, self.likelihood_rtol = int(likelihood_n), float(likelihood_rtol)
        self._runs = 0
        self._warned = self._warned_latent = False
        self.last: dict = {}

    def score(self, pl_module, reference: Tensor) -> dict:
        """The metrics of one draw of samples against ``reference``."""
        from ..evaluation import metrics as M
        from ..evaluation import image_metrics as IM

        K = getattr(pl_module, "num_classes", None)
        labels = None if K is None else torch.arange(self.n_samples) % K
        x = pl_module.sample(self.n_samples, sampler=self.sampler, steps=self.steps, class_labels=labels,
                             generator=torch.Generator().manual_seed(self.seed)).detach().float().cpu()
        if x.ndim == 2:
            return {
                "val/w1": M.wasserstein1(x.numpy(), reference.float().numpy(), n_max=1000)["value"],
                "val/mmd2": M.mmd2(x.numpy(), reference.float().numpy(), n_max=1000)["value"],
            }
        if tuple(x.shape[1:]) == (1, 28, 28):
            size = min(len(x), len(reference))
            return {
                "val/fid_mnist": IM.fid(x, reference, backend="mnist", value_range=(-1.0, 1.0))["value"],
                "val/kid_mnist": IM.kid_mnist(x, reference, value_range=(-1.0, 1.0), subsets=20, subset_size=size)["value"],
            }
        if not self._warned:
            pl.utilities.rank_zero.rank_zero_warn(
                f"SampleQuality: no offline feature network for images of shape {tuple(x.shape[1:])}; only 2-D data "
                "and 1x28x28 images are scored"
            )
            self._warned = True
        return {}

    def likelihood(self, pl_module, reference: Tensor) -> dict:
        """``val/bpd`` (images) or ``val/nll`` (vectors) of the first ``likelihood_n`` held-out points
        (nothing, with a warning once, for a latent model: its likelihood would be of latents)."""
        from ..evaluation.likelihood import bits_per_dim, log_likelihood

        if getattr(pl_module, "codec", None) is not None:
            if not self._warned_latent:
                pl.utilities.rank_zero.rank_zero_warn("SampleQuality: no likelihood for a latent model (it would be of "
                                                      "its latents, not of the data); likelihood_n is ignored")
                self._warned_latent = True
            return {}
        x = reference[: self.likelihood_n].float()
        gen = torch.Generator().manual_seed(self.seed)
        tol = dict(rtol=self.likelihood_rtol, atol=self.likelihood_rtol, generator=gen)
        with torch.enable_grad():
            if x.ndim == 4:
                r = bits_per_dim(pl_module, ((x.clamp(-1, 1) + 1) * 127.5).round(), **tol)
                return {"val/bpd": r["bpd"], "val/bpd_se": r["bpd_se"]}
            logp = log_likelihood(pl_module, x, **tol)
        return {"val/nll": float(-logp.mean()) / x[0].numel()}

    def on_validation_epoch_end(self, trainer: "pl.Trainer", pl_module) -> None:
        if not self.every or trainer.sanity_checking or pl_module.data_shape is None:
            return
        self._runs += 1
        if self._runs % self.every:
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "eval_data"):
            return
        scores = {}
        if trainer.is_global_zero:
            reference = dm.eval_data(max(self.n_samples, 1000))
            if len(reference) >= 2:
                with torch.inference_mode(False):
                    scores = self.score(pl_module, reference)
                    if self.likelihood_n:
                        scores.update(self.likelihood(pl_module, reference))
        self.last = scores
        for k, v in scores.items():
            pl_module.log(k, float(v), on_step=False, on_epoch=True, rank_zero_only=True)
