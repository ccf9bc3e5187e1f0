"""``sample.py``'s conditioning inputs: class labels (``--class-label``, ``--guidance-scale``) and known
pixels (``--inpaint``, ``--mask``, ``--resample``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


from ..runtime.pictures import grid_columns

NAMED_MASKS = ("lower-half", "upper-half", "left-half", "right-half", "center")


def named_mask(name: str, shape: tuple) -> np.ndarray:
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


def read_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--{what} {path!r} does not exist")
    if p.suffix.lower() in (".npy", ".npz"):
        arr = np.load(p, allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            arr = arr["samples"] if "samples" in arr.files else arr[arr.files[0]]
        return np.asarray(arr, dtype=np.float32)
    return None


def read_image(path: str, what: str, shape: tuple, resample) -> np.ndarray:
    """A picture as float32 in [0, 1], shaped ``(C, H, W)`` like one sample (resized to fit)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("L" if shape[0] == 1 else "RGB").resize((shape[-1], shape[-2]), resample)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except OSError as e:
        raise ValueError(f"--{what} {path!r} is not a readable picture or .npy/.npz array ({e})") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def check_inpaint(args, shape: tuple, decode=None) -> Optional[tuple]:
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
    known = read_array(args.inpaint, "inpaint")
    if known is None:
        known = read_image(args.inpaint, "inpaint", shape, Image.BICUBIC) * 2.0 - 1.0
    known = known.reshape((-1,) + known.shape[-3:]) if known.ndim >= 3 else known
    if known.ndim != 4 or tuple(known.shape[1:]) != shape:
        raise ValueError(f"--inpaint {args.inpaint!r} holds an array of shape {tuple(known.shape)}; expected {shape} or (N, *{shape})")
    if args.mask in NAMED_MASKS:
        mask = named_mask(args.mask, shape)
    else:
        mask = read_array(args.mask, "mask")
        if mask is None:
            mask = (read_image(args.mask, "mask", shape, Image.NEAREST) >= 0.5).astype(np.float32)
        if mask.shape[-2:] != shape[-2:]:
            raise ValueError(f"--mask {args.mask!r} has shape {tuple(mask.shape)}; expected {shape[-2:]} or {shape}")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError(f"--mask {args.mask!r} must hold only 0 (regenerate) and 1 (keep)")
        mask = np.broadcast_to(mask.reshape(mask.shape[-3:] if mask.ndim >= 3 else (1,) + mask.shape), shape).copy()
    if not np.isfinite(known).all():
        raise ValueError(f"--inpaint {args.inpaint!r} holds NaN or inf values")
    return known.astype(np.float32), mask.astype(np.float32)




def sample_labels(labels: Optional[Sequence[int]], n: int, n_grid: int) -> Optional[np.ndarray]:
    """The class label of each of ``n`` samples: one label for all, or a list filling the picture's
    rows in turn (a function of the sample index only: independent of batch size and processes)."""
    if labels is None:
        return None
    labels = [int(k) for k in labels]
    cols = grid_columns(n, n_grid) if len(labels) > 1 else 1
    return np.asarray([labels[(i // cols) % len(labels)] for i in range(int(n))], dtype=np.int64)


def check_labels(args, model) -> Optional[np.ndarray]:
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
