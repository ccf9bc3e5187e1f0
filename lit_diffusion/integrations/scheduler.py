"""``SDEScheduler``: every sampler of :mod:`lit_diffusion.sampling.samplers` as a diffusers scheduler.

A thin adapter: the arithmetic of a step is done by the *stepper* of
:func:`lit_diffusion.sampling.samplers.get_stepper` (the same objects the :func:`~lit_diffusion.sampling.samplers.sample`
loop drives, see the "stepper protocol" in that module's docstring); this class only

* turns a diffusers configuration into an SDE (:class:`~lit_diffusion.core.discrete_vp.DiscreteVP` for
  ``betas`` / ``alphas_cumprod`` tables, in the network's own timestep units, or one of our
  continuous SDEs named by the ``sde`` / ``sde_kwargs`` config keys);
* lays out, in :meth:`SDEScheduler.set_timesteps`, every network evaluation of the whole run (grid
  points, DDRaM random midpoints drawn there from a generator or the ``seed`` config value, repeated
  times for PC corrector evaluations, the optional final denoising evaluation), so that a pipeline
  iterating over ``scheduler.timesteps`` conditions the network on exactly those times;
* converts the network's output (``prediction_type``: ``epsilon``, ``v_prediction``, ``sample`` or
  any of ours) into the field the stepper consumes and feeds it to the stepper, one evaluation per
  :meth:`SDEScheduler.step` call, like diffusers' order-2 schedulers (KDPM2, Heun) do.

Usage::

    pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config, sampler="ddram")

See ``docs/scheduler.md`` for the options, the diffusers contract this class satisfies and the
measured overhead.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from ..core.discrete_vp import DiscreteVP
from ..core.parametrizations import canonical_prediction, convert
from ..core.schedules import get_timesteps
from ..core.sdes import compute_dtype
from ..core.utils import randn

__all__ = ["SDEScheduler", "SCHEDULER_SAMPLERS", "dynamic_threshold"]

from .scheduler_config import (  # noqa: E402,F401  (re-exported)
    REFUSED_SAMPLERS, FINAL_SIGMAS_TYPES, SCHEDULER_SAMPLERS, as_float, check_model_output, check_num_steps, check_numbers,
    check_sampler_name, check_schedule_name, diffusers_schedule, ends_with_denoising_step, dynamic_threshold,
    process_of_config, stepper_options,
)


class SDEScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler running the samplers of :mod:`lit_diffusion.sampling.samplers`.

    Config (every ``__init__`` argument is saved by ``save_pretrained``):

    *diffusers keys* — ``num_train_timesteps, beta_start, beta_end, beta_schedule`` (``linear``,
    ``scaled_linear``, ``squaredcos_cap_v2``, ``sigmoid``), ``trained_betas``, ``prediction_type``
    (``epsilon``, ``v_prediction``, ``sample``, or ours: ``score``, ``denoiser``, ``v``,
    ``relative_score``), ``clip_sample`` / ``clip_sample_range`` (clamp the denoised estimate, as
    DDPM does), ``thresholding`` / ``dynamic_thresholding_ratio`` / ``sample_max_value`` (dynamic
    thresholding of the denoised estimate, :func:`dynamic_threshold`), ``timestep_spacing`` /
    ``steps_offset`` (a non-default value selects ``schedule="diffusers"``, their integer spacing;
    refused with another explicit schedule), ``use_karras_sigmas`` (the Karras grid, our ``edm``
    schedule with ``rho``), ``final_sigmas_type`` (``"zero"``: end on the data with a final
    denoising evaluation, ``"sigma_min"``: end at ``t_min``; overrides ``final_denoise``),
    ``rescale_betas_zero_snr``.  DDPM's ``variance_type`` and DDIM's ``set_alpha_to_one`` have no
    meaning here (a learned-variance output is split off automatically).  After
    :meth:`set_timesteps`, ``sigmas`` holds diffusers' noise levels ``sigma / alpha`` of the
    evaluations and of the end point.

    *process* — ``sde`` (``None``: the discrete table above as :class:`DiscreteVP`; or a name of
    :data:`lit_diffusion.core.sdes.SDE_CLASSES` with ``sde_kwargs``; the network is then conditioned on
    that SDE's own continuous time), ``t_min`` (early stopping for the discrete table; our SDEs take
    it from ``sde_kwargs``).

    *sampler* — ``sampler`` (one of :data:`SCHEDULER_SAMPLERS`), ``schedule`` (one of
    :data:`lit_diffusion.core.schedules.SCHEDULES` or ``"diffusers"``: diffusers' integer spacing),
    ``parametrization`` (``score``, ``relative_score``, ``denoiser``; ``None``: the sampler's
    default), ``ode``, ``predictor`` / ``n_corrector`` / ``snr`` / ``snr_norm`` (PC), ``rho`` (EDM schedule),
    ``final_denoise`` (one more evaluation at ``t_min`` returning the denoised estimate, like DDPM's
    last step), ``seed`` (DDRaM midpoints when ``set_timesteps`` gets no generator; default 0, so
    that a seeded pipeline is reproducible; ``None``: torch's global RNG).
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1  # replaced per instance by the sampler's evaluations per step

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Optional[Union[np.ndarray, List[float]]] = None,
        prediction_type: str = "epsilon",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        sampler: str = "auto",
        schedule: Optional[str] = None,
        parametrization: Optional[str] = None,
        ode: bool = False,
        predictor: Optional[str] = None,
        n_corrector: int = 1,
        snr: float = 0.16,
        snr_norm: str = "capped",
        solver_order: Optional[int] = None,
        lower_order_final: bool = True,
        corrector: bool = False,
        noise_band: Optional[List[float]] = None,
        fitted_grid: Optional[List[float]] = None,
        inverse: bool = False,
        rho: float = 7.0,
        final_denoise: bool = True,
        seed: Optional[int] = 0,
        t_min: float = 1e-3,
        sde: Optional[str] = None,
        sde_kwargs: Optional[dict] = None,
        use_karras_sigmas: bool = False,
        final_sigmas_type: Optional[str] = None,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
    ):
        # ---- validate every name before any work ------------------------------------------------
        given_schedule = schedule
        schedule = diffusers_schedule(schedule, use_karras_sigmas, timestep_spacing, steps_offset)
        if given_schedule is None and schedule is not None:
            # a diffusers key of the source config chose the grid: say so once, and show it in the config
            import warnings

            why = "use_karras_sigmas=True" if use_karras_sigmas else (
                f"timestep_spacing={timestep_spacing!r}" + (f", steps_offset={steps_offset}" if int(steps_offset) else ""))
            warnings.warn(f"SDEScheduler: {why} selects schedule={schedule!r} (pass schedule= to choose another grid)",
                          stacklevel=3)
            self.register_to_config(schedule=schedule)
            defaults = self._internal_dict.get("_use_default_values")
            if isinstance(defaults, list) and "schedule" in defaults:  # diffusers drops those keys in from_config
                self.register_to_config(_use_default_values=[k for k in defaults if k != "schedule"])
        final_denoise = ends_with_denoising_step(final_denoise, final_sigmas_type)
        check_numbers(dynamic_thresholding_ratio, sample_max_value, clip_sample_range)
        self._final_denoise = bool(final_denoise)
        name = check_sampler_name(sampler)
        if inverse:  # like DDIMInverseScheduler: data -> noise along the ODE, timesteps increasing
            if name != "multistep":
                raise ValueError(f"inverse=True runs the multistep ODE (solver_order=1 is DDIM inversion); got sampler={sampler!r}")
            ode, self._final_denoise = True, False
        self._schedule = check_schedule_name(schedule, name, timestep_spacing, bool(ode))
        self._declared = canonical_prediction(prediction_type)

        # ---- the process and the stepper (the same object the sample() loop drives) -----------------
        self.sde, self.betas, self.alphas, self.alphas_cumprod = process_of_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr, sde,
            sde_kwargs, t_min)
        from ..sampling.samplers import get_stepper

        parametrization, options = stepper_options(
            name, self.sde, parametrization, predictor, n_corrector=n_corrector, snr=snr, snr_norm=snr_norm,
            solver_order=solver_order, lower_order_final=lower_order_final, corrector=corrector, noise_band=noise_band,
            inverse=inverse)
        self._stepper_args = (name, parametrization, options)
        self.stepper = get_stepper(name, self.sde, parametrization=parametrization, ode=bool(ode), **options)
        self.order = int(self.stepper.evals_per_step)
        self._last_layout = None  # the arguments of the last set_timesteps (to re-lay out for eta)

        # standard deviation of the prior the pipeline must draw x_T from (1 for VP-type processes)
        self.init_noise_sigma = float(math.sqrt(self.sde.prior_var))

        # ---- settable state -------------------------------------------------------------------------
        self.num_inference_steps: Optional[int] = None
        self.timesteps = torch.zeros(0)
        self.sigmas = torch.zeros(0)
        self._grid: Optional[Tensor] = None  # (n+1,) float64 step grid T = t_0 > ... > t_n
        self._u: Optional[Tensor] = None  # (n,) DDRaM uniforms (shared by the batch)
        self._eval_times: Optional[Tensor] = None  # float64 time of every evaluation
        self._eval_step: List[int] = []
        self._eval_stage: List[int] = []
        self._state = None
        self._plan = None  # lit_diffusion.sampling.affine_plan.AffinePlan of the current run (affine samplers)
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None

    # ---------------------------------------------------------------------------------------------
    # diffusers API
    # ---------------------------------------------------------------------------------------------
    @property
    def compatibles(self):
        """The schedulers ``from_config(self.config)`` can swap in faithfully: diffusers' DDPM-family
        schedulers for a DDPM table, only this class for our continuous SDEs (a stock scheduler would
        read the default DDPM betas of the config and run another process)."""
        if isinstance(self.sde, DiscreteVP):
            return super().compatibles
        return [SDEScheduler]

    @property
    def step_index(self) -> Optional[int]:
        """Index in :attr:`timesteps` of the next evaluation (``None`` before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> Optional[int]:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start from evaluation ``begin_index`` (img2img: ``t_start * order``); it must start a step."""
        begin_index = int(begin_index)
        if self._eval_times is not None:
            if not (0 <= begin_index < len(self._eval_step)) or self._eval_stage[begin_index] != 0:
                starts = [i for i, j in enumerate(self._eval_stage) if j == 0]
                raise ValueError(
                    f"begin_index={begin_index} does not start a step; valid values: {starts} (multiples of order={self.order})"
                )
        self._begin_index = begin_index

    def scale_model_input(self, sample: Tensor, timestep: Optional[Union[float, Tensor]] = None) -> Tensor:
        """The network takes the process state itself: no scaling."""
        return sample

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

    def _step_grid(self, n: int) -> Tensor:
        cfg = self.config
        if self._schedule.lower() != "diffusers":
            from ..sampling.defaults import default_schedule, ends_with_denoising

            schedule = self._schedule
            if cfg.get("schedule") is None:  # the sampler's default grid for this budget
                schedule = default_schedule(self._stepper_args[0], self.stepper.ode, n)
            if self._final_denoise and ends_with_denoising(self._stepper_args[0], n):
                # the final denoising evaluation replaces the last step (it is the jump to the data)
                return get_timesteps(self.sde, n + 1, schedule, rho=float(cfg.rho))[:-1]
            return get_timesteps(self.sde, n, schedule, rho=float(cfg.rho))
        # diffusers' integer spacings of the evaluation times, then t_min as the end point
        N = int(cfg.num_train_timesteps)
        if n > N:
            raise ValueError(f"num_inference_steps={n} cannot exceed num_train_timesteps={N} with schedule='diffusers'")
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, N - 1, n).round()[::-1]
        elif cfg.timestep_spacing == "leading":
            ts = (np.arange(0, n) * (N // n)).round()[::-1] + cfg.steps_offset
        else:
            ts = np.round(np.arange(N, 0, -N / n)) - 1
        ts = torch.as_tensor(np.asarray(ts, dtype=np.float64).copy()) * (self.sde.T / max(N - 1, 1))
        ts = ts.clamp(self.sde.t_min, self.sde.T)
        grid = torch.cat([ts, torch.tensor([self.sde.t_min], dtype=torch.float64)])
        keep = torch.cat([grid[:-1] > grid[1:], torch.tensor([True])])
        return grid[keep]

    def set_timesteps(
        self,
        num_inference_steps: Optional[int] = None,
        device: Union[str, torch.device, None] = None,
        timesteps: Optional[Sequence[float]] = None,
        generator: Optional[torch.Generator] = None,
        sigmas: Optional[Sequence[float]] = None,
    ) -> None:
        """Lay out every evaluation of a run of ``num_inference_steps`` sampler steps.

        ``timesteps``: a custom step grid ``t_0 > ... > t_n`` in the network's time units (then
        ``num_inference_steps`` must be None); values in ``[0, t_min)`` are raised to ``t_min``.
        ``sigmas``: the same grid given as diffusers' noise levels ``sigma / alpha`` (the noise-to-
        signal ratio, ``sqrt((1 - abar) / abar)`` for a DDPM table), decreasing; a last value 0 means
        the data end, i.e. ``t_min`` (what ``retrieve_timesteps(..., sigmas=...)`` passes).
        ``generator``: draws the DDRaM midpoints (else the ``seed`` config value, else torch's global
        RNG).  Resets all state between :meth:`step` calls.
        """
        self._last_layout = (num_inference_steps, device, timesteps, generator, sigmas)
        if sigmas is not None:
            if timesteps is not None:
                raise ValueError("pass either timesteps or sigmas, not both")
            timesteps = self._times_of_sigmas(sigmas)
        fitted = self.config.get("fitted_grid")
        if timesteps is None and fitted is not None and num_inference_steps in (None, len(fitted) - 1):
            # a grid fitted to the model (python -m lit_diffusion.cli.grid_fit), saved in the config:
            # a pipeline that reloads this scheduler keeps it; other step counts use `schedule`
            timesteps, num_inference_steps = fitted, None
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass either num_inference_steps or timesteps, not both")
            grid = self._custom_grid(timesteps)
        else:
            grid = self._step_grid(check_num_steps(num_inference_steps))
        if self.config.get("inverse"):
            grid = grid.flip(0)  # t_min -> T: encoding
        n = grid.numel() - 1
        stepper = self.stepper
        u = self._draw_midpoints(n, generator) if getattr(stepper, "needs_midpoint", False) else None

        from ..sampling.affine_plan import AffinePlan, supports

        self._plan = None
        if supports(stepper) and not (self.config.clip_sample or self.config.thresholding):
            # the affine samplers: every evaluation's coefficients at once (float64), applied by step()
            self._plan = AffinePlan(stepper, self.sde, self._declared, grid, u, self._final_denoise)
            per = self._plan.evals_per_step
            steps = [k for k in range(n) for _ in range(per)]
            stages = [j for _ in range(n) for j in range(per)]
            if self._final_denoise:
                steps.append(n)
                stages.append(0)
            self._finish_set_timesteps(n, grid, u, self._plan.times, steps, stages, device)
            return

        # dry run of the stepper on a 1-element state: the time of every evaluation, in order
        times: List[float] = []
        steps: List[int] = []
        stages: List[int] = []
        x = torch.ones(1, 1, dtype=torch.float64)
        for k in range(n):
            st = stepper.start(x, grid[k], grid[k + 1], u=None if u is None else u[k : k + 1])
            j = 0
            while not st.done:
                times.append(float(st.t_eval.flatten()[0]))
                steps.append(k)
                stages.append(j)
                st.advance(torch.ones_like(x), noise=torch.zeros_like(x) if st.noise_needed else None)
                j += 1
        if self._final_denoise:
            times.append(float(grid[-1]))
            steps.append(n)
            stages.append(0)

        if hasattr(stepper, "reset"):  # the dry run above fed it dummy values: start the real run afresh
            stepper.reset(grid)
        self._finish_set_timesteps(n, grid, u, torch.tensor(times, dtype=torch.float64), steps, stages, device)

    def _custom_grid(self, timesteps) -> Tensor:
        grid = torch.as_tensor(np.asarray(timesteps, dtype=np.float64)).flatten()
        if grid.numel() < 2:
            raise ValueError(f"timesteps={list(map(float, grid))} needs at least 2 values (one step)")
        if not bool((grid[:-1] > grid[1:]).all()):
            raise ValueError(f"timesteps must be strictly decreasing; got {grid.tolist()}")
        if float(grid[0]) > self.sde.T * (1 + 1e-9) or float(grid[-1]) < 0:
            raise ValueError(f"timesteps must lie in [0, {self.sde.T:g}] (the process' time range); got {grid.tolist()}")
        grid = grid.clamp(min=self.sde.t_min)
        grid = grid[torch.cat([grid[:-1] > grid[1:], torch.tensor([True])])]
        if grid.numel() < 2:
            raise ValueError("timesteps collapse to a single time after raising values below t_min")
        return grid

    def _draw_midpoints(self, n: int, generator) -> Tensor:
        """DDRaM's uniforms, one per step: from ``generator``, else the ``seed`` config value, else
        torch's global RNG."""
        gen = generator
        if gen is None and self.config.seed is not None:
            gen = torch.Generator().manual_seed(int(self.config.seed))
        if gen is None:
            return torch.rand(n, dtype=torch.float64)
        return torch.rand(n, generator=gen, device=gen.device, dtype=torch.float64).cpu()

    def _times_of_sigmas(self, sigmas) -> np.ndarray:
        sig = np.asarray(sigmas, dtype=np.float64).flatten()
        if sig.size < 2 or not np.all(np.isfinite(sig)) or np.any(sig < 0) or not np.all(sig[:-1] > sig[1:]):
            raise ValueError(f"sigmas must be a strictly decreasing sequence of >= 2 values >= 0; got {sig.tolist()[:8]}")
        pos = torch.as_tensor(sig[sig > 0])
        t = self.sde.t_from_snr(1.0 / pos**2).to(torch.float64).clamp(self.sde.t_min, self.sde.T).numpy()
        return np.concatenate([t, [0.0]]) if sig[-1] == 0 else t

    def _finish_set_timesteps(self, n, grid, u, times: Tensor, steps, stages, device) -> None:
        self.num_inference_steps = n
        # diffusers' noise levels sigma / alpha of every evaluation, then of the end point
        ends = torch.cat([times, grid[-1:]])
        alpha, sigma = self.sde.alpha(ends), self.sde.sigma(ends)
        sig = (sigma / alpha).to(torch.float32)
        if self._final_denoise:
            sig[-1] = 0.0
        self.sigmas = sig.to(device=device)
        self._grid = grid
        self._u = u
        self._eval_times = times.to(torch.float64)
        self._eval_step, self._eval_stage = steps, stages
        self.timesteps = self._eval_times.to(device=device, dtype=torch.float32)
        self._expected = self.timesteps.tolist()
        self._state = None
        self._step_index = None
        self._begin_index = None

    # ---------------------------------------------------------------------------------------------
    def index_for_timestep(self, timestep) -> int:
        """First evaluation index that starts a step at ``timestep`` (error if there is none)."""
        if self._eval_times is None:
            raise ValueError("call set_timesteps() before step()")
        t = as_float(timestep)
        tol = 1e-4 * max(1.0, self.sde.T)
        for i, (tt, j) in enumerate(zip(self.timesteps.tolist(), self._eval_stage)):
            if j == 0 and abs(tt - t) <= tol:
                return i
        starts = [round(v, 4) for v, j in zip(self.timesteps.tolist(), self._eval_stage) if j == 0]
        raise ValueError(
            f"timestep {t!r} is not a step start of this scheduler's grid; valid values: {starts} "
            "(use the values of scheduler.timesteps in order)"
        )

    def _field(self, model_output: Tensor, sample: Tensor, t, kind: str) -> Tensor:
        """The network output converted to the field ``kind`` at ``(sample, t)`` (§2), clipped like
        DDPM when ``clip_sample``.  A network with a learned variance (``variance_type="learned"`` /
        ``"learned_range"``: twice the sample's channels) contributes its first half only: the
        samplers use their own noise law."""
        if model_output.ndim >= 2 and sample.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]
        if self.config.clip_sample or self.config.thresholding:
            d = convert(model_output, self._declared, "denoiser", sample, t, self.sde)
            if self.config.thresholding:
                d = dynamic_threshold(d, float(self.config.dynamic_thresholding_ratio), float(self.config.sample_max_value))
            if self.config.clip_sample:
                r = float(self.config.clip_sample_range)
                d = d.clamp(-r, r)
            return convert(d, "denoiser", kind, sample, t, self.sde)
        return convert(model_output, self._declared, kind, sample, t, self.sde)

    def step(
        self,
        model_output: Tensor,
        timestep: Union[float, Tensor],
        sample: Tensor,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        return_dict: bool = True,
        eta: Optional[float] = None,
        use_clipped_model_output: Optional[bool] = None,
        variance_noise: Optional[Tensor] = None,
    ) -> Union[SchedulerOutput, Tuple[Tensor]]:
        """Feed the network output at ``(sample, timestep)``; return the next point to evaluate
        (a DDRaM midpoint, a PC corrector point, ...) or the end point of the step.

        Keywords that pipelines pass: ``eta`` (DDIM's stochasticity level) is honoured: ``0`` runs
        the probability-flow ODE, ``1`` the reverse SDE (DDPM's level); it is read at the first
        step of a run (the run is laid out again if it changes the mode) and may not change within
        it; values in between are refused.  ``use_clipped_model_output`` has no effect: with
        ``clip_sample``/``thresholding`` the field is always recomputed from the clipped denoised
        estimate (DDIM's ``True``).  ``variance_noise`` (a caller's own noise) is refused.
        """
        if self._eval_times is None:
            raise ValueError("call set_timesteps() before step()")
        if variance_noise is not None:
            raise ValueError("SDEScheduler.step does not take variance_noise: the noise comes from `generator`")
        if eta is not None:
            self._apply_eta(eta)
        check_model_output(model_output, sample, timestep, self._step_index)
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        i = self._step_index
        if i >= len(self._eval_step):
            raise ValueError(
                f"step() called {i + 1} times but this run has {len(self._eval_step)} evaluations; call set_timesteps() to restart"
            )
        t_given = as_float(timestep)
        t_expected = self._expected[i]
        if abs(t_given - t_expected) > 1e-4 * max(1.0, self.sde.T):
            raise ValueError(
                f"timestep {t_given!r} is not the expected evaluation time {t_expected!r} (index {i} of "
                f"scheduler.timesteps); steps must follow scheduler.timesteps in order — call set_timesteps() to restart"
            )
        k, j = self._eval_step[i], self._eval_stage[i]
        n = self.num_inference_steps
        if self._plan is not None:
            prev = self._plan.apply(model_output, sample, i, k, j, generator, final=k == n)
        elif k == n:  # final denoising evaluation at t_min
            t = self._grid[-1]
            prev = self._field(model_output, sample, t, "denoiser").to(sample.dtype)
            self._state = None
        else:
            if j == 0:
                u = None if self._u is None else self._u[k : k + 1].to(sample.device)
                self._state = self.stepper.start(sample, self._grid[k], self._grid[k + 1], u=u, generator=generator)
            elif self._state is None:
                raise ValueError(
                    f"evaluation {i} is stage {j} of step {k}, but the step's first evaluation was not given to this "
                    "scheduler; start from a step boundary (set_begin_index / index multiple of order)"
                )
            st = self._state
            F = self._field(model_output, sample, st.t_eval, st.stepper.field_kind)
            noise = None
            if st.noise_needed and self.stepper.stochastic:
                noise = randn(sample.shape, generator=generator, device=sample.device, dtype=compute_dtype(sample))
            st.advance(F, noise=noise)
            if st.done:
                prev = st.x.to(sample.dtype)
                self._state = None
            else:
                prev = st.x_eval.to(sample.dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _apply_eta(self, eta) -> None:
        eta = float(eta)
        if eta not in (0.0, 1.0):
            raise ValueError(
                f"eta={eta!r} is not supported: SDEScheduler runs the probability-flow ODE (eta=0) or the "
                "reverse SDE (eta=1, DDPM's level); intermediate levels are not implemented"
            )
        want_ode = eta == 0.0
        if want_ode == (not self.stepper.stochastic):
            return
        if self._step_index is not None:
            raise ValueError(f"eta={eta:g} changes the sampler's mode in the middle of a run; pass the same eta to every step")
        from ..sampling.samplers import get_stepper

        name, parametrization, options = self._stepper_args
        old = self.timesteps
        self.stepper = get_stepper(name, self.sde, parametrization=parametrization, ode=want_ode, **options)
        self.set_timesteps(*self._last_layout)
        if self.timesteps.shape != old.shape or float(self.timesteps[0]) != float(old[0]):
            raise ValueError(f"eta={eta:g} changes the number of evaluations of sampler {name!r}; set ode= in the config instead")
        # a pipeline loops over the tensor it read before the first step: update that tensor in place
        # (the ODE form of a sampler may place its later evaluations, e.g. DDRaM's midpoints, elsewhere)
        old.copy_(self.timesteps.to(old.device))
        self.timesteps = old

    # ---------------------------------------------------------------------------------------------
    def _times_tensor(self, timesteps, like: Tensor) -> Tensor:
        t = torch.as_tensor(timesteps).to(device=like.device, dtype=torch.float64).flatten()
        if t.numel() and (float(t.min()) < 0 or float(t.max()) > self.sde.T * (1 + 1e-9)):
            raise ValueError(
                f"timesteps {t.tolist()[:8]} outside the process' time range [0, {self.sde.T:g}]"
            )
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        return t

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps) -> Tensor:
        """``x_t = alpha(t) x_0 + m(t) + sigma(t) noise`` at (integer or fractional) timesteps (§1)."""
        t = self._times_tensor(timesteps, original_samples)
        return self.sde.perturb(original_samples, t, noise).to(original_samples.dtype)

    def get_velocity(self, sample: Tensor, noise: Tensor, timesteps) -> Tensor:
        """The v-prediction target ``alpha eps - sigma x_0`` (§2) of a training pair."""
        t = self._times_tensor(timesteps, sample)
        alpha, _, sigma = self.sde.marginal_coefficients(t, sample)
        return (alpha * noise.to(alpha.dtype) - sigma * sample.to(alpha.dtype)).to(sample.dtype)
