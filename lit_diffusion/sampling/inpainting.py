"""Known-pixel conditioning (inpainting) for every sampler.

Given a partly known state ``known`` and a ``mask`` (1 where the value is known and kept, 0 where it
is regenerated -- the convention of diffusers' ``RePaintPipeline``), the reverse process is run on
the whole state and, after every step to time ``s``, the known part is replaced by a fresh draw of
its forward marginal ``alpha(s) known + m(s) + sigma(s) z`` (the replacement method of Song et al.,
"Score-Based Generative Modeling through Stochastic Differential Equations", appendix on
imputation).  The unknown part then follows the reverse dynamics of a state whose known part is
always consistent with the data.

Replacement alone harmonises the two parts poorly at large noise levels.  RePaint (Lugmayr et al.,
"RePaint: Inpainting using Denoising Diffusion Probabilistic Models") *resamples*: after a step
``t -> s`` the state is noised back to ``t`` with the forward transition kernel and the step is
repeated, ``resample`` times in all, so that the generated part is re-conditioned on the known part
at every noise level.  For a linear SDE the kernel from ``s`` to ``t > s`` is Gaussian::

    x_t = a x_s + (m(t) - a m(s)) + sqrt(sigma(t)^2 - a^2 sigma(s)^2) z,    a = alpha(t) / alpha(s)

At the end the known part is set to ``known`` exactly.  ``resample=r`` costs ``r`` times the network
evaluations of the plain run.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..core.utils import GeneratorLike, randn

__all__ = ["KnownPart"]


class KnownPart:
    """The known part of the state and the operations the sampling loop applies to it.

    Args:
        sde: the forward SDE.
        known: the known values, shaped like one sample or like the batch (only the masked
            entries are used).
        mask: 1 (or True) where ``known`` is kept, 0 where the state is generated; shaped like one
            sample or like the batch, broadcastable to it.
        resample: RePaint resampling count per step (1: replacement only).
    """

    def __init__(self, sde, known: Tensor, mask: Tensor, resample: int = 1):
        if isinstance(resample, bool) or int(resample) != resample or int(resample) < 1:
            raise ValueError(f"resample={resample!r} is invalid; it must be an integer >= 1 (1: replacement only)")
        known = torch.as_tensor(known)
        mask = torch.as_tensor(mask)
        if mask.dtype == torch.bool:
            mask = mask.float()
        if not torch.isfinite(known).all():
            raise ValueError("known holds NaN or inf values")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 (generate) and 1 (keep the known value)")
        self.sde, self.known, self.mask, self.resample = sde, known, mask, int(resample)

    def check(self, x: Tensor) -> None:
        """Raise, before any work, when ``known`` or ``mask`` cannot be broadcast to the batch."""
        for name, v in (("known", self.known), ("mask", self.mask)):
            try:
                torch.broadcast_shapes(v.shape, x.shape)
            except RuntimeError:
                raise ValueError(
                    f"{name} of shape {tuple(v.shape)} does not fit samples of shape {tuple(x.shape)} "
                    f"(give one sample's shape {tuple(x.shape[1:])} or the batch's)"
                ) from None
            if torch.broadcast_shapes(v.shape, x.shape) != x.shape:
                raise ValueError(f"{name} of shape {tuple(v.shape)} is larger than the samples {tuple(x.shape)}")

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.known.to(device=x.device, dtype=x.dtype), self.mask.to(device=x.device, dtype=x.dtype)

    def replace(self, x: Tensor, t: Tensor, generator: GeneratorLike = None) -> Tensor:
        """The state with its known part replaced by a draw of the known values' forward marginal at
        ``t`` (a scalar time)."""
        known, mask = self._parts(x)
        alpha, m, sigma = self.sde.marginal_coefficients(t.to(torch.float64).reshape(()), x)
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = alpha.to(x.dtype) * known + m.to(x.dtype) + sigma.to(x.dtype) * z
        return mask * noisy + (1 - mask) * x

    def renoise(self, x: Tensor, s: Tensor, t: Tensor, generator: GeneratorLike = None) -> Tensor:
        """A draw of the forward transition from ``x`` at time ``s`` to the later time ``t``."""
        s64, t64 = s.to(torch.float64).reshape(()), t.to(torch.float64).reshape(())
        a = torch.exp(self.sde.log_alpha(t64) - self.sde.log_alpha(s64))
        shift = self.sde.mean_offset(t64) - a * self.sde.mean_offset(s64)
        var = (self.sde.sigma2(t64) - a**2 * self.sde.sigma2(s64)).clamp(min=0.0)
        z = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (a * x + shift + var.sqrt() * z).to(x.dtype)

    def finish(self, x: Tensor) -> Tensor:
        """The final samples: the known part exactly ``known``."""
        known, mask = self._parts(x)
        return mask * known + (1 - mask) * x


def as_known_part(sde, known: Optional[Tensor], mask: Optional[Tensor], resample: int = 1) -> Optional[KnownPart]:
    """A :class:`KnownPart` from ``sample()``'s arguments (``None`` when nothing is known)."""
    if known is None and mask is None:
        if int(resample) != 1:
            raise ValueError(f"resample={resample!r} needs known= and mask= (it is RePaint's inpainting resampling)")
        return None
    if known is None or mask is None:
        raise ValueError("inpainting needs both known= (the known values) and mask= (1: keep, 0: generate)")
    return KnownPart(sde, known, mask, resample)
