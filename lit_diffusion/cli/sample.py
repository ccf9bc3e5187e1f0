"""Implementation of ``sample.py``: any checkpoint -> samples on disk (``docs/sampling.md``).

::

    python sample.py --checkpoint checkpoints/swissroll/last.ckpt --sampler ddram --steps 50 --out out/
    python sample.py --checkpoint my_pipeline/ --sampler exponential_euler --ode --steps 25 --precision bf16
    accelerate launch --num_processes 4 sample.py --checkpoint ... --n 10000     # several processes / GPUs

Inputs: a Lightning checkpoint of :class:`~lit_diffusion.module.ScoreModule` (read with
``torch.load(weights_only=True)``; the EMA network unless ``--no-ema``), or a diffusers pipeline folder
(``unet/`` holding a ``UNet2DModel`` and ``scheduler/scheduler_config.json``; the scheduler config is
turned into our SDE by :class:`~lit_diffusion.scheduler.SDEScheduler`: a ``betas`` table becomes a
:class:`~lit_diffusion.discrete_vp.DiscreteVP` in the network's own timestep units).  Sampling runs
:func:`lit_diffusion.samplers.sample` (docs/maths.md §4–§5) with any sampler / steps / schedule /
parametrization / ``--ode``.

Precision: ``--precision fp32|bf16|fp16`` runs the *network* under ``torch.autocast`` in that dtype
(:class:`AutocastNet`); its output is cast back to float32 and every conversion and sampler step runs
in float32 (float64 coefficients), so only the network's rounding changes.

Reproducibility: sample ``i`` uses its own generator seeded ``seed + i``
(:func:`lit_diffusion.utils.make_generators`) for its prior draw and every noise of its trajectory.
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
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

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

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMATS = ("npz", "safetensors")


from ..runtime.checkpoint_io import CheckpointError  # noqa: E402  (re-exported: sample.py's error type)


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
def AutocastNet(net: nn.Module, dtype: torch.dtype = torch.float32, prediction_type: Optional[str] = None,
                on_call: Optional[Callable[[], None]] = None):
    """``net`` in ``--precision`` (bf16/fp16 autocast), float32 out, ``on_call`` after every evaluation
    (:class:`lit_diffusion.runtime.precision.NetworkRunner`)."""
    from ..runtime.precision import NetworkRunner

    return NetworkRunner(net, dtype, prediction_type, on_call=on_call)


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as ``net(x, t)``: ``t`` is passed as the UNet's timestep unchanged
    (for a :class:`~lit_diffusion.discrete_vp.DiscreteVP` the SDE time *is* the training timestep)."""

    def __init__(self, unet: nn.Module, prediction_type: str):
        super().__init__()
        self.unet = unet
        self.prediction_type = prediction_type
        n = getattr(unet.config, "num_class_embeds", None)
        self.num_classes = None if n is None else int(n) - 1  # the last class embedding: "no label"

    def forward(self, x: Tensor, t, class_labels=None) -> Tensor:
        from ..training.networks import label_vector

        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        y = label_vector(class_labels, x, self.num_classes, "the exported UNet2DModel")
        return self.unet(x, t.float(), class_labels=y, return_dict=False)[0]


@dataclass
class LoadedModel:
    net: nn.Module
    sde: object
    prediction_type: str
    data_shape: Optional[tuple]
    kind: str  # "lightning" or "diffusers"
    info: dict = dc_field(default_factory=dict)
    decode: Optional[Callable[[Tensor], Tensor]] = None  # latent models: latents -> pixels


def load_lightning(path, ema: bool = True) -> LoadedModel:
    """A :class:`~lit_diffusion.module.ScoreModule` checkpoint (``weights_only=True``)."""
    from ..training.module import ScoreModule

    from ..runtime.checkpoint_io import read_checkpoint

    path = Path(path)
    ckpt = read_checkpoint(path, require=("state_dict", "hyper_parameters"))
    try:
        module = ScoreModule.from_checkpoint_dict(ckpt, where=repr(str(path)))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {str(path)!r} could not be rebuilt as a ScoreModule: {type(e).__name__}: {e}") from e
    if ema and module.ema is None:
        ema = False
    net = module.sampling_net(ema).eval()
    shape = tuple(module.data_shape) if module.data_shape is not None else None
    return LoadedModel(
        net, module.sde, module.prediction_type, shape, "lightning",
        {"ema": bool(ema), "global_step": int(ckpt.get("global_step", -1)), "sde": repr(module.sde)},
        None if module.codec is None else module.codec.decode,
    )


def load_diffusers(folder) -> LoadedModel:
    """A diffusers pipeline folder: ``unet/`` (``UNet2DModel``) + ``scheduler/scheduler_config.json``."""
    from ..core.parametrizations import canonical_prediction
    from ..integrations.scheduler import SDEScheduler

    folder = Path(folder)
    unet_dir, cfg_file = folder / "unet", folder / "scheduler" / "scheduler_config.json"
    missing = [str(p.relative_to(folder)) for p in (unet_dir / "config.json", cfg_file) if not p.is_file()]
    if missing:
        raise CheckpointError(
            f"{str(folder)!r} is not a diffusers pipeline folder: missing {missing} "
            "(expected unet/ with a UNet2DModel and scheduler/scheduler_config.json)"
        )
    try:
        cfg = json.loads(cfg_file.read_text())
        if not isinstance(cfg, dict):
            raise ValueError("the scheduler config is not a JSON object")
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not read {str(cfg_file)!r}: {type(e).__name__}: {e}") from e
    from diffusers import UNet2DModel

    try:
        unet = UNet2DModel.from_pretrained(str(unet_dir), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"could not load the UNet2DModel in {str(unet_dir)!r}: {type(e).__name__}: {e}") from e
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    try:
        scheduler = SDEScheduler.from_config(cfg)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"scheduler config {str(cfg_file)!r} is not usable: {type(e).__name__}: {e}") from e
    pred = canonical_prediction(scheduler.config.prediction_type)
    size = unet.config.sample_size
    hw = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    shape = (int(unet.config.in_channels),) + hw
    decode = None
    if (folder / "vae" / "config.json").is_file():  # a latent export: decode with its autoencoder
        from ..training.autoencoder import LatentCodec

        try:
            decode = LatentCodec(folder / "vae").decode
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"the autoencoder in {str(folder / 'vae')!r} is not usable: {e}") from None
    return LoadedModel(
        DiffusersUNet(unet.eval(), pred), scheduler.sde, pred, shape, "diffusers",
        {"sde": repr(scheduler.sde), "scheduler_class": json.loads(cfg_file.read_text()).get("_class_name")}, decode,
    )


def load_model(path, ema: bool = True) -> LoadedModel:
    """A Lightning checkpoint file or a diffusers pipeline folder (errors name the path)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist (give a .ckpt file or a diffusers pipeline folder)")
    if p.is_dir():
        from ..training.pretrained import is_pretrained_folder, load_pretrained

        if is_pretrained_folder(p):
            module = load_pretrained(p)
            shape = tuple(module.data_shape) if module.data_shape is not None else None
            return LoadedModel(module.net.eval(), module.sde, module.prediction_type, shape, "pretrained",
                               {"sde": repr(module.sde), **getattr(module, "pretrained_info", {})},
                               None if module.codec is None else module.codec.decode)
        return load_diffusers(p)
    return load_lightning(p, ema=ema)


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
    p.add_argument("--sampler", default="ddram", help=f"one of {list(SAMPLERS)}")
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


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or int(value) != value or int(value) < 1:
        raise ValueError(f"{name}={value!r} is invalid; it must be an integer >= 1")
    return int(value)


def _reference_data(ref: Optional[str]) -> Optional[np.ndarray]:
    if ref is None:
        return None
    if ref == "swissroll":
        from ..training.data import swiss_roll

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


NAMED_MASKS = ("lower-half", "upper-half", "left-half", "right-half", "center")


def _named_mask(name: str, shape: tuple) -> np.ndarray:
    """1 = keep; the named region is 0 (regenerated)."""
    m = np.ones(shape, dtype=np.float32)
    h, w = shape[-2], shape[-1]
    region = {
        "lower-half": (slice(h // 2, None), slice(None)), "upper-half": (slice(None, h // 2), slice(None)),
        "left-half": (slice(None), slice(None, w // 2)), "right-half": (slice(None), slice(w // 2, None)),
        "center": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4)),
    }[name]
    m[(Ellipsis,) + region] = 0.0
    return m


def _read_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--{what} {path!r} does not exist")
    if p.suffix.lower() in (".npy", ".npz"):
        arr = np.load(p, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            arr = arr["samples"] if "samples" in arr.files else arr[arr.files[0]]
        return np.asarray(arr, dtype=np.float32)
    return None


def _read_image(path: str, what: str, shape: tuple, resample) -> np.ndarray:
    """A picture as float32 in [0, 1], shaped ``(C, H, W)`` like one sample (resized to fit)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if shape[0] == 1 else "RGB").resize((shape[-1], shape[-2]), resample)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as e:
        raise ValueError(f"--{what} {path!r} is not a readable picture or .npy/.npz array ({e})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _check_inpaint(args, shape: tuple, decode=None) -> Optional[tuple]:
    """The known images and the mask of --inpaint/--mask, checked against the sample shape."""
    from PIL import Image

    if args.inpaint is None and args.mask is None:
        if args.resample != 1:
            raise ValueError(f"--resample {args.resample} only applies with --inpaint and --mask")
        return None
    if args.inpaint is None or args.mask is None:
        raise ValueError("--inpaint IMAGE and --mask MASK go together (the image to complete and the pixels to keep)")
    if isinstance(args.resample, bool) or args.resample < 1:
        raise ValueError(f"--resample {args.resample!r} is invalid; it must be an integer >= 1")
    if len(shape) != 3:
        raise ValueError(f"--inpaint needs an image model; this one generates samples of shape {shape}")
    if decode is not None:
        raise ValueError("--inpaint works on pixel-space models; this model generates autoencoder latents")
    known = _read_array(args.inpaint, "inpaint")
    if known is None:
        known = _read_image(args.inpaint, "inpaint", shape, Image.BICUBIC) * 2.0 - 1.0
    known = known.reshape((-1,) + known.shape[-3:]) if known.ndim >= 3 else known
    if known.ndim != 4 or tuple(known.shape[1:]) != shape:
        raise ValueError(f"--inpaint {args.inpaint!r} holds an array of shape {tuple(known.shape)}; expected {shape} or (N, *{shape})")
    if args.mask in NAMED_MASKS:
        mask = _named_mask(args.mask, shape)
    else:
        mask = _read_array(args.mask, "mask")
        if mask is None:
            mask = (_read_image(args.mask, "mask", shape, Image.NEAREST) >= 0.5).astype(np.float32)
        if mask.shape[-2:] != shape[-2:]:
            raise ValueError(f"--mask {args.mask!r} has shape {tuple(mask.shape)}; expected {shape[-2:]} or {shape}")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError(f"--mask {args.mask!r} must hold only 0 (regenerate) and 1 (keep)")
        mask = np.broadcast_to(mask.reshape(mask.shape[-3:] if mask.ndim >= 3 else (1,) + mask.shape), shape).copy()
    if not np.isfinite(known).all():
        raise ValueError(f"--inpaint {args.inpaint!r} holds NaN or inf values")
    return known.astype(np.float32), mask.astype(np.float32)


from ..runtime.pictures import grid_columns  # noqa: E402  (one grid rule for pictures and --class-label rows)


def sample_labels(labels: Optional[Sequence[int]], n: int, n_grid: int) -> Optional[np.ndarray]:
    """The class label of each of ``n`` samples: one label for all, or a list filling the picture's
    rows in turn (a function of the sample index only: independent of batch size and processes)."""
    if labels is None:
        return None
    labels = [int(k) for k in labels]
    cols = grid_columns(n, n_grid) if len(labels) > 1 else 1
    return np.asarray([labels[(i // cols) % len(labels)] for i in range(int(n))], dtype=np.int64)


def _check_labels(args, model: "LoadedModel") -> Optional[np.ndarray]:
    from ..core.fields import check_guidance
    from ..training.networks import num_classes_of

    K = num_classes_of(model.net)
    if args.class_label is not None:
        if K is None:
            raise ValueError(
                f"--class-label {' '.join(map(str, args.class_label))}: the model {str(args.checkpoint)!r} is unconditional "
                "(no class embedding); drop --class-label"
            )
        bad = [k for k in args.class_label if not (0 <= int(k) < K)]
        if bad:
            raise ValueError(f"--class-label {bad} out of range; valid labels: 0..{K - 1}")
    try:
        check_guidance(args.class_label, args.guidance_scale)
    except ValueError as e:
        raise ValueError(f"--guidance-scale {args.guidance_scale}: {e}; give --class-label") from None
    return sample_labels(args.class_label, args.n, args.grid)


def _check_budget_args(args, sampler: str) -> None:
    from ..sampling.samplers import SAMPLERS
    from ..core.schedules import SCHEDULES, _check_steps, check_schedule

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {args.sampler!r}; valid choices: {list(SAMPLERS)}")
    if args.nfe is not None and args.steps is not None:
        raise ValueError(f"give --steps or --nfe, not both (got --steps {args.steps} and --nfe {args.nfe})")
    if args.nfe is not None and (isinstance(args.nfe, bool) or args.nfe < 1):
        raise ValueError(f"--nfe {args.nfe!r} is invalid; it must be an integer >= 1")
    if args.steps is not None:
        try:
            _check_steps(args.steps)
        except (ValueError, TypeError):
            raise ValueError(f"--steps {args.steps!r} is invalid; it must be an integer >= 1") from None
    if args.schedule is None:
        from ..sampling.samplers import default_schedule

        args.schedule = default_schedule(sampler)
    try:
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
    return given


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
    sampler = str(args.sampler).lower()
    _check_budget_args(args, sampler)
    _check_output_args(args)
    options = _pc_options(args, sampler)
    reference = _reference_data(args.reference)
    model = load_model(args.checkpoint, ema=not args.no_ema)
    stepper = _stepper_and_steps(args, sampler, model, options)
    shape = _sample_shape(args, model)
    labels = _check_labels(args, model)
    known = _check_inpaint(args, shape, model.decode)
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
                final_denoise=bool(args.final_denoise), device=device, prediction_type=plan.model.prediction_type,
                class_labels=labels, guidance_scale=float(args.guidance_scale), **inpaint, **plan.sampler_options,
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
# outputs (atomic)
# ------------------------------------------------------------------------------------------------
def check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any work and without creating anything:
    a file can be created in it, or (when it does not exist yet) in its nearest existing parent."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    probe_dir = out.absolute()
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise ValueError(f"--out {str(out)!r} cannot be created: {str(probe_dir)!r} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=str(probe_dir))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {str(out)!r} is not writable ({str(probe_dir)!r}: {e.strerror or e})") from None


def _tmp_path(path: Path) -> str:
    """A staged temporary file beside ``path`` (:func:`lit_diffusion.runtime.checkpoint_io.staged_path`)."""
    from ..runtime.checkpoint_io import staged_path

    return staged_path(path)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """:func:`lit_diffusion.runtime.checkpoint_io.atomic_write`, the package's one atomic writer."""
    from ..runtime.checkpoint_io import atomic_write

    atomic_write(path, write)


def _picture_writer(samples: np.ndarray, reference: Optional[np.ndarray], n_grid: int, title: str, run_id: str = ""):
    """A function writing the PNG to a path (image grid for (N, C, H, W) with C in 1/3, scatter for
    2-D vectors), or None when the samples have no picture.  ``run_id`` goes into the PNG's
    metadata (``Description``), as it goes into the samples file, so the two can be matched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"Description": f"lit_diffusion sample.py run {run_id}"}
    if samples.ndim == 4 and samples.shape[1] in (1, 3):
        from ..runtime.pictures import image_grid

        x = samples[:n_grid]
        g = image_grid(x, grid_columns(len(x), n_grid))

        def write(tmp):
            plt.imsave(tmp, g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=255, format="png", metadata=meta)

        return write
    if samples.ndim == 2 and samples.shape[1] == 2:

        def write(tmp):
            fig, ax = plt.subplots(figsize=(5, 5))
            if reference is not None and reference.ndim == 2 and reference.shape[1] == 2:
                ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="reference data")
            ax.scatter(samples[:, 0], samples[:, 1], s=2, c="C0", label="samples")
            ax.set_title(title, fontsize=8)
            ax.legend(loc="upper right", fontsize=7)
            fig.tight_layout()
            fig.savefig(tmp, format="png", dpi=100, metadata=meta)
            plt.close(fig)

        return write
    return None


def write_picture(path: Path, samples: np.ndarray, reference: Optional[np.ndarray], n_grid: int, title: str) -> bool:
    """Write the picture of ``samples`` to ``path`` atomically; False when they have none."""
    write = _picture_writer(samples, reference, n_grid, title)
    if write is None:
        return False
    _atomic(path, write)
    return True


def _samples_writer(fmt: str, x: np.ndarray, idx: np.ndarray, meta_json: str, labels: Optional[np.ndarray] = None):
    if fmt == "npz":

        def write(tmp):
            with open(tmp, "wb") as f:
                extra = {} if labels is None else {"labels": labels}
                np.savez(f, samples=x, indices=idx, args=np.array(meta_json), **extra)

        return "samples.npz", write
    from safetensors.torch import save_file

    def write_st(tmp):
        tensors = {"samples": torch.from_numpy(x), "indices": torch.from_numpy(idx)}
        if labels is not None:
            tensors["labels"] = torch.from_numpy(labels)
        save_file(tensors, tmp, metadata={"args": meta_json})

    return "samples.safetensors", write_st


def write_outputs(plan: Plan, items: list[tuple[int, np.ndarray]], meta: dict) -> dict:
    """Order by index and write the raw samples and the picture as one unit: both are written in full
    to temporary files first; then the old picture is removed, the samples file and the picture are
    moved into place.  A kill at any point leaves either the old pair, the new samples without a
    picture, or the new pair -- never a picture of one run beside the samples of another.  Both carry
    the same ``run_id``."""
    import uuid

    args = plan.args
    items = sorted(items, key=lambda it: it[0])
    idx = np.array([i for i, _ in items], dtype=np.int64)
    if len(set(idx.tolist())) != len(idx) or len(idx) != int(args.n):
        raise RuntimeError(f"gathered {len(idx)} samples ({len(set(idx.tolist()))} distinct) for --n {args.n}")
    x = np.stack([s for _, s in items]).astype(np.float32)
    out = Path(args.out)
    run_id = uuid.uuid4().hex
    meta_json = json.dumps({**meta, "run_id": run_id}, sort_keys=True)
    labels = None if plan.labels is None else plan.labels[idx]
    name, write_samples = _samples_writer(args.format, x, idx, meta_json, labels)
    title = f"{args.sampler}, {args.steps} steps, {args.schedule}{', ODE' if args.ode else ''}, {args.precision}"
    if plan.labels is not None:
        title += f", labels {args.class_label}, guidance {args.guidance_scale:g}"
    write_png = None if args.no_png else _picture_writer(x, plan.reference, int(args.grid), title, run_id)
    png = out / "samples.png"
    staged = []
    try:
        for path, write in ((out / name, write_samples), (png, write_png)):
            if write is not None:
                tmp = _tmp_path(path)
                staged.append((tmp, path))
                write(tmp)
        png.unlink(missing_ok=True)  # an old picture never outlives the samples it showed
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
        raise
    from ..runtime.checkpoint_io import _fsync_dir

    _fsync_dir(str(out))
    written = {"samples": str(out / name), "run_id": run_id}
    if write_png is not None:
        written["png"] = str(png)
    return written


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
    summary = {"rank": rank, "world_size": world, "seconds": seconds, "nfe_per_sample": plan.nfe_per_sample}
    if accelerator.is_main_process:
        meta = {k: v for k, v in vars(args).items()}
        meta.update(
            world_size=world, nfe_per_sample=plan.nfe_per_sample, model_kind=plan.model.kind, data_shape=list(plan.shape),
            prediction_type=plan.model.prediction_type, **{f"model_{k}": v for k, v in plan.model.info.items()},
        )
        summary["written"] = write_outputs(plan, items, meta)
        x = np.stack([s for _, s in items])
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        msg = (
            f"{args.n} samples of shape {plan.shape} with {args.sampler} ({plan.nfe_per_sample} NFE each, "
            f"{args.precision}, {world} process{'es' if world > 1 else ''}) in {seconds:.1f}s -> "
            + ", ".join(v for k, v in summary["written"].items() if k != "run_id")
        )
        if bad:
            msg += f"\nwarning: {bad} samples contain NaN or inf"
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
    return 0
