"""Test-wide settings: caches and loggers stay inside /tmp, wandb is offline, torch uses few threads."""

import os
import tempfile

_CACHE = os.path.join(tempfile.gettempdir(), "lit_diffusion_test_cache")
os.makedirs(_CACHE, exist_ok=True)
for key, sub in [("WANDB_DIR", "wandb"), ("MPLCONFIGDIR", "mpl"), ("HF_HOME", "hf"), ("TORCH_HOME", "torch")]:
    os.environ.setdefault(key, os.path.join(_CACHE, sub))
    os.makedirs(os.environ[key], exist_ok=True)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# small tensors: one intra-op thread is faster than two on the 2-core CI machine (and than an
# oversubscribed pool when several test processes run at once)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts with one intra-op thread, whatever an earlier test set."""
    torch.set_num_threads(1)
    yield


@pytest.fixture
def gen():
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    """A real (tiny) ScoreModule checkpoint: 5 Lightning steps on the swiss roll, VP, EMA."""
    import lightning.pytorch as pl

    from lit_diffusion.core.targets import swiss_roll
    from lit_diffusion.training.data import TensorDataModule
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP

    torch.manual_seed(0)
    module = ScoreModule(net=TimeMLP(dim=2, hidden=16, n_blocks=1), sde="VP", warmup_steps=1, ema_decay=0.9)
    trainer = pl.Trainer(
        max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )
    trainer.fit(module, TensorDataModule(swiss_roll(256), batch_size=64, val_fraction=0.0))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    trainer.save_checkpoint(str(path))
    return path
