"""A discrete-time DDPM noise schedule as a continuous VP SDE in the model's own timestep units.

diffusers' ``DDPMScheduler`` / ``DDIMScheduler`` describe the forward process by ``N`` numbers
``alphas_cumprod[k]`` (``k = 0 .. N-1``): ``x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps``, and the
network was trained conditioned on the integer ``k``.  :class:`DiscreteVP` turns that table into a
:class:`~lit_diffusion.core.sdes.LinearSDE` whose time **is** the network's timestep, so that every sampler
of :mod:`lit_diffusion.sampling.samplers` can run on any grid of fractional timesteps in ``[t_min, N-1]``:

* ``log alpha(t)^2 = log abar(t)`` is the piecewise-linear interpolation of ``log abar_k`` at the knots
  ``t = k`` (float64), extended by the knot ``(t = -1, log abar = 0)``, where the data lives
  (``alpha = 1, sigma = 0``).  The interpolant is monotone whenever ``abar`` is, and it reproduces the
  table exactly at integer timesteps, so ``add_noise`` at integer ``k`` equals diffusers'.
* VP structure (docs/maths.md §1): ``sigma^2 = 1 - alpha^2``, ``m = 0``, prior ``N(0, I)``;
  ``a(t) = d log alpha / dt`` is piecewise constant, ``a = (log abar_k - log abar_{k-1}) / 2`` on the
  segment ``(k-1, k]`` (left-continuous: at a knot the slope of the segment *below*, the one a reverse
  step from ``k`` traverses), i.e. ``a = log(1 - beta_k) / 2 ~ -beta_k / 2``; ``g^2 = -2 a``, which is
  exactly what ``(sigma^2)' = 2 a sigma^2 + g^2`` requires for ``sigma^2 = 1 - alpha^2``.  Between
  integer timesteps the exact transition ``x_k | x_{k-1}`` is therefore DDPM's
  ``N(sqrt(1 - beta_k) x_{k-1}, beta_k I)``.
* ``t_from_snr`` inverts the interpolation exactly (``log abar = -log1p(1/lambda)``, then the
  segment's linear inverse), vectorised with ``searchsorted``.

Everything is computed in float64 tables on the device of the query (the tables are moved lazily and
cached per device), never with a per-sample Python call.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .sdes import LinearSDE

__all__ = ["DiscreteVP", "make_betas", "BETA_SCHEDULES"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def _cosine_alpha_bar(u: float) -> float:
    # Nichol & Dhariwal's "improved DDPM" cosine schedule, offset s = 0.008
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    trained_betas: Optional[Union[Sequence[float], np.ndarray, Tensor]] = None,
    rescale_betas_zero_snr: bool = False,
) -> Tensor:
    """The ``betas`` (float32, like diffusers) of a DDPM-style configuration.

    ``trained_betas`` wins over the named schedule.  Schedules: ``linear`` (linspace of betas),
    ``scaled_linear`` (linspace of sqrt(betas), latent diffusion), ``squaredcos_cap_v2`` (cosine
    alpha-bar, betas capped at 0.999), ``sigmoid`` (GeoDiff).  ``rescale_betas_zero_snr`` shifts and
    rescales ``sqrt(alphas_cumprod)`` so that the last one is 0 and the first one unchanged (Lin et al.
    2023, "Common diffusion noise schedules and sample steps are flawed", Algorithm 1).
    """
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64)).to(torch.float32).flatten()
        if not (2 <= betas.numel() <= 100_000):
            raise ValueError(f"trained_betas={trained_betas!r} is invalid; it needs at least 2 values (and at most 100000)")
    else:
        from .utils import MAX_TRAIN_TIMESTEPS, check_count

        n = check_count("num_train_timesteps", num_train_timesteps, 2, MAX_TRAIN_TIMESTEPS)
        if beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = torch.tensor(
                [min(1 - _cosine_alpha_bar((i + 1) / n) / _cosine_alpha_bar(i / n), 0.999) for i in range(n)],
                dtype=torch.float32,
            )
        elif beta_schedule == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r}; valid choices: {list(BETA_SCHEDULES)}")
    if rescale_betas_zero_snr:
        sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
        first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
        sqrt_ab = (sqrt_ab - last) * first / (first - last)
        ab = sqrt_ab**2
        betas = 1.0 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    if not torch.isfinite(betas).all() or (betas <= 0).any() or (betas > 1).any():
        raise ValueError(
            f"betas must lie in (0, 1]; got min {betas.min().item():.3g}, max {betas.max().item():.3g}"
        )
    return betas


class DiscreteVP(LinearSDE):
    """VP process interpolating a discrete ``alphas_cumprod`` table; time = model timestep.

    Args:
        alphas_cumprod: ``(N,)`` decreasing values in ``(0, 1]`` (a final 0, as produced by
            zero-terminal-SNR rescaling, is clamped to ``min_alpha_cumprod``).
        t_min: early-stopping time (default ``1e-3``, i.e. timestep 0 up to 1e-3); must lie in
            ``(0, N-1)``.
        min_alpha_cumprod: floor applied to the table (keeps ``log`` finite).

    ``T = N - 1`` (the largest trained timestep).  Build it from a diffusers config with
    :meth:`from_betas` / :func:`make_betas`.
    """

    def __init__(self, alphas_cumprod, t_min: float = 1e-3, min_alpha_cumprod: float = 2.0**-24):
        ac = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64), dtype=torch.float64).flatten()
        if ac.numel() < 2:
            raise ValueError(f"DiscreteVP: alphas_cumprod needs at least 2 values; got {ac.numel()}")
        if not torch.isfinite(ac).all() or (ac < 0).any() or (ac > 1).any():
            raise ValueError("DiscreteVP: alphas_cumprod must lie in [0, 1]")
        ac = ac.clamp_min(float(min_alpha_cumprod))
        log_ac = torch.log(ac)
        if (log_ac[1:] > log_ac[:-1]).any():
            k = int(torch.nonzero(log_ac[1:] > log_ac[:-1])[0]) + 1
            raise ValueError(
                f"DiscreteVP: alphas_cumprod must be non-increasing; alphas_cumprod[{k}]={ac[k].item()!r} > "
                f"alphas_cumprod[{k - 1}]={ac[k - 1].item()!r}"
            )
        super().__init__(T=float(ac.numel() - 1), t_min=t_min)
        self.num_train_timesteps = int(ac.numel())
        self.alphas_cumprod = ac
        # knots at t = -1, 0, 1, ..., N-1 ; value log abar (0 at t = -1: the data)
        self._knots = torch.cat([torch.zeros(1, dtype=torch.float64), log_ac])
        self._slopes = self._knots[1:] - self._knots[:-1]  # d log abar / dt on (k-1, k]
        self._cache: dict = {}

    @classmethod
    def from_betas(cls, betas, **kwargs) -> "DiscreteVP":
        """From a ``betas`` table, with diffusers' float32 cumulative product (so that values at integer
        timesteps agree bit for bit with ``DDPMScheduler.alphas_cumprod``)."""
        betas = torch.as_tensor(betas, dtype=torch.float32)
        ac = torch.cumprod(1.0 - betas, dim=0)
        return cls(ac.to(torch.float64), **kwargs)

    # ---- tables on the query's device -------------------------------------------------------
    def _tables(self, t: Tensor):
        key = (t.device, t.dtype)
        tab = self._cache.get(key)
        if tab is None:
            tab = (self._knots.to(device=t.device, dtype=t.dtype), self._slopes.to(device=t.device, dtype=t.dtype))
            self._cache[key] = tab
        return tab

    def _segment(self, t: Tensor):
        """Index ``i`` of the segment ``(i-1, i]`` (in knot units u = t + 1) and the offset in it."""
        knots, slopes = self._tables(t)
        u = (t + 1.0).clamp(0.0, float(self.T) + 1.0)
        i = (torch.ceil(u) - 1).clamp(0, slopes.numel() - 1).to(torch.long)
        return knots, slopes, u, i

    def _log_abar(self, t: Tensor) -> Tensor:
        knots, slopes, u, i = self._segment(t)
        return knots[i] + (u - i.to(u.dtype)) * slopes[i]

    # ---- LinearSDE closed forms ---------------------------------------------------------------
    def _log_alpha(self, t: Tensor) -> Tensor:
        return 0.5 * self._log_abar(t)

    def _a(self, t: Tensor) -> Tensor:
        _, slopes, _, i = self._segment(t)
        return 0.5 * slopes[i]

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._a(t)

    def _sigma2(self, t: Tensor) -> Tensor:
        return -torch.expm1(self._log_abar(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        la = self._log_abar(t)
        return la - torch.log(-torch.expm1(la))

    def _t_from_snr(self, snr: Tensor) -> Tensor:
        knots, slopes = self._tables(snr)
        la = -torch.log1p(1.0 / snr)  # log abar, decreasing in t
        # knots are non-increasing: search on the negated (non-decreasing) sequence
        neg = -knots
        j = torch.searchsorted(neg, (-la).contiguous(), right=False).clamp(1, knots.numel() - 1)
        i = j - 1  # segment between knots i and i+1 (u in [i, i+1])
        slope = slopes[i]
        safe = torch.where(slope < 0, slope, torch.full_like(slope, -1.0))
        w = torch.where(slope < 0, (la - knots[i]) / safe, torch.zeros_like(la))
        u = i.to(la.dtype) + w.clamp(0.0, 1.0)
        return u - 1.0

    def int_g2(self, t) -> Tensor:
        """``G(t) = int_0^t g^2 = log abar(0) - log abar(t)`` in closed form (``g^2 = -d log abar/dt``).

        Exact for the piecewise-constant ``g^2``; offered for numerical integrators, which would
        otherwise integrate a staircase with Gauss–Legendre rules."""
        from .sdes import as_time

        t = as_time(t)
        return self._log_abar(torch.zeros_like(t)) - self._log_abar(t)

    @property
    def prior_var(self) -> float:
        return 1.0

    def hparams(self) -> dict:
        # a tuple, so that hparams() stays hashable (integrators cache tables by hyper-parameters)
        return dict(alphas_cumprod=tuple(self.alphas_cumprod.tolist()), t_min=self.t_min)

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.num_train_timesteps}, T={self.T:g}, t_min={self.t_min:g})"
