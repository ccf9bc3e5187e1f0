"""Exact log-likelihood and bits per dimension through the probability-flow ODE (docs/maths.md §8).

Along the probability-flow ODE ``dX/dt = f(X, t) = a X + b − ½ g² s(X, t)`` the log-density obeys the
instantaneous change of variables ``d log p_t(X_t)/dt = −div f(X_t, t)`` (Chen, Rubanova, Bettencourt
and Duvenaud, "Neural Ordinary Differential Equations"; used for diffusion models by Song et al.,
"Score-Based Generative Modeling through SDEs"), so

    log p_{t_min}(x) = log π(X_T) + ∫_{t_min}^{T} div f(X_t, t) dt,   X_{t_min} = x,

with ``π`` the SDE's prior.  The divergence is exact (autograd, one backward pass per dimension) or the
Hutchinson–Skilling estimate ``E[εᵀ ∂f/∂x ε]`` with a probe ``ε`` fixed along the path (Rademacher or
Gaussian; each probe is integrated as its own log-density channel, so the spread over probes is
measured).  The ODE is solved by torchdiffeq's adaptive ``dopri5`` (``rtol``/``atol``) or a fixed-step
Heun method on ``steps`` points of a time grid.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from ..core.sdes import LinearSDE
from ..sampling.inversion import resolve_model

__all__ = ["log_likelihood", "bits_per_dim", "check_8bit", "DIVERGENCES", "SOLVERS", "PROBES"]

DIVERGENCES = ("exact", "hutchinson")
SOLVERS = ("dopri5", "heun")
PROBES = ("rademacher", "gaussian")
F64 = torch.float64


def _check_inputs(x, shape, divergence, solver, probe, n_probes, steps, rtol, atol, value_range):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is invalid; valid choices: {list(DIVERGENCES)}")
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is invalid; valid choices: {list(SOLVERS)}")
    if probe not in PROBES:
        raise ValueError(f"probe={probe!r} is invalid; valid choices: {list(PROBES)}")
    from ..core.utils import MAX_STEPS, check_count

    check_count("n_probes", n_probes, 1, 10_000)
    check_count("steps", steps, 1, MAX_STEPS)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol={rtol!r} and atol={atol!r} must be > 0")
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor of shape (batch, *data_shape); got {getattr(x, 'shape', type(x).__name__)}")
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"x has samples of shape {tuple(x.shape[1:])}; the model's data shape is {tuple(shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or inf")
    if value_range is not None:
        lo, hi = value_range
        if float(x.min()) < lo or float(x.max()) > hi:
            raise ValueError(f"x lies in [{float(x.min()):.3g}, {float(x.max()):.3g}], outside the model's data range [{lo}, {hi}]")


def _drift(field, sde, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow drift ``a x + b − ½ g² s(x, t)`` (t of shape (B,))."""
    a, b = sde.drift_coefficients(t)
    g2 = sde.g2(t)
    view = (-1,) + (1,) * (x.ndim - 1)
    s = field(x, t, "score").to(x.dtype)
    return a.to(x.dtype).view(view) * x + b.to(x.dtype).view(view) - 0.5 * g2.to(x.dtype).view(view) * s


def _augmented(field, sde, shape, divergence, probes):
    """The ODE of ``(x, Δ log p per probe)``, flattened to ``(B, d + K)``."""
    d = int(math.prod(shape))

    def f(t: Tensor, y: Tensor) -> Tensor:
        B = y.shape[0]
        with torch.enable_grad():
            x = y[:, :d].detach().reshape((B,) + tuple(shape)).requires_grad_(True)
            tt = t.to(F64).expand(B) if t.ndim == 0 else t
            v = _drift(field, sde, x, tt)
            flat = v.reshape(B, d)
            if divergence == "exact":
                div = torch.zeros(B, dtype=y.dtype, device=y.device)
                for i in range(d):
                    g, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i < d - 1)
                    div = div + g.reshape(B, d)[:, i].to(y.dtype)
                divs = div[:, None]
            else:
                cols = []
                for k in range(probes.shape[1]):
                    eps = probes[:, k]
                    g, = torch.autograd.grad((flat * eps).sum(), x, retain_graph=k < probes.shape[1] - 1)
                    cols.append((g.reshape(B, d) * eps).sum(1).to(y.dtype))
                divs = torch.stack(cols, 1)
        return torch.cat([flat.detach().to(y.dtype), divs.detach()], 1)

    return f


def _heun(f, y0: Tensor, grid: Tensor) -> Tensor:
    y = y0
    for k in range(grid.numel() - 1):
        t0, t1 = grid[k], grid[k + 1]
        h = (t1 - t0).to(y.dtype)
        k1 = f(t0, y)
        k2 = f(t1, y + h * k1)
        y = y + 0.5 * h * (k1 + k2)
    return y


def _probes(shape, probe: str, generator, i0: int, dtype) -> Tensor:
    """Hutchinson probes of one batch; with one generator per sample, sample ``i`` draws its own (the
    result does not depend on ``batch_size``)."""
    if isinstance(generator, (list, tuple)):
        from ..core.utils import rand, randn

        gens = list(generator[i0:i0 + shape[0]])
        if probe == "rademacher":
            return (rand(shape, generator=gens, dtype=torch.float64) < 0.5).to(dtype) * 2 - 1
        return randn(shape, generator=gens, dtype=dtype)
    if probe == "rademacher":
        return torch.randint(0, 2, shape, generator=generator, dtype=torch.int64).to(dtype) * 2 - 1
    return torch.randn(shape, generator=generator, dtype=dtype)


def log_likelihood(
    model,
    x: Tensor,
    sde: Optional[LinearSDE] = None,
    divergence: str = "hutchinson",
    n_probes: int = 1,
    probe: str = "rademacher",
    solver: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    steps: int = 100,
    schedule: str = "uniform",
    generator: Optional[torch.Generator] = None,
    prediction_type: Optional[str] = None,
    class_labels=None,
    guidance_scale: float = 1.0,
    prior: Optional[Callable[[Tensor], Tensor]] = None,
    batch_size: Optional[int] = None,
    value_range: Optional[tuple] = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    return_details: bool = False,
):
    """Per-sample ``log p(x)`` in nats at the SDE's ``t_min`` (where the ODE starts), shape ``(B,)``.

    Args:
        model: a ``ScoreModule`` (``ScoreModule.load(path)`` loads a checkpoint file or pretrained
            folder), a ``Field``, an analytic ``GaussianMixture`` (exact score), or a network with
            ``prediction_type``.
        divergence: ``"exact"`` (autograd, ``d`` backward passes: small dimensions) or
            ``"hutchinson"`` (``n_probes`` probes of law ``probe``, each its own channel; the result
            is their mean, and ``return_details`` gives every probe's estimate).
        solver: ``"dopri5"`` (torchdiffeq, adaptive, ``rtol``/``atol``) or ``"heun"`` (``steps``
            fixed steps on the grid ``schedule``, order 2).
        generator: one ``torch.Generator`` for the probes, or one per sample (then the result does not
            depend on ``batch_size``).
        prior: ``log π`` of the state at ``T`` (default: the SDE's own prior, ``sde.prior_logp``).
        value_range: ``(lo, hi)`` the data must lie in (images: ``(-1, 1)``; checked before any work).
        dtype: the arithmetic of the ODE (float64 for exactness tests on analytic targets).
    """
    from ..core.schedules import get_timesteps

    field, sde, shape = resolve_model(model, sde, prediction_type, class_labels, guidance_scale)
    if shape is None:
        shape = tuple(x.shape[1:])
    if value_range is None and len(shape) == 3:
        value_range = (-1.0, 1.0)  # images
    _check_inputs(x, shape, divergence, solver, probe, n_probes, steps, rtol, atol, value_range)
    K = 1 if divergence == "exact" else int(n_probes)
    B = x.shape[0]
    if isinstance(generator, (list, tuple)) and len(generator) != B:
        raise ValueError(f"got {len(generator)} generators for {B} samples; pass one generator per sample (or one)")
    bs = B if batch_size is None else int(batch_size)
    prior = prior or sde.prior_logp
    outs = []
    from tqdm.auto import tqdm

    for i0 in tqdm(range(0, B, bs), disable=not progress, desc="log-likelihood", unit="batch"):
        xb = x[i0:i0 + bs].to(dtype)
        b = xb.shape[0]
        d = xb[0].numel()
        if K and divergence == "hutchinson":
            eps = _probes((b, K, d), probe, generator, i0, dtype).to(xb.device)
        else:
            eps = None
        f = _augmented(field, sde, shape, divergence, eps)
        y0 = torch.cat([xb.reshape(b, d), torch.zeros(b, K, dtype=dtype, device=xb.device)], 1)
        if solver == "dopri5":
            from torchdiffeq import odeint

            ts = torch.tensor([sde.t_min, sde.T], dtype=dtype, device=xb.device)
            yT = odeint(f, y0, ts, method="dopri5", rtol=rtol, atol=atol)[-1]
        else:
            grid = get_timesteps(sde, int(steps), schedule).flip(0).to(dtype=dtype, device=xb.device)
            yT = _heun(f, y0, grid)
        zT = yT[:, :d].reshape((b,) + tuple(shape))
        per_probe = prior(zT).to(dtype)[:, None] + yT[:, d:]
        outs.append(per_probe)
    per_probe = torch.cat(outs, 0)
    logp = per_probe.mean(1)
    if return_details:
        return logp, {"per_probe": per_probe}
    return logp


def check_8bit(images, ndim: Optional[int] = None) -> None:
    """``images`` is a ``(B, ...)`` tensor (exactly ``ndim`` axes when given) of integer values in
    ``[0, 255]``, else a ``ValueError`` naming what is wrong (both bounds on 8-bit data check this)."""
    shape = "(B, C, H, W)" if ndim == 4 else "(B, ...)"
    if not isinstance(images, Tensor) or (images.ndim != ndim if ndim else images.ndim < 2):
        raise ValueError(f"images must be a {shape} tensor of 8-bit values; got {getattr(images, 'shape', type(images).__name__)}")
    if images.is_floating_point() and not bool((images == images.round()).all()):
        raise ValueError("images must hold 8-bit integer values in [0, 255] (not already scaled)")
    if float(images.min()) < 0 or float(images.max()) > 255:
        raise ValueError(f"images lie in [{float(images.min())}, {float(images.max())}]; 8-bit values are in [0, 255]")


def bits_per_dim(model, images: Tensor, dequantization: str = "uniform", generator: Optional[torch.Generator] = None,
                 **kwargs) -> dict:
    """Bits per dimension of 8-bit images (integers in ``[0, 255]``, shape ``(B, C, H, W)``) under the
    model of the images scaled to ``[-1, 1]``, with uniform dequantization: ``y = 2 (x + u)/256 − 1``,
    ``u ~ U[0, 1)^D``; ``bpd = −log p(y)/(D ln 2) + 7`` (the change of variables to ``[-1, 1]`` and the
    256 bins, docs/maths.md §8) is an upper bound on the discrete model's code length.  Returns the
    mean and its standard error over images (and probes) as ``{"bpd", "bpd_se", "per_image"}``."""
    if dequantization != "uniform":
        raise ValueError(f"dequantization={dequantization!r} is invalid; valid choices: ['uniform']")
    check_8bit(images, ndim=4)
    if isinstance(generator, (list, tuple)):  # one generator per image: its dequantization noise, then its probes
        from ..core.utils import rand

        u = rand(images.shape, generator=list(generator), dtype=torch.float64)
    else:
        u = torch.rand(images.shape, generator=generator, dtype=torch.float64)
    y = (2 * (images.double() + u) / 256 - 1).float()
    D = images[0].numel()
    logp, det = log_likelihood(model, y, value_range=(-1.0, 1.0), generator=generator, return_details=True, **kwargs)
    per = -det["per_probe"].double() / (D * math.log(2)) + 7.0  # (B, K)
    per_image = per.mean(1)
    n = per.numel()
    se = float(per.std() / math.sqrt(n)) if n > 1 else float("nan")
    return {"bpd": float(per.mean()), "bpd_se": se, "per_image": per_image}
