"""``python -m lit_diffusion.evaluate``: score samples against reference data, or the bits per
dimension of a model on held-out digits (``--metric bpd``); the scoring itself is
:func:`lit_diffusion.evaluation.evaluate.evaluate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..evaluation import image_metrics as IM
from ..evaluation.evaluate import KINDS, REFERENCE_NAMES, evaluate

__all__ = ["main", "heldout_mnist_uint8"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m lit_diffusion.evaluate",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="References by name: " + ", ".join(REFERENCE_NAMES),
    )
    p.add_argument("--samples", default=None, help="samples file (.npz/.npy/.safetensors)")
    p.add_argument("--reference", default=None, help="reference file, target preset name, 'mnist' or 'mnist-test'")
    p.add_argument("--metric", default=None, choices=["bpd"],
                   help="bpd: bits per dimension of held-out MNIST digits under -c's model (one JSON line)")
    p.add_argument("-c", "--checkpoint", default=None, help="--metric bpd: a pretrained folder or checkpoint")
    p.add_argument("--n", type=int, default=500, help="--metric bpd: held-out digits (the model's validation split)")
    p.add_argument("--n-probes", type=int, default=1, help="--metric bpd: Hutchinson probes per digit")
    p.add_argument("--rtol", type=float, default=1e-5, help="--metric bpd: dopri5 tolerances (rtol = atol)")
    p.add_argument("--bound", default="ode", choices=["ode", "vlb"],
                   help="--metric bpd: ode (the probability-flow ODE, uniform dequantization) or vlb (the "
                        "variational bound of Ho et al. on the 8-bit values, --steps steps)")
    p.add_argument("--steps", type=int, default=1000, help="--metric bpd --bound vlb: steps of the bound's log-SNR grid")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--key", default=None, help="array name in the samples file (default: 'samples' or the only one)")
    p.add_argument("--reference-key", default=None, help="array name in the reference file")
    p.add_argument("--kind", default="auto", choices=KINDS)
    p.add_argument("--n-reference", type=int, default=None, help="exact samples drawn from a target reference")
    p.add_argument("--n-max", type=int, default=1000, help="subset size for exact-OT W1 in d > 1")
    p.add_argument("--mmd-n-max", type=int, default=2000, help="subset size for MMD^2")
    p.add_argument("--n-projections", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fid-backend", default="auto", choices=IM.FID_BACKENDS)
    p.add_argument("--value-range", default="auto", help="image value range: auto, 0,1, -1,1 or 0,255")
    p.add_argument("--output", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.metric == "bpd":
        return _bpd_main(a)
    if a.samples is None or a.reference is None:
        p.error("--samples and --reference are required (or --metric bpd with -c)")
    try:
        res = evaluate(
            a.samples, a.reference, kind=a.kind, key=a.key, reference_key=a.reference_key,
            n_reference=a.n_reference, n_max=a.n_max, n_projections=a.n_projections, mmd_n_max=a.mmd_n_max,
            seed=a.seed, fid_backend=a.fid_backend, value_range=a.value_range,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(res, indent=2)
    _emit(text, a.output)
    return 0


def _emit(text: str, output) -> None:
    """Print the result, and write it to ``--output`` as well when given."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(text + "\n")
    print(text, flush=True)


def heldout_mnist_uint8(n: int) -> "torch.Tensor":
    """The first ``n`` digits of the MNIST data module's held-out split (the digits ``train.py`` never
    trains on), as 8-bit values ``(n, 1, 28, 28)``."""
    from ..training.image_data import MNISTDataModule

    dm = MNISTDataModule(labels=False)
    dm.setup("fit")
    x = torch.cat([b[0] if isinstance(b, (list, tuple)) else b for b in dm.val_dataloader()])[:n]
    if x.shape[0] < n:
        raise ValueError(f"--n {n}: the held-out split has {x.shape[0]} digits")
    return ((x.float() + 1) / 2 * 255).round().clamp(0, 255)


def _bpd_main(a) -> int:
    import time

    from ..evaluation.likelihood import bits_per_dim
    from ..evaluation.variational_bound import variational_bpd
    from ..training.module import ScoreModule

    if a.checkpoint is None:
        print("error: --metric bpd needs -c/--checkpoint (a pretrained folder or a checkpoint)", file=sys.stderr)
        return 2
    try:
        from ..core.utils import check_count

        check_count("--n", a.n, 1, 100_000)
        check_count("--n-probes", a.n_probes, 1, 1000)
        images = heldout_mnist_uint8(a.n)
        model = ScoreModule.load(a.checkpoint)
        gen = torch.Generator().manual_seed(a.seed)
        t0 = time.perf_counter()
        if a.bound == "vlb":
            res = variational_bpd(model, images, steps=a.steps, generator=gen, batch_size=a.batch_size)
            how = {"bound": "vlb", "steps": a.steps, "terms": res["terms"]}
        else:
            res = bits_per_dim(model, images, n_probes=a.n_probes, rtol=a.rtol, atol=a.rtol, generator=gen,
                               batch_size=a.batch_size)
            how = {"bound": "ode", "n_probes": a.n_probes, "rtol": a.rtol, "dequantization": "uniform"}
    except (FileNotFoundError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = {"metric": "bpd", "bpd": res["bpd"], "bpd_se": res["bpd_se"], "n": a.n, **how, "checkpoint": str(a.checkpoint),
           "data": "MNIST held-out split (MNISTDataModule validation)", "seconds": round(time.perf_counter() - t0, 1)}
    _emit(json.dumps(out), a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
