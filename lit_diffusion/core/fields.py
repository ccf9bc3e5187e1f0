"""A uniform view of anything that can drive a sampler or a loss.

A *field* answers ``field(x, t, kind)``: the prediction of type ``kind`` (score, epsilon, denoiser,
v, relative_score; docs/maths.md §2) at state ``x`` and time ``t``.  It wraps

* an ``nn.Module`` (or any callable ``net(x, t)``) with a declared ``prediction_type``; the network
  may run in bf16/fp16 (``network_dtype``) while the conversion arithmetic stays in float32/64;
* an analytic target (anything with ``prediction(x, t, sde, kind)``, e.g.
  :class:`lit_diffusion.core.targets.GaussianMixture`), which is exact for every SDE.

It counts its evaluations (``nfe``) so samplers can report the number of field evaluations.

Conditioning: ``class_labels`` (one per sample, ``-1`` for "no label") are passed to a
class-conditional network (``net(x, t, class_labels=y)``) or select the component of an analytic
mixture.  ``guidance_scale=w`` applies classifier-free guidance (Ho & Salimans, "Classifier-Free
Diffusion Guidance") to the *network's own prediction* before any conversion:
``out = u + w (c - u)`` with ``c`` the conditional and ``u`` the unconditional prediction, computed in
one batched forward of ``2B`` samples.  Every prediction type is an affine function of the others at
fixed ``(x, t)``, and the weights ``1 - w`` and ``w`` sum to one, so the guided field is the same
whatever the network predicts and whatever the sampler freezes: its score is
``(1 - w) grad log p_t(x) + w grad log p_t(x | y)``.  ``w = 1`` is the plain conditional model,
``w = 0`` the unconditional one.  One guided evaluation counts as one evaluation in ``nfe`` (it is
one batched network call).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .parametrizations import canonical_prediction, convert, declared_prediction
from .sdes import LinearSDE, as_time, compute_dtype

__all__ = ["Field", "as_field", "check_guidance", "guidance_weight", "guided_call"]


def guidance_weight(guidance_scale) -> float:
    """A guidance scale as a float, refused unless a finite number."""
    try:
        w = float(guidance_scale)
    except (TypeError, ValueError):
        raise TypeError(f"guidance_scale={guidance_scale!r} is invalid; it must be a number") from None
    if not math.isfinite(w):
        raise ValueError(f"guidance_scale={guidance_scale!r} is invalid; it must be finite (1: conditional, 0: unconditional)")
    return w


def check_guidance(class_labels, guidance_scale) -> float:
    """Validate a guidance request before any work: a finite ``guidance_scale``, and labels whenever
    it is not 1 (guidance mixes a conditional and an unconditional prediction)."""
    w = guidance_weight(guidance_scale)
    if class_labels is None and w != 1.0:
        raise ValueError(f"guidance_scale={w} needs class_labels (guidance mixes conditional and unconditional predictions)")
    return w


def guided_call(call, x: Tensor, t: Tensor, labels: Tensor, w: float) -> Tensor:
    """One model evaluation under classifier-free guidance (docs/maths.md §7), the one place its
    arithmetic lives (the sampling field and ``LitDiffusionPipeline`` both use it).

    ``call(x, t, labels)`` evaluates the model with per-sample labels, ``-1`` meaning "no label".
    ``w = 1``: the conditional model alone; ``w = 0``: the unconditional one alone; otherwise one
    batched call on ``2B`` samples, combined as ``u + w (c - u)`` in float32 (float64 for float64
    outputs) even when the network ran in bf16/fp16."""
    if w == 0.0:
        return call(x, t, torch.full_like(labels, -1))
    if w == 1.0:
        return call(x, t, labels)
    out = call(torch.cat([x, x]), torch.cat([t, t]) if t.ndim else t, torch.cat([labels, torch.full_like(labels, -1)]))
    cond, uncond = out.to(torch.promote_types(out.dtype, torch.float32)).chunk(2)
    return uncond + (cond - uncond) * w


class Field:
    def __init__(
        self,
        model,
        sde: LinearSDE,
        prediction_type: Optional[str] = None,
        network_dtype: Optional[torch.dtype] = None,
        class_labels=None,
        guidance_scale: float = 1.0,
    ):
        self.model = model
        self.sde = sde
        self.network_dtype = network_dtype
        self.analytic = hasattr(model, "prediction") and callable(getattr(model, "prediction"))
        self.prediction_type = None if self.analytic else declared_prediction(model, prediction_type)
        self.guidance_scale = check_guidance(class_labels, guidance_scale)
        self.class_labels = None if class_labels is None else torch.as_tensor(class_labels).to(torch.long).reshape(-1)
        self.nfe = 0

    def _labels(self, x: Tensor) -> Tensor:
        y = self.class_labels.to(x.device)
        if y.numel() == 1:
            return y.expand(x.shape[0])
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y.shape[0]} class labels for a batch of {x.shape[0]}")
        return y

    def _call(self, x: Tensor, t: Tensor, kind: Optional[str]) -> Tensor:
        """One (possibly guided) call of the model: its own prediction, or ``kind`` for an analytic one."""
        if self.class_labels is None:
            return self.model.prediction(x, t, self.sde, kind) if self.analytic else self.model(x, t)
        if self.analytic:
            def call(x, t, y):
                return self.model.prediction(x, t, self.sde, kind, class_labels=y)
        else:
            def call(x, t, y):
                return self.model(x, t, class_labels=y)
        return guided_call(call, x, t, self._labels(x), self.guidance_scale)

    def raw(self, x: Tensor, t) -> Tensor:
        """The wrapped model's own output (its declared prediction type; guided when asked), in the
        compute dtype."""
        dtype = compute_dtype(x)
        t = as_time(t, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        self.nfe += 1
        if self.network_dtype is not None:
            out = self._call(x.to(self.network_dtype), t.to(torch.float32), None)
        else:
            out = self._call(x, t if dtype == torch.float64 else t.to(torch.float32), None)
        return out.to(dtype)

    def __call__(self, x: Tensor, t, kind: str = "score") -> Tensor:
        kind = canonical_prediction(kind)
        if self.analytic:
            self.nfe += 1
            return self._call(x, as_time(t, x), kind).to(compute_dtype(x))
        return convert(self.raw(x, t), self.prediction_type, kind, x, t, self.sde)


def as_field(
    model, sde: LinearSDE, prediction_type: Optional[str] = None, network_dtype=None, class_labels=None,
    guidance_scale: float = 1.0,
) -> Field:
    """Return ``model`` as a :class:`Field` (a Field is returned unchanged unless labels are given,
    then a Field over the same model with them)."""
    if isinstance(model, Field):
        if class_labels is None and guidance_scale == 1.0:
            return model
        if model.class_labels is not None:
            raise ValueError("the field is already conditioned on class labels; give them once")
        return Field(model.model, sde, model.prediction_type, model.network_dtype, class_labels, guidance_scale)
    return Field(
        model, sde, prediction_type=prediction_type, network_dtype=network_dtype, class_labels=class_labels,
        guidance_scale=guidance_scale,
    )
