"""Score-matching training losses (docs/maths.md §3; Claustre, "Score-Based Diffusion Models via SDEs" §4).

Every loss is a small callable object::

    loss = DSM(weighting="sigma2")
    value = loss(model, sde, x0, generator=None)            # scalar (mean over the batch)
    values = loss.per_sample(model, sde, x0, generator=None)  # (B,)

``model`` is anything :func:`lit_diffusion.core.fields.as_field` accepts: an ``nn.Module`` (or callable)
``model(x, t)`` with a declared ``prediction_type`` (``score``, ``epsilon``, ``denoiser``, ``v``,
``relative_score``), or an analytic target.  The network output is converted exactly (§2) into the
noise prediction ``eps_hat = -sigma s_theta``, and every loss is evaluated in that epsilon space,
which stays O(1) at small ``t`` where the score itself blows up like ``1/sigma``:

* DSM  ``lambda ||s + eps/sigma||^2           = (lambda/sigma^2) ||eps_hat - eps||^2``
* SSM  ``lambda [||s||^2 + 2 v^T d(v^T s)/dx] = (lambda/sigma^2) [||eps_hat||^2 - 2 sigma v^T d(v^T eps_hat)/dx]``
  (variance-reduced; the plain variant replaces ``||s||^2`` by ``(v^T s)^2``)
* ISM  ``lambda [||s||^2 + 2 div s]           = (lambda/sigma^2) [||eps_hat||^2 - 2 sigma div eps_hat]``
* ESM  ``lambda ||s - grad log p_t||^2        = (lambda/sigma^2) ||eps_hat - eps_star||^2``

Time is drawn per sample, ``t ~ U(t_eps, T)`` (``t_eps`` defaults to ``sde.t_min``), and
``x_t = alpha x0 + m + sigma eps``.  The objective of every loss is the uniform-time average
``J = E_{t ~ U(t_eps, T)} lambda(t) l(t)``.  With ``importance_sampling=True``, ``t`` is drawn from the
density ``p(t) ∝ g(t)^2 / sigma(t)^2`` (the likelihood weighting divided by ``sigma^2``) and each
sample is reweighted by ``lambda(t) / ((T - t_eps) p(t))``, so the estimate is unbiased for the same
``J`` whatever the weighting; for ``weighting="likelihood"`` the DSM weight becomes the constant
``Z / (T - t_eps)`` and the variance drops sharply.  Because ``g^2/sigma^2 = -d log(lambda_snr)/dt``
(``lambda_snr = alpha^2/sigma^2``, §1), the CDF of ``p`` is
``(log snr(t_eps) - log snr(t)) / (log snr(t_eps) - log snr(T))`` and its inverse is exact through
``sde.t_from_snr``: no table or quadrature is needed (the tests check it against float64 quadrature).

SSM, ISM and DSM equal ESM up to a constant that does not depend on the network (§3): for DSM the
constant is ``E_t lambda (d/sigma^2 - E||grad log p_t||^2)``, for ISM and SSM ``-E_t lambda E||grad log
p_t||^2``.  ``tests/training/test_losses.py`` checks this with two different networks.

The squared norms are summed over all non-batch axes by default (``dim_reduction="sum"``, the
convention of the identities above); ``dim_reduction="mean"`` divides by the number of elements
(the usual scale for image training).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..core.fields import as_field
from ..core.sdes import LinearSDE, broadcast_to, compute_dtype
from ..core.utils import GeneratorLike, rand, randn

__all__ = [
    "WEIGHTINGS",
    "ScoreMatchingLoss",
    "DSM",
    "SSM",
    "ISM",
    "ESM",
    "LOSSES",
    "get_loss",
    "sample_importance_time",
    "importance_normalizer",
]

WEIGHTINGS = ("sigma2", "likelihood", "none", "min_snr")
_WEIGHTING_ALIASES = {
    "sigma^2": "sigma2", "g2": "likelihood", "g^2": "likelihood", "uniform": "none", "1": "none", "min-snr": "min_snr",
}
_DIM_REDUCTIONS = ("sum", "mean")
_PROJECTIONS = ("gaussian", "rademacher")


def _canonical_weighting(name) -> str:
    key = str(name).lower()
    key = _WEIGHTING_ALIASES.get(key, key)
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; valid choices: {list(WEIGHTINGS)}")
    return key


# --------------------------------------------------------------------------------------------
# Importance sampling of t with density ∝ g^2 / sigma^2 on [t_eps, T]
# --------------------------------------------------------------------------------------------
def importance_normalizer(sde: LinearSDE, t_eps: float) -> float:
    """``Z = int_{t_eps}^T g^2/sigma^2 dt = log snr(t_eps) - log snr(T)`` (float64)."""
    lo = sde.log_snr(torch.tensor(float(t_eps), dtype=torch.float64))
    hi = sde.log_snr(torch.tensor(float(sde.T), dtype=torch.float64))
    return float(lo - hi)


def sample_importance_time(sde: LinearSDE, u: Tensor, t_eps: float) -> Tensor:
    """Map ``u ~ U(0, 1)`` (any shape) to ``t`` with density ``∝ g^2/sigma^2`` on ``[t_eps, T]``.

    Exact inverse CDF in float64: ``t = t_from_snr(exp(log snr(t_eps) - u Z))``; returned in
    float64 and clamped into ``[t_eps, T]`` against rounding.
    """
    u = u.to(torch.float64)
    lo = sde.log_snr(torch.tensor(float(t_eps), dtype=torch.float64, device=u.device))
    Z = importance_normalizer(sde, t_eps)
    t = sde.t_from_snr(torch.exp(lo - u * Z))
    return t.clamp(float(t_eps), float(sde.T))


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
class ScoreMatchingLoss:
    """Shared machinery: time sampling, weighting, perturbation, reduction.

    Args:
        weighting: ``"sigma2"`` (λ = σ², default; DSM then equals the ε-prediction MSE),
            ``"likelihood"`` (λ = g²), ``"none"`` (λ = 1) or ``"min_snr"`` (λ = σ² min(SNR, γ) / SNR:
            the ε-prediction MSE weighted by ``min(SNR, γ) / SNR``, Hang et al., "Efficient
            Diffusion Training via Min-SNR Weighting Strategy"; SNR = α²/σ²).
        min_snr_gamma: γ of ``weighting="min_snr"`` (5 by default, the paper's value).
        t_eps: smallest training time (default: the SDE's ``t_min``); must satisfy ``0 < t_eps < T``.
        importance_sampling: draw ``t`` with density ∝ g²/σ² and reweight (unbiased for the same
            objective); meant for ``weighting="likelihood"`` but valid for any weighting.
        dim_reduction: ``"sum"`` (default) or ``"mean"`` over the non-batch axes.
        prediction_type: overrides the model's declared ``prediction_type``.
    """

    name = "base"

    def __init__(
        self,
        weighting: str = "sigma2",
        t_eps: Optional[float] = None,
        importance_sampling: bool = False,
        dim_reduction: str = "sum",
        prediction_type: Optional[str] = None,
        min_snr_gamma: float = 5.0,
    ):
        self.weighting = _canonical_weighting(weighting)
        if not (math.isfinite(float(min_snr_gamma)) and float(min_snr_gamma) > 0):
            raise ValueError(f"{type(self).__name__}: min_snr_gamma={min_snr_gamma!r} is invalid; it must be a finite number > 0")
        self.min_snr_gamma = float(min_snr_gamma)
        if t_eps is not None:
            t_eps = float(t_eps)
            if not (math.isfinite(t_eps) and t_eps > 0):
                raise ValueError(f"{type(self).__name__}: t_eps={t_eps!r} is invalid; it must be a finite number > 0")
        self.t_eps = t_eps
        self.importance_sampling = bool(importance_sampling)
        if dim_reduction not in _DIM_REDUCTIONS:
            raise ValueError(f"unknown dim_reduction {dim_reduction!r}; valid choices: {list(_DIM_REDUCTIONS)}")
        self.dim_reduction = dim_reduction
        if prediction_type is not None:
            from ..core.parametrizations import canonical_prediction

            prediction_type = canonical_prediction(prediction_type)
        self.prediction_type = prediction_type

    # ---- time ----------------------------------------------------------------------------------
    def time_range(self, sde: LinearSDE) -> tuple[float, float]:
        t_eps = sde.t_min if self.t_eps is None else self.t_eps
        if not t_eps < sde.T:
            raise ValueError(
                f"{type(self).__name__}: t_eps={t_eps!r} is invalid for {sde!r}; the valid range is 0 < t_eps < T={sde.T!r}"
            )
        return t_eps, sde.T

    def lam(self, sde: LinearSDE, t: Tensor) -> Tensor:
        """The weighting ``λ(t)`` (per sample)."""
        if self.weighting == "sigma2":
            return sde.sigma2(t)
        if self.weighting == "likelihood":
            return sde.g2(t)
        if self.weighting == "min_snr":
            snr = sde.snr(t)
            return sde.sigma2(t) * torch.clamp(snr, max=self.min_snr_gamma) / snr
        return torch.ones_like(t)

    def sample_time(
        self, sde: LinearSDE, batch: int, generator: GeneratorLike = None, device=None, dtype=torch.float32
    ) -> tuple[Tensor, Tensor]:
        """Per-sample times ``t`` (B,) and effective weights ``w(t)`` (B,) so that
        ``E[w(t) l(t)] = E_{t ~ U(t_eps, T)}[λ(t) l(t)]``."""
        t_eps, T = self.time_range(sde)
        u = rand((batch,), generator=generator, device=device, dtype=torch.float64)
        if self.importance_sampling:
            t = sample_importance_time(sde, u, t_eps)
            Z = importance_normalizer(sde, t_eps)
            density = sde.g2(t) / sde.sigma2(t) / Z
            w = self.lam(sde, t) / ((T - t_eps) * density)
        else:
            t = t_eps + (T - t_eps) * u
            w = self.lam(sde, t)
        return t.to(dtype), w.to(dtype)

    # ---- helpers -------------------------------------------------------------------------------
    def _reduce(self, v: Tensor) -> Tensor:
        v = v.flatten(1)
        return v.sum(1) if self.dim_reduction == "sum" else v.mean(1)

    def _prepare(self, model, sde, x0, generator, class_labels=None):
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"{type(self).__name__}: sde must be a lit_diffusion.core.sdes.LinearSDE; got {type(sde).__name__}")
        if x0.ndim < 2:
            raise ValueError(f"{type(self).__name__}: x0 must have a batch axis, shape (B, ...); got {tuple(x0.shape)}")
        dtype = compute_dtype(x0)
        x0 = x0.to(dtype)
        B = x0.shape[0]
        field = as_field(model, sde, prediction_type=self.prediction_type, class_labels=class_labels)
        t, w = self.sample_time(sde, B, generator=generator, device=x0.device, dtype=dtype)
        eps = randn(x0.shape, generator=generator, device=x0.device, dtype=dtype)
        xt = sde.perturb(x0, t, eps)
        sigma = sde.sigma(t)  # (B,)
        return field, t, w, eps, xt, sigma, dtype

    def per_sample(
        self, model, sde: LinearSDE, x0: Tensor, generator: GeneratorLike = None, class_labels=None
    ) -> Tensor:
        """Loss per sample, shape ``(B,)``; its batch mean is an unbiased estimate of the objective.
        ``class_labels`` (one per sample, ``-1``: no label) condition the model (and the exact target
        of :class:`ESM`)."""
        field, t, w, eps, xt, sigma, dtype = self._prepare(model, sde, x0, generator, class_labels)
        inner = self._inner(field, sde, x0, t, eps, xt, sigma, generator)  # (B,) in eps space
        return (w / sigma**2) * inner

    def __call__(self, model, sde: LinearSDE, x0: Tensor, generator: GeneratorLike = None, class_labels=None) -> Tensor:
        return self.per_sample(model, sde, x0, generator, class_labels).mean()

    def _inner(self, field, sde, x0, t, eps, xt, sigma, generator) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self):
        extra = ", ".join(f"{k}={v!r}" for k, v in self._extra().items())
        return (
            f"{type(self).__name__}(weighting={self.weighting!r}, t_eps={self.t_eps!r}, "
            f"importance_sampling={self.importance_sampling!r}{', ' + extra if extra else ''})"
        )

    def _extra(self) -> dict:
        return {}


# --------------------------------------------------------------------------------------------
# The four losses
# --------------------------------------------------------------------------------------------
class DSM(ScoreMatchingLoss):
    """Denoising score matching ``E λ(t) ||s_θ(x_t, t) + ε/σ||²`` (§3), computed as
    ``(λ/σ²) ||ε̂ - ε||²``.  With the default ``weighting="sigma2"`` it is the ε-prediction MSE."""

    name = "dsm"

    def _inner(self, field, sde, x0, t, eps, xt, sigma, generator):
        eps_hat = field(xt, t, "epsilon")
        return self._reduce((eps_hat - eps) ** 2)


class ESM(ScoreMatchingLoss):
    """Explicit score matching ``E λ(t) ||s_θ - ∇log p_t||²`` against the exact score of an analytic
    ``target`` (anything with ``prediction(x, t, sde, kind)``, e.g. a
    :class:`~lit_diffusion.core.targets.GaussianMixture`)."""

    name = "esm"

    def __init__(self, target, **kwargs):
        if not callable(getattr(target, "prediction", None)):
            raise TypeError(
                f"ESM needs an analytic target with an exact score (e.g. targets.GaussianMixture); got {type(target).__name__}"
            )
        super().__init__(**kwargs)
        self.target = target

    def _inner(self, field, sde, x0, t, eps, xt, sigma, generator):
        eps_hat = field(xt, t, "epsilon")
        with torch.no_grad():
            labels = None if field.class_labels is None else field._labels(xt)
            if labels is None:
                eps_star = self.target.prediction(xt.detach(), t, sde, "epsilon")
            else:
                eps_star = self.target.prediction(xt.detach(), t, sde, "epsilon", class_labels=labels)
            eps_star = eps_star.to(eps_hat.dtype)
        return self._reduce((eps_hat - eps_star) ** 2)

    def _extra(self):
        return dict(target=self.target)


class SSM(ScoreMatchingLoss):
    """Sliced score matching (§3): ``E λ [||s||² + 2 vᵀ∇(vᵀs)]`` (variance reduction, default) or
    ``E λ [(vᵀs)² + 2 vᵀ∇(vᵀs)]``, averaged over ``projections`` random vectors ``v`` (Gaussian or
    Rademacher, ``E vvᵀ = I``).  One vector–Jacobian product per projection, built with
    ``create_graph=True`` so that the loss can be back-propagated to the network parameters."""

    name = "ssm"

    def __init__(self, projections: int = 1, distribution: str = "gaussian", variance_reduction: bool = True, **kwargs):
        super().__init__(**kwargs)
        if int(projections) != projections or projections < 1:
            raise ValueError(f"SSM: projections={projections!r} is invalid; it must be an integer >= 1")
        dist = str(distribution).lower()
        if dist not in _PROJECTIONS:
            raise ValueError(f"unknown projection distribution {distribution!r}; valid choices: {list(_PROJECTIONS)}")
        self.projections = int(projections)
        self.distribution = dist
        self.variance_reduction = bool(variance_reduction)

    def _draw(self, shape, generator, device, dtype):
        if self.distribution == "gaussian":
            return randn(shape, generator=generator, device=device, dtype=dtype)
        return torch.where(rand(shape, generator=generator, device=device, dtype=dtype) < 0.5, -1.0, 1.0).to(dtype)

    def _inner(self, field, sde, x0, t, eps, xt, sigma, generator):
        with torch.enable_grad():
            xt = xt.detach().requires_grad_(True)
            eps_hat = field(xt, t, "epsilon")
            sig = broadcast_to(sigma, xt)
            quad = 0.0
            jac = 0.0
            for _ in range(self.projections):
                v = self._draw(xt.shape, generator, xt.device, xt.dtype)
                ve = (v * eps_hat).flatten(1).sum(1)  # (B,)
                (grad,) = torch.autograd.grad(ve.sum(), xt, create_graph=True)
                jac = jac + self._reduce(v * grad * sig)  # sigma vᵀ∇(vᵀ ε̂)
                if not self.variance_reduction:
                    vs = ve if self.dim_reduction == "sum" else ve / v[0].numel()
                    quad = quad + vs * ve
            n = self.projections
            if self.variance_reduction:
                quad = self._reduce(eps_hat**2)
            else:
                quad = quad / n
            return quad - 2.0 * jac / n

    def _extra(self):
        return dict(projections=self.projections, distribution=self.distribution, variance_reduction=self.variance_reduction)


class ISM(ScoreMatchingLoss):
    """Implicit score matching ``E λ [||s||² + 2 ∇·s]`` (§3) with the exact divergence: one backward
    pass per data dimension, so it refuses data with more than ``max_dim`` elements per sample."""

    name = "ism"

    def __init__(self, max_dim: int = 64, **kwargs):
        super().__init__(**kwargs)
        if int(max_dim) != max_dim or max_dim < 1:
            raise ValueError(f"ISM: max_dim={max_dim!r} is invalid; it must be an integer >= 1")
        self.max_dim = int(max_dim)

    def per_sample(self, model, sde, x0, generator=None, class_labels=None):
        d = x0[0].numel() if x0.ndim >= 2 else None
        if d is not None and d > self.max_dim:
            raise ValueError(
                f"ISM: the exact divergence needs one backward pass per dimension and the data has "
                f"d={d} dimensions per sample (shape {tuple(x0.shape[1:])}), above the limit max_dim={self.max_dim}; "
                f"use SSM or DSM, or raise max_dim"
            )
        return super().per_sample(model, sde, x0, generator, class_labels)

    def _inner(self, field, sde, x0, t, eps, xt, sigma, generator):
        with torch.enable_grad():
            xt = xt.detach().requires_grad_(True)
            eps_hat = field(xt, t, "epsilon")
            flat = eps_hat.flatten(1)
            d = flat.shape[1]
            div = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
            for i in range(d):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), xt, create_graph=True)
                div = div + grad.flatten(1)[:, i]
            quad = (flat**2).sum(1)
            out = quad - 2.0 * sigma * div
            return out / d if self.dim_reduction == "mean" else out

    def _extra(self):
        return dict(max_dim=self.max_dim)


LOSSES = {"dsm": DSM, "ssm": SSM, "ism": ISM, "esm": ESM}


def get_loss(name, **kwargs) -> ScoreMatchingLoss:
    """Build a loss by name (``"dsm"``, ``"ssm"``, ``"ism"``, ``"esm"``; case-insensitive) or return an
    instance unchanged."""
    if isinstance(name, ScoreMatchingLoss):
        if kwargs:
            raise ValueError("get_loss: keyword arguments given with a loss instance")
        return name
    key = str(name).lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid choices: {sorted(LOSSES)}")
    return LOSSES[key](**kwargs)
