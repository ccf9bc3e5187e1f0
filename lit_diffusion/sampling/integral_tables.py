"""The float64 tables of the exponential integrators' integrals for processes or parametrizations
without closed forms (docs/maths.md §5): Gauss–Legendre quadrature on cells, Hermite interpolation
between the nodes, and the inverse of the midpoint law."""

from __future__ import annotations

import functools
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..core.sdes import LinearSDE
from .integral_forms import G_closed

__all__ = ["IntegralTable", "G_generic"]

F64 = torch.float64


# --------------------------------------------------------------------------------------------
# Generic pieces: C(u), |e(u)|, g^2(u) for the table
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _gauss_legendre(n: int, device) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights on [-1, 1] (float64), computed once per (n, device)."""
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x, dtype=F64, device=device), torch.as_tensor(w, dtype=F64, device=device)


def G_generic(sde: LinearSDE, t: Tensor) -> Tensor:
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
        return la + g2_factor * G_generic(sde, u) / sde.prior_var, g2_factor * g2
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
