"""Ornstein–Uhlenbeck processes and variance exploding (docs/maths.md §1, the table of processes):
:class:`OU`, :class:`ContractiveOU`, :class:`VE`."""

from __future__ import annotations

import math

import torch

from .linear_sde import LinearSDE, check_positive

__all__ = ["OU", "ContractiveOU", "VE"]


class OU(LinearSDE):
    """Ornstein–Uhlenbeck ``dX = theta (mu - X) dt + sigma dW``; stationary prior ``N(mu, sigma^2/(2 theta))``.

    The defaults ``theta=1, mu=0, sigma=sqrt(2)`` give the standard OU of the theory papers
    (``alpha = e^{-t}``, ``sigma^2 = 1 - e^{-2t}``).  ``T=5`` makes the prior mismatch small
    (``KL <= e^{-2T} KL(q_0 || N(0, I))``); Claustre, "Score-Based Diffusion Models via SDEs" uses ``T=1``.
    """

    def __init__(self, theta: float = 1.0, mu: float = 0.0, sigma: float = 2**0.5, T: float = 5.0, t_min: float = 1e-3):
        super().__init__(T, t_min)
        self.theta = check_positive("theta", theta, type(self).__name__)
        self.s = check_positive("sigma", sigma, type(self).__name__)
        self.mu = float(mu)

    @property
    def sigma_(self) -> float:
        """The diffusion constant ``s`` under its former attribute name (``OU.s``; ``OU.sigma(t)`` is
        the marginal standard deviation, docs/maths.md glossary)."""
        return self.s

    def _a(self, t):
        return torch.full_like(t, -self.theta)

    def _b(self, t):
        return torch.full_like(t, self.theta * self.mu)

    def _g2(self, t):
        return torch.full_like(t, self.s**2)

    def _log_alpha(self, t):
        return -self.theta * t

    def _mean_offset(self, t):
        return -self.mu * torch.expm1(-self.theta * t)

    def _sigma2(self, t):
        return -self.s**2 * torch.expm1(-2 * self.theta * t) / (2 * self.theta)

    def _log_snr(self, t):
        # lambda = 2 theta / (s^2 (e^{2 theta t} - 1))
        return math.log(2 * self.theta / self.s**2) - torch.log(torch.expm1(2 * self.theta * t))

    def _t_from_snr(self, snr):
        return torch.log1p(2 * self.theta / (self.s**2 * snr)) / (2 * self.theta)

    @property
    def prior_mean(self):
        return self.mu

    @property
    def prior_var(self):
        return self.s**2 / (2 * self.theta)

    def hparams(self):
        return dict(theta=self.theta, mu=self.mu, sigma=self.s, T=self.T, t_min=self.t_min)


class ContractiveOU(OU):
    """Contractive OU ``dX = theta (X - mu) dt + sigma dW`` (Claustre, "Score-Based Diffusion Models via SDEs" §3.5).

    The SNR tends to ``2 theta / sigma^2 > 0``: the state at ``T`` keeps part of the data, so the
    prior ``N(m(T), sigma(T)^2)`` is biased by design (KL(q_T || prior) of 0.5-1.9 nats per 1-D/2-D
    preset with the defaults: docs/prior_mismatch.md, ``python bench/prior_mismatch.py``).
    """

    contractive = True

    def __init__(self, theta: float = 1.0, mu: float = 0.0, sigma: float = 2**0.5, T: float = 1.0, t_min: float = 1e-3):
        super().__init__(theta, mu, sigma, T, t_min)

    def _a(self, t):
        return torch.full_like(t, self.theta)

    def _b(self, t):
        return torch.full_like(t, -self.theta * self.mu)

    def _log_alpha(self, t):
        return self.theta * t

    def _mean_offset(self, t):
        return -self.mu * torch.expm1(self.theta * t)

    def _sigma2(self, t):
        return self.s**2 * torch.expm1(2 * self.theta * t) / (2 * self.theta)

    def _log_snr(self, t):
        # lambda = 2 theta / (s^2 (1 - e^{-2 theta t}))
        return math.log(2 * self.theta / self.s**2) - torch.log(-torch.expm1(-2 * self.theta * t))

    def _t_from_snr(self, snr):
        return -torch.log1p(-2 * self.theta / (self.s**2 * snr)) / (2 * self.theta)

    @property
    def prior_mean(self):
        return -self.mu * math.expm1(self.theta * self.T)

    @property
    def prior_var(self):
        return self.s**2 * math.expm1(2 * self.theta * self.T) / (2 * self.theta)


class VE(LinearSDE):
    """Variance exploding: ``sigma(t)^2 = sigma_min^2 (r^{2t/T} - 1)``, ``r = sigma_max/sigma_min``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0, t_min: float = 1e-5):
        super().__init__(T, t_min)
        name = type(self).__name__
        self.sigma_min = check_positive("sigma_min", sigma_min, name)
        self.sigma_max = check_positive("sigma_max", sigma_max, name)
        if self.sigma_min >= self.sigma_max:
            raise ValueError(
                f"{name}: sigma_min={self.sigma_min!r} >= sigma_max={self.sigma_max!r}; "
                "the valid range is 0 < sigma_min < sigma_max"
            )
        self._log_r = math.log(self.sigma_max / self.sigma_min)

    def _a(self, t):
        return torch.zeros_like(t)

    def _g2(self, t):
        k = 2 * self._log_r / self.T
        return self.sigma_min**2 * torch.exp(k * t) * k

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _sigma2(self, t):
        return self.sigma_min**2 * torch.expm1(2 * self._log_r * t / self.T)

    def _t_from_snr(self, snr):
        return self.T * torch.log1p(1.0 / (self.sigma_min**2 * snr)) / (2 * self._log_r)

    @property
    def prior_var(self):
        return self.sigma_min**2 * math.expm1(2 * self._log_r)

    def hparams(self):
        return dict(sigma_min=self.sigma_min, sigma_max=self.sigma_max, T=self.T, t_min=self.t_min)
