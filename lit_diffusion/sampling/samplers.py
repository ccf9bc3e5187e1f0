"""Samplers for the reverse dynamics of a linear SDE (docs/maths.md §4–§6).

Samplers: ``euler`` (Euler–Maruyama / probability-flow Euler), ``exponential_euler``, ``ddram``
(randomized midpoint), ``pc`` (predictor + Langevin corrector), ``localization`` (= denoiser
exponential Euler) and ``moment_matching`` (second-order localization, needs Jacobians).

STEPPER PROTOCOL (shared with ``lit_diffusion.scheduler.SDEScheduler``)
======================================================================
Every sampler is a set of *pure step functions of tensors that take field values as inputs* plus a
small stepper object that says which evaluations a step needs.  Nothing in a step calls the network;
whoever drives the stepper (our :func:`sample` loop or a diffusers pipeline through the scheduler)
evaluates the field and feeds the value back.

``stepper = get_stepper(sampler, sde, parametrization=None, ode=False, **options)``

* ``stepper.field_kind``: the prediction type every evaluation must be given in
  (``"score"``, ``"denoiser"`` or ``"relative_score"``; convert a network output with
  ``lit_diffusion.parametrizations.convert(out, declared, stepper.field_kind, x_eval, t_eval, sde)``).
* ``stepper.evals_per_step``: number of field evaluations in one step t -> s
  (euler/exponential_euler/localization: 1, ddram: 2, pc: predictor's + ``n_corrector``).
* ``stepper.stochastic``: False for ODE samplers (no noise is ever consumed).
* ``stepper.needs_midpoint``: True for ddram (a uniform ``u`` in (0, 1) per step, see below).
* ``stepper.midpoint(t, s, u) -> tau``: the DDRaM midpoint for uniform ``u`` (scalar or per-sample
  tensor): ``tau`` has density proportional to ``Phi(s, tau) |e(tau)|`` on (s, t) (inverse CDF).
  The scheduler draws ``u`` in ``set_timesteps`` (shared by the batch) and computes ``tau`` there,
  so that the pipeline knows every evaluation time in advance; ``sample()`` draws ``u`` per sample.
* ``state = stepper.start(x_t, t, s, u=None, generator=None)``: begin one step from time ``t`` to
  ``s < t`` (``t, s``: floats, 0-d or per-sample ``(B,)`` tensors).  ``u`` is only used by ddram
  (drawn from ``generator`` when None).
* ``state.x_eval, state.t_eval``: the point at which the NEXT field value is needed (``t_eval`` is a
  ``(B,)`` tensor).  For ddram the second point is the midpoint sample ``X_tau``.
* ``state.noise_needed``: whether the next :meth:`advance` consumes a standard-normal tensor.
* ``state.advance(F, noise=None)``: feed the field value ``F`` (kind ``stepper.field_kind``) at
  ``(x_eval, t_eval)``; ``noise`` is N(0, I) of x's shape (drawn from the generator given to
  ``start`` when None; ignored by ODE samplers).  Each stage draws at most one noise tensor:
  ddram draws ``z1`` with the first value (midpoint noise) and ``z2`` with the second (the
  independent part of the end-point noise; the rest is the midpoint's own Brownian increment).
* ``state.done``; once done, ``state.x`` is ``X_s`` (in x's dtype; arithmetic in float32/64).
  ``state.nfe`` counts the values fed.

The raw step functions (also public) are
``euler_step(x_t, score, t, s, sde, noise, ode)``,
``exp_euler_step(x_t, F_t, t, s, integ, noise)``,
``ddram_midpoint(x_t, F_t, t, tau, integ, noise1) -> (x_tau, carry)``,
``ddram_finish(x_t, F_tau, t, tau, s, carry, integ, noise2) -> x_s``,
``langevin_corrector_step(x, score, snr, kappa, noise)``,
``moment_matching_step(x_t, D_t, cov_sqrt_apply, t, s, integ, noise)``,
where ``integ`` is a :class:`lit_diffusion.integrators.ExpIntegrator` (coefficients Phi, W, V of
§5 for one SDE, parametrization and SDE/ODE form).
"""

from __future__ import annotations

import math
import sys
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..core.fields import Field, as_field
from .integrators import ExpIntegrator, canonical_parametrization, get_integrator
from ..core.parametrizations import convert
from ..core.schedules import _check_steps, check_schedule, get_timesteps
from ..core.sdes import LinearSDE, as_time, broadcast_to, compute_dtype
from ..core.utils import GeneratorLike, rand, randn

__all__ = [
    "SAMPLERS",
    "DEFAULT_SCHEDULES",
    "default_schedule",
    "SampleResult",
    "sample",
    "get_stepper",
    "euler_step",
    "exp_euler_step",
    "ddram_midpoint",
    "ddram_finish",
    "langevin_corrector_step",
    "moment_matching_step",
    "posterior_cov_sqrt_apply",
    "Stepper",
    "StepState",
]

SAMPLERS = ("euler", "exponential_euler", "ddram", "pc", "localization", "moment_matching")
#: parametrizations each sampler accepts (the first one is the default)
SAMPLER_PARAMETRIZATIONS = {
    "euler": ("score",),
    "exponential_euler": ("denoiser", "score", "relative_score"),
    # "auto": relative score on steps shorter than AUTO_LOG_SNR_STEP in log-SNR, denoiser on longer ones
    # (the measured best default, docs/samplers.md)
    "ddram": ("auto", "denoiser", "relative_score", "score"),
    "localization": ("denoiser",),
    "moment_matching": ("denoiser",),
}
PREDICTORS = ("euler", "exponential_euler", "ddram")
#: the time grid a sampler uses when none is given.  Measured (docs/samplers.md, "Defaults"): on the
#: shipped MNIST network DDRaM on the uniform grid reaches FID-MNIST 15.3 / 5.0 at 10 / 20 evaluations
#: against 34.8 / 8.2 on the log-SNR grid, so every sampler defaults to the uniform grid; the log-SNR
#: grid wins on exact (analytic) fields only.  Per-sampler entries override "uniform".
DEFAULT_SCHEDULES: dict = {}


def default_schedule(sampler: str) -> str:
    """The time grid :func:`sample`, ``sample.py`` and ``SDEScheduler`` use for ``sampler`` by default."""
    return DEFAULT_SCHEDULES.get(str(sampler).lower(), "uniform")


#: ddram ``parametrization="auto"``: steps whose log-SNR increase is below this use the relative score
AUTO_LOG_SNR_STEP = 2.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _times(t, x: Tensor) -> Tensor:
    """``t`` as a float64 tensor of shape (B,) on x's device."""
    t = as_time(t, x).to(torch.float64)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"time of shape {tuple(t.shape)} does not match a batch of {x.shape[0]}")
    return t


def _c(coef: Tensor, x: Tensor) -> Tensor:
    """float64 per-sample coefficient -> compute dtype, broadcast against x."""
    return broadcast_to(coef.to(dtype=compute_dtype(x)), x)


def _centred(sde: LinearSDE, x: Tensor, t: Tensor) -> Tensor:
    dtype = compute_dtype(x)
    return x.to(dtype) - _c(sde.mean_offset(t), x)


def _uncentre(sde: LinearSDE, xc: Tensor, s: Tensor) -> Tensor:
    return xc + _c(sde.mean_offset(s), xc)


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


# --------------------------------------------------------------------------------------------
# pure step functions (field values are inputs)
# --------------------------------------------------------------------------------------------
def euler_step(x_t: Tensor, score: Tensor, t, s, sde: LinearSDE, noise: Optional[Tensor] = None, ode: bool = False) -> Tensor:
    """Euler–Maruyama for the reverse SDE (§5, Claustre, "Score-Based Diffusion Models via SDEs" eq. 13), or Euler for the probability-flow
    ODE: ``X_s = X_t - h [a X_t + b - k g^2 s] + g sqrt(h) z`` with ``k = 1`` (SDE) or ``1/2`` (ODE)."""
    t, s = _times(t, x_t), _times(s, x_t)
    dtype = compute_dtype(x_t)
    x = x_t.to(dtype)
    a, b = sde.drift_coefficients(t)
    g2 = sde.g2(t)
    h = t - s
    kfac = 0.5 if ode else 1.0
    out = x - _c(h, x) * (_c(a, x) * x + _c(b, x) - kfac * _c(g2, x) * score.to(dtype))
    if not ode:
        out = out + _c(torch.sqrt(g2 * h), x) * noise.to(dtype)
    return out


def exp_euler_step(x_t: Tensor, F_t: Tensor, t, s, integ: ExpIntegrator, noise: Optional[Tensor] = None) -> Tensor:
    """Exponential Euler (§5): ``X~_s = Phi(s,t) X~_t + W(s,t) F_t + sqrt(V(s,t)) z``."""
    t, s = _times(t, x_t), _times(s, x_t)
    sde = integ.sde
    xc = _centred(sde, x_t, t)
    phi, W, V = integ.coefficients(s, t)
    out = _c(phi, xc) * xc + _c(W, xc) * F_t.to(xc.dtype)
    if not integ.ode:
        out = out + _c(torch.sqrt(V), xc) * noise.to(xc.dtype)
    return _uncentre(sde, out, s)


def ddram_midpoint(x_t: Tensor, F_t: Tensor, t, tau, integ: ExpIntegrator, noise1: Optional[Tensor] = None):
    """DDRaM stage 1 (§5): ``X~_tau = Phi(tau,t) X~_t + W(tau,t) F_t + eta_tau``,
    ``eta_tau = sqrt(V(tau,t)) z1``.  Returns ``(x_tau, carry)``; ``carry = (X~_t, eta_tau)``."""
    t, tau = _times(t, x_t), _times(tau, x_t)
    sde = integ.sde
    xc = _centred(sde, x_t, t)
    phi, W, V = integ.coefficients(tau, t)
    mid = _c(phi, xc) * xc + _c(W, xc) * F_t.to(xc.dtype)
    if integ.ode:
        eta = torch.zeros_like(xc)
    else:
        eta = _c(torch.sqrt(V), xc) * noise1.to(xc.dtype)
    return _uncentre(sde, mid + eta, tau), (xc, eta)


def ddram_finish(x_t: Tensor, F_tau: Tensor, t, tau, s, carry, integ: ExpIntegrator, noise2: Optional[Tensor] = None) -> Tensor:
    """DDRaM stage 2 (§5): ``X~_s = Phi(s,t) X~_t + W(s,t) F(X_tau, tau) + Phi(s,tau) eta_tau + eta'``,
    ``eta' = sqrt(V(s,tau)) z2``: the end point is driven by the midpoint's Brownian path."""
    t, tau, s = _times(t, x_t), _times(tau, x_t), _times(s, x_t)
    sde = integ.sde
    xc, eta = carry
    phi, W, _ = integ.coefficients(s, t)
    out = _c(phi, xc) * xc + _c(W, xc) * F_tau.to(xc.dtype)
    if not integ.ode:
        out = out + _c(integ.phi(s, tau), xc) * eta + _c(torch.sqrt(integ.V(s, tau)), xc) * noise2.to(xc.dtype)
    return _uncentre(sde, out, s)


SNR_NORMS = ("capped", "sample", "batch")
#: ``snr_norm="capped"``: the per-sample ratio ``||z||^2 / ||s||^2`` is capped at ``CAP * sigma(t)^2``
CORRECTOR_RATIO_CAP = 4.0


def langevin_corrector_step(
    x: Tensor, score: Tensor, snr: float, kappa, noise: Tensor, snr_norm: str = "sample", sigma=None
) -> Tensor:
    """One Langevin corrector step (docs/maths.md, predictor-corrector): ``X + eps s + sqrt(2 eps) z``
    with the signal-to-noise rule ``eps = 2 kappa (snr ||z|| / ||s||)^2``.

    ``snr_norm="sample"``: the norms of each sample, so the step size is per sample.  In low
    dimension ``||z|| / ||s||`` has a heavy tail (a sample sitting where the score vanishes gets an
    enormous step) and the sampler diverges.
    ``snr_norm="batch"``: the batch means of the per-sample norms (score_sde_pytorch's choice): stable,
    but a sample's trajectory then depends on the rest of its batch.
    ``snr_norm="capped"`` (the samplers' default): per sample, with ``(||z|| / ||s||)^2`` capped at
    ``CORRECTOR_RATIO_CAP * sigma^2`` (``sigma``: the forward noise level at the corrector's time; the
    marginal there is a Gaussian smoothing of width ``sigma``, so ``||s||^2`` is about ``d / sigma^2``
    or more in typical points and the cap only bites in the tail): stable in any dimension and
    independent of the batch.  A zero or non-finite score leaves the sample in place."""
    if snr_norm not in SNR_NORMS:
        raise ValueError(f"snr_norm={snr_norm!r} is invalid; valid choices: {list(SNR_NORMS)}")
    if snr_norm == "capped" and sigma is None:
        raise ValueError("snr_norm='capped' needs sigma (the noise level at the corrector's time)")
    dtype = compute_dtype(x)
    x, score, noise = x.to(dtype), score.to(dtype), noise.to(dtype)
    kappa = torch.as_tensor(kappa, dtype=dtype, device=x.device)  # scalar or per-sample (B,)
    z_norm, s_norm = _per_sample_norm(noise), _per_sample_norm(score)
    if snr_norm == "batch":
        z_norm, s_norm = z_norm.mean().expand_as(z_norm), s_norm.mean().expand_as(s_norm)
    # a score that is exactly zero (e.g. a zero-initialised network) or not finite gives no usable
    # step size: such samples are left where they are instead of being sent to inf/NaN
    usable = (s_norm > 0) & torch.isfinite(s_norm)
    ratio2 = (z_norm / torch.where(usable, s_norm, torch.ones_like(s_norm))) ** 2
    if snr_norm == "capped":
        sig2 = torch.as_tensor(sigma, dtype=dtype, device=x.device) ** 2
        ratio2 = torch.minimum(ratio2, CORRECTOR_RATIO_CAP * sig2)
    eps = torch.where(usable, 2 * kappa * snr**2 * ratio2, torch.zeros_like(ratio2))
    eps = broadcast_to(eps, x)
    return x + eps * score + torch.sqrt(2 * eps) * noise


def moment_matching_step(x_t: Tensor, D_t: Tensor, cov_sqrt_apply: Callable[[Tensor], Tensor], t, s, integ: ExpIntegrator, noise: Tensor) -> Tensor:
    """Second-order moment matching (Reeves & Pfister, "Information-Theoretic Proofs for Diffusion Sampling", Theorem 3 / Remark 5; §5):
    ``X~_s = Phi X~_t + W D + (W^2 Sigma + V I)^{1/2} z`` with ``Sigma = Cov(X_0 | X_t)``.
    ``cov_sqrt_apply(z)`` must return ``(W^2 Sigma + V I)^{1/2} z`` (see :func:`posterior_cov_sqrt_apply`).
    In localization coordinates this is ``Z_k = Z_{k-1} + d f + (d^2 Sigma + d I)^{1/2} N``."""
    t, s = _times(t, x_t), _times(s, x_t)
    sde = integ.sde
    xc = _centred(sde, x_t, t)
    phi, W, _ = integ.coefficients(s, t)
    out = _c(phi, xc) * xc + _c(W, xc) * D_t.to(xc.dtype) + cov_sqrt_apply(noise.to(xc.dtype)).to(xc.dtype)
    return _uncentre(sde, out, s)


# --------------------------------------------------------------------------------------------
# posterior covariance square roots for moment matching
# --------------------------------------------------------------------------------------------
def _lanczos_sqrt(matvec: Callable[[Tensor], Tensor], z: Tensor, iters: int) -> Tensor:
    """Batched Lanczos approximation of ``A^{1/2} z`` for symmetric PSD ``A`` (vectors (B, n))."""
    B, n = z.shape
    k = max(1, min(iters, n))
    beta0 = z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    Q = [z / beta0]
    alphas, betas = [], []
    q_prev = torch.zeros_like(z)
    b_prev = torch.zeros(B, 1, dtype=z.dtype, device=z.device)
    for j in range(k):
        w = matvec(Q[j]) - b_prev * q_prev
        a = (w * Q[j]).sum(1, keepdim=True)
        w = w - a * Q[j]
        Qs = torch.stack(Q, 1)  # full re-orthogonalisation (k is small)
        w = w - torch.einsum("bk,bkn->bn", torch.einsum("bkn,bn->bk", Qs, w), Qs)
        alphas.append(a[:, 0])
        b = w.norm(dim=1, keepdim=True)
        if j == k - 1:
            break
        betas.append(b[:, 0])
        q_prev, b_prev = Q[j], b
        Q.append(torch.where(b > 1e-12, w / b.clamp_min(1e-300), torch.zeros_like(w)))
    m = len(alphas)
    Tm = torch.diag_embed(torch.stack(alphas, 1))
    if m > 1:
        off = torch.stack(betas[: m - 1], 1)
        Tm = Tm + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    lam, U = torch.linalg.eigh(Tm)
    sq = U @ (lam.clamp_min(0).sqrt()[:, :, None] * U[:, 0, :, None])  # sqrt(T) e1, (B, m, 1)
    Qs = torch.stack(Q[:m], 1)
    return beta0 * torch.einsum("bmn,bm->bn", Qs, sq[..., 0])


def posterior_cov_sqrt_apply(
    field: Field,
    x: Tensor,
    t: Tensor,
    W: Tensor,
    V: Tensor,
    method: str = "auto",
    exact_dim: int = 64,
    lanczos_iters: int = 20,
) -> Callable[[Tensor], Tensor]:
    """``z -> (W^2 Sigma + V I)^{1/2} z`` with ``Sigma = Cov(X_0|X_t=x) = (sigma^2/alpha) dD/dx`` (§5).

    ``method``: ``"analytic"`` (the target's exact posterior covariance; analytic fields only),
    ``"exact"`` (Jacobian by ``torch.func.jacrev``, symmetrised, eigendecomposition),
    ``"lanczos"`` (Jacobian-vector products with ``torch.func.jvp``/``vjp`` and a Lanczos matrix square
    root; never forms the Jacobian), ``"auto"`` (analytic if possible, else exact for
    ``dim <= exact_dim``, else lanczos).
    """
    sde = field.sde
    dtype = compute_dtype(x)
    B = x.shape[0]
    n = x[0].numel()
    W = W.to(dtype)
    V = V.to(dtype)
    if method == "auto":
        if field.analytic and hasattr(field.model, "posterior_covariance") and x.ndim == 2:
            method = "analytic"
        else:
            method = "exact" if n <= exact_dim else "lanczos"
    if method not in ("analytic", "exact", "lanczos"):
        raise ValueError(f"unknown covariance method {method!r}; valid choices: ['auto', 'analytic', 'exact', 'lanczos']")
    alpha, _, sigma = sde.marginal_coefficients(t, x)
    scale = (sigma**2 / alpha).reshape(B).to(dtype)  # sigma^2/alpha per sample

    def D(xx):
        return field(xx, t, "denoiser").to(dtype)

    if method in ("analytic", "exact"):
        if method == "analytic":
            if not (field.analytic and hasattr(field.model, "posterior_covariance")):
                raise ValueError("covariance='analytic' needs an analytic target with posterior_covariance")
            Sigma = field.model.posterior_covariance(x, t, sde).to(dtype)
        else:
            xf = x.to(dtype)
            with torch.enable_grad():
                Jfull = torch.func.jacrev(lambda xx: D(xx).reshape(B, n).sum(0))(xf)  # (n, B, ...)
            J = Jfull.reshape(n, B, n).permute(1, 0, 2)  # J[b] = dD_b/dx_b
            Sigma = scale[:, None, None] * J
        Sigma = 0.5 * (Sigma + Sigma.transpose(-1, -2))
        lam, U = torch.linalg.eigh(Sigma)
        root = (W[:, None] ** 2 * lam.clamp_min(0) + V[:, None]).sqrt()  # (B, n)

        def apply(z):
            zf = z.reshape(B, n)
            return torch.einsum("bij,bj->bi", U, root * torch.einsum("bji,bj->bi", U, zf)).reshape(z.shape)

        return apply

    xf = x.to(dtype)
    with torch.enable_grad():
        _, vjp_fn = torch.func.vjp(D, xf)  # one forward pass, reused for every J^T v

    def matvec(v):  # (W^2 Sigma_sym + V) v with Sigma_sym = scale (J + J^T)/2
        vv = v.reshape(x.shape)
        with torch.enable_grad():
            Jv = torch.func.jvp(D, (xf,), (vv,))[1]
            JTv = vjp_fn(vv)[0]
        Sv = 0.5 * (Jv + JTv).reshape(B, n) * scale[:, None]
        return W[:, None] ** 2 * Sv + V[:, None] * v

    def apply(z):
        return _lanczos_sqrt(matvec, z.reshape(B, n), lanczos_iters).reshape(z.shape)

    return apply


# --------------------------------------------------------------------------------------------
# steppers
# --------------------------------------------------------------------------------------------
class StepState:
    """One step ``t -> s`` in progress: query ``x_eval, t_eval``, feed values with :meth:`advance`."""

    def __init__(self, stepper: "Stepper", x_t: Tensor, t: Tensor, s: Tensor, generator: GeneratorLike = None):
        self.stepper = stepper
        self.x_t = x_t
        self.t, self.s = t, s
        self.generator = generator
        self.stage = 0
        self.nfe = 0
        self.x_eval = x_t
        self.t_eval = t
        self.x: Optional[Tensor] = None
        self.done = False

    @property
    def noise_needed(self) -> bool:
        return self.stepper._noise_needed(self)

    def _noise(self, noise):
        if noise is None:
            noise = randn(self.x_t.shape, generator=self.generator, device=self.x_t.device, dtype=compute_dtype(self.x_t))
        return noise

    def advance(self, F: Tensor, noise: Optional[Tensor] = None, **extra) -> "StepState":
        if self.done:
            raise RuntimeError("this step is already complete; start a new one")
        if self.noise_needed:
            noise = self._noise(noise)
        self.stepper._advance(self, F, noise, **extra)
        self.stage += 1
        self.nfe += 1
        return self


class Stepper:
    """Base stepper (see the module docstring for the protocol)."""

    name = "base"
    needs_midpoint = False
    needs_jacobian = False

    def __init__(self, sde: LinearSDE, parametrization: str, ode: bool):
        self.sde = sde
        self.parametrization = parametrization
        self.ode = bool(ode)
        self.field_kind = parametrization

    @property
    def stochastic(self) -> bool:
        return not self.ode

    evals_per_step = 1

    def midpoint(self, t, s, u):
        raise NotImplementedError(f"{self.name} has no midpoint")

    def start(self, x_t: Tensor, t, s, u=None, generator: GeneratorLike = None) -> StepState:
        t, s = _times(t, x_t), _times(s, x_t)
        if not bool((s < t).all()):
            raise ValueError("a step needs s < t (sampling runs from T down to t_min)")
        st = StepState(self, x_t, t, s, generator)
        self._init(st, u)
        return st

    def _init(self, st: StepState, u):
        pass

    def _noise_needed(self, st: StepState) -> bool:
        return self.stochastic

    def __repr__(self):
        return f"{type(self).__name__}(sde={self.sde!r}, parametrization={self.parametrization!r}, ode={self.ode})"


class EulerStepper(Stepper):
    name = "euler"

    def __init__(self, sde, parametrization="score", ode=False, method="auto"):
        super().__init__(sde, "score", ode)  # method: unused (no integrator), accepted for uniformity

    def _advance(self, st, F, noise, **extra):
        st.x = euler_step(st.x_t, F, st.t, st.s, self.sde, noise, self.ode).to(st.x_t.dtype)
        st.done = True


class ExpEulerStepper(Stepper):
    name = "exponential_euler"

    def __init__(self, sde, parametrization="denoiser", ode=False, method="auto"):
        super().__init__(sde, parametrization, ode)
        self.integ = get_integrator(sde, parametrization, ode, method)

    def _advance(self, st, F, noise, **extra):
        st.x = exp_euler_step(st.x_t, F, st.t, st.s, self.integ, noise).to(st.x_t.dtype)
        st.done = True


class LocalizationStepper(ExpEulerStepper):
    """Discrete-time stochastic localization (Reeves & Pfister, "Information-Theoretic Proofs for Diffusion Sampling" eq. 1) == denoiser exponential Euler (§5)."""

    name = "localization"

    def __init__(self, sde, parametrization="denoiser", ode=False, method="auto"):
        super().__init__(sde, "denoiser", False, method)


class DDRaMStepper(Stepper):
    """Randomized-midpoint steps.  ``parametrization="auto"`` (the default) freezes the relative score
    on steps that are short in log-SNR (``log snr(s) - log snr(t) < AUTO_LOG_SNR_STEP``) and the
    denoiser on longer ones: over a short step the relative score barely moves and DDRaM's midpoint
    correction is at its most accurate, while over a long step it changes by orders of magnitude and
    the denoiser, bounded by the data, is the stable choice (docs/samplers.md, "Defaults").  Each step
    is then an ordinary DDRaM step of one parametrization: :meth:`for_step` returns it, and every
    :class:`StepState` says which field it needs in ``st.stepper.field_kind``."""

    name = "ddram"
    needs_midpoint = True
    evals_per_step = 2

    def __init__(self, sde, parametrization="auto", ode=False, method="auto"):
        super().__init__(sde, parametrization, ode)
        if parametrization == "auto":
            self.field_kind = "denoiser"  # the kind of the long steps; short ones ask for relative_score
            self.integ = None
            self._subs = {p: DDRaMStepper(sde, p, ode, method) for p in ("relative_score", "denoiser")}
        else:
            self.integ = get_integrator(sde, parametrization, ode, method)
            self._subs = None

    def for_step(self, t, s) -> "DDRaMStepper":
        """The stepper of one step ``t -> s`` (itself unless ``parametrization="auto"``); per-sample
        times are decided by the longest step of the batch."""
        if self._subs is None:
            return self
        lt = torch.log(self.sde.snr(torch.as_tensor(t, dtype=torch.float64)))
        ls = torch.log(self.sde.snr(torch.as_tensor(s, dtype=torch.float64)))
        short = bool(((ls - lt) < AUTO_LOG_SNR_STEP).all())
        return self._subs["relative_score" if short else "denoiser"]

    def start(self, x_t: Tensor, t, s, u=None, generator: GeneratorLike = None) -> StepState:
        if self._subs is not None:
            return self.for_step(t, s).start(x_t, t, s, u=u, generator=generator)
        return super().start(x_t, t, s, u=u, generator=generator)

    def midpoint(self, t, s, u):
        if self._subs is not None:
            return self.for_step(t, s).midpoint(t, s, u)
        return self.integ.midpoint(s, t, u)

    def _init(self, st, u):
        if u is None:
            u = rand((st.x_t.shape[0],), generator=st.generator, dtype=torch.float64)
        u = torch.as_tensor(u, dtype=torch.float64).to(st.t.device)
        st.u = u
        st.tau = _times(self.midpoint(st.t, st.s, u), st.x_t)

    def _advance(self, st, F, noise, **extra):
        if st.stage == 0:
            x_tau, st.carry = ddram_midpoint(st.x_t, F, st.t, st.tau, self.integ, noise)
            st.x_eval, st.t_eval = x_tau.to(st.x_t.dtype), st.tau
        else:
            st.x = ddram_finish(st.x_t, F, st.t, st.tau, st.s, st.carry, self.integ, noise).to(st.x_t.dtype)
            st.done = True


class PCStepper(Stepper):
    """Predictor (exponential_euler (default) / euler / ddram) + ``n_corrector`` Langevin steps.

    The default predictor is exponential Euler (denoiser): on the shipped MNIST network PC reaches
    FID-MNIST 88 / 14 at 10 / 20 evaluations with it against 417 / 145 with Euler-Maruyama
    (docs/samplers.md)."""

    name = "pc"

    def __init__(self, sde, parametrization=None, ode=False, predictor="exponential_euler", n_corrector=1, snr=0.16, corrector="after", method="auto", snr_norm="capped"):
        predictor = str(predictor).lower()
        if snr_norm not in SNR_NORMS:
            raise ValueError(f"snr_norm={snr_norm!r} is invalid; valid choices: {list(SNR_NORMS)}")
        self.snr_norm = snr_norm
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; valid choices: {list(PREDICTORS)}")
        if corrector not in ("after", "before"):
            raise ValueError(f"corrector={corrector!r} is invalid; valid choices: ['after', 'before']")
        if isinstance(n_corrector, bool) or int(n_corrector) != n_corrector or n_corrector < 0:
            raise ValueError(f"n_corrector={n_corrector!r} is invalid; it must be an integer >= 0")
        if not (math.isfinite(float(snr)) and float(snr) > 0):
            raise ValueError(f"snr={snr!r} is invalid; it must be a finite number > 0")
        valid = tuple(p for p in SAMPLER_PARAMETRIZATIONS[predictor] if p != "auto")  # one field for the corrector
        param = valid[0] if parametrization is None else canonical_parametrization(parametrization, valid)
        self.predictor = _make(predictor, sde, param, ode, method=method)
        super().__init__(sde, self.predictor.parametrization, ode)
        self.n_corrector = int(n_corrector)
        self.snr = float(snr)
        self.corrector = corrector

    @property
    def stochastic(self):
        return True  # the corrector is always stochastic

    @property
    def needs_midpoint(self):
        return self.predictor.needs_midpoint

    @property
    def evals_per_step(self):
        return self.predictor.evals_per_step + self.n_corrector

    def midpoint(self, t, s, u):
        return self.predictor.midpoint(t, s, u)

    def _init(self, st, u):
        st.kappa = torch.exp(2 * (self.sde.log_alpha(st.t) - self.sde.log_alpha(st.s)))  # alpha_t^2/alpha_s^2
        st.pred = None
        st.pred_u = u
        st.n_corr_done = 0
        if self.corrector == "after" or self.n_corrector == 0:
            self._start_predictor(st, st.x_t)
        else:
            st.x_eval, st.t_eval = st.x_t, st.t

    def _start_predictor(self, st, x):
        st.pred = self.predictor.start(x, st.t, st.s, u=st.pred_u, generator=st.generator)
        st.x_eval, st.t_eval = st.pred.x_eval, st.pred.t_eval

    def _in_corrector(self, st):
        if self.corrector == "after":
            return st.pred is not None and st.pred.done
        return st.n_corr_done < self.n_corrector

    def _noise_needed(self, st):
        if self._in_corrector(st):
            return True
        return st.pred.noise_needed

    def _advance(self, st, F, noise, **extra):
        if self._in_corrector(st):
            score = F if self.field_kind == "score" else convert(F, self.field_kind, "score", st.x_eval, st.t_eval, self.sde)
            kappa = st.kappa.to(compute_dtype(st.x_eval))
            sigma = self.sde.sigma(st.t_eval).to(compute_dtype(st.x_eval))
            x = langevin_corrector_step(st.x_eval, score, self.snr, kappa, noise, self.snr_norm, sigma).to(st.x_t.dtype)
            st.n_corr_done += 1
            if self.corrector == "after":
                st.x_eval = x
                if st.n_corr_done == self.n_corrector:
                    st.x, st.done = x, True
            else:
                st.x_eval = x
                if st.n_corr_done == self.n_corrector:
                    self._start_predictor(st, x)
            return
        st.pred.advance(F, noise)
        if st.pred.done:
            if self.corrector == "after" and self.n_corrector > 0:
                st.x_eval, st.t_eval = st.pred.x, st.s
            else:
                st.x, st.done = st.pred.x, True
        else:
            st.x_eval, st.t_eval = st.pred.x_eval, st.pred.t_eval


class MomentMatchingStepper(ExpEulerStepper):
    """Second-order moment matching (Reeves & Pfister, "Information-Theoretic Proofs for Diffusion Sampling" Remark 5).  ``advance(D, noise, cov_sqrt_apply=...)``
    needs the posterior-covariance square root, i.e. Jacobians of the network: :func:`sample`
    builds it with :func:`posterior_cov_sqrt_apply`; a diffusers pipeline cannot."""

    name = "moment_matching"
    needs_jacobian = True

    def __init__(self, sde, parametrization="denoiser", ode=False, method="auto", covariance="auto", exact_dim=64, lanczos_iters=20):
        super().__init__(sde, "denoiser", False, method)
        if covariance not in ("auto", "analytic", "exact", "lanczos"):
            raise ValueError(f"unknown covariance method {covariance!r}; valid choices: ['auto', 'analytic', 'exact', 'lanczos']")
        self.covariance = covariance
        self.exact_dim = int(exact_dim)
        self.lanczos_iters = int(lanczos_iters)

    def cov_sqrt(self, field: Field, st: StepState):
        """``z -> (W^2 Sigma + V I)^{1/2} z`` at the step's start; the forward passes made for
        Jacobian(-vector) products are not counted as field evaluations (``field.nfe``) but in
        ``field.jacobian_evals`` (a cost reported separately)."""
        _, W, V = self.integ.coefficients(st.s, st.t)
        n0 = field.nfe
        apply = posterior_cov_sqrt_apply(field, st.x_t, st.t, W, V, self.covariance, self.exact_dim, self.lanczos_iters)

        def counted(z):
            m0 = field.nfe
            out = apply(z)
            field.jacobian_evals = getattr(field, "jacobian_evals", 0) + field.nfe - m0
            field.nfe = m0
            return out

        field.jacobian_evals = getattr(field, "jacobian_evals", 0) + field.nfe - n0
        field.nfe = n0
        return counted

    def _advance(self, st, F, noise, cov_sqrt_apply=None, **extra):
        if cov_sqrt_apply is None:
            raise ValueError("moment_matching needs cov_sqrt_apply (Jacobians of the denoiser); use sample()")
        st.x = moment_matching_step(st.x_t, F, cov_sqrt_apply, st.t, st.s, self.integ, noise).to(st.x_t.dtype)
        st.done = True


_STEPPERS = {
    "euler": EulerStepper,
    "exponential_euler": ExpEulerStepper,
    "ddram": DDRaMStepper,
    "pc": PCStepper,
    "localization": LocalizationStepper,
    "moment_matching": MomentMatchingStepper,
}


def _make(name, sde, param, ode, **options):
    return _STEPPERS[name](sde, param, ode, **options)


def _check_sampler(sampler: str) -> str:
    key = str(sampler).lower()
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid choices: {list(SAMPLERS)}")
    return key


def get_stepper(sampler: str, sde: LinearSDE, parametrization: Optional[str] = None, ode: bool = False, **options) -> Stepper:
    """Build the stepper of a sampler, validating every name before any work."""
    sampler = _check_sampler(sampler)
    if sampler in ("localization", "moment_matching") and ode:
        raise ValueError(f"sampler {sampler!r} has no ODE form (ode=True); use exponential_euler with parametrization='denoiser', ode=True (DDIM)")
    import inspect

    allowed = set(inspect.signature(_STEPPERS[sampler].__init__).parameters) - {"self", "sde", "parametrization", "ode"}
    bad = set(options) - allowed
    if bad:
        raise ValueError(f"unknown option(s) {sorted(bad)} for sampler {sampler!r}; valid options: {sorted(allowed)}")
    if sampler == "pc":
        if ode:
            raise ValueError("sampler 'pc' has no ODE form (the Langevin corrector is stochastic)")
        return PCStepper(sde, parametrization, False, **options)
    valid = SAMPLER_PARAMETRIZATIONS[sampler]
    if parametrization is None:
        param = valid[0]
    else:
        try:
            param = canonical_parametrization(parametrization, valid)
        except ValueError:
            raise ValueError(
                f"sampler {sampler!r} does not support parametrization {parametrization!r}; valid choices: {list(valid)}"
            ) from None
    return _make(sampler, sde, param, ode, **options)


# --------------------------------------------------------------------------------------------
# the sampling loop
# --------------------------------------------------------------------------------------------
class SampleResult(NamedTuple):
    samples: Tensor
    nfe: int
    trajectory: Optional[Tensor] = None
    times: Optional[Tensor] = None


def _initial_state(sde, x_T, shape, generator, device, dtype) -> Tensor:
    """``x_T`` (moved to ``device``) or a draw from the prior of shape ``shape``."""
    if x_T is not None:
        return x_T.to(device=device) if device is not None else x_T
    if shape is None:
        raise ValueError("give x_T or shape")
    return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)


def _time_grid(sde, timesteps, steps, schedule, device) -> Tensor:
    """The step grid: explicit ``timesteps`` (strictly decreasing) or ``steps`` of ``schedule``."""
    if timesteps is None:
        return get_timesteps(sde, steps, schedule, device=device).to(device)
    grid = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("timesteps must be a strictly decreasing sequence of at least 2 times")
    return grid.to(device)


def _check_midpoint_u(midpoint_u, stepper, sampler: str, grid: Tensor, x: Tensor):
    if midpoint_u is None:
        return None
    if not stepper.needs_midpoint:
        raise ValueError(f"midpoint_u is only used by samplers with a random midpoint; {sampler!r} has none")
    midpoint_u = torch.as_tensor(midpoint_u, dtype=torch.float64, device=x.device)
    n = grid.numel() - 1
    if midpoint_u.shape not in ((n,), (n, x.shape[0])):
        raise ValueError(
            f"midpoint_u of shape {tuple(midpoint_u.shape)} does not fit {n} steps and a batch "
            f"of {x.shape[0]}; expected ({n},) or ({n}, {x.shape[0]})"
        )
    if not bool(((midpoint_u > 0) & (midpoint_u < 1)).all()):
        raise ValueError("midpoint_u must lie strictly inside (0, 1)")
    return midpoint_u


def _progress_bar(progress, n_steps: int, sampler: str):
    if progress is None:
        progress = n_steps >= 100 and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n_steps, desc=f"{sampler} x{n_steps}", unit="step", file=sys.stderr)


def _step_with_known(stepper, field, x: Tensor, t: Tensor, s: Tensor, u, generator, inpaint) -> Tensor:
    """One step, with the known part replaced (and the RePaint repeats) when inpainting."""
    if inpaint is None:
        return _one_step(stepper, field, x, t, s, u, generator)
    for j in range(inpaint.resample):
        x = inpaint.replace(_one_step(stepper, field, x, t, s, u, generator), s, generator)
        if j < inpaint.resample - 1:  # RePaint: back to t, and the step again
            x = inpaint.renoise(x, s, t, generator)
    return x


def _one_step(stepper, field, x: Tensor, t: Tensor, s: Tensor, u, generator) -> Tensor:
    """One step of ``stepper`` from ``t`` to ``s`` with its field evaluations."""
    st = stepper.start(x, t, s, u=u, generator=generator)
    while not st.done:
        extra = {}
        if stepper.needs_jacobian:
            extra["cov_sqrt_apply"] = stepper.cov_sqrt(field, st)
        F = field(st.x_eval, st.t_eval, st.stepper.field_kind)
        st.advance(F, **extra)
    return st.x


def sample(
    field,
    sde: LinearSDE,
    x_T: Optional[Tensor] = None,
    shape: Optional[Sequence[int]] = None,
    sampler: str = "ddram",
    steps: int = 50,
    schedule: Optional[str] = None,
    parametrization: Optional[str] = None,
    ode: bool = False,
    generator: GeneratorLike = None,
    return_trajectory: bool = False,
    final_denoise: bool = False,
    timesteps: Optional[Tensor] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    prediction_type: Optional[str] = None,
    midpoint_u: Optional[Tensor] = None,
    class_labels=None,
    guidance_scale: float = 1.0,
    known: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    resample: int = 1,
    progress: Optional[bool] = None,
    **sampler_options,
) -> SampleResult:
    """Integrate the reverse dynamics of ``sde`` from ``T`` down to ``t_min`` (docs/maths.md §4–§5).

    Args:
        field: a :class:`~lit_diffusion.fields.Field`, an ``nn.Module`` with ``prediction_type``
            (or pass ``prediction_type=``), or an analytic target (e.g. ``GaussianMixture``).
        x_T: the starting state; drawn from the prior with ``shape`` when None.
        sampler: one of :data:`SAMPLERS`; ``sampler_options`` go to its stepper
            (pc: ``predictor, n_corrector, snr, corrector, snr_norm``; moment_matching: ``covariance,
            exact_dim, lanczos_iters``; all exponential ones: ``method`` of the integrator).
        steps, schedule: the time grid (:func:`lit_diffusion.schedules.get_timesteps`; default
            :func:`default_schedule`: ``uniform``), or an explicit decreasing ``timesteps`` tensor.
        parametrization: the frozen field (``score``, ``relative_score``, ``denoiser``).
        generator: one ``torch.Generator`` or one per sample (batch-size invariance).
        final_denoise: replace the output by ``D(x, t_min)`` (one more evaluation).
        midpoint_u: DDRaM only: the uniforms of the midpoints, one per step ``(steps,)`` (shared by
            the batch, as :class:`~lit_diffusion.scheduler.SDEScheduler` draws them) or per step and
            sample ``(steps, B)``; drawn from ``generator`` per sample when None.
        class_labels: one class label per sample (or one for all; ``-1``: no label) for a
            class-conditional network or the components of an analytic mixture.
        guidance_scale: classifier-free guidance weight ``w`` (1: conditional, 0: unconditional;
            :class:`~lit_diffusion.fields.Field`): every evaluation of every sampler, DDRaM's
            midpoint and the corrector steps included, is the guided one.
        known, mask, resample: inpainting (:mod:`lit_diffusion.inpainting`): ``mask`` is 1 where
            ``known`` is kept and 0 where the state is generated; after every step the known part is
            replaced by its forward-noised value, and ``resample > 1`` repeats each step that many
            times after noising back (RePaint).  The returned samples hold ``known`` exactly where
            ``mask`` is 1.
        progress: a progress bar over the steps on stderr (``None``: only for runs of 100 steps or
            more when stderr is a terminal).

    Returns:
        :class:`SampleResult` ``(samples, nfe, trajectory, times)`` (a named tuple).
    """
    # --- validate everything before any work
    sampler = _check_sampler(sampler)
    if schedule is None:
        schedule = default_schedule(sampler)
    if timesteps is None:
        check_schedule(schedule)
        _check_steps(steps)
    stepper = get_stepper(sampler, sde, parametrization, ode, **sampler_options)
    from .inpainting import as_known_part

    inpaint = as_known_part(sde, known, mask, resample)
    field = as_field(field, sde, prediction_type=prediction_type, class_labels=class_labels, guidance_scale=guidance_scale)
    x = _initial_state(sde, x_T, shape, generator, device, dtype)
    grid = _time_grid(sde, timesteps, steps, schedule, x.device)
    midpoint_u = _check_midpoint_u(midpoint_u, stepper, sampler, grid, x)
    if inpaint is not None:
        inpaint.check(x)
        x = inpaint.replace(x, grid[0], generator)
    nfe0 = field.nfe
    traj = [x] if return_trajectory else None
    n_steps = grid.numel() - 1
    bar = _progress_bar(progress, n_steps, sampler)
    with torch.no_grad():
        for k in range(n_steps):
            if bar is not None:
                bar.update(1)
            u = None if midpoint_u is None else midpoint_u[k]
            x = _step_with_known(stepper, field, x, grid[k], grid[k + 1], u, generator, inpaint)
            if traj is not None:
                traj.append(x)
        if final_denoise:
            x = field(x, grid[-1].expand(x.shape[0]), "denoiser").to(x.dtype)
        if inpaint is not None:
            x = inpaint.finish(x)
        if traj is not None:
            traj[-1] = x
    if bar is not None:
        bar.close()
    return SampleResult(x, field.nfe - nfe0, torch.stack(traj) if traj is not None else None, grid)
