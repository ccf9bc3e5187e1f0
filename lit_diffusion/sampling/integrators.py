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


from typing import Optional

import torch
from torch import Tensor

from ..core.sdes import LinearSDE
from .integral_forms import G_forward, dG_closed, relative_k, score_W_closed, score_W_inverse, sde_kind
from .integral_tables import G_generic, IntegralTable

__all__ = [
    "PARAMETRIZATIONS",
    "ExpIntegrator",
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
        kind = sde_kind(sde)
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
            dG = G_generic(sde, t) - G_generic(sde, s)
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
        lo, hi = torch.minimum(s, t), torch.maximum(s, t)  # an inverse step (encoding) has s > t
        return torch.minimum(torch.maximum(tau, lo), hi)


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
