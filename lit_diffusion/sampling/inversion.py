"""Encoding data to noise and back along the probability-flow ODE (docs/maths.md §8, inversion):
``encode`` runs an ODE-form sampler from ``t_min`` up to ``T`` (the exponential integrators' formulas are
exact integrals in either direction), ``decode`` runs the same sampler back down on the same grid.
Samplers: ``multistep`` (the default; ``solver_order=1`` is DDIM inversion), ``exponential_euler`` and
``ddram`` (its midpoints drawn from ``generator``).  The diffusers-style inverse scheduler is
``SDEScheduler(inverse=True)``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..core.fields import as_field
from ..core.sdes import LinearSDE

__all__ = ["encode", "decode", "resolve_model", "ENCODE_SAMPLERS"]

ENCODE_SAMPLERS = ("multistep", "exponential_euler", "ddram")


def resolve_model(model, sde=None, prediction_type=None, class_labels=None, guidance_scale: float = 1.0):
    """``(field, sde, data_shape)`` of a ``ScoreModule``, a ``Field``, an analytic ``GaussianMixture`` or
    a network with ``prediction_type``; else a clear error (a path: load it with ``ScoreModule.load``)."""
    from ..core.targets import GaussianMixture

    shape = None
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        raise TypeError(f"model={str(model)!r} is a path: load the model first, "
                        "lit_diffusion.ScoreModule.load(path) (a pretrained-model folder or a checkpoint)")
    if type(model).__name__ == "ScoreModule" and hasattr(model, "sampling_net"):
        sde = sde or model.sde
        shape = None if model.data_shape is None else tuple(model.data_shape)
        prediction_type = prediction_type or model.prediction_type
        if getattr(model, "codec", None) is not None:
            raise ValueError("a latent model's likelihood is of its latents, not of pixels; not supported")
        model = model.sampling_net(True).eval()
    if sde is None:
        raise ValueError("give sde= (the model does not carry its SDE)")
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be a lit_diffusion LinearSDE; got {type(sde).__name__}")
    if isinstance(model, GaussianMixture):
        shape = (model.dim,)
    elif not (callable(model) and (prediction_type is not None or getattr(model, "prediction_type", None) is not None
                                   or hasattr(model, "field_kind") or type(model).__name__ == "Field")):
        raise TypeError(
            f"{type(model).__name__} is not a diffusion model; give a ScoreModule (ScoreModule.load(path) loads a "
            "folder or checkpoint), a Field, an analytic GaussianMixture, or a network with a prediction_type"
        )
    field = as_field(model, sde, prediction_type=prediction_type, class_labels=class_labels, guidance_scale=guidance_scale)
    return field, sde, shape


def _grid(sde, steps, schedule, timesteps, ode_sampler):
    from ..core.schedules import get_timesteps
    from .defaults import default_schedule

    if timesteps is not None:
        return torch.as_tensor(timesteps, dtype=torch.float64).flatten()
    return get_timesteps(sde, int(steps), schedule or default_schedule(ode_sampler, True)).to(torch.float64)


def check_sampler(sampler: str) -> str:
    key = str(sampler).lower()
    if key == "auto":
        key = "multistep"
    if key not in ENCODE_SAMPLERS:
        raise ValueError(
            f"encode/decode need an ODE-form sampler that can run in both directions; got {sampler!r}. Valid choices: "
            f"{list(ENCODE_SAMPLERS)} (multistep's solver_order=1 is DDIM inversion, the exponential-Euler denoiser ODE)"
        )
    return key


@torch.no_grad()
def encode(model, x: Tensor, sde: Optional[LinearSDE] = None, steps: int = 50, sampler: str = "multistep",
           schedule: Optional[str] = None, timesteps: Optional[Tensor] = None, prediction_type: Optional[str] = None,
           class_labels=None, guidance_scale: float = 1.0, parametrization: Optional[str] = None,
           generator=None, **options) -> Tensor:
    """The noise ``X_T`` that the probability-flow ODE maps to the data ``x`` (``x`` at ``t_min``), by
    ``steps`` steps of the ODE form of ``sampler`` on the reversed grid (``options``: the sampler's, e.g.
    multistep's ``solver_order`` and ``corrector``; ``generator``: DDRaM's midpoints)."""
    from ..core.utils import MAX_STEPS, check_count
    from .steppers import get_stepper

    key = check_sampler(sampler)
    check_count("steps", steps, 1, MAX_STEPS)
    field, sde, shape = resolve_model(model, sde, prediction_type, class_labels, guidance_scale)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"x has samples of shape {tuple(x.shape[1:])}; the model's data shape is {tuple(shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x holds NaN or inf")
    stepper = get_stepper(key, sde, parametrization, ode=True, **options).inverted()
    grid = _grid(sde, steps, schedule, timesteps, key).flip(0)
    if hasattr(stepper, "reset"):
        stepper.reset(grid)
    z = x
    for k in range(grid.numel() - 1):
        st = stepper.start(z, grid[k], grid[k + 1], generator=generator)
        while not st.done:
            st.advance(field(st.x_eval, st.t_eval, st.stepper.field_kind))
        z = st.x
    return z


@torch.no_grad()
def decode(model, z: Tensor, sde: Optional[LinearSDE] = None, steps: int = 50, sampler: str = "multistep",
           schedule: Optional[str] = None, timesteps: Optional[Tensor] = None, prediction_type: Optional[str] = None,
           class_labels=None, guidance_scale: float = 1.0, parametrization: Optional[str] = None,
           generator=None, **options) -> Tensor:
    """The data the probability-flow ODE maps ``z`` (at ``T``) to, by the same sampler on the same grid
    as :func:`encode`."""
    from .samplers import sample

    key = check_sampler(sampler)
    field, sde, _ = resolve_model(model, sde, prediction_type, class_labels, guidance_scale)
    grid = _grid(sde, steps, schedule, timesteps, key)
    return sample(field, sde, x_T=z, sampler=key, ode=True, timesteps=grid, dtype=z.dtype,
                  parametrization=parametrization, generator=generator, **options).samples
