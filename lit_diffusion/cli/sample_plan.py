"""``sample.py``'s plan: the checked arguments, the loaded model, the stepper, the steps and the
sample shape, all settled before any sample is drawn (memory for ``--n`` included)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .sample_inputs import check_inpaint, check_labels
from .sample_models import PRECISIONS, LoadedModel, load_model
from .sample_outputs import FORMATS, check_output_folder

__all__ = ["Plan", "prepare", "available_memory"]


def available_memory() -> Optional[int]:
    """Bytes of memory available now (Linux ``/proc/meminfo``, else the free physical pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(n: int, shape, latent: bool) -> None:
    """All ``n`` samples are held (as float32, about three copies while they are gathered and written):
    refuse before any work when that cannot fit in the memory available now."""
    per = 4 * int(np.prod(shape)) * (3 if not latent else 3 * 64)  # a latent decodes to ~64x more pixels
    need, have = n * per, available_memory()
    if have is not None and need > have:
        raise ValueError(
            f"--n {n} samples of shape {tuple(shape)} need about {need / 2**30:.1f} GiB while writing them; "
            f"{have / 2**30:.1f} GiB is available: the bound here is --n {max(have // per, 1)}. Sample in several runs "
            "(--seed) or with a smaller --n"
        )


def _reference_data(ref: Optional[str]) -> Optional[np.ndarray]:
    if ref is None:
        return None
    if ref == "swissroll":
        from ..core.targets import swiss_roll

        return swiss_roll(2000, seed=1).numpy()
    from ..core.targets import PRESETS, get_target

    if ref in PRESETS:
        return get_target(ref).sample(2000, generator=torch.Generator().manual_seed(1)).float().numpy()
    if not Path(ref).is_file():
        raise ValueError(f"--reference {ref!r} is neither 'swissroll', a target preset {sorted(PRESETS)} nor an existing file")
    from ..evaluation.evaluate import load_array

    return np.asarray(load_array(ref), dtype=np.float32)


def _is_discrete(sde) -> bool:
    from ..core.discrete_vp import DiscreteVP

    return isinstance(sde, DiscreteVP)


@dataclass
class Plan:
    args: argparse.Namespace
    model: LoadedModel
    stepper: object
    shape: tuple
    sampler_options: dict
    reference: Optional[np.ndarray]
    nfe_per_sample: int
    labels: Optional[np.ndarray] = None
    known: Optional[tuple] = None  # (images (N, *shape), mask (N or 1, *shape)) for --inpaint
    start: Optional[object] = None  # the GaussianStart of the run (--gaussian-start)


def _check_budget_args(args, sampler: str) -> None:
    from ..sampling.samplers import SAMPLERS
    from ..core.schedules import SCHEDULES, check_steps, check_schedule

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; valid choices: {['auto', *SAMPLERS]}")
    if args.nfe is not None and args.steps is not None:
        raise ValueError(f"give --steps or --nfe, not both (got --steps {args.steps} and --nfe {args.nfe})")
    if args.nfe is not None and (isinstance(args.nfe, bool) or args.nfe < 1):
        raise ValueError(f"--nfe {args.nfe!r} is invalid; it must be an integer >= 1")
    if args.steps is not None:
        try:
            check_steps(args.steps)
        except (ValueError, TypeError):
            from ..core.utils import MAX_STEPS

            raise ValueError(f"--steps {args.steps!r} is invalid; it must be an integer in [1, {MAX_STEPS}]") from None
    if getattr(args, "time_grid", None) is not None:
        from ..sampling.grid_fit import load_grid_file

        if args.steps is not None or args.nfe is not None:
            raise ValueError("--time-grid sets the steps itself: give --time-grid or --steps/--nfe, not both")
        args.timesteps, fitted_ending = load_grid_file(args.time_grid)
        if getattr(args, "final_denoise", None) is None:  # the ending the grid was fitted for
            args.final_denoise = fitted_ending
        args.steps = len(args.timesteps) - 1
    try:  # (no --schedule: the sampler's default for the budget, resolved once the steps are known)
        if args.schedule is not None:
            check_schedule(args.schedule)
    except ValueError:
        raise ValueError(f"unknown schedule {args.schedule!r}; valid choices: {list(SCHEDULES)}") from None


def _check_output_args(args) -> None:
    if args.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {args.precision!r}; valid choices: {list(PRECISIONS)}")
    if args.format not in FORMATS:
        raise ValueError(f"unknown format {args.format!r}; valid choices: {list(FORMATS)}")
    from ..core.utils import check_count

    for name, value in (("--n", args.n), ("--batch-size", args.batch_size), ("--grid", args.grid)):
        check_count(name, value)
    if not isinstance(args.num_threads, int) or args.num_threads < 0:
        raise ValueError(f"--num-threads {args.num_threads!r} is invalid; it must be an integer >= 0 (0: automatic)")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or not (0 <= args.seed and args.seed + args.n <= 2**63 - 1):
        raise ValueError(f"--seed {args.seed!r} is invalid; it must be an integer with 0 <= seed and seed + n <= 2**63 - 1 (sample i uses seed + i)")


#: the command-line options of each sampler's stepper (each refused with the other samplers)
SAMPLER_OPTIONS = (
    ("pc", ("predictor", "n_corrector", "snr", "snr_norm")),
    ("multistep", ("solver_order", "corrector", "eta")),
    ("ddram", ("evals_per_step", "midpoint")),
)


def _sampler_options(args, sampler: str) -> dict:
    """The stepper options of the sampler given on the command line (refused for the other samplers)."""
    options: dict = {}
    for owner, keys in SAMPLER_OPTIONS:
        given = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
        if given and sampler != owner:
            raise ValueError(f"options {sorted('--' + k.replace('_', '-') for k in given)} only apply to --sampler {owner}; "
                             f"got --sampler {sampler!r}")
        options.update(given)
    return options


def _stepper_and_steps(args, sampler: str, model, options: dict):
    """The stepper (the denoiser frozen on a DDPM table, as SDEScheduler does: its coefficients are
    closed forms there) and the number of steps (``--nfe``: the most that fit the budget)."""
    from ..sampling.samplers import get_stepper

    if args.parametrization is None and _is_discrete(model.sde):
        pred_name = str(args.predictor or "exponential_euler").lower() if sampler == "pc" else sampler
        if pred_name in ("exponential_euler", "ddram"):
            args.parametrization = "denoiser"
    stepper = get_stepper(sampler, model.sde, args.parametrization, args.ode, **options)
    if args.nfe is not None:
        budget = int(args.nfe) - (1 if args.final_denoise else 0)
        args.steps = budget // int(stepper.evals_per_step)
        if args.steps < 1:
            raise ValueError(
                f"--nfe {args.nfe} is too small for {sampler!r}: one step takes {stepper.evals_per_step} evaluations"
                + (" plus 1 for the final denoising evaluation (--no-final-denoise drops it)" if args.final_denoise else "")
            )
    elif args.steps is None:
        args.steps = 50
    args.start = _gaussian_start(args, sampler)
    # (a noise ratio the process never reaches at t_min is refused here)
    args.start_time = None if args.start is None else args.start.start_time(model.sde)
    if args.schedule is None:
        from ..sampling.defaults import guided_layout
        from ..sampling.samplers import default_schedule

        guided = guided_layout(getattr(args, "guidance_scale", None), getattr(args, "final_denoise", False))
        if not guided:  # (grids are fitted without guidance)
            _use_model_grid(args, sampler, model.sde.T if args.start_time is None else args.start_time)
        args.schedule = default_schedule(sampler, bool(args.ode), int(args.steps), guided)
    return stepper


def _gaussian_start(args, sampler: str):
    """``--gaussian-start``: ``auto`` -> the moments saved beside the model when there are some, for
    unconditional multistep runs of at most :data:`~lit_diffusion.sampling.defaults.GAUSSIAN_START_RUN` steps
    (the measured rule) or any run with ``--noise-ratio`` (said on stderr); ``off`` -> None; else a moments file (read
    and checked now, before any work)."""
    from ..sampling.defaults import GAUSSIAN_START_RUN
    from ..sampling.gaussian_start import DEFAULT_NOISE_RATIO, GaussianStart, model_moments
    from .sample_models import model_folder

    choice = str(getattr(args, "gaussian_start", "off") or "off")
    ratio = DEFAULT_NOISE_RATIO if getattr(args, "noise_ratio", None) is None else args.noise_ratio
    if choice == "off":
        if getattr(args, "noise_ratio", None) is not None:
            raise ValueError("--noise-ratio only applies with a Gaussian start; got --gaussian-start off")
        return None
    if choice == "auto":
        c = str(args.checkpoint)
        start = model_moments(model_folder(c), ratio)  # (an export's: beside its scheduler config)
        # conditional runs (class labels, guidance, inpainting) start from the prior unless asked: the moments
        # are the unconditional data's, and under guidance 3 the start moved the samples off the guided law
        # (docs/samplers.md "Guidance 3 on a GPU")
        conditional = getattr(args, "class_label", None) is not None or getattr(args, "inpaint", None) is not None
        measured = sampler == "multistep" and int(args.steps) <= GAUSSIAN_START_RUN and not conditional
        if start is not None and not measured and getattr(args, "noise_ratio", None) is None:
            return None
        if start is None:
            if getattr(args, "noise_ratio", None) is not None:
                raise ValueError(f"--noise-ratio given but {c!r} has no data_moments.safetensors beside it; "
                                 "write one with python -m lit_diffusion.cli.gaussian_fit or pass --gaussian-start FILE")
            return None
        print(f"sample.py: a Gaussian start at sigma/alpha = {start.noise_ratio:g} from the moments saved beside the model "
              "(--gaussian-start off to start from the prior)", file=sys.stderr)
        return start
    return GaussianStart.load(choice, ratio)


def _use_model_grid(args, sampler: str, top: float) -> None:
    """With no ``--schedule`` or ``--time-grid``, multistep runs on the grid fitted to the model when one
    for this step count, ending and form is saved beside it (``<folder>/grids/``: the shipped MNIST
    model's grids, docs/samplers.md "The corrector and the fitted grids"; or an exported pipeline's scheduler
    config); said on stderr and in the run's metadata.  ``top``: the run's first time."""
    if sampler != "multistep" or getattr(args, "timesteps", None) is not None:
        return
    from ..sampling.grid_fit import model_grid
    from .sample_models import pipeline_grid

    # (a Gaussian start takes only a grid fitted from its start time)
    found = model_grid(args.checkpoint, int(args.steps), bool(args.final_denoise), bool(args.ode), getattr(args, "start_time", None))
    if found is None and os.path.isdir(str(args.checkpoint)):
        found = pipeline_grid(args.checkpoint, int(args.steps), bool(args.final_denoise), bool(args.ode), top)
    if found is not None:
        args.time_grid, args.timesteps = found
        print(f"sample.py: the grid fitted to this model for {args.steps} steps: {found[0]} (--schedule to choose another)",
              file=sys.stderr)


def _sample_shape(args, model) -> tuple:
    """The shape of one sample (checked against ``--shape``), probed with one network evaluation."""
    shape = model.data_shape
    if args.shape is not None:
        want = tuple(int(s) for s in args.shape)
        if shape is not None and tuple(shape) != want:
            raise ValueError(
                f"data shape mismatch: the checkpoint {str(args.checkpoint)!r} generates samples of shape "
                f"{tuple(shape)}, but --shape {' '.join(map(str, want))} was requested"
            )
        shape = want
    if shape is None:
        raise ValueError(f"the checkpoint {str(args.checkpoint)!r} does not record its data shape; pass --shape")
    shape = tuple(int(s) for s in shape)
    with torch.no_grad():
        try:
            probe = model.net(torch.zeros((1,) + shape), torch.full((1,), float(model.sde.T)))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"the network of {str(args.checkpoint)!r} cannot take samples of shape {shape}: {e}") from e
    if tuple(probe.shape[1:]) != shape:
        raise ValueError(f"the network of {str(args.checkpoint)!r} returns shape {tuple(probe.shape[1:])} for inputs of shape {shape}")
    return shape


def prepare(args: argparse.Namespace) -> Plan:
    """Validate every argument, load the model and check shapes: raises before any sampling work."""
    from ..sampling.defaults import default_final_denoise, resolve_sampler

    sampler = resolve_sampler(args.sampler)
    _check_budget_args(args, sampler)
    args.final_denoise = default_final_denoise(sampler, getattr(args, "final_denoise", None))
    _check_output_args(args)
    options = _sampler_options(args, sampler)
    reference = _reference_data(args.reference)
    model = load_model(args.checkpoint, ema=not args.no_ema)
    stepper = _stepper_and_steps(args, sampler, model, options)
    shape = _sample_shape(args, model)
    if args.start is not None and args.start.shape != tuple(shape):
        raise ValueError(f"the Gaussian start's moments are for samples of shape {list(args.start.shape)}; the model's are "
                         f"{list(shape)}")
    _check_memory(int(args.n), shape, model.decode is not None)
    labels = check_labels(args, model)
    known = check_inpaint(args, shape, model.decode)
    nfe = (int(args.steps) * int(stepper.evals_per_step)) * int(args.resample) + (1 if args.final_denoise else 0)
    check_output_folder(Path(args.out))
    return Plan(args, model, stepper, shape, options, reference, nfe, labels, known, args.start)


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
