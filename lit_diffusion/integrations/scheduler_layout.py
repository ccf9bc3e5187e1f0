"""The evaluation layout of :class:`~lit_diffusion.integrations.scheduler.SDEScheduler`: where a run's
network evaluations fall. ``set_timesteps`` turns a step count, a custom grid (``timesteps`` /
``sigmas``) or a grid fitted to the model into the step grid, draws DDRaM's midpoints, and lists the
time, step and stage of every evaluation (from the affine plan or a dry run of the stepper), so that a
diffusers pipeline iterating over ``scheduler.timesteps`` conditions the network on exactly those
times. Stepping itself is in :mod:`.scheduler`."""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .scheduler_config import as_float, check_num_steps, fitted_grids

__all__ = ["EvaluationLayout"]


class EvaluationLayout:
    """The ``set_timesteps`` half of ``SDEScheduler`` (a mixin: it reads the scheduler's ``config``,
    ``sde``, ``stepper`` and writes ``timesteps``, ``sigmas`` and the per-evaluation tables that
    ``step`` follows)."""

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

    def _step_grid(self, n: int) -> Tensor:
        cfg = self.config
        if self._schedule.lower() != "diffusers":
            from ..sampling.defaults import default_schedule, step_grid

            schedule = self._schedule
            if cfg.get("schedule") is None:  # the sampler's default grid for this budget
                schedule = default_schedule(self._stepper_args[0], self.stepper.ode, n, self._guided)
            # (on short runs the final denoising evaluation replaces the last step: the jump to the data)
            t_start = None if self._gstart is None else self._gstart.start_time(self.sde)  # (a Gaussian start)
            return step_grid(self.sde, self._stepper_args[0], n, schedule, self._final_denoise,
                             self.stepper.evals_per_step, rho=float(cfg.rho), T=t_start, guided=self._guided)
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
        top = self.sde.T if self._gstart is None else self._gstart.start_time(self.sde)
        ts = ts.clamp(self.sde.t_min, top)  # (a Gaussian start: the times above its start collapse onto it)
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
        fitted = fitted_grids(self.config.get("fitted_grid"), bool(self.stepper.ode))
        if timesteps is None and fitted:
            # grids fitted to the model (python -m lit_diffusion.cli.grid_fit), saved in the config:
            # a pipeline that reloads this scheduler keeps them; other step counts use `schedule`
            if num_inference_steps is None and len(fitted) > 1:
                raise ValueError(f"set_timesteps: give num_inference_steps; fitted grids exist for "
                                 f"{sorted(len(g) - 1 for g in fitted)} steps")
            match = [g for g in fitted if num_inference_steps in (None, len(g) - 1)]
            if match:
                timesteps, num_inference_steps = match[0], None
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass either num_inference_steps or timesteps, not both")
            self._gstart = self._start_of_run(len(timesteps) - 1)  # (a Gaussian start only up to gaussian_start_steps)
            grid = self._custom_grid(timesteps)
        else:
            n_steps = check_num_steps(num_inference_steps)
            self._gstart = self._start_of_run(n_steps)
            grid = self._step_grid(n_steps)
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
        else:
            self._finish_set_timesteps(n, grid, u, *self._dry_run(grid, u), device)

    def _dry_run(self, grid: Tensor, u: Optional[Tensor]):
        """The stepper run on a 1-element state over ``grid``: the time, step and stage of every
        evaluation, in order (for the samplers that the affine plan does not cover)."""
        stepper, n = self.stepper, grid.numel() - 1
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
            stepper.reset(grid, final_jump=self._final_denoise)
        return torch.tensor(times, dtype=torch.float64), steps, stages

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

    def _first_evaluation(self, timestep) -> bool:
        """Whether the next evaluation is the first of the run (not entered mid-run, as img2img does)."""
        i = self._step_index if self._step_index is not None else (self._begin_index or 0)
        return i == 0 and (timestep is None or abs(as_float(timestep) - self._expected[0]) <= 1e-4 * max(1.0, self.sde.T))

    def _mapped_start(self, sample: Tensor) -> Tensor:
        """The prior draw ``sample``, standardized, mapped onto the Gaussian start's marginal at the grid's
        first time (docs/maths.md §5, "Gaussian start")."""
        return self._gstart.from_prior(self.sde, float(self._grid[0]), sample)

    def _first_state(self, sample: Tensor, mapped: bool) -> Tensor:
        """``step``'s state at the first evaluation of a run with a Gaussian start: the prior draw mapped
        as ``scale_model_input`` mapped the network's input -- refused when the loop skipped that call."""
        if not mapped:
            raise ValueError(
                "gaussian_start: the network's first input must come from scheduler.scale_model_input(sample, t), which "
                "maps the prior draw onto the Gaussian start; this loop skipped it (DDPMPipeline and DDIMPipeline do; "
                "Stable Diffusion-style pipelines and LDMPipeline call it). Use such a pipeline, sample(), or no gaussian_start"
            )
        self._start_mapped = False
        return self._mapped_start(sample)

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
        self._start_mapped = False  # (a Gaussian start: set when scale_model_input maps the first input)
        self._step_index = None
        self._begin_index = None

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
