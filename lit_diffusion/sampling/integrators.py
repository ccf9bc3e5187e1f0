"""Exponential-integrator coefficients ``Phi, W, V`` of docs/maths.md §5.

In centred coordinates ``X~ = X - m(t)`` the reverse dynamics with the field ``F`` frozen read
``dX~ = [c(u) X~ + e(u) F] du + g(u) dW`` (integrated from ``t`` down to ``s < t``) and one step is

    X~_s = Phi(s,t) X~_t + W(s,t) F + N(0, V(s,t) I)
    Phi(s,u) = exp int_u^s c,   W(s,t) = int_s^t Phi(s,u) |e(u)| du,   V(s,t) = int_s^t Phi(s,u)^2 g^2 du

(``e < 0`` for every parametrization here, so ``W > 0``).  With ``g2_factor = 1`` (SDE) or ``1/2``
(probability-flow ODE, ``V = 0``):

* ``score``          ``c = a``,                  ``|e| = g2_factor g^2``
* ``relative_score`` ``c = a + g2_factor g^2 / v``,  ``|e| = g2_factor g^2``  (``v``: prior variance)
* ``denoiser``       ``c = a + g2_factor g^2/sigma^2``, ``|e| = g2_factor g^2 alpha / sigma^2``

Every coefficient is written as ``C(u) = int_0^u c`` (closed form for all three
parametrizations: ``log alpha``, ``log alpha + g2_factor G / v`` with ``G = int_0^u g^2``, and
``log(sigma^2/alpha)`` or ``log sigma``), so ``Phi(s,t) = exp(C(s) - C(t))``.

Closed forms (derived in docs/samplers.md):

* denoiser, every SDE: ``W = alpha_s (1 - lambda_t/lambda_s)``, ``V = sigma_s^2 (1 - lambda_t/lambda_s)``;
  ODE ``W = alpha_s (1 - sqrt(lambda_t/lambda_s))``.  Midpoint law: uniform in ``lambda`` (ODE: in
  ``sqrt lambda``).
* score, every SDE of §1: ``W = g2_factor alpha_s int_s^t g^2/alpha`` with
  OU ``(s^2/theta) expm1(theta h)``, COU ``-(s^2/theta) expm1(-theta h)``, VE ``sigma_t^2 - sigma_s^2``,
  VP ``2 expm1(dB/2)``, CVP ``-2 expm1(-dB/2)``, subVP ``2 expm1(dB/2) + (2/3) e^{-2B_s} expm1(-3dB/2)``;
  ``V = sigma_s^2 expm1(log lambda_s - log lambda_t)``.  Midpoint law: uniform in ``int g^2/alpha``.
* relative_score, OU/COU/VP/CVP/VE: ``c = k g^2`` with constant ``k = a/g^2 + g2_factor/v``, so
  ``Phi = exp(-k dG)``, ``W = g2_factor dG phi1(-k dG)``, ``V = dG phi1(-2 k dG)`` with
  ``phi1(x) = expm1(x)/x``; the midpoint has density ``∝ e^{-k (G - G_s)}`` in ``G``.
  subVP has no constant ``k``: its ``W``, ``V`` and midpoint law come from the table.

The fallback :class:`IntegralTable` tabulates, once per (SDE, parametrization, ODE/SDE), the float64
integrals ``J(u) = int e^{-C}|e|`` and ``K(u) = int e^{-2C} g^2`` on a fine mixed geometric/uniform
grid (8-point Gauss–Legendre per cell, cumulative sums) and evaluates them with cubic Hermite
interpolation (the integrands are known exactly at the nodes); the midpoint is drawn by inverting
``J`` (binary search + Newton on the Hermite cubic).  All of it is vectorised torch code on the
device of the inputs: there is no per-sample Python or SciPy call.
"""

from __future__ import annotations

import functools

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..core.sdes import VE, VP, ContractiveOU, ContractiveVP, LinearSDE, OU, SubVP

__all__ = [
    "PARAMETRIZATIONS",
    "ExpIntegrator",
    "IntegralTable",
    "get_integrator",
    "canonical_parametrization",
]

PARAMETRIZATIONS = ("score", "relative_score", "denoiser")
_PARAM_ALIASES = {"relative": "relative_score", "x0": "denoiser", "data": "denoiser", "eps": None}

F64 = torch.float64


def canonical_parametrization(name: str, valid=PARAMETRIZATIONS) -> str:
    key = str(name).lower()
    key = _PARAM_ALIASES.get(key, key) or key
    if key not in valid:
        raise ValueError(f"unknown or unsupported parametrization {name!r}; valid choices: {list(valid)}")
    return key


def _t64(x, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype=F64, device=device if device is not None else x.device)
    return torch.tensor(float(x), dtype=F64, device=device)


def _phi1(x: Tensor) -> Tensor:
    """``expm1(x)/x`` with the limit 1 at 0."""
    small = x.abs() < 1e-8
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1.0 + 0.5 * x, torch.expm1(safe) / safe)


# --------------------------------------------------------------------------------------------
# Per-SDE closed forms: G(t) = int_0^t g^2, increments, inverses, int g^2/alpha
# --------------------------------------------------------------------------------------------
def _kind(sde: LinearSDE) -> str:
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
    k = _kind(sde)
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
    k = _kind(sde)
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
    k = _kind(sde)
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
    k = _kind(sde)
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
    k = _kind(sde)
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
    k = _kind(sde)
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


# --------------------------------------------------------------------------------------------
# Generic pieces: C(u), |e(u)|, g^2(u) for the table
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int, device) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights on [-1, 1] (float64), computed once per (n, device)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x, dtype=F64, device=device), torch.as_tensor(w, dtype=F64, device=device)


def _G_generic(sde: LinearSDE, t: Tensor) -> Tensor:
    G = G_closed(sde, t)
    if G is not None:
        return G
    # numerical int_0^t g^2 with 64-point Gauss-Legendre (smooth g^2)
    x, w = _gauss_legendre(64, t.device)
    u = 0.5 * t[..., None] * (x + 1)
    return 0.5 * t * (w * sde.g2(u)).sum(-1)


def _C_and_abs_e(sde: LinearSDE, param: str, g2_factor: float, u: Tensor):
    """``C(u) = int_0^u c`` (up to a constant) and ``|e(u)|`` in float64."""
    la = sde.log_alpha(u)
    g2 = sde.g2(u)
    if param == "score":
        return la, g2_factor * g2
    if param == "relative_score":
        return la + g2_factor * _G_generic(sde, u) / sde.prior_var, g2_factor * g2
    s2 = sde.sigma2(u)
    abs_e = g2_factor * g2 * torch.exp(la) / s2
    if g2_factor == 1.0:
        return torch.log(s2) - la, abs_e
    # ODE: c = a + g^2/(2 sigma^2) = d/du log sigma
    return 0.5 * torch.log(s2), abs_e


class IntegralTable:
    """Float64 table of ``J(u) = int e^{-C}|e|`` and ``K(u) = int e^{-2C} g^2`` on ``[t_lo, T]``.

    ``W(s,t) = e^{C(s)} (J(t) - J(s))``, ``V(s,t) = e^{2C(s)} (K(t) - K(s))``; built once, then
    evaluated with cubic Hermite interpolation, vectorised on the device.
    """

    def __init__(self, sde: LinearSDE, param: str, ode: bool = False, n_cells: int = 6000, t_lo: Optional[float] = None, gl_points: int = 8):
        self.sde, self.param, self.g2_factor = sde, param, 0.5 if ode else 1.0
        t_lo = float(t_lo) if t_lo is not None else sde.t_min / 4
        T = sde.T
        geo = np.geomspace(t_lo, T, n_cells // 2 + 1)
        lin = np.linspace(t_lo, T, n_cells // 2 + 1)
        nodes = np.unique(np.concatenate([geo, lin]))
        nodes = nodes[np.concatenate([[True], np.diff(nodes) > 1e-14 * T])]
        nodes[0], nodes[-1] = t_lo, T
        u = torch.as_tensor(nodes, dtype=F64)
        xg, wg = np.polynomial.legendre.leggauss(gl_points)
        xg, wg = torch.as_tensor(xg, dtype=F64), torch.as_tensor(wg, dtype=F64)
        a, b = u[:-1, None], u[1:, None]
        q = 0.5 * (a + b) + 0.5 * (b - a) * xg  # (n, gl)
        C_ref = self._C(u[:1])  # reference to keep exponents moderate
        self.C_ref = C_ref
        Cq, eq = _C_and_abs_e(sde, param, self.g2_factor, q)
        fJ = torch.exp(-(Cq - C_ref)) * eq
        fK = torch.exp(-2 * (Cq - C_ref)) * sde.g2(q)
        half = 0.5 * (b - a)[:, 0]
        dJ = half * (fJ * wg).sum(-1)
        dK = half * (fK * wg).sum(-1)
        self.u = u
        Cn, en = _C_and_abs_e(sde, param, self.g2_factor, u)
        self.dJ = torch.exp(-(Cn - C_ref)) * en  # derivatives at the nodes
        self.dK = torch.exp(-2 * (Cn - C_ref)) * sde.g2(u)
        self.J = self._cumulative(dJ, self.dJ)
        self.K = self._cumulative(dK, self.dK)
        self._dev = {}

    @staticmethod
    def _cumulative(cells: Tensor, f_nodes: Tensor) -> Tensor:
        """Cumulative integral at the nodes, accumulated from the end where the integrand is
        small (from the top when it decays in u), so that differences keep their relative precision."""
        zero = torch.zeros(1, dtype=F64)
        if f_nodes[0].abs() > f_nodes[-1].abs():  # decaying integrand: J(u) = -int_u^T
            rev = torch.flip(torch.cumsum(torch.flip(cells, [0]), 0), [0])
            return -torch.cat([rev, zero])
        return torch.cat([zero, torch.cumsum(cells, 0)])

    def _C(self, u):
        return _C_and_abs_e(self.sde, self.param, self.g2_factor, u)[0]

    def _on(self, device):
        key = str(device)
        if key not in self._dev:
            self._dev[key] = tuple(x.to(device) for x in (self.u, self.J, self.K, self.dJ, self.dK))
        return self._dev[key]

    @staticmethod
    def _cell(u_nodes, x):
        """Index ``i`` of the table cell holding ``x``, its width and the position of ``x`` in it."""
        i = torch.searchsorted(u_nodes, x.contiguous(), right=True).clamp(1, u_nodes.numel() - 1) - 1
        hh = u_nodes[i + 1] - u_nodes[i]
        return i, hh, ((x - u_nodes[i]) / hh).clamp(0.0, 1.0)

    @staticmethod
    def _hermite(u_nodes, y, dy, x):
        i, hh, tt = IntegralTable._cell(u_nodes, x)
        t2, t3 = tt * tt, tt * tt * tt
        h00 = 2 * t3 - 3 * t2 + 1
        h10 = t3 - 2 * t2 + tt
        h01 = -2 * t3 + 3 * t2
        h11 = t3 - t2
        return h00 * y[i] + h10 * hh * dy[i] + h01 * y[i + 1] + h11 * hh * dy[i + 1]

    def _check(self, x):
        lo, hi = float(self.u[0]), float(self.u[-1])
        if x.numel() and (float(x.min()) < lo * (1 - 1e-9) or float(x.max()) > hi * (1 + 1e-9)):
            raise ValueError(f"time outside the integral table range [{lo:g}, {hi:g}]")

    def J_at(self, x):
        u, J, _, dJ, _ = self._on(x.device)
        return self._hermite(u, J, dJ, x)

    def K_at(self, x):
        u, _, K, _, dK = self._on(x.device)
        return self._hermite(u, K, dK, x)

    def W(self, s, t):
        return torch.exp(self._C(s) - self.C_ref) * (self.J_at(t) - self.J_at(s))

    def V(self, s, t):
        return torch.exp(2 * (self._C(s) - self.C_ref)) * (self.K_at(t) - self.K_at(s))

    def midpoint(self, s, t, u):
        """``tau`` with ``J(tau) = J(s) + u (J(t) - J(s))`` (inverse CDF of ``Phi(s,.)|e|``)."""
        uu, J, _, dJ, _ = self._on(s.device)
        Js, Jt = self.J_at(s), self.J_at(t)
        target = Js + u * (Jt - Js)
        i = torch.searchsorted(J, target.contiguous(), right=True).clamp(1, J.numel() - 1) - 1
        x0, x1 = uu[i], uu[i + 1]
        lo = torch.maximum(x0, s)
        hi = torch.minimum(x1, t)
        # initial guess: linear in J within the cell
        frac = ((target - J[i]) / (J[i + 1] - J[i]).clamp_min(1e-300)).clamp(0, 1)
        x = (x0 + frac * (x1 - x0)).clamp(lo, hi)
        for _ in range(6):  # Newton on the Hermite cubic (derivative = interpolated integrand)
            f = self.J_at(x) - target
            d = self._hermite_derivative(uu, J, dJ, x)
            x = (x - f / d.clamp_min(1e-300)).clamp(lo, hi)
        return torch.minimum(torch.maximum(x, s), t)

    @staticmethod
    def _hermite_derivative(u_nodes, y, dy, x):
        i, hh, tt = IntegralTable._cell(u_nodes, x)
        t2 = tt * tt
        d00 = (6 * t2 - 6 * tt) / hh
        d10 = 3 * t2 - 4 * tt + 1
        d01 = (-6 * t2 + 6 * tt) / hh
        d11 = 3 * t2 - 2 * tt
        return d00 * y[i] + d10 * dy[i] + d01 * y[i + 1] + d11 * dy[i + 1]


# --------------------------------------------------------------------------------------------
# The integrator
# --------------------------------------------------------------------------------------------
class ExpIntegrator:
    """``Phi, W, V`` and the DDRaM midpoint law for one (SDE, parametrization, SDE/ODE form).

    ``method``: ``"auto"`` (closed forms where they exist, else the table), ``"closed"`` (error
    where none exists) or ``"table"`` (always the numerical table; for tests).  All inputs may be
    floats or tensors of any (broadcastable) shape; outputs are float64 tensors.
    """

    def __init__(self, sde: LinearSDE, parametrization: str = "denoiser", ode: bool = False, method: str = "auto"):
        if method not in ("auto", "closed", "table"):
            raise ValueError(f"unknown method {method!r}; valid choices: ['auto', 'closed', 'table']")
        self.sde = sde
        self.param = canonical_parametrization(parametrization)
        self.ode = bool(ode)
        self.g2_factor = 0.5 if self.ode else 1.0
        self.method = method
        kind = _kind(sde)
        if self.param == "denoiser":
            closed_W = closed_mid = True
        elif self.param == "score":
            closed_W = kind != "other"
            closed_mid = kind not in ("other", "SubVP")
        else:
            closed_W = closed_mid = relative_k(sde, self.g2_factor) is not None
        if method == "closed" and not (closed_W and closed_mid):
            raise ValueError(
                f"no closed form for parametrization {self.param!r} with {type(sde).__name__}; use method='auto' or 'table'"
            )
        self.closed_W = closed_W and method != "table"
        self.closed_mid = closed_mid and method != "table"
        self._table: Optional[IntegralTable] = None
        if not (self.closed_W and self.closed_mid):
            self._table = IntegralTable(sde, self.param, self.ode)

    @property
    def table(self) -> IntegralTable:
        if self._table is None:
            self._table = IntegralTable(self.sde, self.param, self.ode)
        return self._table

    # -- C(u) and Phi -----------------------------------------------------------------------------
    def log_phi(self, s, t) -> Tensor:
        """``log Phi(s, t) = C(s) - C(t)``."""
        s, t = _t64(s), _t64(t)
        sde = self.sde
        if self.param == "denoiser":
            dl = sde.log_snr(t) - sde.log_snr(s)  # log(lambda_t / lambda_s) <= 0
            return sde.log_alpha(s) - sde.log_alpha(t) + (1.0 if not self.ode else 0.5) * dl
        if self.param == "score":
            return sde.log_alpha(s) - sde.log_alpha(t)
        dG = dG_closed(sde, s, t)
        if dG is None:
            dG = _G_generic(sde, t) - _G_generic(sde, s)
        return sde.log_alpha(s) - sde.log_alpha(t) - self.g2_factor * dG / sde.prior_var

    def phi(self, s, t) -> Tensor:
        return torch.exp(self.log_phi(s, t))

    # -- W and V ------------------------------------------------------------------------------------
    def W(self, s, t) -> Tensor:
        s, t = _t64(s), _t64(t)
        if not self.closed_W:
            return self.table.W(s, t)
        sde = self.sde
        if self.param == "denoiser":
            dl = sde.log_snr(t) - sde.log_snr(s)
            return -sde.alpha(s) * torch.expm1((1.0 if not self.ode else 0.5) * dl)
        if self.param == "score":
            return self.g2_factor * score_W_closed(sde, s, t)
        k = relative_k(sde, self.g2_factor)
        dG = dG_closed(sde, s, t)
        return self.g2_factor * dG * _phi1(-k * dG)

    def V(self, s, t) -> Tensor:
        s, t = _t64(s), _t64(t)
        if self.ode:
            return torch.zeros(torch.broadcast_shapes(s.shape, t.shape), dtype=F64, device=s.device)
        if not self.closed_W:
            return self.table.V(s, t)
        sde = self.sde
        if self.param in ("denoiser", "score"):
            dl = sde.log_snr(s) - sde.log_snr(t)  # >= 0
            e = torch.expm1(dl)
            if self.param == "denoiser":
                return sde.sigma2(s) * (-torch.expm1(-dl))
            return sde.sigma2(s) * e
        k = relative_k(sde, self.g2_factor)
        dG = dG_closed(sde, s, t)
        return dG * _phi1(-2 * k * dG)

    def coefficients(self, s, t) -> tuple[Tensor, Tensor, Tensor]:
        """``(Phi(s,t), W(s,t), V(s,t))`` in float64."""
        return self.phi(s, t), self.W(s, t), self.V(s, t)

    # -- DDRaM midpoint law -------------------------------------------------------------------------
    def midpoint(self, s, t, u) -> Tensor:
        """Midpoint ``tau in (s, t)`` with density ``∝ Phi(s,tau)|e(tau)|`` by inverse CDF, for
        ``u ~ U(0,1)`` counted **from the start of the step** ``t`` (the convention of docs/maths.md §5
        and of the DDRaM paper's reference implementation): the mass on ``(tau, t)`` is ``u W(s,t)``."""
        s, t, u = _t64(s), _t64(t), _t64(u)
        s, t, u = torch.broadcast_tensors(s, t, u)
        u = 1.0 - u  # the inverse CDFs below measure the mass from s
        if not self.closed_mid:
            return self.table.midpoint(s, t, u)
        sde = self.sde
        if self.param == "denoiser":
            if not self.ode:
                ls, lt = sde.snr(s), sde.snr(t)
                tau = sde.t_from_snr(ls - u * (ls - lt))
            else:
                rs, rt = torch.exp(0.5 * sde.log_snr(s)), torch.exp(0.5 * sde.log_snr(t))
                tau = sde.t_from_snr((rs - u * (rs - rt)) ** 2)
        elif self.param == "score":
            tau = score_W_inverse(sde, s, u * score_W_closed(sde, s, t))
        else:
            k = relative_k(sde, self.g2_factor)
            dG = dG_closed(sde, s, t)
            if abs(k) < 1e-300:
                y = u * dG
            else:
                y = -torch.log1p(u * torch.expm1(-k * dG)) / k
            tau = G_forward(sde, s, y)
        return torch.minimum(torch.maximum(tau, s), t)


_CACHE: dict = {}


def get_integrator(sde: LinearSDE, parametrization: str = "denoiser", ode: bool = False, method: str = "auto") -> ExpIntegrator:
    """A cached :class:`ExpIntegrator` (a table is built once per SDE hyper-parameters,
    parametrization and form)."""
    param = canonical_parametrization(parametrization)
    try:
        hp = tuple(sorted(sde.hparams().items()))
        key = (type(sde).__name__, hp, param, bool(ode), method)
    except NotImplementedError:
        key = (id(sde), param, bool(ode), method)
    integ = _CACHE.get(key)
    if integ is None or integ.sde is not sde and not isinstance(key[0], str):
        integ = ExpIntegrator(sde, param, ode, method)
        _CACHE[key] = integ
    return integ
