"""The Gaussian start: begin sampling at a noise level ``σ/α = v`` from the exact marginal of the
Gaussian with the data's mean and covariance, instead of integrating the network's field down from
``T`` (docs/maths.md §5, "Gaussian start"; Wang and Vastola, "The Hidden Linear Structure in
Score-Based Models and its Application").

At high noise a learned score is close to the score of that Gaussian, whose probability-flow ODE is
an affine map solved in closed form; the first, least accurate steps of a short run are replaced by
that map at no network cost, and every evaluation of the budget lands where the trajectory bends.

:class:`GaussianStart` holds the moments (the mean, the leading eigenpairs of the covariance and the
average variance of the rest), computed by :meth:`GaussianStart.from_samples` from data or from the
model's own samples (``python -m lit_diffusion.cli.gaussian_fit``), saved with safetensors
(:meth:`GaussianStart.to_bytes`; ``data_moments.safetensors`` in a model folder) and read back with type and shape checks, never
with pickle.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

from ..core.sdes import LinearSDE

__all__ = ["GaussianStart", "MOMENTS_FILE", "DEFAULT_NOISE_RATIO", "model_moments", "moments_path"]

#: the file a model folder keeps its moments in
MOMENTS_FILE = "data_moments.safetensors"
#: where a run starts by default, as ``σ/α`` of the start time.  Measured on the shipped MNIST model
#: (docs/samplers.md, "The Gaussian start"); the prior's end of the VP process is ``σ/α ≈ 150``
DEFAULT_NOISE_RATIO = 10.0
#: covariances of dimension above this keep only their leading eigenpairs by default
FULL_RANK_DIM = 4096
F64 = torch.float64


def _as_float(name: str, value, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)) or float(value) <= low:
        raise ValueError(f"{name}={value!r} is invalid; it must be a finite number > {low:g}")
    return float(value)


class GaussianStart:
    """The Gaussian ``N(mean, U diag(eigenvalues) Uᵀ + residual (I − U Uᵀ))`` of the data.

    Args:
        mean: ``(*shape)`` the data mean.
        eigenvalues: ``(r,)`` the ``r`` leading eigenvalues of the covariance (``≥ 0``).
        eigenvectors: ``(d, r)`` orthonormal columns, ``d`` the number of entries of ``shape``.
        residual: the average variance of the ``d − r`` remaining directions (0 when ``r = d``).
        noise_ratio: the ``σ/α`` at which runs start (:meth:`start_time`).
    """

    def __init__(self, mean: Tensor, eigenvalues: Tensor, eigenvectors: Tensor, residual: float = 0.0,
                 noise_ratio: float = DEFAULT_NOISE_RATIO):
        mean = torch.as_tensor(mean)
        lam, U = torch.as_tensor(eigenvalues).to(F64).flatten(), torch.as_tensor(eigenvectors).to(F64)
        d = mean.numel()
        if d == 0 or not bool(torch.isfinite(mean).all()):
            raise ValueError(f"mean must be a non-empty finite tensor; got shape {tuple(mean.shape)}")
        if U.dim() != 2 or U.shape[0] != d or U.shape[1] != lam.numel() or lam.numel() > d:
            raise ValueError(f"eigenvectors must be (d, r) = ({d}, r) with r = len(eigenvalues) <= d; got {tuple(U.shape)} "
                             f"and {lam.numel()} eigenvalues")
        if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()) or not bool(torch.isfinite(U).all()):
            raise ValueError("eigenvalues must be finite and >= 0 and eigenvectors finite")
        self.mean = mean.to(F64)
        self.eigenvalues, self.eigenvectors = lam, U
        self.residual = float(residual) if lam.numel() < d else 0.0
        if not (math.isfinite(self.residual) and self.residual >= 0):
            raise ValueError(f"residual={residual!r} is invalid; it must be a finite number >= 0")
        self.noise_ratio = _as_float("noise_ratio", noise_ratio)

    # ---- building -------------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, x: Tensor, rank: Optional[int] = None, noise_ratio: float = DEFAULT_NOISE_RATIO) -> "GaussianStart":
        """The moments of ``x`` ``(N, *shape)``, ``N ≥ 2``: the ``rank`` leading eigenpairs of the covariance
        and the average variance of the other directions; by default all of them when ``d ≤``
        :data:`FULL_RANK_DIM`, else 256."""
        x = torch.as_tensor(x)
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"need at least 2 samples (N, *shape); got shape {tuple(x.shape)}")
        flat = x.reshape(x.shape[0], -1).to(F64)
        if not bool(torch.isfinite(flat).all()):
            raise ValueError("the samples contain NaN or inf")
        n, d = flat.shape
        mean = flat.mean(0)
        xc = flat - mean
        total = float((xc * xc).sum()) / (n - 1)  # trace of the covariance
        if rank is None:
            rank = d if d <= FULL_RANK_DIM else 256
        from ..core.utils import check_count

        rank = min(check_count("rank", rank), d)
        if rank == d and d <= FULL_RANK_DIM:
            lam, U = torch.linalg.eigh(xc.T @ xc / (n - 1))
            lam, U = lam.flip(0).clamp(min=0), U.flip(1)
        else:  # the leading right singular vectors of the centred samples
            k = min(rank, n)
            if n * d <= 50_000_000:
                _, s, Vh = torch.linalg.svd(xc, full_matrices=False)
                V = Vh.T
            else:
                _, s, V = torch.svd_lowrank(xc, q=k, niter=4)
            lam, U = s[:k] ** 2 / (n - 1), V[:, :k]
        rest = d - U.shape[1]
        residual = max(total - float(lam.sum()), 0.0) / rest if rest > 0 else 0.0
        return cls(mean.reshape(x.shape[1:]), lam, U, residual, noise_ratio)

    def with_noise_ratio(self, noise_ratio: float) -> "GaussianStart":
        """The same moments, starting at another ``σ/α``."""
        return GaussianStart(self.mean, self.eigenvalues, self.eigenvectors, self.residual, noise_ratio)

    # ---- the start --------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.mean.shape)

    def start_time(self, sde: LinearSDE) -> float:
        """The time ``t_s`` with ``σ(t_s)/α(t_s) = noise_ratio``: ``T`` when the process never gets that noisy
        (the contractive ones), a ``ValueError`` when it is noisier than that already at ``t_min``."""
        snr = 1.0 / self.noise_ratio**2
        if float(sde.snr(torch.tensor(float(sde.T), dtype=F64))) >= snr:
            return float(sde.T)
        if float(sde.snr(torch.tensor(float(sde.t_min), dtype=F64))) <= snr:
            raise ValueError(f"noise_ratio={self.noise_ratio!r} is invalid for this process: sigma/alpha is already above it at "
                             f"t_min={float(sde.t_min)!r}; choose a smaller noise_ratio")
        return float(sde.t_from_snr(torch.tensor(snr, dtype=F64)))

    def marginal_std(self, sde: LinearSDE, t: float) -> tuple[Tensor, float]:
        """``(√(α²λ_i + σ²), √(α² residual + σ²))`` at ``t``: the standard deviations of the Gaussian's
        marginal along the eigenvectors and on the rest."""
        tt = torch.tensor(float(t), dtype=F64)
        a2, s2 = float(sde.alpha(tt)) ** 2, float(sde.sigma2(tt))
        return torch.sqrt(a2 * self.eigenvalues + s2), math.sqrt(a2 * self.residual + s2)

    def state(self, sde: LinearSDE, t: float, z: Tensor) -> Tensor:
        """``α μ + m + C_t^{1/2} z`` for standard normal ``z`` ``(B, *shape)``: the Gaussian's marginal at
        ``t``, and the image of the prior draw under its probability-flow map (in ``z``'s dtype)."""
        if tuple(z.shape[1:]) != self.shape:
            raise ValueError(f"the moments are for samples of shape {list(self.shape)}; got a batch of shape {list(z.shape)}")
        tt = torch.tensor(float(t), dtype=F64)
        alpha, m = float(sde.alpha(tt)), float(sde.mean_offset(tt))
        std, rest = self.marginal_std(sde, t)
        U = self.eigenvectors.to(z.device)
        zf = z.reshape(z.shape[0], -1).to(F64)
        c = zf @ U  # coordinates along the eigenvectors
        x = rest * zf + (c * (std.to(z.device) - rest)) @ U.T
        x = x + alpha * self.mean.to(z.device).reshape(1, -1) + m
        return x.reshape(z.shape).to(z.dtype)

    def from_prior(self, sde: LinearSDE, t: float, x_T: Tensor) -> Tensor:
        """:meth:`state` of a draw ``x_T`` from the process's prior, standardized in float64 (in
        ``x_T``'s dtype): where ``sample()``, ``SDEScheduler`` and the grid fit begin a run at ``t``."""
        z = (x_T.to(F64) - sde.prior_mean) / math.sqrt(sde.prior_var)
        return self.state(sde, t, z).to(x_T.dtype)

    # ---- files ------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The moments as a safetensors file (:meth:`load` reads it; the CLI writes it atomically)."""
        from safetensors.torch import save

        tensors = {"mean": self.mean.contiguous(), "eigenvalues": self.eigenvalues.contiguous(),
                   "eigenvectors": self.eigenvectors.to(torch.float32).contiguous(),
                   "residual": torch.tensor([self.residual], dtype=F64)}
        return save(tensors, metadata={"format": "lit_diffusion.gaussian_start"})

    @classmethod
    def load(cls, path, noise_ratio: float = DEFAULT_NOISE_RATIO) -> "GaussianStart":
        """Read :meth:`to_bytes`' file (safetensors only; keys, shapes and values checked)."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no moments file {path!r} (python -m lit_diffusion.cli.gaussian_fit writes one)")
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            want = {"mean", "eigenvalues", "eigenvectors", "residual"}
            if keys != want:
                raise ValueError(f"{path!r} is not a moments file: keys {sorted(keys)}, expected {sorted(want)}")
            t = {k: f.get_tensor(k) for k in want}
        if t["residual"].numel() != 1:
            raise ValueError(f"{path!r}: residual must hold one number")
        return cls(t["mean"], t["eigenvalues"], t["eigenvectors"], float(t["residual"]), noise_ratio)


def moments_path(folder) -> str:
    """The moments file of a model folder: :data:`MOMENTS_FILE` in it, else beside the scheduler config of an
    exported pipeline folder (``scheduler/``, where ``SDEScheduler.save_pretrained`` writes it); the first when
    neither exists."""
    paths = [os.path.join(os.fspath(folder), MOMENTS_FILE), os.path.join(os.fspath(folder), "scheduler", MOMENTS_FILE)]
    return next((p for p in paths if os.path.isfile(p)), paths[0])


def model_moments(folder, noise_ratio: float = DEFAULT_NOISE_RATIO) -> Optional[GaussianStart]:
    """The moments saved in a model folder (:func:`moments_path`), or None when it has none."""
    path = moments_path(folder)
    return GaussianStart.load(path, noise_ratio) if os.path.isfile(path) else None


def as_gaussian_start(start, noise_ratio: Optional[float] = None) -> Optional[GaussianStart]:
    """``sample(gaussian_start=)``: a :class:`GaussianStart`, a path to a moments file or a model folder
    holding one, or None."""
    if start is None or isinstance(start, GaussianStart):
        return start if start is None or noise_ratio is None else start.with_noise_ratio(noise_ratio)
    if isinstance(start, (str, os.PathLike)):
        p = os.fspath(start)
        path = os.path.join(p, MOMENTS_FILE) if os.path.isdir(p) else p
        return GaussianStart.load(path, DEFAULT_NOISE_RATIO if noise_ratio is None else noise_ratio)
    raise TypeError(f"gaussian_start must be a GaussianStart, a moments file or a model folder; got {type(start).__name__}")

