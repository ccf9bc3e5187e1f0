"""The diffusers configuration of :class:`~lit_diffusion.integrations.scheduler.SDEScheduler`: how each
diffusers key maps to a meaning (or is refused), the checks made before any work, and dynamic
thresholding."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..core.discrete_vp import DiscreteVP, make_betas
from ..core.schedules import SCHEDULES, check_schedule, is_time_grid
from ..core.sdes import get_sde
from ..core.utils import MAX_TRAIN_TIMESTEPS, check_count

#: samplers the scheduler exposes (``moment_matching`` is refused, see :data:`REFUSED_SAMPLERS`)
SCHEDULER_SAMPLERS = ("euler", "exponential_euler", "ddram", "pc", "localization", "multistep")
REFUSED_SAMPLERS = {
    "moment_matching": (
        "sampler='moment_matching' cannot run as a diffusers scheduler: its step needs the posterior "
        "covariance, i.e. Jacobian-vector products of the denoiser with respect to x, and a pipeline "
        "only hands the scheduler the network's output at one point. Use "
        "lit_diffusion.sampling.samplers.sample(..., sampler='moment_matching') with the network itself."
    )
}


def as_float(timestep) -> float:
    if isinstance(timestep, Tensor):
        if timestep.numel() != 1:
            # pipelines pass one timestep for the whole batch; accept a batch of equal values
            flat = timestep.detach().flatten()
            if not bool((flat == flat[0]).all()):
                raise ValueError(
                    f"step() got per-sample timesteps {flat.tolist()}; a scheduler step needs one timestep"
                )
            timestep = flat[0]
        return float(timestep.item())
    return float(timestep)


FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


def diffusers_schedule(schedule, use_karras_sigmas: bool, timestep_spacing: str, steps_offset: int):
    """The step grid the diffusers keys ask for: Karras sigmas are the ``edm`` grid; a
    non-default ``timestep_spacing`` / ``steps_offset`` selects diffusers' integer spacing."""
    if use_karras_sigmas:
        if schedule not in (None, "edm"):
            raise ValueError(f"use_karras_sigmas=True asks for the Karras (edm) grid but schedule={schedule!r} was given")
        return "edm"
    if schedule is None and (timestep_spacing != "linspace" or int(steps_offset) != 0):
        return "diffusers"
    if schedule is not None and str(schedule).lower() != "diffusers" and (
        timestep_spacing != "linspace" or int(steps_offset) != 0
    ):
        raise ValueError(
            f"timestep_spacing={timestep_spacing!r} / steps_offset={steps_offset!r} only apply to schedule='diffusers'; "
            f"got schedule={schedule!r} (drop them, or use schedule='diffusers')"
        )
    return schedule


def ends_with_denoising_step(final_denoise: bool, final_sigmas_type) -> bool:
    """``final_sigmas_type="zero"`` ends on the data (a final denoising evaluation), ``"sigma_min"`` at
    the last noise level ``t_min``."""
    if final_sigmas_type is None:
        return bool(final_denoise)
    if final_sigmas_type not in FINAL_SIGMAS_TYPES:
        raise ValueError(f"final_sigmas_type={final_sigmas_type!r} is invalid; valid choices: {list(FINAL_SIGMAS_TYPES)}")
    return final_sigmas_type == "zero"


def check_model_output(model_output, sample, timestep, index) -> None:
    """The network output must be a finite tensor shaped like the sample (or with twice its channels: a
    learned-variance network)."""
    if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
        raise TypeError(
            f"step() takes tensors; got model_output={type(model_output).__name__}, sample={type(sample).__name__}"
        )
    learned_variance = (
        model_output.ndim == sample.ndim >= 2 and model_output.shape[0] == sample.shape[0]
        and model_output.shape[1] == 2 * sample.shape[1] and model_output.shape[2:] == sample.shape[2:]
    )
    if tuple(model_output.shape) != tuple(sample.shape) and not learned_variance:
        raise ValueError(
            f"model_output has shape {tuple(model_output.shape)} but sample has shape {tuple(sample.shape)}; "
            "they must be equal, or have twice the channels for a learned-variance network (variance half ignored)"
        )
    if not bool(torch.isfinite(model_output).all()):
        bad = int((~torch.isfinite(model_output)).sum())
        raise FloatingPointError(
            f"the model output at timestep {as_float(timestep)!r} (evaluation {index or 0}) has {bad} "
            "NaN/inf values; the network diverged or ran out of its precision range (try fp32 or bf16)"
        )


def fitted_grids(fitted_grid, ode: Optional[bool] = None) -> list:
    """The grids of the ``fitted_grid`` config key, checked: one grid (a decreasing list of at least 2
    finite times) or a list of them, one per step count (``[]`` for None); or a dict of such for each
    form, ``{"ode": ..., "sde": ...}`` (what an export writes), of which ``ode`` picks one (None: all checked)."""
    if isinstance(fitted_grid, dict):
        bad = sorted(set(fitted_grid) - {"ode", "sde"})
        if bad:
            raise ValueError(f"fitted_grid: keys {bad} are invalid; valid keys: ['ode', 'sde'] (the grids of each form)")
        forms = {k: fitted_grids(v) for k, v in fitted_grid.items()}
        return [g for v in forms.values() for g in v] if ode is None else forms.get("ode" if ode else "sde", [])
    if fitted_grid is None:
        return []
    grids = fitted_grid if isinstance(fitted_grid, (list, tuple)) and fitted_grid and isinstance(
        fitted_grid[0], (list, tuple)) else [fitted_grid]
    steps = set()
    for g in grids:
        if not is_time_grid(g):
            raise ValueError(f"fitted_grid: {g!r} is not a decreasing list of at least 2 finite times "
                             "(give one grid, or a list of grids with different step counts)")
        if len(g) - 1 in steps:
            raise ValueError(f"fitted_grid: two grids of {len(g) - 1} steps; give one grid per step count")
        steps.add(len(g) - 1)
    return [[float(v) for v in g] for g in grids]


def check_numbers(dynamic_thresholding_ratio, sample_max_value, clip_sample_range) -> None:
    if not (0.0 < float(dynamic_thresholding_ratio) <= 1.0):
        raise ValueError(f"dynamic_thresholding_ratio={dynamic_thresholding_ratio!r} is invalid; it must be in (0, 1]")
    if not (math.isfinite(float(sample_max_value)) and float(sample_max_value) >= 1.0):
        raise ValueError(f"sample_max_value={sample_max_value!r} is invalid; it must be a finite number >= 1")
    if not (math.isfinite(float(clip_sample_range)) and float(clip_sample_range) > 0):
        raise ValueError(f"clip_sample_range={clip_sample_range!r} is invalid; it must be > 0")


def check_sampler_name(sampler) -> str:
    from ..sampling.defaults import resolve_sampler

    name = resolve_sampler(sampler)
    if name in REFUSED_SAMPLERS:
        raise ValueError(REFUSED_SAMPLERS[name])
    if name not in SCHEDULER_SAMPLERS:
        raise ValueError(
            f"unknown sampler {sampler!r}; valid choices: {['auto', *SCHEDULER_SAMPLERS]} "
            f"(moment_matching needs network Jacobians and is only available in lit_diffusion.sampling.samplers.sample)"
        )
    return name


def check_schedule_name(schedule, sampler: str, timestep_spacing: str, ode: bool = False) -> str:
    if schedule is None:
        from ..sampling.samplers import default_schedule

        schedule = default_schedule(sampler, ode)
    if str(schedule).lower() != "diffusers":
        try:
            check_schedule(schedule)
        except ValueError:
            raise ValueError(f"unknown schedule {schedule!r}; valid choices: {list(SCHEDULES) + ['diffusers']}") from None
    elif timestep_spacing not in ("linspace", "leading", "trailing"):
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r}; valid choices: ['linspace', 'leading', 'trailing']")
    return str(schedule)


def check_num_steps(n) -> int:
    from ..core.utils import MAX_STEPS, check_count

    return check_count("num_inference_steps", n, 1, MAX_STEPS)


def dynamic_threshold(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding of a denoised estimate (Saharia et al., "Photorealistic Text-to-Image
    Diffusion Models with Deep Language Understanding"): per sample, ``s`` is the ``ratio`` quantile of
    ``|x0|`` clamped to ``[1, max_value]``, and ``x0`` becomes ``clamp(x0, -s, s) / s``."""
    flat = x0.reshape(x0.shape[0], -1).abs()
    s = torch.quantile(flat.float(), ratio, dim=1).clamp(1.0, max_value).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def process_of_config(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr,
                      sde, sde_kwargs, t_min):
    """``(sde, betas, alphas, alphas_cumprod)`` of a scheduler config: the DDPM table as a
    :class:`~lit_diffusion.core.discrete_vp.DiscreteVP` (no ``sde``), or the named SDE with the discrete
    chain of ``num_train_timesteps`` uniform steps (informative, as diffusers' attributes)."""
    if sde is None:
        betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, rescale_betas_zero_snr)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        return DiscreteVP(alphas_cumprod.to(torch.float64), t_min=t_min), betas, alphas, alphas_cumprod
    process = get_sde(sde, **dict(sde_kwargs or {}))
    n = check_count("num_train_timesteps", num_train_timesteps, 1, MAX_TRAIN_TIMESTEPS)
    la = process.log_alpha(torch.linspace(0.0, process.T, n + 1, dtype=torch.float64))
    alphas = torch.exp(2 * (la[1:] - la[:-1])).to(torch.float32)
    return process, 1.0 - alphas, alphas, torch.exp(2 * la[1:]).to(torch.float32)


def stepper_options(name: str, sde, parametrization, predictor, **opts) -> tuple:
    """``(parametrization, options)`` of the stepper ``name`` from the scheduler's config keys: on a
    DDPM table the denoiser for exponential Euler and DDRaM (closed-form coefficients; the score forms
    would need a numerical table), the multistep, DDRaM and PC options of ``opts``."""
    options: dict = {}
    if parametrization is None and isinstance(sde, DiscreteVP):
        pred_name = str(predictor or "exponential_euler").lower() if name == "pc" else name
        if pred_name in ("exponential_euler", "ddram"):
            parametrization = "denoiser"
    if name == "multistep":  # (DPM-Solver configs carry solver_order/lower_order_final: kept)
        band = opts["noise_band"]
        options.update(solver_order=opts["solver_order"], lower_order_final=bool(opts["lower_order_final"]),
                       corrector=None if opts["corrector"] is None else bool(opts["corrector"]), noise_band=None if band is None else list(band),
                       inverse=bool(opts["inverse"]), eta=opts["eta"])
    elif opts["eta"] is not None:
        raise ValueError(f"eta={opts['eta']!r} (the stochasticity of the SDE form) applies to sampler 'multistep'; sampler "
                         f"{name!r} runs the reverse SDE (ode=False) or the probability-flow ODE (ode=True)")
    if name == "ddram":
        options["midpoint"] = opts["midpoint"]
        if opts["evals_per_step"] is not None:  # (else the stepper's own default)
            options["evals_per_step"] = opts["evals_per_step"]
    elif opts["midpoint"] != "law" or opts["evals_per_step"] is not None:
        raise ValueError(f"midpoint={opts['midpoint']!r} and evals_per_step={opts['evals_per_step']!r} are DDRaM options; "
                         f"sampler {name!r} takes neither (valid with sampler='ddram')")
    if name == "pc":
        options.update(n_corrector=opts["n_corrector"], snr=opts["snr"], snr_norm=opts["snr_norm"])
        if predictor is not None:
            options["predictor"] = predictor
    return parametrization, options


def stepper_for_eta(stepper, stepper_args, sde, eta):
    """The stepper that a pipeline's ``step(eta=...)`` asks for, or ``None`` when ``stepper`` runs it:
    ``0`` the probability-flow ODE, ``1`` the reverse SDE (DDPM's level); multistep runs any
    ``0 < eta <= 4`` (docs/maths.md §5, "Stochasticity": DDIM's level to first order in the step)."""
    eta = float(eta)
    name, parametrization, options = stepper_args
    if eta not in (0.0, 1.0) and name != "multistep":  # (multistep checks its own range)
        raise ValueError(f"eta={eta!r} is not supported by sampler {name!r}: it runs the probability-flow ODE (eta=0) or the "
                         "reverse SDE (eta=1, DDPM's level); sampler 'multistep' runs any 0 < eta <= 4")
    want_ode = eta == 0.0
    if want_ode == (not stepper.stochastic) and (want_ode or getattr(stepper, "eta", 1.0) == eta):
        return None
    if name == "multistep":
        options = {**options, "eta": None if want_ode else eta}
    from ..sampling.samplers import get_stepper

    return get_stepper(name, sde, parametrization=parametrization, ode=want_ode, **options)


def gaussian_start_of_config(path, noise_ratio, inverse: bool):
    """The ``gaussian_start`` config key: a moments file or a folder holding one (read and checked
    now), or None; ``noise_ratio`` only with it."""
    if path is None:
        if noise_ratio is not None:
            raise ValueError(f"noise_ratio={noise_ratio!r} only applies with gaussian_start= (a moments file or model folder)")
        return None
    if not isinstance(path, str):
        raise ValueError(f"gaussian_start={path!r} is invalid; it must be the path of a moments file or of a model folder "
                         "holding data_moments.safetensors (python -m lit_diffusion.cli.gaussian_fit)")
    if inverse:
        raise ValueError("gaussian_start does not apply to inverse=True (encoding runs from the data to T)")
    from ..sampling.gaussian_start import as_gaussian_start

    return as_gaussian_start(path, noise_ratio)
