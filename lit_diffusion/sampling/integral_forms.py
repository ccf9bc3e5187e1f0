"""Closed forms per process of the integrals the exponential integrators need (docs/maths.md §5):
``G(t) = int_0^t g^2``, its increments and inverse, ``int g^2/alpha^2`` for the score parametrization,
the constant ``k`` of the relative score.  ``None`` where a process has none (the float64 tables of
:mod:`.integral_tables` are used then)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..core.sdes import ContractiveOU, ContractiveVP, LinearSDE, OU, SubVP, VE, VP

__all__ = ["sde_kind", "G_closed", "dG_closed", "G_forward", "score_W_closed", "score_W_inverse", "relative_k"]


# --------------------------------------------------------------------------------------------
# Per-SDE closed forms: G(t) = int_0^t g^2, increments, inverses, int g^2/alpha
# --------------------------------------------------------------------------------------------
def sde_kind(sde: LinearSDE) -> str:
    # order matters: ContractiveOU subclasses OU
    for cls, name in ((ContractiveOU, "COU"), (OU, "OU"), (VE, "VE"), (SubVP, "SubVP"), (ContractiveVP, "CVP"), (VP, "VP")):
        if type(sde) is cls:
            return name
    if type(sde).__name__ == "DiscreteVP" and hasattr(sde, "int_g2"):
        # VP-type (a = -g^2/2, prior variance 1) with a closed G = int_0^t g^2 (piecewise-linear log abar)
        return "DVP"
    return "other"


def _dB(sde, s: Tensor, t: Tensor) -> Tensor:
    """``B(t) - B(s)`` without cancellation."""
    return (t - s) * (sde.beta_min + (sde.beta_max - sde.beta_min) * (t + s) / (2 * sde.T))


def G_closed(sde: LinearSDE, t: Tensor) -> Optional[Tensor]:
    """``G(t) = int_0^t g^2`` (closed for every SDE of §1)."""
    k = sde_kind(sde)
    if k in ("OU", "COU"):
        return sde.s**2 * t
    if k == "VE":
        return sde.sigma2(t)
    if k in ("VP", "CVP"):
        return sde.int_beta(t)
    if k == "SubVP":
        B = sde.int_beta(t)
        return B + 0.5 * torch.expm1(-2 * B)
    if k == "DVP":
        return sde.int_g2(t)
    return None


def _dvp_forward(sde, s, y):
    """DiscreteVP: the time u with G(u) - G(s) = y, through lambda = abar / (1 - abar)."""
    return sde.t_from_snr(1.0 / torch.expm1(y - 2 * sde.log_alpha(s)))


def dG_closed(sde: LinearSDE, s: Tensor, t: Tensor) -> Optional[Tensor]:
    k = sde_kind(sde)
    if k in ("OU", "COU"):
        return sde.s**2 * (t - s)
    if k == "VE":
        kk = 2 * sde._log_r / sde.T
        return sde.sigma_min**2 * torch.exp(kk * s) * torch.expm1(kk * (t - s))
    if k in ("VP", "CVP"):
        return _dB(sde, s, t)
    if k == "SubVP":
        dB = _dB(sde, s, t)
        return dB + 0.5 * torch.exp(-2 * sde.int_beta(s)) * torch.expm1(-2 * dB)
    if k == "DVP":
        return sde.int_g2(t) - sde.int_g2(s)
    return None


def G_forward(sde: LinearSDE, s: Tensor, y: Tensor) -> Optional[Tensor]:
    """The time ``u >= s`` with ``G(u) - G(s) = y`` (OU, COU, VE, VP, CVP)."""
    k = sde_kind(sde)
    if k in ("OU", "COU"):
        return s + y / sde.s**2
    if k == "VE":
        kk = 2 * sde._log_r / sde.T
        return s + torch.log1p(y * torch.exp(-kk * s) / sde.sigma_min**2) / kk
    if k in ("VP", "CVP"):
        return sde.t_from_int_beta(sde.int_beta(s) + y)
    if k == "DVP":
        return _dvp_forward(sde, s, y)
    return None


def score_W_closed(sde: LinearSDE, s: Tensor, t: Tensor) -> Optional[Tensor]:
    """``alpha_s int_s^t g^2/alpha du`` (closed for every SDE of §1)."""
    k = sde_kind(sde)
    h = t - s
    if k == "OU":
        th = sde.theta
        return (sde.s**2 / th) * torch.expm1(th * h)
    if k == "COU":
        th = sde.theta
        return -(sde.s**2 / th) * torch.expm1(-th * h)
    if k == "VE":
        return dG_closed(sde, s, t)
    if k == "VP":
        return 2 * torch.expm1(0.5 * _dB(sde, s, t))
    if k == "DVP":
        return 2 * torch.expm1(0.5 * dG_closed(sde, s, t))
    if k == "CVP":
        return -2 * torch.expm1(-0.5 * _dB(sde, s, t))
    if k == "SubVP":
        dB = _dB(sde, s, t)
        return 2 * torch.expm1(0.5 * dB) + (2.0 / 3.0) * torch.exp(-2 * sde.int_beta(s)) * torch.expm1(-1.5 * dB)
    return None


def score_W_inverse(sde: LinearSDE, s: Tensor, y: Tensor) -> Optional[Tensor]:
    """The time ``u >= s`` with ``score_W_closed(s, u) = y`` (all but subVP)."""
    k = sde_kind(sde)
    if k == "OU":
        th = sde.theta
        return s + torch.log1p(th * y / sde.s**2) / th
    if k == "COU":
        th = sde.theta
        return s - torch.log1p(-th * y / sde.s**2) / th
    if k == "VE":
        return G_forward(sde, s, y)
    if k == "VP":
        return sde.t_from_int_beta(sde.int_beta(s) + 2 * torch.log1p(0.5 * y))
    if k == "DVP":
        return _dvp_forward(sde, s, 2 * torch.log1p(0.5 * y))
    if k == "CVP":
        return sde.t_from_int_beta(sde.int_beta(s) - 2 * torch.log1p(-0.5 * y))
    return None


def relative_k(sde: LinearSDE, g2_factor: float) -> Optional[float]:
    """The constant ``k`` with ``c = a + g2_factor g^2/v = k g^2`` (None for subVP)."""
    k = sde_kind(sde)
    v = sde.prior_var
    if k == "OU":
        return -sde.theta / sde.s**2 + g2_factor / v
    if k == "COU":
        return sde.theta / sde.s**2 + g2_factor / v
    if k == "VE":
        return g2_factor / v
    if k in ("VP", "DVP"):
        return -0.5 + g2_factor / v
    if k == "CVP":
        return 0.5 + g2_factor / v
    return None
