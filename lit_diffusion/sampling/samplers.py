"""Samplers for the reverse dynamics of a linear SDE (docs/maths.md §4–§6).

Samplers: ``euler`` (Euler–Maruyama / probability-flow Euler), ``exponential_euler``, ``ddram``
(randomized midpoint), ``pc`` (predictor + Langevin corrector), ``localization`` (= denoiser
exponential Euler) and ``moment_matching`` (second-order localization, needs Jacobians).

STEPPER PROTOCOL (shared with ``lit_diffusion.integrations.scheduler.SDEScheduler``)
======================================================================
Every sampler is a set of *pure step functions of tensors that take field values as inputs* plus a
small stepper object that says which evaluations a step needs.  Nothing in a step calls the network;
whoever drives the stepper (our :func:`sample` loop or a diffusers pipeline through the scheduler)
evaluates the field and feeds the value back.

``stepper = get_stepper(sampler, sde, parametrization=None, ode=False, **options)``

* ``stepper.field_kind``: the prediction type every evaluation must be given in
  (``"score"``, ``"denoiser"`` or ``"relative_score"``; convert a network output with
  ``lit_diffusion.core.parametrizations.convert(out, declared, stepper.field_kind, x_eval, t_eval, sde)``).
* ``stepper.evals_per_step``: number of field evaluations in one step t -> s
  (euler/exponential_euler/localization: 1, ddram: 2, pc: predictor's + ``n_corrector``).
* ``stepper.stochastic``: False for ODE samplers (no noise is ever consumed).
* ``stepper.needs_midpoint``: True for ddram (a uniform ``u`` in (0, 1) per step, see below).
* ``stepper.midpoint(t, s, u) -> tau``: the DDRaM midpoint for uniform ``u`` (scalar or per-sample
  tensor): ``tau`` has density proportional to ``Phi(s, tau) |e(tau)|`` on (s, t) (inverse CDF).
  The scheduler draws ``u`` in ``set_timesteps`` (shared by the batch) and computes ``tau`` there,
  so that the pipeline knows every evaluation time in advance; ``sample()`` draws ``u`` per sample.
* ``state = stepper.start(x_t, t, s, u=None, generator=None)``: begin one step from time ``t`` to
  ``s < t`` (``t, s``: floats, 0-d or per-sample ``(B,)`` tensors).  ``u`` is only used by ddram
  (drawn from ``generator`` when None).
* ``state.x_eval, state.t_eval``: the point at which the NEXT field value is needed (``t_eval`` is a
  ``(B,)`` tensor).  For ddram the second point is the midpoint sample ``X_tau``.
* ``state.noise_needed``: whether the next :meth:`advance` consumes a standard-normal tensor.
* ``state.advance(F, noise=None)``: feed the field value ``F`` (kind ``stepper.field_kind``) at
  ``(x_eval, t_eval)``; ``noise`` is N(0, I) of x's shape (drawn from the generator given to
  ``start`` when None; ignored by ODE samplers).  Each stage draws at most one noise tensor:
  ddram draws ``z1`` with the first value (midpoint noise) and ``z2`` with the second (the
  independent part of the end-point noise; the rest is the midpoint's own Brownian increment).
* ``state.done``; once done, ``state.x`` is ``X_s`` (in x's dtype; arithmetic in float32/64).
  ``state.nfe`` counts the values fed.

The raw step functions (also public) are
``euler_step(x_t, score, t, s, sde, noise, ode)``,
``exp_euler_step(x_t, F_t, t, s, integ, noise)``,
``ddram_midpoint(x_t, F_t, t, tau, integ, noise1) -> (x_tau, carry)``,
``ddram_finish(x_t, F_tau, t, tau, s, carry, integ, noise2) -> x_s``,
``langevin_corrector_step(x, score, snr, kappa, noise)``,
``moment_matching_step(x_t, D_t, cov_sqrt_apply, t, s, integ, noise)``,
where ``integ`` is a :class:`lit_diffusion.sampling.integrators.ExpIntegrator` (coefficients Phi, W, V of
§5 for one SDE, parametrization and SDE/ODE form).
"""

from __future__ import annotations

import sys
from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..core.fields import Field, as_field, check_guidance  # noqa: F401
from ..core.schedules import check_steps, check_schedule
from ..core.sdes import LinearSDE
from ..core.utils import GeneratorLike, rand
from .defaults import (  # noqa: F401  (re-exported: the public names of the samplers)
    AUTO_LOG_SNR_STEP, DEFAULT_SCHEDULES, PREDICTORS, SAMPLER_PARAMETRIZATIONS, SAMPLERS, check_sampler, default_schedule,
    ends_with_denoising, guided_layout, step_grid,
)
from .steppers import (  # noqa: F401  (re-exported: the public names of the samplers)
    DDRaMStepper, EulerStepper, ExpEulerStepper, LocalizationStepper, MomentMatchingStepper, PCStepper, Stepper,
    StepState, make_stepper, get_stepper,
)
from .ddram import ddram_finish, ddram_midpoint  # noqa: F401
from .gaussian_start import as_gaussian_start
from .steps import (  # noqa: F401
    CORRECTOR_RATIO_CAP, SNR_NORMS, euler_step, exp_euler_step, langevin_corrector_step, moment_matching_step,
    posterior_cov_sqrt_apply,
)

__all__ = [
    "SAMPLERS",
    "DEFAULT_SCHEDULES",
    "default_schedule",
    "SampleResult",
    "sample",
    "get_stepper",
    "euler_step",
    "exp_euler_step",
    "ddram_midpoint",
    "ddram_finish",
    "langevin_corrector_step",
    "moment_matching_step",
    "posterior_cov_sqrt_apply",
    "Stepper",
    "StepState",
]


# --------------------------------------------------------------------------------------------
# the sampling loop
# --------------------------------------------------------------------------------------------
class SampleResult(NamedTuple):
    samples: Tensor
    nfe: int
    trajectory: Optional[Tensor] = None
    times: Optional[Tensor] = None


def _initial_state(sde, x_T, shape, generator, device, dtype) -> Tensor:
    """``x_T`` (moved to ``device``) or a draw from the prior of shape ``shape``."""
    if x_T is not None:
        return x_T.to(device=device) if device is not None else x_T
    if shape is None:
        raise ValueError("give x_T or shape")
    return sde.prior_sampling(shape, generator=generator, device=device, dtype=dtype)


def _time_grid(timesteps, device) -> Tensor:
    """The explicit step grid ``timesteps``, checked (strictly decreasing)."""
    grid = torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    if grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError("timesteps must be a strictly decreasing sequence of at least 2 times")
    return grid.to(device)


def _run_grid(sde, sampler, steps, schedule, final_denoise, stepper, timesteps, t_start, device, guided=False) -> Tensor:
    """The step grid of a run: ``timesteps`` checked, or the schedule's grid from ``t_start`` (``T`` when
    None); on short runs (and guided multistep runs, :func:`guided_layout`) the final denoising evaluation
    replaces the last step, as in SDEScheduler."""
    if timesteps is not None:
        return _time_grid(timesteps, device)
    return step_grid(sde, sampler, steps, schedule, final_denoise, stepper.evals_per_step, device=device, T=t_start,
                     guided=guided).to(device)


def _gaussian_started(start, sde, x: Tensor, grid: Tensor) -> Tensor:
    """With a Gaussian start, the prior draw ``x`` standardized and mapped onto the Gaussian's marginal
    at ``grid[0]`` (docs/maths.md §5, "Gaussian start"); else ``x``."""
    if start is None:
        return x
    return start.from_prior(sde, float(grid[0]), x)


def _midpoint_uniforms(midpoint_u, stepper, sampler: str, grid: Tensor, x: Tensor, generator):
    """DDRaM's uniforms of the run, ``(steps,)`` or ``(steps, B)``: ``midpoint_u`` checked, or drawn per
    step and sample before the run (``None`` for samplers without a midpoint)."""
    if midpoint_u is None:
        if not stepper.needs_midpoint:
            return None
        return rand((x.shape[0], grid.numel() - 1), generator=generator, dtype=torch.float64).T.to(x.device)
    if not stepper.needs_midpoint:
        raise ValueError(f"midpoint_u is only used by samplers with a random midpoint; {sampler!r} has none")
    midpoint_u = torch.as_tensor(midpoint_u, dtype=torch.float64, device=x.device)
    n = grid.numel() - 1
    if midpoint_u.shape not in ((n,), (n, x.shape[0])):
        raise ValueError(
            f"midpoint_u of shape {tuple(midpoint_u.shape)} does not fit {n} steps and a batch "
            f"of {x.shape[0]}; expected ({n},) or ({n}, {x.shape[0]})"
        )
    if not bool(((midpoint_u > 0) & (midpoint_u < 1)).all()):
        raise ValueError("midpoint_u must lie strictly inside (0, 1)")
    return midpoint_u


def _progress_bar(progress, n_steps: int, sampler: str):
    if progress is None:
        progress = n_steps >= 100 and sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=n_steps, desc=f"{sampler} x{n_steps}", unit="step", file=sys.stderr)


def _step_with_known(stepper, field, x: Tensor, t: Tensor, s: Tensor, u, generator, inpaint) -> Tensor:
    """One step, with the known part replaced (and the RePaint repeats) when inpainting."""
    if inpaint is None:
        return _one_step(stepper, field, x, t, s, u, generator)
    for j in range(inpaint.resample):
        x = inpaint.replace(_one_step(stepper, field, x, t, s, u, generator), s, generator)
        if j < inpaint.resample - 1:  # RePaint: back to t, and the step again
            x = inpaint.renoise(x, s, t, generator)
    return x


#: DDRaM with a midpoint per sample runs from the plan for samples of at least this many numbers; the
#: plan probes its coefficients per step and sample, six rows each, which for a few numbers per sample
#: (2-D targets, tens of thousands of samples) costs more than the stepper's own arithmetic
PLAN_MIN_SAMPLE_SIZE = 16


def _plan_of(stepper, sde, grid: Tensor, inpaint, midpoint_u, x: Tensor, final_denoise: bool):
    """The affine plan of the run (:mod:`.affine_plan`: the coefficients probed on the stepper once; a
    step is then a few fused operations, as in ``SDEScheduler.step``), or ``None`` where the stepper
    itself runs: inpainting, moment matching, one-evaluation DDRaM, and DDRaM with per-sample midpoints on
    samples of fewer than :data:`PLAN_MIN_SAMPLE_SIZE` numbers. DDRaM's midpoints (``midpoint_u``) are
    drawn by ``sample()`` before the run, whichever path runs it. The field converts the network's
    output to the stepper's kind (``Field.__call__``, the arithmetic the stepper path uses). The final
    denoising evaluation is ``sample()``'s own (``final_denoise``: the multistep order of the last steps)."""
    from .affine_plan import AffinePlan, supports

    if inpaint is not None or not supports(stepper):
        return None
    u = None
    if stepper.needs_midpoint:
        if midpoint_u.dim() == 2 and x[0].numel() < PLAN_MIN_SAMPLE_SIZE:
            return None  # per-sample tables would cost more than the steps themselves: the stepper runs them
        u = midpoint_u.cpu()  # (n,): shared by the batch (scalar coefficients); (n, B): one per sample
    return AffinePlan(stepper, sde, stepper.field_kind, grid.cpu(), u, False, final_jump=final_denoise)


def _planned_step(plan, field, x: Tensor, k: int, generator) -> Tensor:
    """Step ``k`` from the plan: each evaluation asks the field for the stepper's kind (a PC corrector's
    score is converted by the plan) and applies the step's coefficients."""
    for j in range(plan.evals_per_step):
        i = k * plan.evals_per_step + j
        t = plan.times[i].to(x.device).expand(x.shape[0])  # (a midpoint time per sample for DDRaM)
        x = plan.apply(field(x, t, plan.declared), x, i, k, j, generator, final=False)
    return x


def _step(plan, stepper, field, x: Tensor, grid: Tensor, k: int, midpoint_u, generator, inpaint) -> Tensor:
    """Step ``k`` of the run: from the plan when there is one, else by the stepper."""
    if plan is not None:
        return _planned_step(plan, field, x, k, generator)
    u = None if midpoint_u is None else midpoint_u[k]
    return _step_with_known(stepper, field, x, grid[k], grid[k + 1], u, generator, inpaint)


def _one_step(stepper, field, x: Tensor, t: Tensor, s: Tensor, u, generator) -> Tensor:
    """One step of ``stepper`` from ``t`` to ``s`` with its field evaluations."""
    st = stepper.start(x, t, s, u=u, generator=generator)
    while not st.done:
        extra = {}
        if stepper.needs_jacobian:
            extra["cov_sqrt_apply"] = stepper.cov_sqrt(field, st)
        F = field(st.x_eval, st.t_eval, st.stepper.field_kind)
        st.advance(F, **extra)
    return st.x


def sample(
    field,
    sde: LinearSDE,
    x_T: Optional[Tensor] = None,
    shape: Optional[Sequence[int]] = None,
    sampler: str = "auto",
    steps: int = 50,
    schedule: Optional[str] = None,
    parametrization: Optional[str] = None,
    ode: bool = False,
    generator: GeneratorLike = None,
    return_trajectory: bool = False,
    final_denoise: bool = False,
    timesteps: Optional[Tensor] = None,
    device=None,
    dtype: torch.dtype = torch.float32,
    prediction_type: Optional[str] = None,
    midpoint_u: Optional[Tensor] = None,
    class_labels=None,
    guidance_scale: float = 1.0,
    known: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    resample: int = 1,
    progress: Optional[bool] = None,
    check_finite: bool = True,
    gaussian_start=None,
    noise_ratio: Optional[float] = None,
    **sampler_options,
) -> SampleResult:
    """Integrate the reverse dynamics of ``sde`` from ``T`` down to ``t_min`` (docs/maths.md §4–§5).

    Args:
        field: a :class:`~lit_diffusion.core.fields.Field`, an ``nn.Module`` with ``prediction_type``
            (or pass ``prediction_type=``), or an analytic target (e.g. ``GaussianMixture``).
        x_T: the starting state; drawn from the prior with ``shape`` when None.
        sampler: one of :data:`SAMPLERS`; ``sampler_options`` go to its stepper
            (pc: ``predictor, n_corrector, snr, corrector, snr_norm``; moment_matching: ``covariance,
            exact_dim, lanczos_iters``; all exponential ones: ``method`` of the integrator).
        steps, schedule: the time grid (:func:`lit_diffusion.core.schedules.get_timesteps`; default
            :func:`default_schedule`: ``uniform``), or an explicit decreasing ``timesteps`` tensor.
        parametrization: the frozen field (``score``, ``relative_score``, ``denoiser``).
        generator: one ``torch.Generator`` or one per sample (batch-size invariance).
        final_denoise: replace the output by ``D(x, t)`` at the end of the grid (one more evaluation).
            For short ``multistep`` runs, and guided ones of any length (``guidance_scale != 1``: then on
            the uniform grid by default, :func:`~lit_diffusion.sampling.defaults.guided_layout`), that
            evaluation replaces the last step: the grid is the schedule's grid of ``steps + 1`` steps
            without ``t_min``, its last point lowered towards ``t_min`` on unguided runs
            (:func:`~lit_diffusion.sampling.defaults.ends_with_denoising`, :func:`~lit_diffusion.sampling.defaults.step_grid`).
        midpoint_u: DDRaM only: the uniforms of the midpoints, one per step ``(steps,)`` (shared by
            the batch, as :class:`~lit_diffusion.integrations.scheduler.SDEScheduler` draws them) or per step and
            sample ``(steps, B)``; drawn from ``generator`` per sample when None.
        class_labels: one class label per sample (or one for all; ``-1``: no label) for a
            class-conditional network or the components of an analytic mixture.
        guidance_scale: classifier-free guidance weight ``w`` (1: conditional, 0: unconditional;
            :class:`~lit_diffusion.core.fields.Field`): every evaluation of every sampler, DDRaM's
            midpoint and the corrector steps included, is the guided one.
        known, mask, resample: inpainting (:mod:`lit_diffusion.sampling.inpainting`): ``mask`` is 1 where
            ``known`` is kept and 0 where the state is generated; after every step the known part is
            replaced by its forward-noised value, and ``resample > 1`` repeats each step that many
            times after noising back (RePaint).  The returned samples hold ``known`` exactly where
            ``mask`` is 1.
        progress: a progress bar over the steps on stderr (``None``: only for runs of 100 steps or
            more when stderr is a terminal).
        gaussian_start: start from the exact marginal of the Gaussian with the data's moments
            (:class:`~lit_diffusion.sampling.gaussian_start.GaussianStart`, a moments file or a model
            folder holding one) at ``σ/α = noise_ratio`` (its own by default) instead of from ``T``: the
            grid runs from that time, and the prior draw (``x_T`` or a fresh one) is mapped onto the
            Gaussian's marginal by its probability-flow map (docs/maths.md §5, "Gaussian start"). With
            explicit ``timesteps`` the run starts at ``timesteps[0]``.
        check_finite: raise ``FloatingPointError`` when a sample holds NaN or inf (a network that
            produced non-finite values), as :meth:`SDEScheduler.step` does; ``False`` returns them.

    Returns:
        :class:`SampleResult` ``(samples, nfe, trajectory, times)`` (a named tuple).
    """
    # --- validate everything before any work
    sampler = check_sampler(sampler)
    guided = guided_layout(check_guidance(class_labels, guidance_scale), final_denoise)
    if schedule is None:
        schedule = default_schedule(sampler, ode, steps if timesteps is None else None, guided)
    if timesteps is None:
        check_schedule(schedule)
        check_steps(steps)
    stepper = get_stepper(sampler, sde, parametrization, ode, **sampler_options)
    from .inpainting import as_known_part

    inpaint = as_known_part(sde, known, mask, resample)
    field = as_field(field, sde, prediction_type=prediction_type, class_labels=class_labels, guidance_scale=guidance_scale)
    start = as_gaussian_start(gaussian_start, noise_ratio)
    t_start = start.start_time(sde) if start is not None and timesteps is None else None
    x = _initial_state(sde, x_T, shape, generator, device, dtype)
    grid = _run_grid(sde, sampler, steps, schedule, final_denoise, stepper, timesteps, t_start, x.device, guided)
    x = _gaussian_started(start, sde, x, grid)
    midpoint_u = _midpoint_uniforms(midpoint_u, stepper, sampler, grid, x, generator)
    if inpaint is not None:
        inpaint.check(x)
        x = inpaint.replace(x, grid[0], generator)
    plan = _plan_of(stepper, sde, grid, inpaint, midpoint_u, x, final_denoise)
    if hasattr(stepper, "reset"):  # samplers that carry evaluations across steps (multistep, one-evaluation DDRaM)
        stepper.reset(grid, final_jump=final_denoise)
    nfe0 = field.nfe
    traj = [x] if return_trajectory else None
    n_steps = grid.numel() - 1
    bar = _progress_bar(progress, n_steps, sampler)
    with torch.no_grad():
        for k in range(n_steps):
            if bar is not None:
                bar.update(1)
            x = _step(plan, stepper, field, x, grid, k, midpoint_u, generator, inpaint)
            if traj is not None:
                traj.append(x)
        if final_denoise:
            x = field(x, grid[-1].expand(x.shape[0]), "denoiser").to(x.dtype)
        if inpaint is not None:
            x = inpaint.finish(x)
        if traj is not None:
            traj[-1] = x
    if bar is not None:
        bar.close()
    if check_finite:
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.dim() > 0 else ~torch.isfinite(x)
        if bool(bad.any()):
            raise FloatingPointError(
                f"sample: {int(bad.sum())} of {x.shape[0] if x.dim() else 1} samples contain NaN or inf after {sampler} with "
                f"{n_steps} steps (the field produced non-finite values); pass check_finite=False to get them anyway"
            )
    return SampleResult(x, field.nfe - nfe0, torch.stack(traj) if traj is not None else None, grid)
