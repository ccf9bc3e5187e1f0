"""Pure step functions of the samplers (docs/maths.md §5): one step, or one stage of a step, as a
function of the state, the field values and the noise; no network call, no loop. The steppers of
:mod:`lit_diffusion.sampling.steppers` drive them."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..core.linear_sde import per_sample_times
from ..core.sdes import LinearSDE, broadcast_to, compute_dtype
from ..core.fields import Field
from ..core.utils import GeneratorLike, randn
from .integrators import ExpIntegrator

__all__ = [
    "euler_step", "exp_euler_step", "langevin_corrector_step", "Stepper",
    "moment_matching_step", "posterior_cov_sqrt_apply", "SNR_NORMS", "CORRECTOR_RATIO_CAP", "StepState",
    "corrector_kappa",
]


# helpers
# --------------------------------------------------------------------------------------------
def as_times(t, x: Tensor) -> Tensor:
    """``t`` as a float64 tensor of shape (B,) on x's device."""
    return per_sample_times(t, x, torch.float64)


def per_sample_coef(coef: Tensor, x: Tensor) -> Tensor:
    """float64 per-sample coefficient -> compute dtype, broadcast against x."""
    return broadcast_to(coef.to(dtype=compute_dtype(x)), x)


def centred(sde: LinearSDE, x: Tensor, t: Tensor) -> Tensor:
    dtype = compute_dtype(x)
    return x.to(dtype) - per_sample_coef(sde.mean_offset(t), x)


def uncentre(sde: LinearSDE, xc: Tensor, s: Tensor) -> Tensor:
    return xc + per_sample_coef(sde.mean_offset(s), xc)


def per_sample_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)


# --------------------------------------------------------------------------------------------
# pure step functions (field values are inputs)
# --------------------------------------------------------------------------------------------
def euler_step(x_t: Tensor, score: Tensor, t, s, sde: LinearSDE, noise: Optional[Tensor] = None, ode: bool = False) -> Tensor:
    """Euler–Maruyama for the reverse SDE (§5, Claustre, "Score-Based Diffusion Models via SDEs" eq. 13), or Euler for the probability-flow
    ODE: ``X_s = X_t - h [a X_t + b - k g^2 s] + g sqrt(h) z`` with ``k = 1`` (SDE) or ``1/2`` (ODE)."""
    t, s = as_times(t, x_t), as_times(s, x_t)
    dtype = compute_dtype(x_t)
    x = x_t.to(dtype)
    a, b = sde.drift_coefficients(t)
    g2 = sde.g2(t)
    h = t - s
    kfac = 0.5 if ode else 1.0
    out = x - per_sample_coef(h, x) * (per_sample_coef(a, x) * x + per_sample_coef(b, x) - kfac * per_sample_coef(g2, x) * score.to(dtype))
    if not ode:
        out = out + per_sample_coef(torch.sqrt(g2 * h), x) * noise.to(dtype)
    return out


def exp_euler_step(x_t: Tensor, F_t: Tensor, t, s, integ: ExpIntegrator, noise: Optional[Tensor] = None) -> Tensor:
    """Exponential Euler (§5): ``X~_s = Phi(s,t) X~_t + W(s,t) F_t + sqrt(V(s,t)) z``."""
    t, s = as_times(t, x_t), as_times(s, x_t)
    sde = integ.sde
    xc = centred(sde, x_t, t)
    phi, W, V = integ.coefficients(s, t)
    out = per_sample_coef(phi, xc) * xc + per_sample_coef(W, xc) * F_t.to(xc.dtype)
    if not integ.ode:
        out = out + per_sample_coef(torch.sqrt(V), xc) * noise.to(xc.dtype)
    return uncentre(sde, out, s)


SNR_NORMS = ("capped", "sample", "batch")
#: ``snr_norm="capped"``: the per-sample ratio ``||z||^2 / ||s||^2`` is capped at ``CAP * sigma(t)^2``
CORRECTOR_RATIO_CAP = 4.0


def corrector_kappa(sde: LinearSDE, t: Tensor, s: Tensor) -> Tensor:
    """``kappa = alpha_t^2 / alpha_s^2`` of the predictor step ``t -> s``: the factor of the corrector's
    step size (docs/maths.md §5); the one formula for the stepper and the scheduler's plan."""
    return torch.exp(2 * (sde.log_alpha(t) - sde.log_alpha(s)))


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
    z_norm, s_norm = per_sample_norm(noise), per_sample_norm(score)
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
    t, s = as_times(t, x_t), as_times(s, x_t)
    sde = integ.sde
    xc = centred(sde, x_t, t)
    phi, W, _ = integ.coefficients(s, t)
    out = per_sample_coef(phi, xc) * xc + per_sample_coef(W, xc) * D_t.to(xc.dtype) + cov_sqrt_apply(noise.to(xc.dtype)).to(xc.dtype)
    return uncentre(sde, out, s)


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
# one step in progress (the state a stepper's start() returns)
# --------------------------------------------------------------------------------------------
class StepState:
    """One step ``t -> s`` in progress: query ``x_eval, t_eval``, feed values with :meth:`advance`."""

    def __init__(self, stepper, x_t: Tensor, t: Tensor, s: Tensor, generator: GeneratorLike = None):
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

    def draw_noise(self, noise: Optional[Tensor] = None) -> Tensor:
        """``noise``, or a standard normal draw of the state's shape from the step's generator."""
        if noise is None:
            noise = randn(self.x_t.shape, generator=self.generator, device=self.x_t.device, dtype=compute_dtype(self.x_t))
        return noise

    def advance(self, F: Tensor, noise: Optional[Tensor] = None, **extra) -> "StepState":
        if self.done:
            raise RuntimeError("this step is already complete; start a new one")
        if self.noise_needed:
            noise = self.draw_noise(noise)
        self.stepper._advance(self, F, noise, **extra)
        self.stage += 1
        self.nfe += 1
        return self


# --------------------------------------------------------------------------------------------
# the base of the steppers (lit_diffusion.sampling.steppers)
# --------------------------------------------------------------------------------------------
class Stepper:
    """Base stepper (see the module docstring for the protocol)."""

    name = "base"
    needs_midpoint = False
    needs_jacobian = False

    #: ODE form only: steps run from ``t`` up to ``s > t`` (encoding data to noise, set by
    #: :meth:`inverted`); the closed-form integrals of §5 hold in either direction.
    inverse = False

    def __init__(self, sde: LinearSDE, parametrization: str, ode: bool):
        self.sde = sde
        self.parametrization = parametrization
        self.ode = bool(ode)
        self.field_kind = parametrization

    def inverted(self) -> "Stepper":
        """This stepper running upwards in time (ODE form only): ``start(x, t, s)`` with ``s > t``."""
        if not self.ode:
            raise ValueError(f"{self.name}: inverse steps (encoding data to noise) need the ODE form: ode=True")
        self.inverse = True
        for sub in (getattr(self, "_subs", None) or {}).values():
            sub.inverted()
        return self

    @property
    def stochastic(self) -> bool:
        return not self.ode

    evals_per_step = 1

    def midpoint(self, t, s, u):
        raise NotImplementedError(f"{self.name} has no midpoint")

    def start(self, x_t: Tensor, t, s, u=None, generator: GeneratorLike = None) -> StepState:
        t, s = as_times(t, x_t), as_times(s, x_t)
        if self.inverse and not bool((s > t).all()):
            raise ValueError("an inverse step needs s > t (encoding runs from t_min up to T)")
        if not self.inverse and not bool((s < t).all()):
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
