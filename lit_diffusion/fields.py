"""A uniform view of anything that can drive a sampler or a loss.

A *field* answers ``field(x, t, kind)``: the prediction of type ``kind`` (score, epsilon, denoiser,
v, relative_score; ALGORITHMS.md §2) at state ``x`` and time ``t``.  It wraps

* an ``nn.Module`` (or any callable ``net(x, t)``) with a declared ``prediction_type``; the network
  may run in bf16/fp16 (``network_dtype``) while the conversion arithmetic stays in float32/64;
* an analytic target (anything with ``prediction(x, t, sde, kind)``, e.g.
  :class:`lit_diffusion.targets.GaussianMixture`), which is exact for every SDE.

It counts its evaluations (``nfe``) so samplers can report the number of field evaluations.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .parametrizations import canonical_prediction, convert, declared_prediction
from .sdes import LinearSDE, as_time, compute_dtype

__all__ = ["Field", "as_field"]


class Field:
    def __init__(
        self,
        model,
        sde: LinearSDE,
        prediction_type: Optional[str] = None,
        network_dtype: Optional[torch.dtype] = None,
    ):
        self.model = model
        self.sde = sde
        self.network_dtype = network_dtype
        self.analytic = hasattr(model, "prediction") and callable(getattr(model, "prediction"))
        self.prediction_type = None if self.analytic else declared_prediction(model, prediction_type)
        self.nfe = 0

    def raw(self, x: Tensor, t) -> Tensor:
        """The wrapped model's own output (its declared prediction type), in the compute dtype."""
        dtype = compute_dtype(x)
        t = as_time(t, x)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        self.nfe += 1
        if self.network_dtype is not None:
            out = self.model(x.to(self.network_dtype), t.to(torch.float32))
        else:
            out = self.model(x, t if dtype == torch.float64 else t.to(torch.float32))
        return out.to(dtype)

    def __call__(self, x: Tensor, t, kind: str = "score") -> Tensor:
        kind = canonical_prediction(kind)
        if self.analytic:
            self.nfe += 1
            return self.model.prediction(x, as_time(t, x), self.sde, kind).to(compute_dtype(x))
        return convert(self.raw(x, t), self.prediction_type, kind, x, t, self.sde)


def as_field(model, sde: LinearSDE, prediction_type: Optional[str] = None, network_dtype=None) -> Field:
    """Return ``model`` as a :class:`Field` (a Field is returned unchanged, with a fresh counter)."""
    if isinstance(model, Field):
        return model
    return Field(model, sde, prediction_type=prediction_type, network_dtype=network_dtype)
