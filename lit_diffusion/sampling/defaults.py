"""What the samplers default to, and the names they accept: the sampler list, the parametrizations
and predictors each takes, the time grid each runs on when none is given, the end of short multistep
runs, and what ``sampler="auto"`` resolves to (each default with the measurement behind it)."""

from __future__ import annotations

from typing import Optional

SAMPLERS = ("euler", "exponential_euler", "ddram", "pc", "localization", "moment_matching", "multistep")
#: parametrizations each sampler accepts (the first one is the default)
SAMPLER_PARAMETRIZATIONS = {
    "euler": ("score",),
    "exponential_euler": ("denoiser", "score", "relative_score"),
    # "auto": relative score on steps shorter than AUTO_LOG_SNR_STEP in log-SNR, denoiser on longer ones
    # (the measured best default, docs/samplers.md)
    "ddram": ("auto", "denoiser", "relative_score", "score"),
    "localization": ("denoiser",),
    "moment_matching": ("denoiser",),
    "multistep": ("denoiser",),
}
PREDICTORS = ("euler", "exponential_euler", "ddram")
#: the time grid a sampler uses when none is given.  Measured (docs/samplers.md, "Defaults"): on the
#: shipped MNIST network DDRaM on the uniform grid reaches FID-MNIST 15.3 / 5.0 at 10 / 20 evaluations
#: against 34.8 / 8.2 on the log-SNR grid, so every sampler defaults to the uniform grid; the log-SNR
#: grid wins on exact (analytic) fields only.  Per-sampler entries override "uniform".
DEFAULT_SCHEDULES: dict = {
    # multistep, measured on checkpoints/mnist at 10 evaluations (FID-MNIST of 1,000 samples,
    # docs/samplers.md "Multistep"): ODE form 4.80 on the EDM grid, 8.31 uniform, 13.2 log-SNR;
    # SDE form 4.97 uniform, 5.41 EDM, 6.58 log-SNR -- but on the uniform grid the SDE form is erratic
    # (the ratio of consecutive log-SNR steps grows near t_min and the extrapolation amplifies the
    # noise: a component of std 0.2 comes out with 0.10 / 0.43 / 0.34 at 10 / 20 / 50 steps, against
    # 0.18 / 0.25 / 0.21 on the EDM grid), so both forms default to the EDM grid
    ("multistep", True): "edm",
    ("multistep", False): "edm",
}


#: multistep runs of at most this many steps are "short": they default to the uniform grid and, with a
#: final denoising evaluation, let it replace the last step. Measured on the shipped MNIST model
#: (FID-MNIST of 1,000 samples, seeds 0 and 1, docs/samplers.md "Multistep"), with only the final jump
#: of order 1: at 4 steps + 1, ODE 13.6 / SDE 18.0 (the EDM grid run down to t_min gave 88.5 / 108, seed 0,
#: under the earlier rule that lowered the last grid step too);
#: at 7 steps + 1, ODE 6.55 / SDE 5.56 against 7.65 / 6.41 on the EDM grid to t_min; at 9 steps + 1 the
#: EDM grid stays as good or better (ODE 5.69 against 5.90, SDE 5.60 both)
MULTISTEP_SHORT_RUN = 7

#: multistep runs of at most this many steps use the corrector unless told (``corrector=None``).
#: Measured on the shipped MNIST model (FID-MNIST of 1,000 samples, seeds 0 and 1, docs/samplers.md
#: "The corrector and the fitted grids"), ODE / SDE form, default grids: at 5 / 6 / 8 / 10 evaluations
#: 12.90 / 8.21 / 6.38 / 5.35 and 18.02 / 8.58 / 5.25 / 5.43 with it against 13.59 / 8.84 / 6.55 / 5.69
#: and 18.00 / 9.16 / 5.56 / 5.60 without; at 15 and 20 evaluations it no longer helps (ODE 5.46 / 5.52,
#: SDE 3.88 / 3.97 with it, against ODE 5.38 / 5.30 and SDE 3.91 at 20 without)
MULTISTEP_CORRECTOR_RUN = 9


#: multistep runs from ``T`` of at most this many steps take the SDE form's stochasticity ``eta`` from
#: :data:`MULTISTEP_SHORT_RUN_ETA` unless told (``eta=None``); longer ones, and runs from a Gaussian
#: start, run the reverse SDE (``eta=1``). Measured on the shipped MNIST model (FID-MNIST of 1,000
#: samples, seeds 0 and 1, docs/samplers.md "Stochasticity"), default grids, from ``T``: at 5 evaluations
#: (4 steps) eta 0.25 / 0.5 / 0.75 / 1 gave 14.32 / 14.19 / 15.27 / 18.02; at 6 (5 steps) 0.5 and 0.75
#: both 8.16 against 8.58 at eta 1; at 7 (6 steps) 6.18 / 5.92 / 5.93 at 0.5 / 0.75 / 1; on the grids
#: fitted from ``T`` 13.95 / 7.27 at 0.5 against 15.39 / 7.47; from the Gaussian start (default grid)
#: 0.5 lost: 6.89 / 6.18 against 6.79 / 5.78
MULTISTEP_LOW_NOISE_RUN = 5
MULTISTEP_SHORT_RUN_ETA = 0.5


def guided_layout(guidance_scale, final_denoise: bool) -> bool:
    """Whether a run takes the guided layout: classifier-free guidance (``guidance_scale`` given and not
    1) and a final denoising evaluation. Such multistep runs use the uniform grid at every length, the
    final evaluation replacing the last step (the layout of diffusers' solvers with "trailing" spacing;
    runs of at least :data:`MULTISTEP_GUIDED_END_FROM` steps end the grid halfway down, :func:`short_run_end`),
    chosen by the distance to the *guided* law, since FID against the data rewards errors that undo
    guidance (docs/samplers.md "Guidance 3 on a GPU"): on ``checkpoints/mnist-cond`` at guidance 3 the
    EDM grid's runs of 9-19 steps were FID 1.12 / 1.03 / 0.90 from the guided law's own samples at 10 /
    15 / 20 evaluations against 1.02 / 0.86 / 0.83 for DPM-Solver++ 2M (floor 0.82), and the per-sample
    distance to the exact ODE solution (64 samples, ``bench/study_trajectory_error.py``) is 0.056 / 0.037
    / 0.028 on this layout against 0.096 / 0.051 / 0.030 on the EDM grid (UniPC 0.057 / 0.034 / 0.026),
    and 0.045 / 0.026 / 0.020 since it ends halfway down."""
    from ..core.fields import guidance_weight

    return guidance_scale is not None and guidance_weight(guidance_scale) != 1.0 and bool(final_denoise)


def default_schedule(sampler: str, ode: bool = False, steps: Optional[int] = None, guided: bool = False) -> str:
    """The time grid :func:`sample`, ``sample.py`` and ``SDEScheduler`` use for ``sampler`` (in its ODE
    or SDE form, for a run of ``steps`` steps when known; ``guided``: :func:`guided_layout`) by default."""
    key = resolve_sampler(sampler)
    if key == "multistep" and guided:
        return "uniform"
    if key == "multistep" and steps is not None and int(steps) <= MULTISTEP_SHORT_RUN:
        return "uniform"
    return DEFAULT_SCHEDULES.get((key, bool(ode)), DEFAULT_SCHEDULES.get(key, "uniform"))


#: ``sample.py --gaussian-start auto`` (its default) starts multistep runs of at most this many steps from
#: the Gaussian start when the model folder holds the data's moments (``data_moments.safetensors``).
#: Measured on the shipped MNIST model (FID-MNIST of 1,000 samples, seeds 0 and 1, docs/samplers.md "The
#: Gaussian start"), ODE / SDE form, default grids: at 5 / 8 / 10 evaluations 6.49 / 5.68 / 5.43 and
#: 6.79 / 4.42 / 4.44 from the start against 12.90 / 6.38 / 5.35 and 18.02 / 5.25 / 5.43 from T; at 15 and
#: 20 within the seed spread of the start from T (ODE 5.40 / 5.49 against 5.46 / 5.52, SDE 3.99 / 3.64
#: against 3.88 / 3.97)
GAUSSIAN_START_RUN = 9


#: DDRaM runs of at most this many evaluations before the final one let it replace the last step.
#: Measured on the shipped MNIST model (FID-MNIST of 1,000 samples, seeds 0 and 1, docs/samplers.md
#: "DDRaM at small budgets"): at 10 evaluations 12.2 (two evaluations a step) and 11.8 (one) against
#: 15.7 and 16.6 with the grid run down to t_min; at 20, two evaluations a step, 7.7 against 5.8
DDRAM_SHORT_RUN_EVALS = 9


#: the samplers that ``sample.py`` (``--final-denoise`` not given) runs with a final denoising evaluation, as
#: ``SDEScheduler`` runs every sampler by default: on short runs it replaces the last step
#: (:func:`ends_with_denoising`), on long ones it costs one evaluation of the budget. Measured on the shipped
#: MNIST model (FID-MNIST of 1,000 samples, seeds 0 and 1, ``bench/real_model.py``, docs/samplers.md
#: "The final denoising evaluation in sample.py"), multistep from the Gaussian start: SDE form 5.70 / 5.01 /
#: 4.32 at 5 / 6 / 8 evaluations with it against 6.86 / 5.82 / 4.97 run down to ``t_min``; DDRaM (SDE form)
#: 12.21 / 6.08 at 10 / 20 evaluations against 13.13 / 7.46. The other samplers keep ending at ``t_min``.
FINAL_DENOISE_SAMPLERS = ("multistep", "ddram")


def default_final_denoise(sampler: str, final_denoise=None) -> bool:
    """``final_denoise`` when given (a bool), else whether ``sampler`` ends with a final denoising
    evaluation by default (:data:`FINAL_DENOISE_SAMPLERS`)."""
    if final_denoise is not None:
        return bool(final_denoise)
    return resolve_sampler(sampler) in FINAL_DENOISE_SAMPLERS


def ends_with_denoising(sampler: str, steps: int, evals_per_step: int = 1, guided: bool = False) -> bool:
    """Whether a run of ``sampler`` with a final denoising evaluation lets that evaluation *replace* the
    last step: the grid of ``steps`` steps is the schedule's grid of ``steps + 1`` steps without its end
    point ``t_min``, and the run ends with ``D(x, t)`` at the last point (as diffusers' solvers end with
    a jump to ``σ = 0``).  Measured for multistep on the shipped MNIST model (docs/samplers.md): with the
    grid running on to ``t_min``, the last step of a 4-step run jumps from ``t = 0.143`` to ``t_min`` and
    the final evaluation at ``t_min`` is wasted.  Short runs only: multistep runs of at most
    :data:`MULTISTEP_SHORT_RUN` steps, DDRaM runs of at most :data:`DDRAM_SHORT_RUN_EVALS` evaluations
    (``steps * evals_per_step``); on longer ones the grid run down to ``t_min`` measured better, except
    for multistep runs under classifier-free guidance (``guided``, :func:`guided_layout`)."""
    key = resolve_sampler(sampler)
    if key == "ddram":
        return int(steps) * int(evals_per_step) <= DDRAM_SHORT_RUN_EVALS
    return key == "multistep" and (int(steps) <= MULTISTEP_SHORT_RUN or bool(guided))


#: unguided multistep runs whose final denoising evaluation replaces the last step (short runs) end
#: their grid at this fraction of the way from ``t_min`` to where the schedule's grid of ``steps + 1``
#: steps puts its last point (1: that grid without ``t_min``), and space their ``steps`` steps from the
#: start down to there: the final jump to the data is shorter, the steps before it a little longer.
#: Measured on the shipped MNIST model (FID-MNIST of 1,000 samples, docs/samplers.md "The end of short
#: runs"): at 5 evaluations from T, seed 2 (the seed used to choose), ODE form, ending at t = 0.2 / 0.15 /
#: 0.125 / 0.1 / 0.075 / 0.05 (about fractions 1 / 0.75 / 0.62 / 0.5 / 0.37 / 0.25) gave 10.33 / 9.34 /
#: 8.50 / 7.61 / 7.69 / 9.04; from the Gaussian start 6.89 -> 5.43 (fraction 0.5), at 6 evaluations
#: 6.12 -> 5.23. Then on seeds 0-1, 5 / 6 / 8 evaluations from T: ODE 9.76 / 7.36 / 5.23 (fraction 1:
#: 12.90 / 8.21 / 6.38), SDE 11.39 / 8.24 / 4.37 (14.19 / 8.16 / 5.25); from the Gaussian start ODE 5.31 /
#: 5.32 / 5.27 (6.49 / 5.88 / 5.68), SDE 5.70 / 5.01 / 4.32 (6.79 / 5.78 / 4.42)
MULTISTEP_SHORT_RUN_END = 0.5


#: guided multistep runs (:func:`guided_layout`) of at least this many steps end their grid at
#: :data:`MULTISTEP_SHORT_RUN_END` too; shorter ones keep the trailing layout (fraction 1).
#: Measured on ``checkpoints/mnist-cond`` at guidance 3 by the distance to the guided law (FID-MNIST of
#: 1,000 samples, seeds 0-1, to 1,000 UniPC samples of 50 evaluations; docs/samplers.md "The end of short
#: runs"), fraction 1 -> 0.5 at 6 / 7 / 8 / 10 / 15 evaluations: ODE 2.15 -> 1.64 / 1.84 -> 1.38 / 1.79 ->
#: 1.37 / 1.58 -> 1.36 / 1.34 -> 1.27, SDE 2.37 -> 1.86 / 2.50 -> 2.32 / 2.46 -> 2.11 / 2.20 -> 1.98 /
#: 2.05 -> 1.88, both seeds every time; at 20 both forms tie (ODE 1.31 -> 1.29, SDE 1.94 -> 1.92); at 5
#: evaluations (4 steps) it hurt (ODE 2.55 -> 4.77, SDE 2.89 -> 14.51). The per-sample distance to the
#: exact guided ODE solution agrees (0.130 -> 0.162 at 5; 0.067 -> 0.056 / 0.0550 -> 0.0446 / 0.0271 ->
#: 0.0202 / 0.0192 -> 0.0155 at 8 / 10 / 20 / 30)
MULTISTEP_GUIDED_END_FROM = 5


def short_run_end(sampler: str, steps: int, guided: bool = False) -> float:
    """The fraction :data:`MULTISTEP_SHORT_RUN_END` for unguided multistep runs and for guided ones of at
    least :data:`MULTISTEP_GUIDED_END_FROM` steps; 1 (the grid of ``steps + 1`` steps without ``t_min``)
    for the others, where it measured worse."""
    if resolve_sampler(sampler) != "multistep":
        return 1.0
    if not guided:
        return MULTISTEP_SHORT_RUN_END
    return MULTISTEP_SHORT_RUN_END if int(steps) >= MULTISTEP_GUIDED_END_FROM else 1.0


def step_grid(sde, sampler: str, steps: int, schedule: str, final_denoise: bool = False, evals_per_step: int = 1,
              rho: float = 7.0, device=None, T: Optional[float] = None, guided: bool = False,
              end_fraction: Optional[float] = None):
    """The step grid of a run of ``steps`` steps of ``schedule`` (float64) from ``T`` (the process's by
    default; a Gaussian start's start time): the schedule's grid down to ``t_min``, or, when a final
    denoising evaluation replaces the last step (:func:`ends_with_denoising`, which depends on whether
    the run is classifier-free ``guided``), the schedule's grid of ``steps + 1`` steps without ``t_min``,
    its last point lowered towards ``t_min`` by :func:`short_run_end` (or by ``end_fraction`` in
    ``(0, 1]`` when given: studies of the end, ``bench/study_short_run_end.py``; refused for runs that do not
    end so, where it would be silently ignored); the ``steps`` steps from ``T`` to that point then follow
    the schedule."""
    from ..core.schedules import get_timesteps

    short = final_denoise and ends_with_denoising(sampler, steps, evals_per_step, guided)
    if end_fraction is not None and not short:
        raise ValueError(f"end_fraction={end_fraction!r} applies only to runs whose final denoising evaluation replaces "
                         f"the last step; this run ({sampler!r}, {steps} steps, final_denoise={final_denoise}, "
                         f"guided={guided}) runs its grid down to t_min")
    if short:
        full = get_timesteps(sde, steps + 1, schedule, T=T, rho=rho, device=device)
        fraction = short_run_end(sampler, steps, guided) if end_fraction is None else float(end_fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"end_fraction={end_fraction!r} is invalid; it must be in (0, 1]")
        if fraction == 1.0:
            return full[:-1]
        t_end = float(full[-1]) + fraction * float(full[-2] - full[-1])
        return get_timesteps(sde, steps, schedule, T=T, t_min=t_end, rho=rho, device=device)
    return get_timesteps(sde, steps, schedule, T=T, rho=rho, device=device)


#: ddram ``parametrization="auto"``: steps whose log-SNR increase is below this use the relative score
AUTO_LOG_SNR_STEP = 2.0


#: what ``sampler="auto"`` (the default of ``sample()``, ``sample.py`` and ``SDEScheduler``) runs: the
#: measured best per network evaluation on the shipped model at 5-20 evaluations (docs/samplers.md
#: "Multistep"): multistep of order 2 (both forms) on the EDM grid
AUTO_SAMPLER = "multistep"


def resolve_sampler(sampler: str) -> str:
    """``"auto"`` -> :data:`AUTO_SAMPLER`; other names lower-cased (not checked)."""
    key = str(sampler).lower()
    return AUTO_SAMPLER if key == "auto" else key


def check_sampler(sampler: str) -> str:
    key = resolve_sampler(sampler)
    if key not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid choices: {['auto', *SAMPLERS]}")
    return key
