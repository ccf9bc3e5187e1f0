"""Variance-preserving processes with a linear ``beta(t)`` (docs/maths.md §1, the table of processes):
:class:`VP`, :class:`SubVP`, :class:`ContractiveVP`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .linear_sde import LinearSDE, TimeLike, as_time

__all__ = ["VP", "SubVP", "ContractiveVP", "LinearBetaMixin"]


class LinearBetaMixin:
    """``beta(t) = beta_min + (t/T)(beta_max - beta_min)``, ``B(t) = int_0^t beta``; the drift
    ``a = -beta/2`` of the VP family (the contractive VP overrides it)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0, t_min: float = 1e-3):
        LinearSDE.__init__(self, T, t_min)
        self._init_beta(beta_min, beta_max)

    def _a(self, t):
        return -0.5 * self.beta(t)

    def _init_beta(self, beta_min: float, beta_max: float):
        name = type(self).__name__
        beta_min, beta_max = float(beta_min), float(beta_max)
        if not math.isfinite(beta_min) or beta_min < 0:
            raise ValueError(f"{name}: beta_min={beta_min!r} is invalid; it must be a finite number >= 0")
        if not math.isfinite(beta_max) or beta_max <= 0:
            raise ValueError(f"{name}: beta_max={beta_max!r} is invalid; it must be a finite number > 0")
        if beta_max < beta_min:
            raise ValueError(
                f"{name}: beta_max={beta_max!r} < beta_min={beta_min!r}; the valid range is beta_max >= beta_min"
            )
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t: TimeLike) -> Tensor:
        t = as_time(t)
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def int_beta(self, t: TimeLike) -> Tensor:
        """``B(t) = beta_min t + (beta_max - beta_min) t^2 / (2T)``."""
        t = as_time(t)
        return self.beta_min * t + (self.beta_max - self.beta_min) * t**2 / (2 * self.T)

    def t_from_int_beta(self, B: Tensor) -> Tensor:
        """Inverse of ``B(t)`` (stable root of the quadratic)."""
        k = (self.beta_max - self.beta_min) / self.T
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * k * B))

    def hparams(self) -> dict:
        return dict(beta_min=self.beta_min, beta_max=self.beta_max, T=self.T, t_min=self.t_min)


class VP(LinearBetaMixin, LinearSDE):
    """Variance preserving: ``a = -beta/2``, ``g^2 = beta``, ``alpha = e^{-B/2}``, ``sigma^2 = 1 - e^{-B}``."""

    def _g2(self, t):
        return self.beta(t)

    def _log_alpha(self, t):
        return -0.5 * self.int_beta(t)

    def _sigma2(self, t):
        return -torch.expm1(-self.int_beta(t))

    def _log_snr(self, t):
        # lambda = 1 / (e^B - 1)
        return -torch.log(torch.expm1(self.int_beta(t)))

    def _t_from_snr(self, snr):
        return self.t_from_int_beta(torch.log1p(1.0 / snr))

    @property
    def prior_var(self):
        return 1.0


class SubVP(LinearBetaMixin, LinearSDE):
    """sub-VP: ``g^2 = beta (1 - e^{-2B})``, ``alpha = e^{-B/2}``, ``sigma^2 = (1 - e^{-B})^2``."""

    def _g2(self, t):
        return -self.beta(t) * torch.expm1(-2 * self.int_beta(t))

    def _log_alpha(self, t):
        return -0.5 * self.int_beta(t)

    def _sigma2(self, t):
        return torch.expm1(-self.int_beta(t)) ** 2

    def _log_snr(self, t):
        B = self.int_beta(t)
        return -B - 2 * torch.log(-torch.expm1(-B))

    def _t_from_snr(self, snr):
        # y = e^{-B} solves snr (1-y)^2 = y  ->  y = ((2 snr + 1) - sqrt(4 snr + 1)) / (2 snr)
        # written without cancellation: y = 2 snr / ((2 snr + 1) + sqrt(4 snr + 1))
        y = 2 * snr / ((2 * snr + 1) + torch.sqrt(4 * snr + 1))
        return self.t_from_int_beta(-torch.log(y))

    @property
    def prior_var(self):
        return 1.0


class ContractiveVP(LinearBetaMixin, LinearSDE):
    """Contractive VP: ``a = +beta/2``, ``g^2 = beta``, ``alpha = e^{B/2}``, ``sigma^2 = e^B - 1``.

    Its SNR tends to ``1/(1 - e^{-B(T)}) > 1``: the prior ``N(0, sigma(T)^2)`` is biased by design.
    The default ``beta_max=2`` (not VP's 20) keeps ``sigma(T)^2 = e^{B(T)} - 1`` near 1.9; with
    ``beta_max=20`` it would be about 2.3e4.
    """

    contractive = True

    def __init__(self, beta_min: float = 0.1, beta_max: float = 2.0, T: float = 1.0, t_min: float = 1e-3):
        LinearSDE.__init__(self, T, t_min)
        self._init_beta(beta_min, beta_max)

    def _a(self, t):
        return 0.5 * self.beta(t)

    def _g2(self, t):
        return self.beta(t)

    def _log_alpha(self, t):
        return 0.5 * self.int_beta(t)

    def _sigma2(self, t):
        return torch.expm1(self.int_beta(t))

    def _log_snr(self, t):
        # lambda = 1 / (1 - e^{-B})
        return -torch.log(-torch.expm1(-self.int_beta(t)))

    def _t_from_snr(self, snr):
        return self.t_from_int_beta(-torch.log1p(-1.0 / snr))

    @property
    def prior_var(self):
        return math.expm1(self.beta_min * self.T + 0.5 * (self.beta_max - self.beta_min) * self.T)
