"""DDRaM, the randomized-midpoint sampler (docs/maths.md §5): its two step functions and its stepper.

A step ``t -> s`` draws a midpoint ``tau`` in ``(s, t)``, moves the state to ``tau`` with the field frozen
at the start (:func:`ddram_midpoint`) and then takes the whole step with the field evaluated at the
midpoint (:func:`ddram_finish`). Two options of :class:`DDRaMStepper` are for small budgets:

* ``midpoint="log_snr"``: ``tau`` uniform in log-SNR, the midpoint's field weighted so that the step's
  integral stays unbiased (denoiser steps; the default ``"law"`` draws ``tau`` from the step's own
  weight, for which the weight is constant);
* ``evals_per_step=1``: the move to the midpoint reuses the previous step's (midpoint) evaluation
  instead of a new one at the start, so a step costs one network evaluation; the first step, which
  has no previous evaluation, is an exponential-Euler step from the prior.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..core.parametrizations import convert
from ..core.utils import GeneratorLike, rand
from .defaults import AUTO_LOG_SNR_STEP
from .integrators import ExpIntegrator, get_integrator
from .steps import Stepper, StepState, as_times, centred, exp_euler_step, per_sample_coef, uncentre

__all__ = ["DDRaMStepper", "ddram_midpoint", "ddram_finish", "MIDPOINTS"]

#: where the midpoint of a step is drawn: from the step's own weight (``law``), or uniformly in log-SNR
MIDPOINTS = ("law", "log_snr")


def ddram_midpoint(x_t: Tensor, F_t: Tensor, t, tau, integ: ExpIntegrator, noise1: Optional[Tensor] = None):
    """DDRaM stage 1 (§5): ``X~_tau = Phi(tau,t) X~_t + W(tau,t) F_t + eta_tau``,
    ``eta_tau = sqrt(V(tau,t)) z1``.  Returns ``(x_tau, carry)``; ``carry = (X~_t, eta_tau)``."""
    t, tau = as_times(t, x_t), as_times(tau, x_t)
    sde = integ.sde
    xc = centred(sde, x_t, t)
    phi, W, V = integ.coefficients(tau, t)
    mid = per_sample_coef(phi, xc) * xc + per_sample_coef(W, xc) * F_t.to(xc.dtype)
    if integ.ode:
        eta = torch.zeros_like(xc)
    else:
        eta = per_sample_coef(torch.sqrt(V), xc) * noise1.to(xc.dtype)
    return uncentre(sde, mid + eta, tau), (xc, eta)


def ddram_finish(x_t: Tensor, F_tau: Tensor, t, tau, s, carry, integ: ExpIntegrator, noise2: Optional[Tensor] = None,
                 weight: Optional[Tensor] = None) -> Tensor:
    """DDRaM stage 2 (§5): ``X~_s = Phi(s,t) X~_t + W(s,t) F(X_tau, tau) + Phi(s,tau) eta_tau + eta'``,
    ``eta' = sqrt(V(s,tau)) z2``: the end point is driven by the midpoint's Brownian path.  ``weight``
    replaces ``W(s,t)`` as the field's factor when the midpoint was not drawn from the step's own law
    (``midpoint="log_snr"``: the importance weight of §5)."""
    t, tau, s = as_times(t, x_t), as_times(tau, x_t), as_times(s, x_t)
    sde = integ.sde
    xc, eta = carry
    phi, W, _ = integ.coefficients(s, t)
    if weight is not None:
        W = weight
    out = per_sample_coef(phi, xc) * xc + per_sample_coef(W, xc) * F_tau.to(xc.dtype)
    if not integ.ode:
        out = out + per_sample_coef(integ.phi(s, tau), xc) * eta + per_sample_coef(torch.sqrt(integ.V(s, tau)), xc) * noise2.to(xc.dtype)
    return uncentre(sde, out, s)


def _check_options(parametrization: str, midpoint: str, evals_per_step) -> None:
    if midpoint not in MIDPOINTS:
        raise ValueError(f"unknown DDRaM midpoint {midpoint!r}; valid choices: {list(MIDPOINTS)}")
    if midpoint == "log_snr" and parametrization not in ("auto", "denoiser"):
        raise ValueError(
            f"midpoint='log_snr' weights the denoiser's steps; parametrization {parametrization!r} is not one "
            "(valid choices with it: ['auto', 'denoiser'])"
        )
    if isinstance(evals_per_step, bool) or evals_per_step not in (1, 2):
        raise ValueError(f"DDRaM evals_per_step={evals_per_step!r} is invalid; valid choices: [1, 2]")


class DDRaMStepper(Stepper):
    """Randomized-midpoint steps.  ``parametrization="auto"`` (the default) freezes the relative score
    on steps that are short in log-SNR (``log snr(s) - log snr(t) < AUTO_LOG_SNR_STEP``) and the
    denoiser on longer ones: over a short step the relative score barely moves and DDRaM's midpoint
    correction is at its most accurate, while over a long step it changes by orders of magnitude and
    the denoiser, bounded by the data, is the stable choice (docs/samplers.md, "Defaults").  Each step
    is then an ordinary DDRaM step of one parametrization: :meth:`for_step` returns it, and every
    :class:`StepState` says which field it needs in ``st.stepper.field_kind``.

    ``midpoint`` and ``evals_per_step``: see the module docstring.  With ``evals_per_step=1`` the
    stepper carries the last evaluation from step to step (:meth:`reset` starts a run afresh), and a
    step's one evaluation is at its midpoint: ``start`` already returns ``x_eval`` at ``tau``."""

    name = "ddram"
    needs_midpoint = True

    def __init__(self, sde, parametrization="auto", ode=False, method="auto", midpoint="law", evals_per_step=2):
        _check_options(parametrization, midpoint, evals_per_step)
        super().__init__(sde, parametrization, ode)
        self.midpoint_law = midpoint
        self.evals_per_step = int(evals_per_step)
        self._owner = self  # the stepper that keeps the last evaluation (the outer one under "auto")
        self._last = None  # (F, x_eval, t_eval, kind) of the last evaluation (evals_per_step=1)
        if parametrization == "auto":
            self.field_kind = "denoiser"  # the kind of the long steps; short ones ask for relative_score
            self.integ = None
            self._subs = {p: DDRaMStepper(sde, p, ode, method, midpoint if p == "denoiser" else "law", evals_per_step)
                          for p in ("relative_score", "denoiser")}
            for sub in self._subs.values():
                sub._owner = self
        else:
            self.integ = get_integrator(sde, parametrization, ode, method)
            self._subs = None

    @property
    def starts_at_midpoint(self) -> bool:
        """``evals_per_step=1``: :meth:`start` already moves the state to the step's midpoint with the
        previous step's evaluation (the first step of a run excepted), so a step's one evaluation is
        there and a driver must start the next step as soon as one ends."""
        return self.evals_per_step == 1

    def reset(self, grid: Optional[Tensor] = None, final_jump: bool = False) -> None:
        """Forget the last evaluation (a new run starts; ``evals_per_step=1`` only carries one)."""
        self._last = None

    def for_step(self, t, s) -> "DDRaMStepper":
        """The stepper of one step ``t -> s`` (itself unless ``parametrization="auto"``); per-sample
        times are decided by the longest step of the batch."""
        if self._subs is None:
            return self
        lt = torch.log(self.sde.snr(torch.as_tensor(t, dtype=torch.float64)))
        ls = torch.log(self.sde.snr(torch.as_tensor(s, dtype=torch.float64)))
        short = bool(((ls - lt).abs() < AUTO_LOG_SNR_STEP).all())
        return self._subs["relative_score" if short else "denoiser"]

    def start(self, x_t: Tensor, t, s, u=None, generator: GeneratorLike = None) -> StepState:
        if self._subs is not None:
            return self.for_step(t, s).start(x_t, t, s, u=u, generator=generator)
        return super().start(x_t, t, s, u=u, generator=generator)

    def midpoint(self, t, s, u):
        if self._subs is not None:
            return self.for_step(t, s).midpoint(t, s, u)
        if self.midpoint_law == "log_snr":
            lt, ls = self.sde.log_snr(torch.as_tensor(t, dtype=torch.float64)), self.sde.log_snr(torch.as_tensor(s, dtype=torch.float64))
            return self.sde.t_from_snr(torch.exp(lt + torch.as_tensor(u, dtype=torch.float64) * (ls - lt)))
        return self.integ.midpoint(s, t, u)

    def _weight(self, st) -> Optional[Tensor]:
        """The field's factor at a log-SNR midpoint: ``alpha_s p (lambda_tau/lambda_s)^p (log lambda_s -
        log lambda_t)``, ``p = 1`` (SDE) or ``1/2`` (ODE), whose mean over ``tau`` is ``W(s,t)`` (§5)."""
        if self.midpoint_law != "log_snr":
            return None
        sde, p = self.sde, 0.5 if self.ode else 1.0
        lt, ltau, ls = (sde.log_snr(v.to(torch.float64)) for v in (st.t, st.tau, st.s))
        return sde.alpha(st.s.to(torch.float64)) * p * torch.exp(p * (ltau - ls)) * (ls - lt)

    def _init(self, st, u):
        if u is None:
            u = rand((st.x_t.shape[0],), generator=st.generator, dtype=torch.float64)
        u = torch.as_tensor(u, dtype=torch.float64).to(st.t.device)
        st.u = u
        st.tau = as_times(self.midpoint(st.t, st.s, u), st.x_t)
        last = self._owner._last
        if self.starts_at_midpoint and last is None:
            st.single = True  # the first step of a run: exponential Euler with the evaluation at t
        elif self.starts_at_midpoint:  # the move to the midpoint with the previous evaluation
            F_prev, x_prev, t_prev, kind = last
            F = convert(F_prev, kind, self.field_kind, x_prev, t_prev, self.sde)
            x_tau, st.carry = ddram_midpoint(st.x_t, F, st.t, st.tau, self.integ, st.draw_noise() if self.stochastic else None)
            st.x_eval, st.t_eval, st.stage = x_tau.to(st.x_t.dtype), st.tau, 1

    def _advance(self, st, F, noise, **extra):
        if self.starts_at_midpoint:
            self._owner._last = (F, st.x_eval, st.t_eval, self.field_kind)
        if getattr(st, "single", False):
            st.x = exp_euler_step(st.x_t, F, st.t, st.s, self.integ, noise).to(st.x_t.dtype)
            st.done = True
        elif st.stage == 0:
            x_tau, st.carry = ddram_midpoint(st.x_t, F, st.t, st.tau, self.integ, noise)
            st.x_eval, st.t_eval = x_tau.to(st.x_t.dtype), st.tau
        else:
            st.x = ddram_finish(st.x_t, F, st.t, st.tau, st.s, st.carry, self.integ, noise, self._weight(st)).to(st.x_t.dtype)
            st.done = True
