"""Implementation of ``sample.py``: any checkpoint -> samples on disk (``docs/sampling.md``).

::

    python sample.py --checkpoint checkpoints/swissroll/last.ckpt --sampler ddram --steps 50 --out out/
    python sample.py --checkpoint my_pipeline/ --sampler exponential_euler --ode --steps 25 --precision bf16
    accelerate launch --num_processes 4 sample.py --checkpoint ... --n 10000     # several processes / GPUs

Inputs: a Lightning checkpoint of :class:`~lit_diffusion.training.module.ScoreModule` (read with
``torch.load(weights_only=True)``; the EMA network unless ``--no-ema``), or a diffusers pipeline folder
(``unet/`` holding a ``UNet2DModel`` and ``scheduler/scheduler_config.json``; the scheduler config is
turned into our SDE by :class:`~lit_diffusion.integrations.scheduler.SDEScheduler`: a ``betas`` table becomes a
:class:`~lit_diffusion.core.discrete_vp.DiscreteVP` in the network's own timestep units).  Sampling runs
:func:`lit_diffusion.sampling.samplers.sample` (docs/maths.md §4–§5) with any sampler / steps / schedule /
parametrization / ``--ode``.

Precision: ``--precision fp32|bf16|fp16`` runs the *network* under ``torch.autocast`` in that dtype
(:class:`AutocastNet`); its output is cast back to float32 and every conversion and sampler step runs
in float32 (float64 coefficients), so only the network's rounding changes.

Reproducibility: sample ``i`` uses its own generator seeded ``seed + i``
(:func:`lit_diffusion.core.utils.make_generators`) for its prior draw and every noise of its trajectory.
Indices are cut into fixed chunks of ``--batch-size`` consecutive indices and the chunks are dealt to
the processes round-robin, so each chunk is computed with exactly the same batch whatever the number
of processes: the gathered set (ordered by index on rank 0) is the same for one process or several.

Outputs (rank 0 only, each written to a temporary file and moved into place with ``os.replace``):
``<out>/samples.npz`` (``samples``, ``indices``, ``args`` = the run's arguments as JSON) or
``<out>/samples.safetensors`` (same tensors, arguments in the metadata), and ``<out>/samples.png``: an
image grid, or for 2-D data a scatter plot over ``--reference`` data.  Every bad input (unknown
sampler or schedule, steps <= 0, missing / corrupt checkpoint, data shape not matching ``--shape``, ...)
raises before any sampling work and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = [
    "PRECISIONS",
    "FORMATS",
    "CheckpointError",
    "AutocastNet",
    "DiffusersUNet",
    "LoadedModel",
    "load_model",
    "load_lightning",
    "load_diffusers",
    "chunk_indices",
    "build_parser",
    "prepare",
    "generate",
    "write_outputs",
    "run",
    "main",
]



from ..runtime.checkpoint_io import CheckpointError  # noqa: E402  (re-exported: sample.py's error type)


from .sample_models import (  # noqa: E402,F401  (re-exported: sample.py's API as before)
    PRECISIONS, AutocastNet, DiffusersUNet, LoadedModel, load_diffusers, load_lightning, load_model,
)
from .sample_inputs import (  # noqa: E402,F401
    NAMED_MASKS, check_inpaint, check_labels, named_mask, read_array, read_image, sample_labels,
)
from .sample_outputs import (  # noqa: E402,F401
    FORMATS, atomic_output, picture_writer, samples_writer, temporary_path, check_output_folder, write_outputs, write_picture,
)


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from ..sampling.samplers import SAMPLERS
    from ..core.schedules import SCHEDULES

    p = argparse.ArgumentParser(
        prog="sample.py",
        description="Draw samples from a lit_diffusion checkpoint, pretrained-model folder or diffusers pipeline folder.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # every option shows its default
    )
    p.add_argument("--checkpoint", "-c", required=True, help="ScoreModule .ckpt file, pretrained-model folder (checkpoints/mnist) or diffusers pipeline folder")
    p.add_argument("--out", "-o", default="samples", help="output folder (created when sampling succeeds)")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--batch-size", type=int, default=256, help="samples per network batch (a fixed chunk of indices)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses seed + i")
    p.add_argument("--sampler", default="auto", help=f"auto (the measured best: multistep) or one of {list(SAMPLERS)}")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50; NFE = steps x evaluations per step)")
    p.add_argument("--nfe", type=int, default=None, help="network-evaluation budget: the largest number of steps whose "
                   "evaluations fit it (ddram and pc take 2 per step), to compare samplers at equal cost")
    p.add_argument("--schedule", default=None, help=f"time grid, one of {list(SCHEDULES)} (default: uniform, the measured "
                   "best on learned networks)")
    p.add_argument("--parametrization", default=None, help="frozen field: score, relative_score or denoiser")
    p.add_argument("--ode", action="store_true", help="probability-flow ODE form (deterministic)")
    p.add_argument("--predictor", default=None, help="pc: exponential_euler (default), euler or ddram")
    p.add_argument("--n-corrector", type=int, default=None, help="pc: Langevin corrector steps per step")
    p.add_argument("--snr", type=float, default=None, help="pc: corrector signal-to-noise ratio")
    p.add_argument("--snr-norm", default=None, help="pc step-size rule: 'capped' (default: per sample, ratio capped at "
                   "4 sigma^2; stable in any dimension), 'batch' (batch-mean norms) or 'sample' (diverges on 1-D/2-D data)")
    p.add_argument("--time-grid", default=None, metavar="FILE",
                   help="a fitted time grid (JSON of python -m lit_diffusion.cli.grid_fit); sets --steps")
    p.add_argument("--solver-order", type=int, default=None, help="multistep: 1, 2 or 3 (default 2)")
    p.add_argument("--corrector", action="store_true", default=None,
                   help="multistep: redo each step with the next evaluation as one more node (no extra evaluation)")
    p.add_argument("--class-label", type=int, nargs="+", default=None, metavar="K",
                   help="class-conditional models: the label of every sample, or a list of labels that fill the "
                   "picture row by row (sample i gets list[(i // columns) %% len(list)]); default: unconditional")
    p.add_argument("--guidance-scale", type=float, default=1.0, metavar="W",
                   help="classifier-free guidance weight (1: conditional, 0: unconditional, > 1: guided; default 1)")
    p.add_argument("--inpaint", default=None, metavar="IMAGE",
                   help="regenerate part of this image (PNG/JPEG, or .npy/.npz of (C,H,W) or (N,C,H,W) in [-1, 1]; "
                   "sample i inpaints image i %% N); needs --mask")
    p.add_argument("--mask", default=None, metavar="MASK",
                   help="--inpaint: which pixels to keep: a picture (white: keep, black: regenerate, as diffusers' "
                   f"RePaintPipeline), a .npy of 0/1, or one of {list(NAMED_MASKS)} (the named part is regenerated)")
    p.add_argument("--resample", type=int, default=1, metavar="R",
                   help="--inpaint: RePaint resampling, each step repeated R times (R x the evaluations; default 1)")
    p.add_argument("--final-denoise", action="store_true", help="return D(x, t_min) (one more evaluation)")
    p.add_argument("--precision", default="fp32", help=f"network precision, one of {list(PRECISIONS)}")
    p.add_argument("--no-ema", action="store_true", help="use the raw (not the EMA) weights of a Lightning checkpoint")
    p.add_argument("--shape", type=int, nargs="+", default=None, help="expected shape of one sample (checked)")
    p.add_argument("--format", default="npz", help=f"raw samples format, one of {list(FORMATS)}")
    p.add_argument("--reference", default=None, help="2-D scatter background: 'swissroll', a target preset or a .npy/.npz file")
    p.add_argument("--grid", type=int, default=64, help="number of images in the PNG grid")
    p.add_argument("--no-png", action="store_true", help="do not write the picture")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--num-threads", type=int, default=0,
        help="torch CPU threads; 0 (default): 1 thread for small samples (<= 64 numbers, e.g. 2-D data) on "
        "the CPU, where spinning OpenMP threads cost far more than they bring, else torch's default",
    )
    return p


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


def _positive_int(name: str, value) -> int:
    from ..core.utils import check_count

    return check_count(name, value, 1)


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
        from ..sampling.grid_fit import load_grid

        if args.steps is not None or args.nfe is not None:
            raise ValueError("--time-grid sets the steps itself: give --time-grid or --steps/--nfe, not both")
        args.timesteps = load_grid(args.time_grid)
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
    _positive_int("--n", args.n)
    _positive_int("--batch-size", args.batch_size)
    _positive_int("--grid", args.grid)
    if not isinstance(args.num_threads, int) or args.num_threads < 0:
        raise ValueError(f"--num-threads {args.num_threads!r} is invalid; it must be an integer >= 0 (0: automatic)")
    if isinstance(args.seed, bool) or not isinstance(args.seed, int) or not (0 <= args.seed and args.seed + args.n <= 2**63 - 1):
        raise ValueError(f"--seed {args.seed!r} is invalid; it must be an integer with 0 <= seed and seed + n <= 2**63 - 1 (sample i uses seed + i)")


def _pc_options(args, sampler: str) -> dict:
    pc_opts = {"predictor": args.predictor, "n_corrector": args.n_corrector, "snr": args.snr, "snr_norm": args.snr_norm}
    given = {k: v for k, v in pc_opts.items() if v is not None}
    if given and sampler != "pc":
        raise ValueError(f"options {sorted('--' + k.replace('_', '-') for k in given)} only apply to --sampler pc; got --sampler {sampler!r}")
    ms_opts = {k: v for k, v in {"solver_order": args.solver_order, "corrector": args.corrector}.items() if v is not None}
    if ms_opts and sampler != "multistep":
        raise ValueError(f"options {sorted('--' + k.replace('_', '-') for k in ms_opts)} only apply to --sampler multistep; "
                         f"got --sampler {sampler!r}")
    return {**given, **ms_opts}


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
                + (" plus 1 for --final-denoise" if args.final_denoise else "")
            )
    elif args.steps is None:
        args.steps = 50
    if args.schedule is None:
        from ..sampling.samplers import default_schedule

        args.schedule = default_schedule(sampler, bool(args.ode), int(args.steps))
    return stepper


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
    from ..sampling.defaults import resolve_sampler

    sampler = resolve_sampler(args.sampler)
    _check_budget_args(args, sampler)
    _check_output_args(args)
    options = _pc_options(args, sampler)
    reference = _reference_data(args.reference)
    model = load_model(args.checkpoint, ema=not args.no_ema)
    stepper = _stepper_and_steps(args, sampler, model, options)
    shape = _sample_shape(args, model)
    _check_memory(int(args.n), shape, model.decode is not None)
    labels = check_labels(args, model)
    known = check_inpaint(args, shape, model.decode)
    nfe = (int(args.steps) * int(stepper.evals_per_step)) * int(args.resample) + (1 if args.final_denoise else 0)
    check_output_folder(Path(args.out))
    return Plan(args, model, stepper, shape, options, reference, nfe, labels, known)


# ------------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------------
def chunk_indices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Chunks ``[0, bs), [bs, 2 bs), ...`` of the sample indices, dealt round-robin: rank ``r`` of
    ``world`` gets chunks ``r, r + world, ...``.  The chunks themselves do not depend on ``world``."""
    chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return chunks[rank::world]


def generate(plan: Plan, chunks: Sequence[Sequence[int]], device=None, progress: bool = True) -> list[tuple[int, np.ndarray]]:
    """Sample the given chunks of indices; returns ``[(index, sample), ...]``."""
    from tqdm.auto import tqdm

    from ..sampling.samplers import sample
    from ..core.utils import make_generators

    args = plan.args
    device = torch.device(device or "cpu")
    n_chunks = sum(len(c) > 0 for c in chunks)
    # moment matching also calls the network for Jacobian products: its count is only known as it runs
    total = None if getattr(plan.stepper, "needs_jacobian", False) else n_chunks * plan.nfe_per_sample
    bar = tqdm(total=total, desc=f"{args.sampler} x{args.steps}", unit="eval", disable=not progress, file=sys.stderr)
    calls = [0]

    def on_call():
        calls[0] += 1
        bar.update(1)

    net = AutocastNet(plan.model.net.to(device), PRECISIONS[args.precision], plan.model.prediction_type, on_call=on_call)
    out: list[tuple[int, np.ndarray]] = []
    try:
        for chunk in chunks:
            if not chunk:
                continue
            gens = make_generators([int(args.seed) + i for i in chunk])
            labels = None if plan.labels is None else torch.as_tensor(plan.labels[list(chunk)], device=device)
            inpaint = {}
            if plan.known is not None:
                images, mask = plan.known
                idx = [i % len(images) for i in chunk]
                inpaint = dict(known=torch.as_tensor(images[idx], device=device), mask=torch.as_tensor(mask, device=device),
                               resample=int(args.resample))
            res = sample(
                net, plan.model.sde, shape=(len(chunk),) + plan.shape, sampler=args.sampler, steps=int(args.steps),
                schedule=args.schedule, parametrization=args.parametrization, ode=bool(args.ode), generator=gens,
                timesteps=None if getattr(args, "timesteps", None) is None else torch.tensor(args.timesteps, dtype=torch.float64),
                final_denoise=bool(args.final_denoise), device=device, prediction_type=plan.model.prediction_type,
                class_labels=labels, guidance_scale=float(args.guidance_scale), **inpaint, **plan.sampler_options,
                check_finite=False,  # counted below, so that every process stops together before writing
            )
            x = res.samples.detach()
            if plan.model.decode is not None:  # latent model: the pictures are the decoded latents
                x = plan.model.decode(x)
            x = x.float().cpu().numpy()
            out.extend((int(i), x[k]) for k, i in enumerate(chunk))
    finally:
        bar.close()
    if n_chunks:
        # network evaluations per sample as the progress bar counted them (Jacobian products included)
        plan.nfe_per_sample = int(round(calls[0] / n_chunks))
    return out


# ------------------------------------------------------------------------------------------------
def run(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse, validate, sample (possibly in several Accelerate processes), write; returns a summary
    (on every rank; only rank 0 writes)."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    plan = prepare(args)  # every error is raised here, before any work and any file

    from accelerate import Accelerator
    from accelerate.utils import gather_object

    accelerator = Accelerator(cpu=bool(args.cpu) or not torch.cuda.is_available())
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cpu":
        n_threads = int(args.num_threads) or (1 if int(np.prod(plan.shape)) <= 64 else 0)
        if n_threads:
            torch.set_num_threads(n_threads)
    chunks = chunk_indices(int(args.n), int(args.batch_size), rank, world)
    t0 = time.perf_counter()
    items = generate(plan, chunks, device=accelerator.device, progress=accelerator.is_main_process and not args.no_progress)
    seconds = time.perf_counter() - t0
    if world > 1:
        items = gather_object(items)
    bad = sum(int(not np.isfinite(s).all()) for _, s in items)
    if bad:  # every process holds the gathered samples: all of them stop here, nothing is written
        accelerator.wait_for_everyone()
        raise FloatingPointError(
            f"{bad} of {args.n} samples contain NaN or inf (the network produced non-finite values); nothing was written. "
            "Check the model, or try --precision fp32"
        )
    summary = {"rank": rank, "world_size": world, "seconds": seconds, "nfe_per_sample": plan.nfe_per_sample}
    if accelerator.is_main_process:
        meta = {k: v for k, v in vars(args).items()}
        meta.update(
            world_size=world, nfe_per_sample=plan.nfe_per_sample, model_kind=plan.model.kind, data_shape=list(plan.shape),
            prediction_type=plan.model.prediction_type, **{f"model_{k}": v for k, v in plan.model.info.items()},
        )
        summary["written"] = write_outputs(plan, items, meta)
        msg = (
            f"{args.n} samples of shape {plan.shape} with {args.sampler} ({plan.nfe_per_sample} NFE each, "
            f"{args.precision}, {world} process{'es' if world > 1 else ''}) in {seconds:.1f}s -> "
            + ", ".join(v for k, v in summary["written"].items() if k != "run_id")
        )
        print(msg, flush=True)
    accelerator.wait_for_everyone()
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        # tear the process group down here: left to interpreter exit, gloo's threads can abort a rank
        # ("terminate called without an active exception") after the samples were written
        torch.distributed.destroy_process_group()
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        run(argv)
    except (ValueError, FileNotFoundError) as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"sample.py: error: {e}", file=sys.stderr)
        return 1
    return 0
