"""Samplers for the reverse dynamics of a linear SDE (ALGORITHMS.md §4–§6).

Samplers: ``euler`` (Euler–Maruyama / probability-flow Euler), ``exponential_euler``, ``ddram``
(randomized midpoint), ``pc`` (predictor + Langevin corrector), ``localization`` (= denoiser
exponential Euler) and ``moment_matching`` (second-order localization, needs Jacobians).

STEPPER PROTOCOL (shared with ``lit_diffusion.scheduler.SDEScheduler``)
======================================================================
Every sampler is a set of *pure step functions of tensors that take field values as inputs* plus a
small stepper object that says which evaluations a step needs.  Nothing in a step calls the network;
whoever drives the stepper (our :func:`sample` loop or a diffusers pipeline through the scheduler)
evaluates the field and feeds the value back.

``stepper = get_stepper(sampler, sde, parametrization=None, ode=False, **options)``

* ``stepper.field_kind``: the prediction type every evaluation must be given in
  (``"score"``, ``"denoiser"`` or ``"relative_score"``; convert a network output with
  ``lit_diffusion.parametrizations.convert(out, declared, stepper.field_kind, x_eval, t_eval, sde)``).
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
where ``integ`` is a :class:`lit_diffusion.integrators.ExpIntegrator` (coefficients Phi, W, V of
§5 for one SDE, parametrization and SDE/ODE form).
"""
