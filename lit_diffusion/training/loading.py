"""How a :class:`~lit_diffusion.training.module.ScoreModule` is rebuilt from disk, as data only: from a
checkpoint of either launcher (``torch.load(weights_only=True)``), Lightning's loader routed through the
registry, a pretrained-model folder (safetensors + JSON), or any of them by path (:meth:`LoadingMixin.load`).
Every hyper-parameter is checked by the registry before anything is built."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # (annotations only: the module imports this one)
    from .module import ScoreModule

__all__ = ["LoadingMixin"]


class LoadingMixin:
    """The loaders of :class:`~lit_diffusion.training.module.ScoreModule` (class methods)."""

    @classmethod
    def load_checkpoint(cls, path: str, map_location="cpu") -> "ScoreModule":
        """Rebuild a module from a checkpoint written by the Trainer, loading it with
        ``torch.load(weights_only=True)`` (a crafted pickle is refused)."""
        from ..runtime.checkpoint_io import CheckpointError, read_checkpoint

        ckpt = read_checkpoint(path, map_location=map_location, require=("state_dict", "hyper_parameters"))
        try:
            module = cls.from_checkpoint_dict(ckpt, where=repr(str(path)))
        except CheckpointError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"checkpoint {str(path)!r} could not be rebuilt as a ScoreModule: {type(e).__name__}: {e}") from e
        module.checkpoint_info = {"global_step": int(ckpt.get("global_step", -1))}
        return module

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only=None, **kwargs) -> "ScoreModule":
        """Lightning's loader, routed through the registry: the file is read with
        ``torch.load(weights_only=True)`` and the module rebuilt from its checked hyper-parameters,
        exactly as :meth:`load_checkpoint`.  Lightning's own path would rebuild the module through
        jsonargparse (the ``_instantiator`` that ``LightningCLI`` stores), which imports and builds any
        ``class_path`` a crafted file names; here ``_instantiator`` and ``_class_path`` are ignored.
        ``kwargs`` override hyper-parameters (objects given in code are trusted: they are code)."""
        from ..runtime.checkpoint_io import CheckpointError, read_checkpoint

        if weights_only is False:
            raise ValueError("ScoreModule.load_from_checkpoint: weights_only=False is refused; checkpoints are read as data only")
        if hparams_file is not None:
            raise ValueError("ScoreModule.load_from_checkpoint: hparams_file is not supported; the checkpoint holds its hyper-parameters")
        if not isinstance(checkpoint_path, (str, os.PathLike)):
            raise TypeError(f"ScoreModule.load_from_checkpoint: give a checkpoint path; got {type(checkpoint_path).__name__}")
        ckpt = read_checkpoint(checkpoint_path, map_location=map_location or "cpu", require=("state_dict", "hyper_parameters"))
        module = cls.from_checkpoint_dict(ckpt, where=repr(str(checkpoint_path)), overrides=kwargs,
                                          strict=True if strict is None else bool(strict))
        if not isinstance(module, cls):  # pragma: no cover - from_checkpoint_dict builds cls
            raise CheckpointError(f"{checkpoint_path!r}: not a ScoreModule checkpoint")
        return module

    @classmethod
    def from_pretrained(cls, folder, map_location="cpu") -> "ScoreModule":
        """The module of a pretrained-model folder (``model.safetensors`` + ``config.json``, e.g.
        ``checkpoints/mnist``; see :mod:`lit_diffusion.training.pretrained`). No pickle is read; the
        description is checked by the registry before anything is built."""
        from ..runtime.checkpoint_io import CheckpointError
        from .pretrained import read_pretrained
        from .registry import UntrustedConfigError

        folder_data = read_pretrained(folder, map_location=map_location)
        try:
            hp = cls.check_hparams(folder_data.hyper_parameters, where=repr(folder_data.config_path))
        except UntrustedConfigError as e:
            raise CheckpointError(str(e)) from None
        hp["ema_decay"] = 0.0
        module = cls(**hp)
        try:
            module.net.load_state_dict(folder_data.state)
        except RuntimeError as e:
            raise CheckpointError(f"{folder_data.weights_path!r} does not fit the network of its config: {e}") from None
        if folder_data.data_shape is not None:
            module.data_shape = folder_data.data_shape
        module.pretrained_info = folder_data.info
        return module.eval()

    @classmethod
    def load(cls, path, map_location="cpu") -> "ScoreModule":
        """The one loader of a model on disk: a pretrained-model folder (:meth:`from_pretrained`) or a
        checkpoint file written by either launcher (:meth:`load_checkpoint`), in eval mode."""
        from .pretrained import is_pretrained_folder

        if is_pretrained_folder(path):
            return cls.from_pretrained(path, map_location=map_location)
        return cls.load_checkpoint(str(path), map_location=map_location).eval()

    @classmethod
    def from_checkpoint_dict(cls, ckpt: dict, where: str = "checkpoint", overrides: Optional[dict] = None,
                             strict: bool = True) -> "ScoreModule":
        """Rebuild from a loaded checkpoint dictionary: every hyper-parameter is checked by the
        registry (:func:`check_hparams`) before anything is built (``overrides``, given in code, win)."""
        from ..runtime.checkpoint_io import CheckpointError
        from .registry import UntrustedConfigError

        try:
            hp = cls.check_hparams(dict(ckpt.get("hyper_parameters") or {}), where=where)
        except UntrustedConfigError as e:
            raise CheckpointError(str(e)) from None
        module = cls(**{**hp, **dict(overrides or {})})
        try:
            module.load_state_dict(ckpt["state_dict"], strict=strict)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: the weights do not fit the model the checkpoint describes: {e}") from None
        shape = ckpt.get("data_shape")
        if shape is not None and module.data_shape is None:
            module.data_shape = tuple(int(s) for s in shape)
        return module


    @classmethod
    def check_hparams(cls, hp: dict, where: str = "checkpoint") -> dict:
        """Validate the hyper-parameters of a checkpoint before anything is built: JSON data only, keys
        that the module's constructor accepts, and registered ``net``/``sde``/``loss`` descriptions.  Raises
        :class:`lit_diffusion.training.registry.UntrustedConfigError` naming the offending entry."""
        from .registry import UntrustedConfigError, check_description, check_plain

        if not isinstance(hp, dict):
            raise UntrustedConfigError(f"{where}: hyper_parameters must be a dictionary; got {type(hp).__name__}")
        hp = {k: v for k, v in hp.items() if k not in ("_instantiator", "_class_path")}
        valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for k, v in hp.items():
            if k not in valid:
                raise UntrustedConfigError(
                    f"{where}: hyper_parameters has an unknown entry {k!r}; the checkpoint is not trusted. "
                    f"Valid entries: {sorted(valid)}"
                )
            check_plain(v, f"{where}.hyper_parameters.{k}")
        for k in ("net", "sde", "loss"):
            if hp.get(k) is not None:
                check_description(hp[k], k, f"{where}.hyper_parameters.{k}")
        return hp
