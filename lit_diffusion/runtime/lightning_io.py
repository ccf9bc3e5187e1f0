"""The Lightning side of the crash-safe checkpoint files of :mod:`.checkpoint_io` (kept apart so that
loading and sampling never import Lightning)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .checkpoint_io import is_local_path, atomic_torch_save, read_checkpoint

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, fsync'ed local saves; ``weights_only=True`` loads by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not is_local_path(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        if (weights_only is None or weights_only) and is_local_path(path):
            return read_checkpoint(path, map_location=map_location, require=())
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
