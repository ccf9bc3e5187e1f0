"""The base class of the linear forward SDEs with scalar diffusion (docs/maths.md §1); the processes
themselves are in :mod:`.sde_vp` (VP, sub-VP, contractive VP) and :mod:`.sde_ou` (OU, contractive OU,
VE), all listed in :mod:`.sdes`.

Every SDE here has the form ``dX = (a(t) X + b(t)) dt + g(t) dW`` and Gaussian transition kernels
``X_t | X_0 = x ~ N(alpha(t) x + m(t), sigma(t)^2 I)``.  Subclasses give the closed forms of
``a, b, g^2, log alpha, m, sigma^2`` and the inverse of the signal-to-noise ratio; the base class
turns them into the public API, handles broadcasting over any tensor shape (scalar or per-sample
``t``) and keeps the arithmetic in float32 or float64 whatever the dtype of ``x``.

The reverse-time SDE and the probability-flow ODE (§1, Haussmann–Pardoux) are a few lines in
:meth:`LinearSDE.reverse`.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

TimeLike = Union[float, int, Tensor]

__all__ = ["LinearSDE", "ReverseSDE", "as_time", "broadcast_to", "compute_dtype", "check_positive", "TimeLike"]


# --------------------------------------------------------------------------------------------
# dtype / broadcasting helpers
# --------------------------------------------------------------------------------------------
def compute_dtype(*tensors) -> torch.dtype:
    """The dtype SDE arithmetic runs in: float64 if any input is float64, else float32.

    Half and bfloat16 inputs (a network in mixed precision) are promoted to float32 so that
    coefficients such as ``1 - exp(-B)`` near ``t_min`` never underflow.
    """
    for x in tensors:
        if isinstance(x, Tensor) and x.dtype == torch.float64:
            return torch.float64
    return torch.float32


def as_time(t: TimeLike, like: Optional[Tensor] = None) -> Tensor:
    """``t`` as a floating tensor in the compute dtype (on ``like``'s device when given)."""
    dtype = compute_dtype(t, like)
    device = like.device if like is not None else (t.device if isinstance(t, Tensor) else None)
    if isinstance(t, Tensor):
        return t.to(device=device, dtype=dtype)
    return torch.tensor(float(t), dtype=dtype, device=device)


def per_sample_times(t: TimeLike, x: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` (a number, a 0-d tensor or one time per sample) as a ``(B,)`` tensor of ``dtype`` on
    ``x``'s device, ``B = x.shape[0]``: the one coercion of sampler steps (float64) and networks
    (float32)."""
    t = (t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=dtype)).to(device=x.device, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    t = t.reshape(-1)
    if t.shape != (x.shape[0],):
        raise ValueError(f"t has {t.shape[0]} entries for a batch of {x.shape[0]}; give a scalar or one t per sample")
    return t


def broadcast_to(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a scalar or per-sample coefficient ``(B,)`` so that it broadcasts against ``x``.

    A coefficient of shape ``(B,)`` (or ``(B, 1)``...) is padded with trailing singleton axes up to
    ``x.ndim``; a 0-d coefficient is returned as is.  Works for vectors ``(B, d)``, images
    ``(B, C, H, W)`` and anything else.
    """
    if coef.ndim == 0 or coef.ndim == x.ndim:
        return coef
    if coef.ndim > x.ndim:
        raise ValueError(f"time/coefficient of shape {tuple(coef.shape)} has more axes than x {tuple(x.shape)}")
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def check_positive(name: str, value: float, cls: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{cls}: {name}={value!r} is invalid; it must be a finite number > 0")
    return value


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
class LinearSDE:
    """Abstract linear SDE ``dX = (a X + b) dt + g dW`` on ``[0, T]``, sampled down to ``t_min``.

    Subclasses implement the ``_``-prefixed closed forms on tensors ``t`` (already in the compute
    dtype); everything public accepts Python floats, 0-d tensors or per-sample tensors ``(B,)``.
    """

    #: True for the contractive SDEs, whose SNR tends to a positive constant: the state at T keeps
    #: part of the data and the prior is biased by design (docs/prior_mismatch.md).  False for the
    #: SDEs whose SNR decreases to 0 (the prior forgets the data).
    contractive: bool = False

    def __init__(self, T: float = 1.0, t_min: float = 1e-3):
        name = type(self).__name__
        self.T = check_positive("T", T, name)
        t_min = float(t_min)
        if not (0.0 < t_min < self.T):
            raise ValueError(
                f"{name}: t_min={t_min!r} is invalid; early stopping needs 0 < t_min < T (T={self.T!r})"
            )
        self.t_min = t_min

    # ---- closed forms supplied by subclasses -------------------------------------------------
    def _a(self, t: Tensor) -> Tensor:  # linear drift coefficient
        raise NotImplementedError

    def _b(self, t: Tensor) -> Tensor:  # constant drift term
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:  # squared diffusion
        raise NotImplementedError

    def _log_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _mean_offset(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _sigma2(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def _t_from_snr(self, snr: Tensor) -> Tensor:
        raise NotImplementedError

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_alpha(t) - torch.log(self._sigma2(t))

    @property
    def prior_mean(self) -> float:
        """Mean of the (isotropic Gaussian) prior the reverse process starts from."""
        return 0.0

    @property
    def prior_var(self) -> float:
        """Variance ``v`` of the prior; also the ``v`` of the relative score (§2)."""
        raise NotImplementedError

    # ---- public coefficients -----------------------------------------------------------------
    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale ``alpha(t) = exp(int_0^t a)``."""
        return torch.exp(self._log_alpha(as_time(t)))

    def log_alpha(self, t: TimeLike) -> Tensor:
        return self._log_alpha(as_time(t))

    def mean_offset(self, t: TimeLike) -> Tensor:
        """``m(t)`` with ``m' = a m + b``, ``m(0) = 0``."""
        return self._mean_offset(as_time(t))

    def sigma2(self, t: TimeLike) -> Tensor:
        """Marginal variance ``sigma(t)^2``."""
        return self._sigma2(as_time(t))

    def sigma(self, t: TimeLike) -> Tensor:
        """Marginal standard deviation ``sigma(t)``."""
        return torch.sqrt(self._sigma2(as_time(t)))

    def snr(self, t: TimeLike) -> Tensor:
        """Signal-to-noise ratio ``lambda(t) = alpha^2 / sigma^2``."""
        return torch.exp(self._log_snr(as_time(t)))

    def log_snr(self, t: TimeLike) -> Tensor:
        return self._log_snr(as_time(t))

    def t_from_snr(self, snr: TimeLike) -> Tensor:
        """Inverse of :meth:`snr` (the SNR is strictly decreasing in ``t``)."""
        snr = as_time(snr)
        return self._t_from_snr(snr)

    def drift_coefficients(self, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(a(t), b(t))`` of the drift ``a X + b``."""
        t = as_time(t)
        return self._a(t), self._b(t)

    def diffusion(self, t: TimeLike) -> Tensor:
        """``g(t)``."""
        return torch.sqrt(self._g2(as_time(t)))

    def g2(self, t: TimeLike) -> Tensor:
        """``g(t)^2``."""
        return self._g2(as_time(t))

    # ---- tensors ------------------------------------------------------------------------------
    def marginal_coefficients(self, t: TimeLike, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha, m, sigma)`` at ``t`` broadcast against ``x``, in the compute dtype."""
        t = as_time(t, x)
        return (
            broadcast_to(torch.exp(self._log_alpha(t)), x),
            broadcast_to(self._mean_offset(t), x),
            broadcast_to(torch.sqrt(self._sigma2(t)), x),
        )

    def marginal_prob(self, x0: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """score_sde_pytorch-style: mean ``alpha x0 + m`` (shape of x0) and std (shape of t)."""
        t = as_time(t, x0)
        alpha, m, _ = self.marginal_coefficients(t, x0)
        return alpha * x0.to(alpha.dtype) + m, torch.sqrt(self._sigma2(t))

    def perturb(self, x0: Tensor, t: TimeLike, noise: Tensor) -> Tensor:
        """``x_t = alpha x0 + m + sigma noise`` (§3) in the compute dtype."""
        alpha, m, sigma = self.marginal_coefficients(t, x0)
        dtype = alpha.dtype
        return alpha * x0.to(dtype) + m + sigma * noise.to(dtype)

    def sde(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """score_sde_pytorch-style forward SDE: ``(drift a x + b, diffusion g)`` (g has t's shape)."""
        t = as_time(t, x)
        a, b = self._a(t), self._b(t)
        drift = broadcast_to(a, x) * x.to(a.dtype) + broadcast_to(b, x)
        return drift, torch.sqrt(self._g2(t))

    def prior_sampling(
        self,
        shape: Sequence[int],
        generator: Optional[Union[torch.Generator, Sequence[torch.Generator]]] = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Draw from the prior ``N(prior_mean, prior_var I)``.

        ``generator`` may be one ``torch.Generator`` or a list of them, one per sample (the first
        axis of ``shape``): then each sample depends only on its own generator.
        """
        from .utils import randn

        z = randn(shape, generator=generator, device=device, dtype=dtype)
        return self.prior_mean + math.sqrt(self.prior_var) * z

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log-density of the prior, summed over all but the first axis."""
        dtype = compute_dtype(z)
        z = z.to(dtype)
        var = self.prior_var
        n = z[0].numel()
        sq = ((z - self.prior_mean) ** 2).reshape(z.shape[0], -1).sum(dim=1)
        return -0.5 * n * math.log(2 * math.pi * var) - 0.5 * sq / var

    def reverse(self, score_fn: Callable[[Tensor, Tensor], Tensor], probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE ``dX = [a X + b - g^2 s] dt + g dW`` (or the probability-flow ODE
        ``dX/dt = a X + b - g^2 s / 2``) for a score function ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{type(self).__name__}({params})"

    def hparams(self) -> dict:
        """Constructor arguments (for configs and checkpoints)."""
        raise NotImplementedError


class ReverseSDE:
    """Reverse-time SDE of a :class:`LinearSDE` driven by a score function (§1)."""

    def __init__(self, forward: LinearSDE, score_fn, probability_flow: bool = False):
        self.forward = forward
        self.score_fn = score_fn
        self.probability_flow = probability_flow
        self.T = forward.T
        self.t_min = forward.t_min

    def sde(self, x: Tensor, t: TimeLike) -> tuple[Tensor, Tensor]:
        """``(drift, diffusion)`` of the reverse dynamics in forward time (integrate from T down)."""
        t = as_time(t, x)
        drift, g = self.forward.sde(x, t)
        g2 = broadcast_to(g**2, x)
        score = self.score_fn(x, t).to(drift.dtype)
        factor = 0.5 if self.probability_flow else 1.0
        drift = drift - factor * g2 * score
        diffusion = torch.zeros_like(g) if self.probability_flow else g
        return drift, diffusion
