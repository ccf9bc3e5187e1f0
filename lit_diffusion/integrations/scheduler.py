"""``SDEScheduler``: every sampler of :mod:`lit_diffusion.sampling.samplers` as a diffusers scheduler.

A thin adapter: the arithmetic of a step is done by the *stepper* of
:func:`lit_diffusion.sampling.samplers.get_stepper` (the same objects the :func:`~lit_diffusion.sampling.samplers.sample`
loop drives, see the "stepper protocol" in that module's docstring); this class only

* turns a diffusers configuration into an SDE (:class:`~lit_diffusion.core.discrete_vp.DiscreteVP` for
  ``betas`` / ``alphas_cumprod`` tables, in the network's own timestep units, or one of our
  continuous SDEs named by the ``sde`` / ``sde_kwargs`` config keys);
* lays out, in :meth:`SDEScheduler.set_timesteps` (:mod:`.scheduler_layout`), every network evaluation of the whole run (grid
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
from typing import List, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from ..core.discrete_vp import DiscreteVP
from ..core.parametrizations import canonical_prediction, convert
from ..core.sdes import compute_dtype
from ..core.utils import randn

__all__ = ["SDEScheduler", "SCHEDULER_SAMPLERS", "dynamic_threshold"]

from .scheduler_config import (  # noqa: E402,F401  (re-exported)
    REFUSED_SAMPLERS, FINAL_SIGMAS_TYPES, SCHEDULER_SAMPLERS, as_float, check_model_output, check_num_steps, check_numbers,
    check_sampler_name, check_schedule_name, diffusers_schedule, ends_with_denoising_step, dynamic_threshold,
    fitted_grids, gaussian_start_of_config, process_of_config, stepper_for_eta, stepper_options,
)
from .scheduler_files import ModelFiles, check_gaussian_start_steps  # noqa: E402
from .scheduler_layout import EvaluationLayout  # noqa: E402


class SDEScheduler(ModelFiles, EvaluationLayout, SchedulerMixin, ConfigMixin):
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
    default), ``ode``, ``predictor`` / ``n_corrector`` / ``snr`` / ``snr_norm`` (PC), ``solver_order`` /
    ``lower_order_final`` / ``corrector`` / ``noise_band`` / ``eta`` (multistep; ``eta``: the SDE form's
    stochasticity, docs/maths.md §5), ``rho`` (EDM schedule),
    ``final_denoise`` (one more evaluation at ``t_min`` returning the denoised estimate, like DDPM's
    last step), ``seed`` (DDRaM midpoints when ``set_timesteps`` gets no generator; default 0, so
    that a seeded pipeline is reproducible; ``None``: torch's global RNG), ``fitted_grid``,
    ``gaussian_start`` / ``noise_ratio`` (a moments file or model folder: start at ``σ/α = noise_ratio``
    from the data's Gaussian, docs/samplers.md "The Gaussian start"; saved beside the config, :mod:`.scheduler_files`),
    ``gaussian_start_steps`` (the longest run that takes it; None: every run), ``guidance_scale`` (the pipeline's
    classifier-free guidance; not 1: multistep takes the guided layout, ``guided_layout``).
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
        corrector: Optional[bool] = None,
        noise_band: Optional[List[float]] = None,
        eta: Optional[float] = None,
        midpoint: str = "law",
        evals_per_step: Optional[int] = None,
        fitted_grid: Optional[list] = None,
        gaussian_start: Optional[str] = None,
        noise_ratio: Optional[float] = None,
        gaussian_start_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
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
        schedule = self._schedule_of_diffusers_keys(schedule, use_karras_sigmas, timestep_spacing, steps_offset)
        final_denoise = ends_with_denoising_step(final_denoise, final_sigmas_type)
        check_numbers(dynamic_thresholding_ratio, sample_max_value, clip_sample_range)
        fitted_grids(fitted_grid)
        self._final_denoise = bool(final_denoise)
        name = check_sampler_name(sampler)
        if inverse:  # like DDIMInverseScheduler: data -> noise along the ODE, timesteps increasing
            if name != "multistep":
                raise ValueError(f"inverse=True runs the multistep ODE (solver_order=1 is DDIM inversion); got sampler={sampler!r}")
            ode, self._final_denoise = True, False
        from ..sampling.defaults import guided_layout

        self._guided = guided_layout(guidance_scale, self._final_denoise)  # the guided multistep layout
        self._schedule = check_schedule_name(schedule, name, timestep_spacing, bool(ode))
        check_gaussian_start_steps(gaussian_start_steps)
        self._gstart = self._gstart_loaded = gaussian_start_of_config(gaussian_start, noise_ratio, bool(inverse))
        self._declared = canonical_prediction(prediction_type)

        # ---- the process and the stepper (the same object the sample() loop drives) -----------------
        self.sde, self.betas, self.alphas, self.alphas_cumprod = process_of_config(
            num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr, sde,
            sde_kwargs, t_min)
        from ..sampling.samplers import get_stepper

        parametrization, options = stepper_options(
            name, self.sde, parametrization, predictor, n_corrector=n_corrector, snr=snr, snr_norm=snr_norm,
            solver_order=solver_order, lower_order_final=lower_order_final, corrector=corrector, noise_band=noise_band,
            inverse=inverse, midpoint=midpoint, evals_per_step=evals_per_step, eta=eta)
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
        self._start_mapped = False
        self._plan = None  # lit_diffusion.sampling.affine_plan.AffinePlan of the current run (affine samplers)
        self._step_index: Optional[int] = None
        self._begin_index: Optional[int] = None

    def _schedule_of_diffusers_keys(self, schedule, use_karras_sigmas, timestep_spacing, steps_offset):
        """``schedule``, or the one that a diffusers key of the source config chose (said once in a
        warning, and written into the config)."""
        given_schedule = schedule
        schedule = diffusers_schedule(schedule, use_karras_sigmas, timestep_spacing, steps_offset)
        if given_schedule is None and schedule is not None:
            import warnings

            why = "use_karras_sigmas=True" if use_karras_sigmas else (
                f"timestep_spacing={timestep_spacing!r}" + (f", steps_offset={steps_offset}" if int(steps_offset) else ""))
            warnings.warn(f"SDEScheduler: {why} selects schedule={schedule!r} (pass schedule= to choose another grid)",
                          stacklevel=4)
            self.register_to_config(schedule=schedule)
            defaults = self._internal_dict.get("_use_default_values")
            if isinstance(defaults, list) and "schedule" in defaults:  # diffusers drops those keys in from_config
                self.register_to_config(_use_default_values=[k for k in defaults if k != "schedule"])
        return schedule

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

    def scale_model_input(self, sample: Tensor, timestep: Optional[Union[float, Tensor]] = None) -> Tensor:
        """The network takes the process state itself: no scaling -- except at the first evaluation of a
        run with a Gaussian start, where the pipeline's prior draw is mapped onto the Gaussian's marginal
        (the state :meth:`step` continues from)."""
        if self._gstart is not None and self._eval_times is not None and self._first_evaluation(timestep):
            self._start_mapped = True
            return self._mapped_start(sample)
        return sample

    def __len__(self) -> int:
        return int(self.config.num_train_timesteps)

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
        the probability-flow ODE, ``1`` the reverse SDE (DDPM's level), and multistep any level in
        between (``eta`` of the config, docs/maths.md §5); it is read at the first step of a run (the
        run is laid out again if it changes the mode) and may not change within it; the other samplers
        refuse values in between.  ``use_clipped_model_output`` has no effect: with
        ``clip_sample``/``thresholding`` the field is always recomputed from the clipped denoised
        estimate (DDIM's ``True``).  ``variance_noise`` (a caller's own noise) is refused.
        """
        if self._eval_times is None:
            raise ValueError("call set_timesteps() before step()")
        if variance_noise is not None:
            raise ValueError("SDEScheduler.step does not take variance_noise: the noise comes from `generator`")
        mapped_first = self._start_mapped  # (before eta may lay the run out again)
        if eta is not None:
            self._apply_eta(eta)
        check_model_output(model_output, sample, timestep, self._step_index)
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
            if self._step_index > 0 and self._plan is not None and self._plan.multistep is not None:
                self._plan = None  # entered mid-run (img2img): no history; the stepper lowers the order
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
        if i == 0 and self._gstart is not None:  # the run starts from the Gaussian's marginal (scale_model_input)
            sample = self._first_state(sample, mapped_first)
        k, j = self._eval_step[i], self._eval_stage[i]
        n = self.num_inference_steps
        if self._plan is not None:
            prev = self._plan.apply(model_output, sample, i, k, j, generator, final=k == n)
        elif k == n:  # final denoising evaluation at t_min
            t = self._grid[-1]
            prev = self._field(model_output, sample, t, "denoiser").to(sample.dtype)
            self._state = None
        else:
            prev = self._advance_stepper(model_output, sample, i, k, j, generator)
        self._step_index = i + 1
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def _advance_stepper(self, model_output, sample, i, k, j, generator) -> Tensor:
        """Evaluation ``i`` (stage ``j`` of step ``k``) fed to the stepper, for the samplers that the
        affine plan does not cover (and any sampler under ``clip_sample`` / ``thresholding``)."""
        if j == 0 and getattr(self._state, "step", None) != k:  # (one-evaluation DDRaM starts it one call early)
            self._state = self._start(sample, k, generator)
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
        if not st.done:
            return st.x_eval.to(sample.dtype)
        self._state = None
        if getattr(self.stepper, "starts_at_midpoint", False) and k + 1 < self.num_inference_steps:
            # one-evaluation DDRaM: the next evaluation is at the next step's midpoint, reached with this
            # evaluation (the stepper keeps it), so the next step starts now and its midpoint is returned
            self._state = self._start(st.x, k + 1, generator)
            return self._state.x_eval.to(sample.dtype)
        return st.x.to(sample.dtype)

    def _start(self, x: Tensor, k: int, generator):
        """Start step ``k`` of the stepper from ``x`` (the state at its start), tagged with ``k``."""
        if k == 0 and hasattr(self.stepper, "reset"):  # a run starts: no evaluations carried over
            self.stepper.reset(self._grid, final_jump=self._final_denoise)
        u = None if self._u is None else self._u[k : k + 1].to(x.device)
        st = self.stepper.start(x, self._grid[k], self._grid[k + 1], u=u, generator=generator)
        st.step = k
        return st

    def _apply_eta(self, eta) -> None:
        eta = float(eta)
        new = stepper_for_eta(self.stepper, self._stepper_args, self.sde, eta)
        if new is None:
            return
        if self._step_index is not None:
            raise ValueError(f"eta={eta:g} changes the sampler's mode in the middle of a run; pass the same eta to every step")
        name = self._stepper_args[0]
        old = self.timesteps
        self.stepper = new
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
