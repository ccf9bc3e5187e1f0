"""Layer 2, sampling: integrator coefficients, step functions, steppers, the ``sample()`` loop,
the scheduler's affine plan, known-pixel conditioning (docs/architecture.md)."""
