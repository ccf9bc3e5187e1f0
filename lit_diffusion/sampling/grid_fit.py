"""Time grids fitted to a model (docs/samplers.md, "The corrector and the fitted grids"), by two methods.

``method="terminal"`` (the default, :func:`fit_grid_terminal`): ``n_calib`` prior draws are solved
accurately once; then, starting from the sampler's default grid, each point of the ``steps``-step grid
is moved in log-SNR (a fraction of the distance to its neighbours, halved when no move helps) and every
move that lowers the mean distance of the multistep ODE's output to the accurate one is kept.  It
measures what a sample is judged on -- where it ends -- so errors made early and contracted later by
the flow are not over-counted.  A grid of ``s`` steps costs ``max_evals`` solutions of ``n_calib``
draws, ``max_evals · n_calib · (s + 1)`` network evaluations.

``method="local"``: choose the grid among the points of a fine log-SNR grid that minimises the
accumulated *local* error of the sampler along calibration trajectories, by dynamic programming (in the
spirit of Chen, Zhou et al., "On the Trajectory Regularity of ODE-based Diffusion Sampling", and
Sabour, Fidler and Kreis, "Align Your Steps"):

1. ``n_calib`` probability-flow trajectories from the prior are integrated accurately (multistep
   order 3, ``refine`` sub-steps per fine interval) and the state ``X_i`` and the denoiser ``D_i`` are
   recorded at every point ``t_i`` of the fine grid (``fine + 1`` points, ``refine * fine + fine + 1``
   network evaluations in all);
2. the local error of a step ``i → j`` of the order-2 multistep ODE whose previous node is ``k``
   (order 1 on the first step, and on the last one of a grid run down to ``t_min``, as the sampler
   runs them) is
   ``E[k, i, j] = mean_n RMS(X̂_j − X_j)``, computed from the recorded states and denoisers alone;
3. the path ``0 = i_0 < ... < i_steps = fine`` minimising ``Σ E`` is found by dynamic programming over
   the pairs ``(previous, current)``.

Either way the result is a small JSON (the grid in the SDE's own time) that ``sample(timesteps=)``,
``sample.py --time-grid FILE`` and ``SDEScheduler(fitted_grid=...)`` use.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Optional

import numpy as np
import torch

from ..core.fields import as_field
from ..core.schedules import get_timesteps, is_time_grid
from ..core.sdes import LinearSDE
from .multistep import kernel_moments, lagrange_weights

__all__ = ["fit_grid", "fit_grid_terminal", "pattern_search", "grid_file_name", "model_grid", "local_errors", "best_path", "load_grid", "GRID_FORMAT", "FIT_METHODS"]

#: ``"terminal"``: pattern search on the terminal error against accurate solutions (the default: on the
#: shipped MNIST model it beats the sampler's default grid, docs/samplers.md "The corrector and the fitted grids");
#: ``"local"``: dynamic programming over the summed local errors (fast; wins on analytic targets only)
FIT_METHODS = ("terminal", "local")

GRID_FORMAT = "lit_diffusion-grid"
F64 = torch.float64


@torch.no_grad()
def _calibrate(field, sde, shape, n_calib, fine, refine, generator, device):
    from .samplers import sample

    fine_grid = get_timesteps(sde, fine, "log_snr").to(F64)
    dense = get_timesteps(sde, fine * refine, "log_snr").to(F64)
    x_T = sde.prior_sampling((n_calib,) + tuple(shape), generator=generator).to(device)
    res = sample(field, sde, x_T=x_T, sampler="multistep", ode=True, timesteps=dense, solver_order=3,
                 return_trajectory=True, device=device)
    X = res.trajectory[::refine].to(F64)  # (fine + 1, n, ...)
    D = torch.stack([field(X[i].float(), fine_grid[i].expand(n_calib).to(device), "denoiser").to(F64)
                     for i in range(fine + 1)])
    return fine_grid, X, D


def local_errors(sde: LinearSDE, grid: torch.Tensor, X: torch.Tensor, D: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(E1, E2)``: ``E1[i, j]`` the order-1 error of the step ``i → j`` and ``E2[k, i, j]`` the
    order-2 error with previous node ``k`` (``inf`` where undefined), from recorded states ``X`` and
    denoisers ``D`` on ``grid`` (centred coordinates, float64)."""
    F = grid.numel()
    ell = 0.5 * sde.log_snr(grid).to(F64)
    alpha, sigma, off = sde.alpha(grid).to(F64), sde.sigma(grid).to(F64), sde.mean_offset(grid).to(F64)
    flat = lambda v: v.reshape(v.shape[0], v.shape[1], -1)  # noqa: E731
    Xc = flat(X) - off[:, None, None]
    Dn = flat(D)
    E1 = np.full((F, F), np.inf)
    E2 = np.full((F, F, F), np.inf)
    for i in range(F - 1):
        j = torch.arange(i + 1, F)
        h = ell[j] - ell[i]
        base = (sigma[j] / sigma[i])[:, None, None] * Xc[i][None]
        M = kernel_moments(h, 2, False)
        one = base + (alpha[j] * M[0])[:, None, None] * Dn[i][None]
        E1[i, i + 1:] = _rms(one - Xc[j]).numpy()
        for k in range(i):
            r = ell[k] - ell[i]  # < 0
            w0, w1 = lagrange_weights([torch.zeros_like(h), r.expand_as(h)], M)
            two = base + (alpha[j] * w0)[:, None, None] * Dn[i][None] + (alpha[j] * w1)[:, None, None] * Dn[k][None]
            E2[k, i, i + 1:] = _rms(two - Xc[j]).numpy()
    return E1, E2


def _rms(err: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the per-sample root-mean-square error; ``err`` is ``(J, n, d)``."""
    return err.pow(2).mean(dim=2).sqrt().mean(dim=1)


def best_path(E1: np.ndarray, E2: np.ndarray, steps: int, final: Optional[np.ndarray] = None) -> tuple[list[int], float]:
    """The indices ``0 = i_0 < ... < i_steps`` minimising the summed local errors (order 1 on the first
    and the last step, order 2 in between) ending at ``F - 1`` (``t_min``); or, with ``final[j]`` (the
    error of the final denoising evaluation at point ``j``), ending wherever ``Σ E + final[end]`` is least,
    the last step then of order 2 (only the final jump is of order 1)."""
    F = E1.shape[0]
    last = F - 1
    if not (1 <= steps <= last):
        raise ValueError(f"steps={steps} is invalid for a fine grid of {last} intervals; it must be in [1, {last}]")
    idx = np.arange(F)
    E1 = np.where(idx[:, None] < idx[None, :], E1, np.inf)  # only steps i -> j with i < j
    E2 = np.where((idx[:, None, None] < idx[None, :, None]) & (idx[None, :, None] < idx[None, None, :]), E2, np.inf)
    # f[k, i]: the best cost of a path of n steps from 0 that ends with the step k -> i
    f = np.full((F, F), np.inf)
    f[0, 1:] = E1[0, 1:]
    back = []  # back[n - 2][i, j]: the best previous node k of the step i -> j as step n
    for n in range(2, steps + 1):
        # the last step is order 1 on a grid run down to t_min; before a final denoising evaluation
        # (the jump to the data) it keeps order 2, as the sampler runs it
        local = E1[None, :, :] if n == steps and final is None else E2
        cand = f[:, :, None] + local
        arg = np.argmin(cand, axis=0)
        f = np.take_along_axis(cand, arg[None], axis=0)[0]
        back.append(arg)
    if final is None:
        end = last
        total = f[:, last]
    else:
        totals = f + np.asarray(final, dtype=float)[None, :]
        end = int(np.argmin(totals.min(axis=0)))
        total = totals[:, end]
    k = int(np.argmin(total))
    cost = float(total[k])
    if steps == 1:
        return [0, end], cost
    path, i, j = [end], k, end
    for arg in reversed(back):
        path.append(i)
        i, j = int(arg[i, j]), i
    path.append(i)
    path.reverse()
    if path[0] != 0 or len(path) != steps + 1 or not math.isfinite(cost) or any(a >= b for a, b in zip(path, path[1:])):
        raise RuntimeError(f"grid fit: no path of {steps} steps found (got {path})")
    return path, cost


def fit_grid(field, sde: LinearSDE, steps: int, shape, n_calib: Optional[int] = None, fine: int = 64, refine: int = 3,
             seed: int = 0, device=None, prediction_type: Optional[str] = None, class_labels=None,
             guidance_scale: float = 1.0, final_denoise: bool = False, method: str = "terminal",
             max_evals: int = 60, n_holdout: int = 0, corrector: bool = False, gaussian_start=None) -> dict:
    """Fit a ``steps``-step grid (or one per budget of a list) for the multistep sampler to ``field``
    (a network with its ``prediction_type``, or an analytic target); returns the JSON-ready record
    (``timesteps``: the grid in the SDE's time, ``T`` first).  ``method`` (:data:`FIT_METHODS`):
    ``"terminal"`` (:func:`fit_grid_terminal`; ``n_calib`` 64 by default, ``max_evals`` solutions per
    budget, ``corrector``) or ``"local"`` (the dynamic programme of the module doc; ``n_calib`` 32, ``fine``, ``refine``).
    Without ``final_denoise`` the grid ends at ``t_min``; with it (the run ends with a denoising
    evaluation at its last point, as ``SDEScheduler`` does by default) the end point is chosen too.
    ``gaussian_start`` (:class:`~lit_diffusion.sampling.gaussian_start.GaussianStart`, terminal only): fit
    the grid of runs that start from it, at its start time (the grid's first point, kept fixed)."""
    from ..core.utils import check_count

    if method not in FIT_METHODS:
        raise ValueError(f"unknown grid-fitting method {method!r}; valid choices: {list(FIT_METHODS)}")
    if corrector and method != "terminal":
        raise ValueError(f"corrector=True applies to method='terminal' only; got method={method!r}")
    if gaussian_start is not None and method != "terminal":
        raise ValueError(f"gaussian_start applies to method='terminal' only; got method={method!r}")
    many = isinstance(steps, (list, tuple))
    budgets = [check_count("steps", v, 1, 1000) for v in (steps if many else [steps])]
    n_calib = check_count("n_calib", 64 if n_calib is None and method == "terminal" else n_calib or 32, 1, 100_000)
    f = as_field(field, sde, prediction_type=prediction_type, class_labels=class_labels, guidance_scale=guidance_scale)
    if method == "terminal":
        records = fit_grid_terminal(f, sde, budgets, shape, n_calib=n_calib, seed=seed, device=device,
                                    final_denoise=final_denoise, max_evals=check_count("max_evals", max_evals, 1, 100_000),
                                    n_holdout=check_count("n_holdout", n_holdout, 0, 100_000), corrector=bool(corrector),
                                    gaussian_start=gaussian_start)
        return records if many else records[0]
    fine = check_count("fine", fine, max(max(budgets), 2), 2000)
    refine = check_count("refine", refine, 1, 100)
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(int(seed))
    grid, X, D = _calibrate(f, sde, shape, n_calib, fine, refine, g, device or "cpu")
    E1, E2 = local_errors(sde, grid, X.cpu(), D.cpu())
    final = None
    if final_denoise:
        flatD = D.cpu().reshape(D.shape[0], D.shape[1], -1)
        target = X.cpu()[-1].reshape(X.shape[1], -1)
        final = _rms(flatD - target[None]).numpy()
    records = []
    for steps in budgets:
        path, cost = best_path(E1, E2, steps, final)
        ref_path = [round(i * fine / steps) for i in range(steps + 1)]
        ref_cost = _path_cost(E1, E2, ref_path) + (0.0 if final is None else float(final[-1]))
        records.append({
            "format": GRID_FORMAT, "sampler": "multistep", "steps": steps, "method": "local", "forms": ["ode", "sde"],
            "timesteps": [float(grid[i]) for i in path], "fine_indices": path,
            "objective": cost, "objective_log_snr_grid": ref_cost,
            "final_denoise": bool(final_denoise), "n_calib": n_calib, "fine": fine, "refine": refine, "seed": int(seed),
            "network_evaluations": fine * refine + fine + 1, "seconds": time.perf_counter() - t0,
            "sde": repr(sde),
        })
    return records if many else records[0]


@torch.no_grad()
def _solve(field, sde, x_T, grid, solver_order, final_denoise, device, corrector: bool = False) -> torch.Tensor:
    """The multistep ODE's output from ``x_T`` on ``grid``."""
    from .samplers import sample

    return sample(field, sde, x_T=x_T, sampler="multistep", ode=True, timesteps=grid, solver_order=solver_order,
                  corrector=corrector, final_denoise=final_denoise, device=device, check_finite=False).samples


def _terminal_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over samples of the per-sample RMS distance of ``out`` to ``ref`` (``inf`` if not finite)."""
    err = float(_rms((out.double() - ref.double()).reshape(1, out.shape[0], -1))[0])
    return err if math.isfinite(err) else math.inf


def start_grid(sde: LinearSDE, steps: int, ode: bool = True, final_denoise: bool = True, T: Optional[float] = None) -> torch.Tensor:
    """The grid :func:`~lit_diffusion.sampling.samplers.sample` runs multistep on for ``steps`` steps by
    default (the schedule of :func:`default_schedule`; with a final denoising evaluation on a short run,
    the grid of one more step, ending halfway down to ``t_min``), from ``T`` (a Gaussian start's time): where
    :func:`fit_grid_terminal` starts."""
    from .defaults import default_schedule, step_grid

    return step_grid(sde, "multistep", steps, default_schedule("multistep", ode, steps), final_denoise, T=T)


def _draws(sde, shape, n: int, seed: int, start, t_s, device) -> torch.Tensor:
    """``n`` prior draws of seed ``seed``, or their images on a Gaussian start's marginal at ``t_s``."""
    x = sde.prior_sampling((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))
    if start is not None:
        x = start.from_prior(sde, t_s, x)
    return x.to(device)


@torch.no_grad()
def fit_grid_terminal(field, sde: LinearSDE, budgets, shape, n_calib: int = 64, seed: int = 0, device=None,
                      final_denoise: bool = True, solver_order: int = 2, ref_steps: int = 100, max_evals: int = 60,
                      n_holdout: int = 0, corrector: bool = False, gaussian_start=None) -> list[dict]:
    """Fit each budget's grid by pattern search on the *terminal* error of the multistep ODE
    (docs/samplers.md, "The corrector and the fitted grids"): ``n_calib`` prior draws are solved accurately (``ref_steps``
    steps of the EDM grid, with the final denoising evaluation when ``final_denoise``), and each interior
    point of the grid (and its end point when the run ends with a denoising evaluation) is moved in
    log-SNR, one at a time, by a fraction of its distance to its neighbours, keeping every move that
    lowers the mean RMS distance of the ``steps``-step solution to the accurate one; the fraction halves
    when no move helps.  Starts from the sampler's default grid (:func:`start_grid`), so the result is
    never worse on the calibration draws; ``n_holdout`` further draws (another seed) measure both grids.
    ``corrector``: the solutions being fitted use the multistep corrector (off by default: the shipped
    grids were fitted without it, and measured with and without it).  ``gaussian_start``: a Gaussian start
    (:mod:`~lit_diffusion.sampling.gaussian_start`): the draws start from it at its start time ``t_s``,
    the grids run from ``t_s`` (kept fixed) and the accurate solutions too."""
    device = device or "cpu"
    gs = gaussian_start
    t_s = None if gs is None else gs.start_time(sde)
    x_T = _draws(sde, shape, n_calib, int(seed), gs, t_s, device)
    t0 = time.perf_counter()
    ref_grid = get_timesteps(sde, ref_steps, "edm", T=t_s)
    ref = _solve(field, sde, x_T, ref_grid, solver_order, final_denoise, device)
    hold = None
    if n_holdout:
        xh = _draws(sde, shape, n_holdout, int(seed) + 1_000_003, gs, t_s, device)
        hold = (xh, _solve(field, sde, xh, ref_grid, solver_order, final_denoise, device))

    def error(x0, accurate, grid) -> float:  # the terminal error of the fitted sampler on ``grid``
        return _terminal_error(_solve(field, sde, x0, grid, solver_order, final_denoise, device, corrector), accurate)

    ref_seconds = time.perf_counter() - t0
    records = []
    for steps in budgets:
        t1 = time.perf_counter()
        grid0 = start_grid(sde, steps, True, final_denoise, T=t_s).to(F64)
        grid, best, start, evals = pattern_search(sde, grid0, lambda g: error(x_T, ref, g), max_evals, final_denoise)
        rec = {"format": GRID_FORMAT, "sampler": "multistep", "steps": steps, "method": "terminal", "forms": ["ode", "sde"],
               "timesteps": [float(v) for v in grid], "start_timesteps": [float(v) for v in grid0],
               "objective": best, "objective_start_grid": start, "final_denoise": bool(final_denoise),
               "n_calib": n_calib, "ref_steps": ref_steps, "seed": int(seed), "objective_evaluations": evals, "corrector": bool(corrector),
               "network_evaluations": n_calib * evals * (steps + int(final_denoise)),
               "reference_network_evaluations": (n_calib + n_holdout) * (ref_steps + int(final_denoise)),
               "seconds": time.perf_counter() - t1, "reference_seconds": ref_seconds, "sde": repr(sde),
               "gaussian_start": None if gs is None else {"noise_ratio": gs.noise_ratio, "start_time": t_s}}
        if hold is not None:
            xh, refh = hold
            rec["holdout"] = {"n": n_holdout, "start_grid": error(xh, refh, grid0), "fitted_grid": error(xh, refh, grid)}
        records.append(rec)
    return records


def pattern_search(sde: LinearSDE, grid0: torch.Tensor, objective, max_evals: int, move_end: bool = True):
    """Lower ``objective(grid)`` from ``grid0`` by pattern search in log-SNR: each interior point (and the
    end point when ``move_end``: a run that ends with a denoising evaluation) is moved, one at a time, by
    ``frac`` of its distance to its nearer neighbour (the end point's right neighbour is ``t_min``), to
    higher log-SNR first, then lower, keeping the first move that lowers the objective; ``frac`` starts at 0.5 and halves
    after a sweep without a gain, until ``max_evals`` objectives are spent or ``frac < 1/64``.  The first
    point stays.  Returns ``(grid, best, objective(grid0), evaluations)``; never worse than ``grid0``."""
    hi = float(sde.log_snr(torch.tensor(sde.t_min, dtype=F64)))
    lam = sde.log_snr(grid0).to(F64).clone()
    n = lam.numel() - 1
    to_grid = lambda lm: torch.cat([grid0[:1], sde.t_from_snr(torch.exp(lm[1:]))])  # noqa: E731
    best = start = objective(to_grid(lam))
    evals, frac = 1, 0.5
    free = range(1, n + 1) if move_end else range(1, n)
    while evals < max_evals and frac > 1 / 64:
        improved = False
        for i in free:
            right = float(lam[i + 1] - lam[i]) if i < n else hi - float(lam[i])
            gap = min(float(lam[i] - lam[i - 1]), right) if right > 1e-9 else float(lam[i] - lam[i - 1])
            for sign in (1.0, -1.0):
                if evals >= max_evals or (sign > 0 and right <= 1e-9):
                    continue
                cand = lam.clone()
                cand[i] += sign * frac * gap
                value = objective(to_grid(cand))
                evals += 1
                if value < best:
                    lam, best, improved = cand, value, True
                    break
        if not improved:
            frac /= 2
    return to_grid(lam), best, start, evals


def _path_cost(E1, E2, path) -> float:
    cost = E1[path[0], path[1]]
    for n in range(2, len(path)):
        k, i, j = path[n - 2], path[n - 1], path[n]
        cost += E1[i, j] if n == len(path) - 1 else E2[k, i, j]
    return float(cost)


def grid_file_name(steps: int, final_denoise: bool, gaussian: bool = False, form: Optional[str] = None) -> str:
    """``multistep-<steps>.json`` for a run that ends with a denoising evaluation at its last point (the
    scheduler's default, ``sample.py --final-denoise``), ``multistep-<steps>-to-t-min.json`` for one that
    ends at ``t_min``; ``-gaussian`` before ``.json`` for runs from a Gaussian start; ``-ode`` / ``-sde`` last
    for a grid of one form (``form``), which :func:`model_grid` takes before the file shared by both."""
    if form not in (None, "ode", "sde"):
        raise ValueError(f"form={form!r} is invalid; valid choices: [None, 'ode', 'sde']")
    name = f"multistep-{int(steps)}" + ("" if final_denoise else "-to-t-min") + ("-gaussian" if gaussian else "")
    return name + ("" if form is None else f"-{form}") + ".json"


def model_grid(folder, steps: int, final_denoise: bool, ode: bool, start_time: Optional[float] = None) -> Optional[tuple[str, list[float]]]:
    """``(path, timesteps)`` of the grid fitted for a run of ``steps`` steps that is saved beside a model
    (``<folder>/grids/``, written by ``python -m lit_diffusion.cli.grid_fit``) for the ODE or SDE form
    (its ``forms`` list: both unless a measurement removed one), or None; a file of the form alone
    (:func:`grid_file_name` with ``form``) comes first.  ``start_time``: a run from a Gaussian start at
    that time, which takes only a grid fitted from it (same first time)."""
    if folder is None or not os.path.isdir(str(folder)):
        return None
    form = "ode" if ode else "sde"
    names = [grid_file_name(steps, final_denoise, start_time is not None, f) for f in (form, None)]
    paths = [p for p in (os.path.join(str(folder), "grids", n) for n in names) if os.path.isfile(p)]
    if not paths:
        return None
    path = paths[0]
    rec = _read_grid(path)
    ts = [float(v) for v in rec["timesteps"]]
    if len(ts) - 1 != int(steps) or bool(rec.get("final_denoise", True)) != bool(final_denoise):
        raise ValueError(f"grid file {path!r} holds a grid of {len(ts) - 1} steps with final_denoise="
                         f"{rec.get('final_denoise')}; its name says {steps} steps with final_denoise={final_denoise}")
    if form not in rec.get("forms", ["ode", "sde"]):
        return None
    if start_time is not None and abs(ts[0] - float(start_time)) > 1e-6 * max(1.0, abs(float(start_time))):
        return None  # fitted from another noise ratio
    return path, ts


def load_grid(path) -> list[float]:
    """The ``timesteps`` of a fitted-grid JSON, checked (a decreasing list of at least 2 finite times)."""
    return load_grid_file(path)[0]


def load_grid_file(path) -> tuple[list[float], Optional[bool]]:
    """The ``timesteps`` of a fitted-grid JSON (checked, as :func:`load_grid`) and whether the grid is for
    runs that end with a denoising evaluation (its ``final_denoise`` key; None when the file does not say),
    from one read of the file."""
    rec = _read_grid(path)
    value = rec.get("final_denoise")
    return [float(v) for v in rec["timesteps"]], (None if value is None else bool(value))


def _read_grid(path) -> dict:
    """The record of a fitted-grid JSON, its ``format`` and ``timesteps`` checked."""
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError) as e:
        raise ValueError(f"grid file {str(path)!r} cannot be read as JSON: {e}") from None
    if not (isinstance(rec, dict) and rec.get("format") == GRID_FORMAT and isinstance(rec.get("timesteps"), list)
            and is_time_grid(rec["timesteps"])):
        raise ValueError(f"grid file {str(path)!r} is not a fitted grid (format {GRID_FORMAT!r} with a decreasing 'timesteps' list)")
    return rec
