"""Sample-quality metrics: Wasserstein / sliced Wasserstein / MMD / Gaussian KL for low-dimensional
data, and FID (Inception when its weights exist locally, otherwise the offline "FID-MNIST") for images.

Every sample-based function returns a ``dict`` with the value **and the number of samples it used**
(``n_x``/``n_y`` or ``n_samples``/``n_reference``), because all of these estimators are biased or
noisy at finite sample size and numbers are only comparable at equal counts.

Low-dimensional metrics (arrays ``(N, d)``; ``(N,)`` is read as ``d = 1``; images are flattened):

- :func:`wasserstein1` — W1; exact for ``d = 1`` on all samples (quantile coupling), otherwise the
  exact optimal-transport cost (POT ``ot.emd2``) between random subsets of at most ``n_max`` points.
- :func:`sliced_wasserstein2` — SW2 with seeded projections uniform on the sphere, each 1-D W2 exact
  (quantile coupling; unequal sample sizes allowed).
- :func:`mmd2` — unbiased MMD² with a Gaussian kernel ``exp(-|x-y|²/(2h²))``, ``h`` by the median
  heuristic (pooled pairwise distances) or given.
- :func:`kl_gaussian` — exact ``KL(N(m1,C1) || N(m2,C2))``; :func:`kl_gaussian_fit` — the KL of the
  empirical Gaussian fit of samples against an analytic Gaussian target, with its exact expected value
  for exact samples (the finite-sample floor).  For a single-Gaussian target every linear sampler's
  output is Gaussian, so this KL is exact (docs/maths.md §6).
- :func:`w2_gaussian` — closed-form W2 between Gaussians (also the Fréchet distance).

Image metrics: :func:`frechet_distance` (float64, features -> number) and :func:`fid` (images ->
number, through ``torchmetrics.image.fid.FrechetInceptionDistance`` with either Inception or the
:class:`~lit_diffusion.evaluation.feature_net.MNISTFeatureNet` as the feature extractor).  :func:`inception_status`
decides which one is usable *without touching the network*.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch

from ..core.utils import check_count

__all__ = [
    "wasserstein1",
    "wasserstein_1d",
    "sliced_wasserstein2",
    "mmd2",
    "median_bandwidth",
    "kl_gaussian",
    "kl_gaussian_fit",
    "expected_kl_gaussian_fit",
    "gaussian_fit",
    "w2_gaussian",
    "frechet_distance",
    "INCEPTION_ENV",
    "INCEPTION_FILENAME",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

INCEPTION_ENV = "LIT_DIFFUSION_INCEPTION_WEIGHTS"
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _as_2d(x: ArrayLike, name: str) -> np.ndarray:
    """float64 ``(N, d)``; ``(N,)`` -> ``(N, 1)``; ``(N, ...)`` flattened."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"{name} must be an array of samples (N, d); got a scalar")
    if x.ndim == 1:
        x = x[:, None]
    elif x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples; got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise ValueError(f"{name} contains {bad} samples with NaN/inf values")
    return x


def _pair(x: ArrayLike, y: ArrayLike):
    x, y = _as_2d(x, "x"), _as_2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension; got x {x.shape} and y {y.shape}")
    return x, y


def _subsample(x: np.ndarray, n_max: Optional[int], rng: np.random.Generator) -> np.ndarray:
    if n_max is None or x.shape[0] <= n_max:
        return x
    return x[rng.choice(x.shape[0], size=n_max, replace=False)]


def _quantile_coupling(xs: np.ndarray, ys: np.ndarray, p: float) -> np.ndarray:
    """Exact ``W_p^p`` between 1-D empirical measures with uniform weights, vectorised over rows:
    ``xs (P, n)`` and ``ys (P, m)`` sorted along the last axis -> ``(P,)``.

    The quantile functions are step functions with breaks at ``i/n`` and ``j/m``; on each interval of
    the merged breaks both are constant, so the integral ``∫_0^1 |F^-1(u) - G^-1(u)|^p du`` is a sum.
    """
    n, m = xs.shape[-1], ys.shape[-1]
    if n == m:
        return np.mean(np.abs(xs - ys) ** p, axis=-1)
    u = np.union1d(np.arange(1, n + 1) / n, np.arange(1, m + 1) / m)
    du = np.diff(np.concatenate([[0.0], u]))
    mid = u - du / 2
    i = np.minimum((mid * n).astype(np.int64), n - 1)
    j = np.minimum((mid * m).astype(np.int64), m - 1)
    return np.sum(du * np.abs(xs[..., i] - ys[..., j]) ** p, axis=-1)


# ------------------------------------------------------------------------------------------------
# Wasserstein
# ------------------------------------------------------------------------------------------------
def wasserstein_1d(x: ArrayLike, y: ArrayLike, p: float = 1.0) -> float:
    """Exact ``W_p`` between two 1-D empirical distributions (all samples, any sizes)."""
    x, y = _pair(x, y)
    if x.shape[1] != 1:
        raise ValueError(f"wasserstein_1d needs 1-D samples; got dimension {x.shape[1]}")
    if not p >= 1:
        raise ValueError(f"p={p!r} must be >= 1")
    val = _quantile_coupling(np.sort(x[:, 0])[None], np.sort(y[:, 0])[None], p)[0]
    return float(val ** (1.0 / p))


def wasserstein1(x: ArrayLike, y: ArrayLike, *, n_max: Optional[int] = 1000, seed: int = 0) -> dict:
    """W1 between the empirical distributions of ``x (N, d)`` and ``y (M, d)``.

    ``d = 1``: exact on all samples (``method='exact-1d'``).  ``d > 1``: exact OT cost (POT
    ``ot.emd2``, Euclidean ground cost) between uniformly weighted random subsets of at most ``n_max``
    points each (``method='emd'``; the subset sizes are returned as ``n_x``/``n_y``).  Cost grows
    roughly cubically with ``n_max``; 1000 takes about a second.
    """
    if n_max is not None:
        check_count("n_max", n_max, low=2)
    x, y = _pair(x, y)
    if x.shape[1] == 1:
        return {"value": wasserstein_1d(x, y, 1.0), "n_x": x.shape[0], "n_y": y.shape[0], "method": "exact-1d"}
    import ot

    rng = np.random.default_rng(seed)
    xs, ys = _subsample(x, n_max, rng), _subsample(y, n_max, rng)
    M = ot.dist(xs, ys, metric="euclidean")
    a = np.full(xs.shape[0], 1.0 / xs.shape[0])
    b = np.full(ys.shape[0], 1.0 / ys.shape[0])
    val = float(ot.emd2(a, b, M, numItermax=10_000_000))
    return {"value": val, "n_x": xs.shape[0], "n_y": ys.shape[0], "method": "emd"}


def _projections(d: int, n_projections: int, seed: int) -> np.ndarray:
    theta = np.random.default_rng(seed).standard_normal((n_projections, d))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


def sliced_wasserstein2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    n_projections: int = 256,
    seed: int = 0,
    n_max: Optional[int] = None,
) -> dict:
    """Sliced Wasserstein-2: ``SW2 = (E_θ W2²(θ·x, θ·y))^{1/2}``, ``θ`` uniform on the unit sphere.

    ``n_projections`` directions drawn from ``seed`` (the same seed gives the same directions for every
    pair of sets); each 1-D ``W2`` is exact on all samples (or on subsets of at most ``n_max``).
    Returned: ``value`` (SW2), ``std_err`` (Monte-Carlo error of SW2² over the projections, propagated
    to SW2), sample and projection counts.  For ``N(μ1, s²I)`` vs ``N(μ2, s²I)`` in ``d`` dims,
    ``SW2 = |μ1-μ2|/√d`` (while ``W2 = |μ1-μ2|``).
    """
    if not isinstance(n_projections, (int, np.integer)) or n_projections < 1:
        raise ValueError(f"n_projections={n_projections!r} must be a positive integer")
    if n_max is not None:
        check_count("n_max", n_max, low=2)
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed + 1)
    x, y = _subsample(x, n_max, rng), _subsample(y, n_max, rng)
    theta = _projections(x.shape[1], n_projections, seed)
    px = np.sort(x @ theta.T, axis=0).T  # (P, n)
    py = np.sort(y @ theta.T, axis=0).T
    w2sq = _quantile_coupling(px, py, 2.0)
    sw2sq = float(w2sq.mean())
    se_sq = float(w2sq.std(ddof=1) / math.sqrt(n_projections)) if n_projections > 1 else float("nan")
    value = math.sqrt(max(sw2sq, 0.0))
    return {
        "value": value,
        "std_err": se_sq / (2 * value) if value > 0 else se_sq,
        "n_x": x.shape[0],
        "n_y": y.shape[0],
        "n_projections": int(n_projections),
    }


# ------------------------------------------------------------------------------------------------
# MMD
# ------------------------------------------------------------------------------------------------
def median_bandwidth(x: ArrayLike, y: ArrayLike, *, n_max: int = 1000, seed: int = 0) -> float:
    """Median of the pairwise Euclidean distances in the pooled sample (at most ``n_max`` points)."""
    x, y = _pair(x, y)
    from scipy.spatial.distance import pdist

    z = _subsample(np.concatenate([x, y]), n_max, np.random.default_rng(seed))
    h = float(np.median(pdist(z)))
    if not h > 0:
        raise ValueError("median heuristic bandwidth is 0 (all pooled samples coincide); pass bandwidth=")
    return h


def mmd2(
    x: ArrayLike,
    y: ArrayLike,
    *,
    bandwidth: Optional[float] = None,
    n_max: Optional[int] = 2000,
    seed: int = 0,
) -> dict:
    """Unbiased estimate of the squared MMD with the Gaussian kernel ``k(a,b) = exp(-|a-b|²/(2h²))``:

    ``MMD²_u = mean_{i≠j} k(x_i,x_j) + mean_{i≠j} k(y_i,y_j) - 2 mean_{i,j} k(x_i,y_j)``.

    Unbiased: its expectation is 0 for identical distributions, so it can be slightly negative.
    ``h`` = ``bandwidth`` or the median heuristic (:func:`median_bandwidth`).  Uses random subsets of
    at most ``n_max`` points of each set (returned as ``n_x``/``n_y``).
    """
    if n_max is not None:
        check_count("n_max", n_max, low=2)
    x, y = _pair(x, y)
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, n_max, rng), _subsample(y, n_max, rng)
    if bandwidth is None:
        h = median_bandwidth(x, y, seed=seed)
        how = "median"
    else:
        h = float(bandwidth)
        if not (h > 0 and math.isfinite(h)):
            raise ValueError(f"bandwidth={bandwidth!r} must be a positive finite number or None (median heuristic)")
        how = "given"
    from scipy.spatial.distance import cdist

    n, m = len(x), len(y)

    def k(a, b):
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h))

    kxx = (k(x, x).sum() - n) / (n * (n - 1))
    kyy = (k(y, y).sum() - m) / (m * (m - 1))
    kxy = k(x, y).mean()
    return {"value": float(kxx + kyy - 2 * kxy), "bandwidth": h, "bandwidth_rule": how, "n_x": n, "n_y": m}


# ------------------------------------------------------------------------------------------------
# Gaussians
# ------------------------------------------------------------------------------------------------
def _as_mean_cov(mean, cov, name: str):
    m = np.atleast_1d(np.asarray(mean.detach().cpu() if isinstance(mean, torch.Tensor) else mean, dtype=np.float64))
    if m.ndim != 1:
        raise ValueError(f"{name}: mean must be a vector (d,); got shape {m.shape}")
    d = m.shape[0]
    C = np.asarray(cov.detach().cpu() if isinstance(cov, torch.Tensor) else cov, dtype=np.float64)
    if C.ndim == 0:
        C = float(C) * np.eye(d)
    elif C.ndim == 1:
        if C.shape[0] != d:
            raise ValueError(f"{name}: diagonal covariance must have shape ({d},); got {C.shape}")
        C = np.diag(C)
    elif C.shape != (d, d):
        raise ValueError(f"{name}: covariance must be a scalar, (d,) or (d, d) with d={d}; got {C.shape}")
    C = 0.5 * (C + C.T)
    try:
        L = np.linalg.cholesky(C)
    except np.linalg.LinAlgError as e:
        raise ValueError(f"{name}: covariance is not positive definite (eigenvalues {np.linalg.eigvalsh(C)[:3]}...)") from e
    return m, C, L


def kl_gaussian(mean1, cov1, mean2, cov2) -> float:
    """Exact ``KL(N(m1, C1) || N(m2, C2)) = ½[tr(C2⁻¹C1) + (m2-m1)ᵀC2⁻¹(m2-m1) - d + log det C2/det C1]``
    in float64.  Covariances may be scalars (isotropic), diagonals ``(d,)`` or full ``(d, d)``."""
    m1, C1, L1 = _as_mean_cov(mean1, cov1, "first Gaussian")
    m2, C2, L2 = _as_mean_cov(mean2, cov2, "second Gaussian")
    if m1.shape != m2.shape:
        raise ValueError(f"Gaussians have different dimensions: {m1.shape[0]} and {m2.shape[0]}")
    d = m1.shape[0]
    # (numpy's LU solve: scipy's solve_triangular has ~10 ms call overhead here)
    A = np.linalg.solve(L2, L1)  # L2⁻¹ L1 ; tr(C2⁻¹C1) = |A|_F²
    b = np.linalg.solve(L2, m2 - m1)
    logdet = 2 * (np.log(np.diag(L2)).sum() - np.log(np.diag(L1)).sum())
    return float(0.5 * (np.sum(A * A) + b @ b - d + logdet))


def gaussian_fit(x: ArrayLike):
    """Empirical mean and unbiased covariance (float64) of samples ``(N, d)``."""
    x = _as_2d(x, "samples")
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def expected_kl_gaussian_fit(n: int, d: int) -> float:
    """Exact ``E[KL(N(m̂, Ĉ) || N(m, C))]`` when the ``n`` samples are exact draws from ``N(m, C)``
    (``m̂`` the sample mean, ``Ĉ`` the unbiased sample covariance): the finite-sample floor of
    :func:`kl_gaussian_fit`.  From ``(n-1)Ĉ ~ Wishart(n-1, C)``:
    ``½[d/n + d log((n-1)/2) - Σ_{i=1..d} ψ((n-i)/2)]`` (≈ d(d+3)/(4n) for large n)."""
    from scipy.special import digamma

    if n <= d + 1:
        raise ValueError(f"need n > d + 1 samples for a non-singular covariance fit; got n={n}, d={d}")
    i = np.arange(1, d + 1)
    return float(0.5 * (d / n + d * math.log((n - 1) / 2) - digamma((n - i) / 2).sum()))


def kl_gaussian_fit(samples: ArrayLike, mean, cov) -> dict:
    """KL of the empirical Gaussian fit of ``samples`` against the analytic Gaussian ``N(mean, cov)``.

    Returns ``value = KL(N(m̂, Ĉ) || N(mean, cov))``, ``reverse = KL(N(mean, cov) || N(m̂, Ĉ))``,
    ``n`` (samples used: all) and ``floor`` (:func:`expected_kl_gaussian_fit`, the expected value for
    exact samples — differences below it are sampling noise, not sampler error).  When the samples are
    Gaussian (e.g. any linear sampler on a Gaussian target) ``value`` estimates the exact KL.
    """
    x = _as_2d(samples, "samples")
    n, d = x.shape
    if n <= d + 1:
        raise ValueError(f"kl_gaussian_fit needs more than d + 1 = {d + 1} samples; got {n}")
    m_hat, C_hat = gaussian_fit(x)
    return {
        "value": kl_gaussian(m_hat, C_hat, mean, cov),
        "reverse": kl_gaussian(mean, cov, m_hat, C_hat),
        "n": n,
        "floor": expected_kl_gaussian_fit(n, d),
    }


def _sqrt_psd(C: np.ndarray) -> np.ndarray:
    lam, U = np.linalg.eigh(0.5 * (C + C.T))
    return (U * np.sqrt(np.clip(lam, 0, None))) @ U.T


def w2_gaussian(mean1, cov1, mean2, cov2, squared: bool = False) -> float:
    """Closed-form ``W2`` between Gaussians (Bures):
    ``W2² = |m1-m2|² + tr C1 + tr C2 - 2 tr (C1^{1/2} C2 C1^{1/2})^{1/2}``, float64, symmetric
    eigen-decompositions (PSD covariances allowed)."""
    m1 = np.atleast_1d(np.asarray(mean1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mean2, dtype=np.float64))
    C1 = np.atleast_2d(np.asarray(cov1, dtype=np.float64))
    C2 = np.atleast_2d(np.asarray(cov2, dtype=np.float64))
    d = m1.shape[0]
    if m2.shape != (d,) or C1.shape != (d, d) or C2.shape != (d, d):
        raise ValueError(f"shapes do not match: means {m1.shape}, {m2.shape}; covariances {C1.shape}, {C2.shape}")
    s1 = _sqrt_psd(C1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ C2 @ s1), 0, None)).sum()
    val = float(np.sum((m1 - m2) ** 2) + np.trace(C1) + np.trace(C2) - 2 * cross)
    val = max(val, 0.0)
    return val if squared else math.sqrt(val)


def frechet_distance(features1: ArrayLike, features2: ArrayLike) -> dict:
    """Fréchet distance (the FID formula) between two feature sets ``(N, k)``, ``(M, k)``:
    ``|μ1-μ2|² + tr(Σ1 + Σ2 - 2(Σ1^{1/2}Σ2Σ1^{1/2})^{1/2})`` with unbiased covariances, float64."""
    f1, f2 = _pair(features1, features2)
    m1, C1 = gaussian_fit(f1)
    m2, C2 = gaussian_fit(f2)
    return {"value": w2_gaussian(m1, C1, m2, C2, squared=True), "n_x": f1.shape[0], "n_y": f2.shape[0]}
