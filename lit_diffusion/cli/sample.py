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
(:class:`~lit_diffusion.runtime.precision.NetworkRunner`); its output is cast back to float32 and every conversion and sampler step runs
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
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch

from ..runtime.precision import NetworkRunner
from .sample_inputs import NAMED_MASKS
from .sample_models import PRECISIONS
from .sample_outputs import FORMATS, write_outputs
from .sample_plan import Plan, prepare

__all__ = ["chunk_indices", "build_parser", "generate", "run", "main"]


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    """The options of one sampler each (:data:`lit_diffusion.cli.sample_plan.SAMPLER_OPTIONS`)."""
    from ..sampling.defaults import GAUSSIAN_START_RUN
    p.add_argument("--predictor", default=None, help="pc: exponential_euler (default), euler or ddram")
    p.add_argument("--n-corrector", type=int, default=None, help="pc: Langevin corrector steps per step")
    p.add_argument("--snr", type=float, default=None, help="pc: corrector signal-to-noise ratio")
    p.add_argument("--snr-norm", default=None, help="pc step-size rule: 'capped' (default: per sample, ratio capped at "
                   "4 sigma^2; stable in any dimension), 'batch' (batch-mean norms) or 'sample' (diverges on 1-D/2-D data)")
    p.add_argument("--time-grid", default=None, metavar="FILE",
                   help="a fitted time grid (JSON of python -m lit_diffusion.cli.grid_fit); sets --steps")
    p.add_argument("--gaussian-start", default="auto", metavar="auto|off|FILE",
                   help="start at sigma/alpha = --noise-ratio from the exact marginal of the Gaussian with the data's mean and "
                   "covariance instead of from the prior at T (docs/samplers.md \"The Gaussian start\"): 'auto' uses the moments "
                   "saved beside the model (data_moments.safetensors, python -m lit_diffusion.cli.gaussian_fit) when there are "
                   f"some, on unconditional multistep runs of at most {GAUSSIAN_START_RUN} steps (the measured rule; not with --class-label or "
                   "--inpaint: the moments are the unconditional data's) or with --noise-ratio; 'off' never; or a "
                   "moments file")
    p.add_argument("--noise-ratio", type=float, default=None, help="with a Gaussian start: sigma/alpha where the run starts "
                   "(default 10, the measured best)")
    p.add_argument("--solver-order", type=int, default=None, help="multistep: 1, 2 or 3 (default 2)")
    p.add_argument("--corrector", action=argparse.BooleanOptionalAction, default=None,
                   help="multistep: redo each step with the next evaluation as one more node (no extra evaluation; "
                   "default: on for runs of at most 9 steps, the measured best; --no-corrector turns it off)")
    p.add_argument("--eta", type=float, default=None,
                   help="multistep, SDE form: the stochasticity 0 < eta <= 4 (1: the reverse SDE; default 0.5 on runs from T of "
                   "at most 5 steps, else 1 (longer runs, a Gaussian start), the measured best; docs/samplers.md \"Stochasticity\")")
    p.add_argument("--evals-per-step", type=int, default=None, help="ddram: 2 (default) or 1 (the move to the midpoint "
                   "reuses the previous step's evaluation)")
    p.add_argument("--midpoint", default=None, help="ddram: where the midpoint is drawn: 'law' (default) or 'log_snr'")


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
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default 50; NFE = steps x evaluations per step, "
                   "+ 1 with the final denoising evaluation)")
    p.add_argument("--nfe", type=int, default=None, help="network-evaluation budget: the largest number of steps whose "
                   "evaluations fit it, the final denoising evaluation counted (ddram and pc take 2 per step), to compare "
                   "samplers at equal cost")
    p.add_argument("--schedule", default=None, help=f"time grid, one of {list(SCHEDULES)} (default: uniform, the measured "
                   "best on learned networks)")
    p.add_argument("--parametrization", default=None, help="frozen field: score, relative_score or denoiser")
    p.add_argument("--ode", action="store_true", help="probability-flow ODE form (deterministic)")
    _add_sampler_options(p)
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
    p.add_argument("--final-denoise", action=argparse.BooleanOptionalAction, default=None,
                   help="end with one denoising evaluation D(x, t) at the last grid point (on short runs it replaces the "
                   "last step; default: on for multistep and ddram, as SDEScheduler, the measured best; with --time-grid "
                   "what the grid file was fitted for; --no-final-denoise runs the grid down to t_min)")
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

    net = NetworkRunner(plan.model.net.to(device), PRECISIONS[args.precision], plan.model.prediction_type, on_call=on_call)
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
                gaussian_start=plan.start,
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
        meta = {k: v for k, v in vars(args).items() if k != "start"}
        if plan.start is not None:  # the Gaussian start that ran (its start_time is in args)
            meta.update(start_noise_ratio=plan.start.noise_ratio)
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
