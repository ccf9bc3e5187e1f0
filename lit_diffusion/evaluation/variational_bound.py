"""The variational bound of Ho, Jain and Abbeel ("Denoising Diffusion Probabilistic Models") on the code
length of 8-bit images, for any linear SDE (docs/maths.md §8, "Variational bound").

The forward process is observed on a grid ``u_0 < u_1 < ... < u_N = T`` that starts where the noise
reaches half a pixel bin, ``σ/α = 1/255``, or at the SDE's ``t_min`` if that is later (VP: ``t_min``,
``σ/α ≈ 0.01``; VE: where ``σ = 0.0039``, not at its ``t_min`` whose ``σ = 1.3·10⁻⁴`` would make the
chain spell out each pixel far inside its bin); the model's reverse
chain steps ``u_i -> u_{i-1}`` with the Gaussian posterior ``q(x_{u_{i-1}} | x_{u_i}, x_0)`` evaluated at
the model's denoised estimate ``x̂_0 = D(x_{u_i}, u_i)``, and ends with a discretized Gaussian decoder of
the 256 pixel levels. No dequantization: the bound is on ``−log P(x_0)`` of the integer image itself::

    L = KL(q(x_T | x_0) || prior) + Σ_i ½ (SNR(u_{i-1}) − SNR(u_i)) ‖x_0 − D(x_{u_i}, u_i)‖²
        − log Π_pixels P_bin(x_0 | mean D(x_{u_0}, u_0), std σ(u_0)/α(u_0)),

each expectation estimated with one draw of ``x_{u_i} ~ q(· | x_0)`` per image and term (unbiased). Bits
per dimension are ``L / (D ln 2)``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..core.utils import MAX_STEPS, check_count
from ..sampling.inversion import resolve_model
from .likelihood import check_8bit

__all__ = ["variational_bpd", "discretized_gaussian_log_prob"]

F64 = torch.float64


def discretized_gaussian_log_prob(x0: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``log P(bin of x0)`` per pixel under ``N(mean, std²)`` cut into the 256 bins of ``[-1, 1]`` (bin
    centres ``2k/255 − 1``, width ``2/255``; the outer bins reach to ``±∞``, as in Ho et al.)."""
    x0, mean = x0.to(F64), mean.to(F64)
    std = torch.as_tensor(std, dtype=F64, device=x0.device)
    half = 1.0 / 255.0
    hi = torch.where(x0 > 1 - half, torch.full_like(x0, math.inf), (x0 + half - mean) / std)
    lo = torch.where(x0 < -1 + half, torch.full_like(x0, -math.inf), (x0 - half - mean) / std)
    normal = torch.distributions.Normal(torch.zeros((), dtype=F64), torch.ones((), dtype=F64))
    # the smaller tail difference: 1 - Phi cancels badly above the mean
    flip = (lo + hi) > 0
    a, b = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    p = normal.cdf(b) - normal.cdf(a)
    # far in a tail the difference underflows: the density at the bin centre times the width
    approx = normal.log_prob((x0 - mean) / std) - torch.log(std) + math.log(2 * half)
    return torch.where(p > 1e-300, torch.log(p.clamp_min(1e-300)), approx)


def _terms(field, sde, x0: Tensor, grid: Tensor, generator, dtype: torch.dtype) -> dict:
    """Per-image nats of the prior, diffusion and decoder terms for one batch ``x0`` in ``[-1, 1]``."""
    b = x0.shape[0]
    x0 = x0.to(F64)
    alpha, sigma, snr, off = sde.alpha(grid), sde.sigma(grid), sde.snr(grid), sde.mean_offset(grid)

    def draw(i: int) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, dtype=F64)
        return alpha[i] * x0 + off[i] + sigma[i] * eps

    def denoised(x: Tensor, i: int) -> Tensor:
        t = torch.full((b,), float(grid[i]), dtype=F64)
        return field(x.to(dtype), t.to(dtype), "denoiser").to(F64)

    diffusion = torch.zeros(b, dtype=F64)
    for i in range(1, grid.numel()):
        err = (x0 - denoised(draw(i), i)).reshape(b, -1).pow(2).sum(1)
        diffusion += 0.5 * (snr[i - 1] - snr[i]) * err
    decoder = -discretized_gaussian_log_prob(x0, denoised(draw(0), 0), sigma[0] / alpha[0]).reshape(b, -1).sum(1)
    mean_T, var_T, var_p = alpha[-1] * x0 + off[-1], sigma[-1] ** 2, float(sde.prior_var)
    kl = 0.5 * ((var_T + (mean_T - float(sde.prior_mean)) ** 2) / var_p - 1 - torch.log(var_T / var_p))
    return {"prior": kl.reshape(b, -1).sum(1), "diffusion": diffusion, "decoder": decoder}


@torch.no_grad()
def variational_bpd(model, images: Tensor, steps: int = 1000, schedule: str = "log_snr",
                    generator: Optional[torch.Generator] = None, batch_size: Optional[int] = None,
                    sde=None, prediction_type: Optional[str] = None, class_labels=None,
                    dtype: torch.dtype = torch.float32) -> dict:
    """Bits per dimension of 8-bit ``images`` (integers in ``[0, 255]``, shape ``(B, ...)``) by the
    variational bound of Ho et al. on ``steps`` steps of the grid ``schedule`` (``steps + 1`` network
    evaluations per image; the paper used 1,000 steps uniform in its discrete time; uniform in log-SNR,
    the default, converges faster: docs/metrics.md). Returns ``{"bpd", "bpd_se",
    "per_image", "terms"}`` (``terms``: the prior, diffusion and decoder parts, bits per dimension).
    ``dtype``: what the network is called in (the bound's arithmetic is float64)."""
    from ..core.schedules import get_timesteps

    check_8bit(images)
    check_count("steps", steps, 1, MAX_STEPS)
    field, sde, shape = resolve_model(model, sde, prediction_type, class_labels)
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(f"images have shape {tuple(images.shape[1:])}; the model's data shape is {tuple(shape)}")
    start = max(float(sde.t_min), float(sde.t_from_snr(torch.tensor(255.0**2, dtype=F64))))
    grid = get_timesteps(sde, int(steps), schedule, t_min=start).to(F64).flip(0)  # u_0 < ... < u_N = T
    x = 2 * images.to(F64) / 255 - 1
    bs = images.shape[0] if batch_size is None else int(batch_size)
    parts = [_terms(field, sde, x[i:i + bs], grid, generator, dtype) for i in range(0, x.shape[0], bs)]
    D = images[0].numel()
    to_bits = 1.0 / (D * math.log(2))
    terms = {k: torch.cat([p[k] for p in parts]) * to_bits for k in parts[0]}
    per_image = sum(terms.values())
    n = per_image.numel()
    return {"bpd": float(per_image.mean()), "bpd_se": float(per_image.std() / math.sqrt(n)) if n > 1 else float("nan"),
            "per_image": per_image, "terms": {k: float(v.mean()) for k, v in terms.items()}}
