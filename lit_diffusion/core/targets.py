"""Analytic targets: Gaussian mixtures with exact forward marginals (docs/maths.md §6).

For ``p_0 = sum_k w_k N(mu_k, C_k)`` and a linear SDE, the marginal at ``t`` is
``sum_k w_k N(alpha mu_k + m, alpha^2 C_k + sigma^2 I)``.  With the eigendecomposition
``C_k = U_k diag(lam_k) U_k^T`` computed once, every per-component quantity is diagonal in the
eigenbasis, so score, denoiser, posterior covariance and log-density are exact and cheap for any
batch of states and any (scalar or per-sample) times.  A target is usable wherever a trained network
is: :meth:`GaussianMixture.prediction` answers any prediction type for any SDE.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

from .parametrizations import canonical_prediction, from_epsilon
from .sdes import LinearSDE, as_time, compute_dtype
from .utils import GeneratorLike, rand, randn

__all__ = ["GaussianMixture", "PRESETS", "get_target", "swiss_roll"]


class GaussianMixture:
    """Mixture ``sum_k w_k N(mu_k, C_k)`` in ``R^d``.

    Args:
        weights: ``(K,)`` non-negative, normalised internally.
        means: ``(K, d)`` (or ``(K,)`` for d = 1).
        covariances: a scalar or ``(K,)`` (isotropic variances), ``(K, d)`` (diagonal) or
            ``(K, d, d)`` (full, symmetric positive definite).
    """

    def __init__(self, weights, means, covariances):
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim == 1:
            mu = mu[:, None]
        if mu.ndim != 2 or mu.shape[0] != w.shape[0]:
            raise ValueError(f"means must have shape (K, d) with K={w.shape[0]} components; got {tuple(mu.shape)}")
        if (w < 0).any() or not torch.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights={w.tolist()} are invalid; they must be finite, >= 0 and not all 0")
        K, d = mu.shape
        C = torch.as_tensor(covariances, dtype=torch.float64)
        if C.ndim == 0:
            C = C.expand(K)
        if C.ndim == 1:  # isotropic
            if C.shape[0] != K:
                raise ValueError(f"isotropic covariances must have shape (K,)=({K},); got {tuple(C.shape)}")
            C = C[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif C.ndim == 2:  # diagonal
            if C.shape != (K, d):
                raise ValueError(f"diagonal covariances must have shape (K, d)=({K}, {d}); got {tuple(C.shape)}")
            C = torch.diag_embed(C)
        elif C.ndim != 3 or C.shape != (K, d, d):
            raise ValueError(f"covariances must be a scalar, (K,), (K, d) or (K, d, d); got {tuple(C.shape)}")
        C = 0.5 * (C + C.transpose(-1, -2))
        lam, U = torch.linalg.eigh(C)
        if (lam <= 0).any():
            raise ValueError(f"covariances must be positive definite; smallest eigenvalue {lam.min().item():.3g}")
        self.weights = w / w.sum()
        self.means = mu
        self.covariances = C
        self._lam, self._U = lam, U  # (K, d), (K, d, d)
        self.dim = d
        self.num_components = K

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def gaussian(cls, mean, covariance) -> "GaussianMixture":
        """A single Gaussian ``N(mean, covariance)`` (covariance: scalar, ``(d,)`` or ``(d, d)``)."""
        mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
        cov = torch.as_tensor(covariance, dtype=torch.float64)
        if cov.ndim == 0:
            cov = cov.reshape(1)
        else:
            cov = cov[None]
        return cls([1.0], mean, cov)

    def to_dict(self) -> dict:
        return dict(weights=self.weights.tolist(), means=self.means.tolist(), covariances=self.covariances.tolist())

    # ---- moments -----------------------------------------------------------------------------
    def mean(self) -> Tensor:
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> Tensor:
        mu = self.mean()
        dev = self.means - mu
        return (self.weights[:, None, None] * (self.covariances + dev[:, :, None] * dev[:, None, :])).sum(0)

    def marginal(self, t, sde: LinearSDE) -> "GaussianMixture":
        """The forward marginal at a scalar time ``t`` as a mixture (§6)."""
        # a Python float must not pass through float32 (as_time's default) on its way to float64
        t = t.to(torch.float64) if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)
        alpha, m, s2 = sde.alpha(t).item(), sde.mean_offset(t).item(), sde.sigma2(t).item()
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, alpha * self.means + m, alpha**2 * self.covariances + s2 * eye)

    # ---- sampling ----------------------------------------------------------------------------
    def sample(
        self, n: int, generator: GeneratorLike = None, device=None, dtype=torch.float32, return_components: bool = False
    ):
        """``n`` exact samples ``(n, d)``; a list of ``n`` generators makes sample ``i`` depend only on
        ``generator[i]``.  ``return_components=True`` also returns the component of each sample (its
        class label, ``(n,)`` long)."""
        u = rand((n,), generator=generator, dtype=torch.float64)
        z = randn((n, self.dim), generator=generator, dtype=torch.float64)
        cdf = torch.cumsum(self.weights, 0)
        k = torch.searchsorted(cdf, u.clamp(max=float(cdf[-1]) - 1e-12), right=True).clamp(max=self.num_components - 1)
        scale = self._U[k] * self._lam[k].sqrt()[:, None, :]  # U diag(sqrt lam)
        x = self.means[k] + (scale @ z[:, :, None])[..., 0]
        x = x.to(device=device, dtype=dtype)
        return (x, k.to(device=device)) if return_components else x

    # ---- exact marginal quantities -----------------------------------------------------------
    def _components(self, x: Tensor, t, sde: LinearSDE):
        """Per-component quantities in the eigenbases, float64: ``(logits, y, q, alpha, sigma2, xc)``."""
        if x.ndim != 2 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}); got {tuple(x.shape)}")
        x64 = x.to(torch.float64)
        t = as_time(t, x64).to(device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        alpha = torch.exp(sde.log_alpha(t))[:, None, None]  # (B,1,1)
        m = sde.mean_offset(t)[:, None]  # (B,1)
        s2 = sde.sigma2(t)[:, None, None]
        xc = x64 - m  # centred state (B, d)
        U, lam, mu = self._U.to(x.device), self._lam.to(x.device), self.means.to(x.device)
        diff = xc[:, None, :] - alpha * mu[None]  # (B, K, d)
        y = torch.einsum("kij,bki->bkj", U, diff)  # U^T diff
        q = alpha**2 * lam[None] + s2  # (B, K, d) eigenvalues of S_k
        logdet = torch.log(q).sum(-1)
        quad = (y**2 / q).sum(-1)
        logits = torch.log(self.weights.to(x.device))[None] - 0.5 * (quad + logdet + self.dim * math.log(2 * math.pi))
        return logits, y, q, alpha, s2, xc

    def log_prob(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """``log p_t(x)`` of the forward marginal, shape ``(B,)``."""
        logits = self._components(x, t, sde)[0]
        return torch.logsumexp(logits, -1).to(compute_dtype(x))

    def score(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """``grad log p_t(x)``, shape ``(B, d)``."""
        logits, y, q, alpha, s2, xc = self._components(x, t, sde)
        post = torch.softmax(logits, -1)  # (B, K)
        comp = -torch.einsum("kij,bkj->bki", self._U.to(x.device), y / q)
        return (post[..., None] * comp).sum(1).to(compute_dtype(x))

    def _posterior(self, x: Tensor, t, sde: LinearSDE):
        logits, y, q, alpha, s2, xc = self._components(x, t, sde)
        post = torch.softmax(logits, -1)
        U, lam = self._U.to(x.device), self._lam.to(x.device)
        lam_b = lam[None]
        # component posterior mean mu_k + U (alpha lam y / q); covariance U diag(lam s2 / q) U^T
        Dk = self.means.to(x.device)[None] + torch.einsum("kij,bkj->bki", U, alpha * lam_b * y / q)
        var_k = lam_b * s2 / q  # (B, K, d)
        return post, Dk, var_k, U

    def denoiser(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """``E[X_0 | X_t = x]`` (Tweedie), shape ``(B, d)``."""
        post, Dk, _, _ = self._posterior(x, t, sde)
        return (post[..., None] * Dk).sum(1).to(compute_dtype(x))

    def posterior_covariance(self, x: Tensor, t, sde: LinearSDE) -> Tensor:
        """``Cov(X_0 | X_t = x)``, shape ``(B, d, d)``."""
        post, Dk, var_k, U = self._posterior(x, t, sde)
        D = (post[..., None] * Dk).sum(1)
        Ck = torch.einsum("kij,bkj,klj->bkil", U, var_k, U)
        second = Ck + Dk[..., :, None] * Dk[..., None, :]
        cov = (post[..., None, None] * second).sum(1) - D[:, :, None] * D[:, None, :]
        return (0.5 * (cov + cov.transpose(-1, -2))).to(compute_dtype(x))

    def conditional(self, x: Tensor, t, sde: LinearSDE, class_labels: Tensor, kind: str = "score") -> Tensor:
        """The exact prediction of the forward marginal of component ``class_labels[b]`` for each
        sample ``b`` (the class-conditional field when the component is the label); a negative label
        gives the unconditional (mixture) prediction for that sample."""
        kind = canonical_prediction(kind)
        labels = torch.as_tensor(class_labels, device=x.device).reshape(-1).to(torch.long)
        if labels.numel() == 1:
            labels = labels.expand(x.shape[0])
        if labels.shape[0] != x.shape[0] or int(labels.max()) >= self.num_components:
            raise ValueError(
                f"class_labels must hold one component index in [0, {self.num_components}) (or -1) per sample; "
                f"got {labels.tolist()[:8]} for a batch of {x.shape[0]}"
            )
        x64 = x.to(torch.float64)
        post, Dk, _, _ = self._posterior(x64, t, sde)
        k = labels.clamp(min=0)
        D = Dk[torch.arange(x.shape[0], device=x.device), k]
        uncond = labels < 0
        if bool(uncond.any()):
            D = torch.where(uncond[:, None], (post[..., None] * Dk).sum(1), D)
        alpha, m, sigma = sde.marginal_coefficients(as_time(t, x64), x64)
        eps = (x64 - m - alpha * D) / sigma
        return from_epsilon(eps, kind, x64, t, sde).to(compute_dtype(x))

    def prediction(self, x: Tensor, t, sde: LinearSDE, kind: str = "score", class_labels=None) -> Tensor:
        """Exact prediction of any type (§2) — the interface samplers and losses use; with
        ``class_labels``, the component-conditional one (:meth:`conditional`)."""
        kind = canonical_prediction(kind)
        if class_labels is not None:
            return self.conditional(x, t, sde, class_labels, kind)
        if kind == "score":
            return self.score(x, t, sde)
        if kind == "denoiser":
            return self.denoiser(x, t, sde)
        x64 = x.to(torch.float64)
        alpha, m, sigma = sde.marginal_coefficients(as_time(t, x64), x64)
        eps = (x64 - m - alpha * self.denoiser(x64, t, sde)) / sigma
        return from_epsilon(eps, kind, x64, t, sde).to(compute_dtype(x))

    def __call__(self, x, t, sde, kind="score", class_labels=None):
        return self.prediction(x, t, sde, kind, class_labels=class_labels)

    def __repr__(self):
        return f"GaussianMixture(K={self.num_components}, d={self.dim})"


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------
def bimodal_1d() -> GaussianMixture:
    """1-D: ``0.3 N(-2, 0.3^2) + 0.7 N(1.5, 0.5^2)``."""
    return GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [0.3**2, 0.5**2])


def ring8_2d(radius: float = 2.0, std: float = 0.2) -> GaussianMixture:
    """2-D: eight equal Gaussians on a circle."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(ang), torch.sin(ang)], -1)
    return GaussianMixture(torch.ones(8), means, torch.full((8,), std**2))


def swissroll_2d(n_components: int = 32, std: float = 0.1, scale: float = 1 / 7.0) -> GaussianMixture:
    """2-D: Gaussians placed along scikit-learn's swiss-roll spiral ``(u cos u, u sin u)``,
    ``u in [1.5 pi, 4.5 pi]``, scaled by ``scale``, weights proportional to arc length."""
    u = 1.5 * math.pi * (1 + 2 * (torch.arange(n_components, dtype=torch.float64) + 0.5) / n_components)
    means = scale * torch.stack([u * torch.cos(u), u * torch.sin(u)], -1)
    w = torch.sqrt(1 + u**2)  # |d/du (u cos u, u sin u)|
    return GaussianMixture(w, means, torch.full((n_components,), std**2))


def swiss_roll(n: int, noise: float = 0.0, seed: int = 0, scale: float = 1 / 7.0, standardize: bool = False) -> Tensor:
    """``n`` points of scikit-learn's swiss roll in the ``(x, z)`` plane, float32 ``(n, 2)``.

    ``scale`` multiplies the raw coordinates (spiral radius up to ``4.5 pi``; the default ``1/7``
    matches :func:`swissroll_2d`); ``standardize=True`` instead centres and
    scales each coordinate to unit variance.
    """
    from sklearn.datasets import make_swiss_roll

    X, _ = make_swiss_roll(n_samples=int(n), noise=float(noise), random_state=int(seed))
    x = torch.as_tensor(X[:, [0, 2]], dtype=torch.float64)
    if standardize:
        x = (x - x.mean(0)) / x.std(0)
    else:
        x = x * float(scale)
    return x.to(torch.float32)


def anisotropic_16d(seed: int = 0) -> GaussianMixture:
    """16-D: four components with full, strongly anisotropic covariances (eigenvalues from 0.01 to
    1) in random orientations; fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    d, K = 16, 4
    means = 1.5 * torch.randn(K, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(K):
        Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.logspace(-2, 0, d, dtype=torch.float64)
        covs.append(Q @ torch.diag(lam) @ Q.T)
    return GaussianMixture([0.1, 0.2, 0.3, 0.4], means, torch.stack(covs))


PRESETS = {
    "bimodal_1d": bimodal_1d,
    "ring8_2d": ring8_2d,
    "swissroll_2d": swissroll_2d,
    "anisotropic_16d": anisotropic_16d,
}


def get_target(name: Union[str, GaussianMixture], **kwargs) -> GaussianMixture:
    """A preset by name, or a mixture unchanged."""
    if isinstance(name, GaussianMixture):
        return name
    if name not in PRESETS:
        raise ValueError(f"unknown target preset {name!r}; valid choices: {sorted(PRESETS)}")
    return PRESETS[name](**kwargs)
