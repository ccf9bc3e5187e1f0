"""``sample.py``'s outputs: the samples file and the picture, written as a pair through the package's
one atomic writer, with the checks of the output folder made before any work."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..runtime.pictures import grid_columns


FORMATS = ("npz", "safetensors")
#: suffixes that make a not-yet-existing ``--out`` a file name typed by mistake (``--out s.png``)
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npz", ".npy", ".safetensors", ".pt", ".pth")


# ------------------------------------------------------------------------------------------------
# outputs (atomic)
# ------------------------------------------------------------------------------------------------
def check_output_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any work and without creating anything:
    a file can be created in it, or (when it does not exist yet) in its nearest existing parent."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a folder")
    if not out.exists() and out.suffix.lower() in FILE_SUFFIXES:
        raise ValueError(f"--out {str(out)!r} names a file, but --out is the output folder: the run writes "
                         f"samples.npz (or samples.safetensors) and samples.png into it; "
                         f"give a folder such as {str(out.with_suffix(''))!r}")
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


def temporary_path(path: Path) -> str:
    """A staged temporary file beside ``path`` (:func:`lit_diffusion.runtime.checkpoint_io.staged_path`)."""
    from ..runtime.checkpoint_io import staged_path

    return staged_path(path)


def atomic_output(path: Path, write: Callable[[str], None]) -> None:
    """:func:`lit_diffusion.runtime.checkpoint_io.atomic_write`, the package's one atomic writer."""
    from ..runtime.checkpoint_io import atomic_write

    atomic_write(path, write)


def picture_writer(samples: np.ndarray, reference: Optional[np.ndarray], n_grid: int, title: str, run_id: str = ""):
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
    write = picture_writer(samples, reference, n_grid, title)
    if write is None:
        return False
    atomic_output(path, write)
    return True


def samples_writer(fmt: str, x: np.ndarray, idx: np.ndarray, meta_json: str, labels: Optional[np.ndarray] = None):
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


def write_outputs(plan, items: list[tuple[int, np.ndarray]], meta: dict) -> dict:
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
    name, write_samples = samples_writer(args.format, x, idx, meta_json, labels)
    title = f"{args.sampler}, {args.steps} steps, {args.schedule}{', ODE' if args.ode else ''}, {args.precision}"
    if plan.labels is not None:
        title += f", labels {args.class_label}, guidance {args.guidance_scale:g}"
    write_png = None if args.no_png else picture_writer(x, plan.reference, int(args.grid), title, run_id)
    png = out / "samples.png"
    staged = []
    try:
        for path, write in ((out / name, write_samples), (png, write_png)):
            if write is not None:
                tmp = temporary_path(path)
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
    from ..runtime.checkpoint_io import fsync_dir

    fsync_dir(str(out))
    written = {"samples": str(out / name), "run_id": run_id}
    if write_png is not None:
        written["png"] = str(png)
    return written
