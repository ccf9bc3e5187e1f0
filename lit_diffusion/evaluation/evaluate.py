"""Score a set of samples against reference data (the command line, ``python -m lit_diffusion.evaluate``,
is :mod:`lit_diffusion.cli.evaluate`).

    python -m lit_diffusion.evaluate --samples S.npz --reference swissroll_2d        # analytic target
    python -m lit_diffusion.evaluate --samples S.npz --reference heldout.npz         # held-out data
    python -m lit_diffusion.evaluate --samples S.npz --reference swissroll           # train.py's default data
    python -m lit_diffusion.evaluate --samples S.npz --reference mnist --output scores.json

Sample files: ``.npz`` (array under ``--key``, else ``samples``, else the only array), ``.npy`` or
``.safetensors`` (same key rule).  Low-dimensional samples are ``(N, d)`` (``(N,)`` means d = 1);
images are ``(N, C, H, W)``, ``(N, H, W)`` or, with an image reference, ``(N, 784)``.

References: a file in the same formats; a target preset of :mod:`lit_diffusion.core.targets`
(``bimodal_1d``, ``ring8_2d``, ``swissroll_2d``, ``anisotropic_16d``: exact samples are drawn with
``--seed``, and the Gaussian-fit KL against the target's exact mean and covariance is added); or
``mnist`` / ``mnist-test`` (the 5,000 embedded digits / the 1,000 held out from the feature net).

Low-dimensional data get W1, sliced W2 and MMD² (see :mod:`lit_diffusion.evaluation.metrics`); images get FID
(Inception when local weights exist, else FID-MNIST, then also KID-MNIST and IS-MNIST with the same
offline feature network).  Every score carries its sample counts.
The result is printed as JSON and, with ``--output``, written to a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from . import metrics as M
from . import image_metrics as IM

__all__ = ["evaluate", "load_array", "REFERENCE_NAMES", "KINDS"]

KINDS = ("auto", "lowdim", "image")


def _target_names():
    from ..core.targets import PRESETS

    return sorted(PRESETS)


REFERENCE_NAMES = tuple(_target_names()) + ("swissroll",) + IM.IMAGE_REFERENCES


def load_array(path: Union[str, os.PathLike], key: Optional[str] = None) -> np.ndarray:
    """Load one array from ``.npz`` / ``.npy`` / ``.safetensors`` (never pickle).

    ``key``: the array's name; default ``samples`` if present, else the file's only array.
    Raises ``FileNotFoundError`` / ``ValueError`` naming the file and the available keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".safetensors"):
        raise ValueError(f"{str(path)!r}: unsupported file type {suffix!r}; valid choices: .npz, .npy, .safetensors")
    if suffix == ".npy" and key is not None:
        raise ValueError(f"key={key!r} given but {str(path)!r} is a .npy file holding a single array")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        else:
            from safetensors.numpy import load_file

            arrays = load_file(str(path))
    except Exception as e:  # corrupt file, pickled object array, ...
        raise ValueError(f"could not read {str(path)!r}: {type(e).__name__}: {e}") from e
    if key is not None:
        if key not in arrays:
            raise ValueError(f"{str(path)!r} has no array {key!r}; available keys: {sorted(arrays)}")
        return arrays[key]
    if "samples" in arrays:
        return arrays["samples"]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    raise ValueError(f"{str(path)!r} holds several arrays {sorted(arrays)}; choose one with key=/--key")


def _as_array(x, name: str, key: Optional[str]) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        return load_array(x, key)
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_image(shape, reference_is_mnist: bool) -> bool:
    return len(shape) >= 3 or (reference_is_mnist and len(shape) == 2 and shape[1] == 784)


def _resolve_reference(reference, n_reference, seed):
    """``(target, label, reference)``: an analytic target (or None), the reference's name in the
    output, and the reference itself (the swiss roll drawn here)."""
    target = None
    from ..core.targets import GaussianMixture

    if isinstance(reference, GaussianMixture):
        target, ref_label = reference, f"target:GaussianMixture(K={reference.num_components}, d={reference.dim})"
    elif isinstance(reference, str) and reference in _target_names():
        from ..core.targets import get_target

        target, ref_label = get_target(reference), f"target:{reference}"
    elif isinstance(reference, str) and reference in IM.IMAGE_REFERENCES:
        ref_label = reference
    elif isinstance(reference, str) and reference == "swissroll":
        # the data train.py's default learns (scikit-learn swiss roll, scale 1/7), a fresh seeded draw
        from ..core.targets import swiss_roll

        n_sr = n_reference or 2000
        ref_label = f"data:swissroll ({n_sr} points, seed {seed + 1})"
        reference = swiss_roll(n_sr, seed=seed + 1).numpy()
    elif isinstance(reference, (str, os.PathLike)):
        if not Path(reference).is_file():
            raise FileNotFoundError(
                f"reference {str(reference)!r} is neither an existing file nor one of {list(REFERENCE_NAMES)}"
            )
        ref_label = str(reference)
    else:
        ref_label = "array"

    return target, ref_label, reference


def _score_images(out, x, reference, target, mnist_ref, reference_key, fid_backend, value_range, seed) -> dict:
    if target is not None:
        raise ValueError(f"reference {reference!r} is a low-dimensional target but samples {x.shape} are images")
    ref = reference if mnist_ref else _as_array(reference, "reference", reference_key)
    if not mnist_ref and ref.shape[1:] != x.shape[1:]:
        raise ValueError(f"shape mismatch: samples {x.shape} vs reference {ref.shape} (per-sample shapes must match)")
    res = IM.fid(x, ref, backend=fid_backend, value_range=value_range)
    out["n_reference"] = res["n_reference"]
    out["fid"] = res
    if res["backend"] == "mnist":  # KID and IS with the same offline feature net
        out["kid"] = IM.kid_mnist(x, ref, value_range=value_range, seed=seed, subset_size=min(1000, len(x), res["n_reference"]))
        out["inception_score"] = IM.inception_score_mnist(x, value_range=value_range)
    return out



def evaluate(
    samples,
    reference,
    *,
    kind: str = "auto",
    key: Optional[str] = None,
    reference_key: Optional[str] = None,
    n_reference: Optional[int] = None,
    n_max: int = 1000,
    n_projections: int = 256,
    mmd_n_max: int = 2000,
    seed: int = 0,
    fid_backend: str = "auto",
    value_range="auto",
) -> dict:
    """Score ``samples`` against ``reference``; see the module docstring for the accepted inputs.

    Args:
        samples: array/tensor or a file path.
        reference: array/tensor, a file path, a target preset name, a
            :class:`~lit_diffusion.core.targets.GaussianMixture`, or ``'mnist'``/``'mnist-test'``.
        kind: ``'auto'`` (ndim >= 3, or 784 columns against an MNIST reference -> image), ``'lowdim'``,
            ``'image'``.
        n_reference: exact samples drawn from a target reference (default: as many as ``samples``).
        n_max: subset size for the exact-OT W1 (d > 1); ``mmd_n_max`` for MMD².
        n_projections, seed: sliced-W2 directions and all subsampling / target draws.
        fid_backend, value_range: see :func:`lit_diffusion.evaluation.image_metrics.fid`.

    Returns a JSON-serialisable dict: ``kind``, ``n_samples``, ``n_reference``, ``reference`` and one
    entry per metric, each with its own sample counts.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is invalid; valid choices: {list(KINDS)}")
    if n_reference is not None and (not isinstance(n_reference, int) or n_reference < 2):
        raise ValueError(f"n_reference={n_reference!r} must be an integer >= 2")
    if fid_backend not in IM.FID_BACKENDS:
        raise ValueError(f"fid_backend={fid_backend!r} is invalid; valid choices: {list(IM.FID_BACKENDS)}")

    target, ref_label, reference = _resolve_reference(reference, n_reference, seed)
    x = _as_array(samples, "samples", key)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"samples must be a numeric array; got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[0] < 2:
        raise ValueError(f"samples need at least 2 entries along the first axis; got shape {x.shape}")
    mnist_ref = ref_label in IM.IMAGE_REFERENCES
    if kind == "auto":
        kind = "image" if _is_image(x.shape, mnist_ref) else "lowdim"
    out = {"kind": kind, "reference": ref_label, "samples_shape": list(x.shape), "n_samples": int(x.shape[0])}

    if kind == "image":
        return _score_images(out, x, reference, target, mnist_ref, reference_key, fid_backend, value_range, seed)

    # ---- low-dimensional
    if mnist_ref:
        raise ValueError(f"reference {reference!r} holds images but samples {x.shape} were treated as low-dimensional; "
                         "pass images (N, 1, 28, 28) or kind='image'")
    xf = x.reshape(x.shape[0], -1).astype(np.float64) if x.ndim != 1 else x.astype(np.float64)[:, None]
    d = xf.shape[1]
    if target is not None:
        if target.dim != d:
            raise ValueError(f"shape mismatch: samples have dimension {d} (shape {x.shape}) but target "
                             f"{reference!r} has dimension {target.dim}")
        n_ref = n_reference or xf.shape[0]
        ref = target.sample(n_ref, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    else:
        ref = _as_array(reference, "reference", reference_key)
        ref_flat_shape = ref.shape[1:] if ref.ndim > 1 else ()
        x_shape = x.shape[1:] if x.ndim > 1 else ()
        if ref.ndim == 0 or ref_flat_shape != x_shape:
            raise ValueError(f"shape mismatch: samples {x.shape} vs reference {ref.shape} (per-sample shapes must match)")
        ref = ref.reshape(ref.shape[0], -1).astype(np.float64) if ref.ndim != 1 else ref.astype(np.float64)[:, None]
    out["dim"] = d
    out["n_reference"] = int(ref.shape[0])
    out["w1"] = M.wasserstein1(xf, ref, n_max=n_max, seed=seed)
    out["sliced_w2"] = M.sliced_wasserstein2(xf, ref, n_projections=n_projections, seed=seed)
    out["mmd2"] = M.mmd2(xf, ref, n_max=mmd_n_max, seed=seed)
    if target is not None and xf.shape[0] > d + 1:
        res = M.kl_gaussian_fit(xf, target.mean().numpy(), target.covariance().numpy())
        res["target_is_gaussian"] = target.num_components == 1
        res["note"] = ("exact-Gaussian target: KL of the Gaussian fit" if target.num_components == 1 else
                       "mixture target: compares only mean and covariance (KL between Gaussians with the "
                       "samples' and the target's first two moments); 'floor' assumes Gaussian samples and is "
                       "only indicative here")
        out["kl_gaussian_fit"] = res
    return out
