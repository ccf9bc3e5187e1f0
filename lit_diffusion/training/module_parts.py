"""The parts of :class:`lit_diffusion.training.module.ScoreModule` that are not the training loop:
building its SDE, loss and network from objects, names or registry descriptions; the noise seeds of a
training step (shared with the Accelerate loop); batches with labels; sampling from the module."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..core.fields import Field, as_field
from ..core.sdes import LinearSDE, get_sde

__all__ = ["describe", "build_from_config", "noise_seed"]


# --------------------------------------------------------------------------------------------
# plain-type descriptions of components (for hyperparameters / checkpoints): lit_diffusion.training.registry
# --------------------------------------------------------------------------------------------
def describe(obj, kind: Optional[str] = None) -> Any:
    """A plain ``{"class_path": <registered name>, "init_args": {...}}`` description of ``obj``
    (see :func:`lit_diffusion.training.registry.describe`)."""
    from .registry import describe as _describe

    return _describe(obj, kind)


def build_from_config(cfg, kind: str):
    """Build a ``{"class_path", "init_args"}`` description through the registry
    (:func:`lit_diffusion.training.registry.build`): registered classes and JSON arguments only."""
    from .registry import build

    return build(cfg, kind)


def build_sde(sde) -> LinearSDE:
    if sde is None:
        from ..core.sdes import VP

        return VP()
    if isinstance(sde, LinearSDE):
        return sde
    if isinstance(sde, str):
        return get_sde(sde)
    if isinstance(sde, dict):
        return build_from_config(sde, "sde")
    raise TypeError(f"sde must be a lit_diffusion SDE, its name or a {{'class_path', 'init_args'}} description; got {type(sde).__name__}")


def build_loss(loss):
    if loss is None:
        loss = "dsm"
    if isinstance(loss, str):
        from .losses import get_loss

        return get_loss(loss)
    if isinstance(loss, dict):
        return build_from_config(loss, "loss")
    if not callable(loss) or not callable(getattr(loss, "per_sample", None)):
        raise TypeError(f"loss must be a lit_diffusion.training.losses loss (with per_sample); got {type(loss).__name__}")
    return loss


def build_net(net) -> nn.Module:
    if isinstance(net, nn.Module):
        return net
    if net is None:
        from .networks import TimeMLP

        return TimeMLP()
    if isinstance(net, (dict, str)):
        return build_from_config(net, "net")
    raise TypeError(f"net must be an nn.Module or a {{'class_path', 'init_args'}} description; got {type(net).__name__}")


def noise_seed(seed: int, micro_batch: int, rank: int) -> int:
    """The seed of the times and noise the loss draws for micro-batch ``micro_batch`` (counted from
    the start of training) on process ``rank``: one formula for both launchers, distinct for every
    (micro-batch, rank) pair, so processes never share noise and a resumed run repeats the
    uninterrupted one."""
    return ((int(seed) * 1_000_003 + int(micro_batch)) * 4099 + int(rank)) % (2**63 - 1)


class BatchesMixin:
    """Images and labels of a batch, label dropout."""

    def training_inputs(self, batch, generator) -> tuple[Tensor, Optional[Tensor]]:
        """What the loss trains on for one batch, the same under both launchers: the diffusion-space
        data (latents for a latent model) and, for a conditional network, the labels after dropout,
        both drawn from the step's generator."""
        x0 = self.encode(self._batch(batch), generator)
        return x0, self._drop_labels(self._labels(batch, x0.shape[0]), generator)

    @staticmethod
    def _batch(batch) -> Tensor:
        if isinstance(batch, (list, tuple)):
            batch = batch[0]
        if isinstance(batch, dict):
            batch = batch.get("x", batch.get("images"))
        if not isinstance(batch, Tensor):
            raise TypeError(f"ScoreModule: a batch must be a tensor (or a tuple whose first item is); got {type(batch).__name__}")
        return batch

    def _labels(self, batch, n: int) -> Optional[Tensor]:
        """The class labels of a batch for a conditional network (``None`` for an unconditional one,
        which trains on the images alone); a batch without labels, or with labels out of range, is
        an error."""
        K = self.num_classes
        if K is None:
            return None
        y = None
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            y = batch[1]
        elif isinstance(batch, dict):
            y = batch.get("y", batch.get("class_labels", batch.get("labels")))
        if y is None:
            raise ValueError(
                f"ScoreModule: the network is class-conditional (num_classes={K}) but the batch has no labels; "
                "use a data module that yields (x, y) (labels=True) or an unconditional network"
            )
        y = torch.as_tensor(y)
        if y.is_floating_point() or y.reshape(-1).shape[0] != n:
            raise ValueError(f"ScoreModule: labels must be {n} integers, one per sample; got shape {tuple(y.shape)}, dtype {y.dtype}")
        y = y.reshape(-1).to(torch.long)
        if int(y.min()) < 0 or int(y.max()) >= K:
            raise ValueError(f"ScoreModule: labels must lie in [0, {K}) (num_classes={K}); got [{int(y.min())}, {int(y.max())}]")
        return y

    def _drop_labels(self, y: Optional[Tensor], generator) -> Optional[Tensor]:
        """Label dropout: each label becomes "no label" (-1) with probability ``p_uncond``."""
        p = float(self.hparams.get("p_uncond", 0.0))
        if y is None or p <= 0:
            return y
        from ..core.utils import rand

        drop = rand(y.shape, generator=generator, device=y.device) < p
        return torch.where(drop, torch.full_like(y, -1), y)


class SamplingMixin:
    """The EMA or raw network as a field, sampling, encoding for latent models."""

    def sampling_net(self, ema: bool = True) -> nn.Module:
        """The EMA network (when ``ema`` and one is kept) or the raw one."""
        return self.ema.module if (ema and self.ema is not None) else self.net

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of a class-conditional network (``None``: unconditional)."""
        from .networks import num_classes_of

        return num_classes_of(self.net)

    def field(
        self, ema: bool = True, network_dtype: Optional[torch.dtype] = None, class_labels=None, guidance_scale: float = 1.0
    ) -> Field:
        """A :class:`lit_diffusion.core.fields.Field` over the EMA (default) or raw network, for samplers;
        ``class_labels`` and ``guidance_scale`` condition and guide it."""
        return as_field(
            self.sampling_net(ema), self.sde, prediction_type=self.prediction_type, network_dtype=network_dtype,
            class_labels=class_labels, guidance_scale=guidance_scale,
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        sampler: str = "euler",
        steps: int = 100,
        ema: bool = True,
        generator: Optional[torch.Generator] = None,
        shape: Optional[tuple[int, ...]] = None,
        class_labels=None,
        guidance_scale: float = 1.0,
        decode: bool = True,
        **options,
    ) -> Tensor:
        """Draw ``n`` samples with :func:`lit_diffusion.sampling.samplers.sample` (``class_labels`` and
        ``guidance_scale`` for a class-conditional network; a latent model returns pixels unless
        ``decode=False``)."""
        from ..sampling.samplers import sample as _sample

        shape = tuple(shape) if shape is not None else self.data_shape
        if shape is None:
            raise RuntimeError("ScoreModule.sample: data_shape unknown; pass shape= or train on a batch first")
        full = (int(n),) + tuple(shape)
        field = self.field(ema=ema, class_labels=class_labels, guidance_scale=guidance_scale)
        was_training = self.training
        self.eval()
        try:
            out = _sample(
                field, self.sde, shape=full, sampler=sampler, steps=steps, generator=generator, device=self.device,
                **options,
            )
        finally:
            self.train(was_training)
        if decode and self.codec is not None:
            return self.codec.decode(out.samples)
        return out.samples

    def encode(self, x: Tensor, generator=None) -> Tensor:
        """The diffusion-space version of a data batch: scaled latents for a latent model, ``x``
        itself otherwise."""
        return x if self.codec is None else self.codec.encode(x, generator)

    # ------------------------------------------------------------------ training
