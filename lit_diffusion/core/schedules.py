"""Time grids for sampling (docs/maths.md §4): ``t_0 = T > t_1 > ... > t_N = t_min``.

* ``uniform``   uniform in ``t``;
* ``bbdd``      Benton–De Bortoli–Doucet–Deligiannidis: in OU-equivalent time
  ``tau(t) = 1/2 log(1 + 1/lambda(t))`` the first half of the steps is uniform on ``[tau(T), 1]``
  and the second half geometric from 1 down to ``tau(t_min)``; mapped back through ``lambda^{-1}``
  (for the standard OU ``tau(t) = t``).  If ``tau(T) <= 1`` (or ``tau(t_min) >= 1``) the whole
  grid is geometric (uniform);
* ``log_snr``   uniform in ``log lambda(t)``;
* ``edm``       uniform in ``(sigma/alpha)^{1/rho} = lambda^{-1/(2 rho)}``, ``rho = 7``;
* ``geometric`` geometric in ``t``: ``t_k = T (t_min/T)^{k/N}``.

The grid is float64, strictly decreasing, and its end points are exactly ``T`` and ``t_min``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .sdes import LinearSDE

__all__ = ["SCHEDULES", "get_timesteps", "check_schedule", "is_time_grid"]

SCHEDULES = ("uniform", "bbdd", "log_snr", "edm", "geometric")


def check_schedule(schedule: str) -> str:
    key = str(schedule).lower()
    if key not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid choices: {list(SCHEDULES)}")
    return key


def is_time_grid(values) -> bool:
    """Whether ``values`` (a JSON-typed list, e.g. a fitted grid or a config key) is a time grid: at
    least 2 finite real numbers (not booleans), strictly decreasing."""
    return (isinstance(values, (list, tuple)) and len(values) >= 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
            and all(a > b for a, b in zip(values, values[1:])))


def check_steps(steps) -> int:
    from .utils import MAX_STEPS, check_count

    if isinstance(steps, float):
        raise ValueError(f"steps={steps!r} is invalid; it must be an integer in [1, {MAX_STEPS}]")
    return check_count("steps", steps, 1, MAX_STEPS)


def get_timesteps(
    sde: LinearSDE,
    steps: int,
    schedule: str = "uniform",
    T: Optional[float] = None,
    t_min: Optional[float] = None,
    rho: float = 7.0,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """The ``steps + 1`` times ``T = t_0 > ... > t_N = t_min`` of a schedule (see module doc)."""
    schedule = check_schedule(schedule)
    n = check_steps(steps)
    T = float(sde.T if T is None else T)
    t_min = float(sde.t_min if t_min is None else t_min)
    if not (0 < t_min < T):
        raise ValueError(f"need 0 < t_min < T; got t_min={t_min!r}, T={T!r}")
    f64 = torch.float64
    k = torch.arange(n + 1, dtype=f64)
    Tt, tm = torch.tensor(T, dtype=f64), torch.tensor(t_min, dtype=f64)
    if schedule == "uniform":
        t = T + (t_min - T) * k / n
    elif schedule == "geometric":
        t = T * (t_min / T) ** (k / n)
    elif schedule == "log_snr":
        a, b = sde.log_snr(Tt), sde.log_snr(tm)
        t = sde.t_from_snr(torch.exp(a + (b - a) * k / n))
    elif schedule == "edm":
        # (sigma/alpha)^(1/rho) = lambda^(-1/(2 rho)), uniform from T down to t_min
        a = torch.exp(-sde.log_snr(Tt) / (2 * rho))
        b = torch.exp(-sde.log_snr(tm) / (2 * rho))
        r = a + (b - a) * k / n
        t = sde.t_from_snr(r ** (-2 * rho))
    else:  # bbdd
        def tau_of(lam_log):  # tau = 1/2 log(1 + 1/lambda) = 1/2 log1p(exp(-log lambda))
            return 0.5 * torch.log1p(torch.exp(-lam_log))

        tau_T, tau_min = float(tau_of(sde.log_snr(Tt))), float(tau_of(sde.log_snr(tm)))
        if tau_T <= 1.0:
            taus = tau_T * (tau_min / tau_T) ** (k / n)
        elif tau_min >= 1.0:
            taus = tau_T + (tau_min - tau_T) * k / n
        else:
            n1 = n // 2
            n2 = n - n1
            lin = tau_T + (1.0 - tau_T) * torch.arange(n1, dtype=f64) / max(n1, 1)
            geo = (tau_min / 1.0) ** (torch.arange(n2 + 1, dtype=f64) / n2)
            taus = torch.cat([lin, geo]) if n1 > 0 else geo
        # lambda = 1 / (e^{2 tau} - 1)
        t = sde.t_from_snr(1.0 / torch.expm1(2 * taus))
    t = t.to(f64)
    t[0], t[-1] = T, t_min
    if not bool((t[1:] < t[:-1]).all()):
        raise RuntimeError(f"schedule {schedule!r} produced a non-decreasing grid for {sde!r}: {t.tolist()}")
    return t.to(device=device, dtype=dtype)
