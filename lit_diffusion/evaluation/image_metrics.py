"""Image metrics: FID (Inception with local weights, else the offline MNIST feature network), KID-MNIST
and IS-MNIST through torchmetrics (see :mod:`lit_diffusion.evaluation.metrics` for the conventions)."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from .metrics import INCEPTION_ENV, INCEPTION_FILENAME, ArrayLike, frechet_distance  # noqa: F401

# ------------------------------------------------------------------------------------------------
# FID
# ------------------------------------------------------------------------------------------------
def inception_status() -> dict:
    """Whether Inception FID can run **offline**, decided without any network access.

    Needs (1) the ``torch-fidelity`` package (torchmetrics' Inception wrapper) and (2) the FID
    Inception weights as a local file: ``$LIT_DIFFUSION_INCEPTION_WEIGHTS`` if set (and then only that
    path), else ``<torch.hub.get_dir()>/checkpoints/weights-inception-2015-12-05-6726825d.pth`` (where
    torch-fidelity caches its download).  Returns ``{"available", "path", "reason"}``.
    """
    env = os.environ.get(INCEPTION_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            return {"available": False, "path": str(path), "reason": f"{INCEPTION_ENV}={env!r} is not an existing file"}
    else:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME
        if not path.is_file():
            return {
                "available": False,
                "path": str(path),
                "reason": f"no Inception weights at {str(path)!r} and {INCEPTION_ENV} is not set",
            }
    if importlib.util.find_spec("torch_fidelity") is None:
        return {"available": False, "path": str(path), "reason": "the torch-fidelity package is not installed"}
    return {"available": True, "path": str(path), "reason": "local Inception weights found"}


FID_BACKENDS = ("auto", "inception", "mnist")


def select_fid_backend(backend: str = "auto") -> tuple[str, dict]:
    """``'auto'`` -> ``'inception'`` when :func:`inception_status` says available, else ``'mnist'``.
    An explicit ``'inception'`` that is not available raises ``RuntimeError`` with the reason."""
    if backend not in FID_BACKENDS:
        raise ValueError(f"fid backend={backend!r} is invalid; valid choices: {list(FID_BACKENDS)}")
    status = inception_status()
    if backend == "inception" and not status["available"]:
        raise RuntimeError(f"Inception FID requested but unavailable offline: {status['reason']}")
    if backend == "auto":
        backend = "inception" if status["available"] else "mnist"
    return backend, status


@lru_cache(maxsize=4)
def mnist_reference(name: str) -> np.ndarray:
    from .feature_net import mnist_digits, mnist_split

    if name == "mnist":
        return mnist_digits()[0]
    if name == "mnist-test":
        return mnist_split()[2]
    raise ValueError(f"unknown image reference {name!r}; valid choices: ['mnist', 'mnist-test'] or an array")


IMAGE_REFERENCES = ("mnist", "mnist-test")


def images_nchw(x: ArrayLike, value_range, name: str) -> torch.Tensor:
    from .feature_net import to_unit_images

    x = to_unit_images(x, value_range)
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 1, 28, 28)
    elif x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be images (N, C, H, W) with C in (1, 3), (N, H, W) or (N, 784); got {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 images; got {x.shape[0]}")
    return x.contiguous()


def fid(
    samples: ArrayLike,
    reference: Union[str, ArrayLike] = "mnist",
    *,
    backend: str = "auto",
    value_range="auto",
    batch_size: int = 500,
    weights: Optional[Union[str, os.PathLike]] = None,
) -> dict:
    """FID between image ``samples`` and ``reference`` through torchmetrics'
    ``FrechetInceptionDistance``.

    ``reference``: an image array, or ``'mnist'`` (all 5,000 embedded digits) / ``'mnist-test'`` (the
    1,000 digits held out from the feature net's training).  ``backend``: ``'auto'`` (Inception if
    :func:`inception_status` finds local weights, else the MNIST feature net), ``'inception'``,
    ``'mnist'`` (``weights`` overrides the checked-in feature-net file).  Images may be ``[0,1]``,
    ``[-1,1]`` or ``[0,255]`` (see :func:`~lit_diffusion.evaluation.feature_net.to_unit_images`).
    Returns ``value``, ``metric`` (``'FID-Inception'`` or ``'FID-MNIST'`` — the two are **not**
    comparable), ``backend``, ``n_samples``, ``n_reference``, ``feature_dim`` and, when Inception was
    not used, ``inception_unavailable`` (the reason).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    chosen, status = select_fid_backend(backend)
    ref_name = reference if isinstance(reference, str) else None
    if ref_name is not None:
        reference = mnist_reference(ref_name)
    x = images_nchw(samples, value_range, "samples")
    if chosen == "mnist" and x.shape[1:] != (1, 28, 28):
        raise ValueError(
            f"the MNIST feature net needs 1x28x28 images; got {tuple(x.shape[1:])} "
            f"(Inception FID is unavailable: {status['reason']})"
        )
    y = images_nchw(reference, "auto" if ref_name else value_range, "reference")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"samples {tuple(x.shape[1:])} and reference {tuple(y.shape[1:])} have different image shapes")

    if chosen == "mnist":
        from .feature_net import load_feature_net

        net = load_feature_net(weights)
        metric = FrechetInceptionDistance(feature=net, normalize=True, input_img_size=(1, 28, 28))
        name, dim = "FID-MNIST", net.num_features
    else:  # pragma: no cover - needs torch-fidelity and the Inception weights
        metric = FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=status["path"]
        )
        x, y = (v.expand(-1, 3, -1, -1) if v.shape[1] == 1 else v for v in (x, y))
        name, dim = "FID-Inception", 2048
    with torch.no_grad():
        for i in range(0, len(y), batch_size):
            metric.update(y[i : i + batch_size], real=True)
        for i in range(0, len(x), batch_size):
            metric.update(x[i : i + batch_size], real=False)
        value = float(metric.compute())
    out = {
        "value": value,
        "metric": name,
        "backend": chosen,
        "n_samples": int(len(x)),
        "n_reference": int(len(y)),
        "feature_dim": int(dim),
        "reference": ref_name if ref_name else "array",
    }
    if chosen != "inception":
        out["inception_unavailable"] = status["reason"]
    return out


class _Logits(torch.nn.Module):
    """The MNIST feature net's class logits (the "Inception" of an MNIST Inception Score)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.classify(x)


def _mnist_images(samples, value_range, name: str) -> torch.Tensor:
    """Images in ``[0, 1]``, shape ``(N, 1, 28, 28)``."""
    x = images_nchw(samples, value_range, name)
    if x.shape[1:] != (1, 28, 28):
        raise ValueError(f"the MNIST feature net needs 1x28x28 images; {name} have shape {tuple(x.shape[1:])}")
    return x.float()


def kid_mnist(
    samples: ArrayLike, reference: Union[str, ArrayLike] = "mnist", *, value_range="auto", subsets: int = 50,
    subset_size: Optional[int] = None, seed: int = 0, weights=None,
) -> dict:
    """KID-MNIST: torchmetrics' ``KernelInceptionDistance`` (Bińkowski et al., "Demystifying MMD
    GANs": the unbiased MMD² with the cubic polynomial kernel, averaged over random subsets) on the
    features of the offline MNIST feature net.  Unbiased, so usable with few samples; returns the
    mean and standard deviation over ``subsets``."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from .feature_net import load_feature_net

    ref_name = reference if isinstance(reference, str) else None
    if ref_name is not None:
        reference = mnist_reference(ref_name)
    x = _mnist_images(samples, value_range, "samples")
    y = _mnist_images(reference, "auto" if ref_name else value_range, "reference")
    size = int(subset_size or min(len(x), len(y), 1000))
    if size > min(len(x), len(y)) or size < 2:
        raise ValueError(f"subset_size={size} must lie in [2, {min(len(x), len(y))}] (the smaller of the two sets)")
    torch.manual_seed(seed)  # torchmetrics draws its subsets from the global RNG
    metric = KernelInceptionDistance(feature=load_feature_net(weights), subsets=subsets, subset_size=size, normalize=True)
    with torch.no_grad():
        metric.update(y, real=True)
        metric.update(x, real=False)
        mean, std = metric.compute()
    return {"value": float(mean), "std": float(std), "metric": "KID-MNIST", "n_samples": int(len(x)),
            "n_reference": int(len(y)), "subsets": int(subsets), "subset_size": size,
            "reference": ref_name if ref_name else "array"}


def inception_score_mnist(samples: ArrayLike, *, value_range="auto", splits: int = 10, weights=None) -> dict:
    """IS-MNIST: torchmetrics' ``InceptionScore`` (Salimans et al., "Improved Techniques for Training
    GANs": ``exp E KL(p(y|x) || p(y))``) with the MNIST feature net's digit classifier in place of
    Inception.  At most 10 (the number of classes): high when samples are confidently classified and
    all digits appear."""
    from torchmetrics.image.inception import InceptionScore

    from .feature_net import load_feature_net

    x = _mnist_images(samples, value_range, "samples")
    metric = InceptionScore(feature=_Logits(load_feature_net(weights)).eval(), splits=splits, normalize=False)
    with torch.no_grad():
        metric.update(x)
        mean, std = metric.compute()
    return {"value": float(mean), "std": float(std), "metric": "IS-MNIST", "n_samples": int(len(x)), "splits": int(splits)}
