"""The files a saved :class:`~lit_diffusion.integrations.scheduler.SDEScheduler` keeps beside its config.

A Gaussian start (``gaussian_start``) needs the data's moments, a safetensors file too large for the
JSON config.  ``save_pretrained`` writes them as ``data_moments.safetensors`` in the scheduler folder
and saves the key as that bare file name; ``from_pretrained`` resolves a bare name against the folder it
reads, or fetches it beside the config of a Hub repository, so a pipeline folder that is moved, copied or
shared keeps its Gaussian start (paths in the config otherwise stay as given).  ``gaussian_start_steps``
limits the start to runs of at most that many steps (the rule measured on the shipped model,
docs/samplers.md "The Gaussian start"): longer runs start from the prior at ``T``.  The file is data, read
with safetensors and checked, never code.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from ..runtime.checkpoint_io import atomic_write_bytes

__all__ = ["ModelFiles", "check_gaussian_start_steps", "saved_moments"]


def _bare_name(value) -> bool:
    """Whether a ``gaussian_start`` value names a file of the scheduler folder itself."""
    return isinstance(value, str) and value not in ("", ".", "..") and os.path.basename(value) == value and "\\" not in value


def check_gaussian_start_steps(steps) -> Optional[int]:
    """The ``gaussian_start_steps`` config key: None (every run) or an integer >= 1 (no effect without
    ``gaussian_start``, so that ``from_config(config, gaussian_start=None)`` drops a saved start)."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"gaussian_start_steps={steps!r} is invalid; it must be an integer >= 1 (the longest run, in "
                         "steps, that starts from the Gaussian) or None (every run)")
    return int(steps)


def saved_moments(folder, value):
    """The moments file a saved ``gaussian_start`` value names: a bare file name is read from the scheduler
    folder ``folder`` (a ``ValueError`` when it is not there); other values are returned as they are."""
    if not _bare_name(value):
        return value
    path = os.path.join(os.fspath(folder), value)
    if not os.path.isfile(path):
        raise ValueError(f"the scheduler config in {os.fspath(folder)!r} names the moments file {value!r} (gaussian_start), "
                         "which is not in that folder")
    return os.path.abspath(path)


class ModelFiles:
    """The ``from_pretrained`` / ``save_pretrained`` half of ``SDEScheduler`` that carries the moments file,
    and the Gaussian start of one run (a mixin: it reads ``config`` and ``_gstart_loaded``)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, subfolder: Optional[str] = None, **kwargs):
        """diffusers' ``from_pretrained``; a ``gaussian_start`` saved as a bare file name is read from the
        folder being loaded, or fetched beside the config when that is a Hub repository (unless
        ``gaussian_start=`` is passed here)."""
        if "gaussian_start" not in kwargs and pretrained_model_name_or_path is not None:
            start = _saved_start(cls, os.fspath(pretrained_model_name_or_path), subfolder, kwargs)
            if start is not None:
                kwargs["gaussian_start"] = start
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' ``save_pretrained``, then the Gaussian start's moments written beside the config
        (``data_moments.safetensors``) and its key saved as that bare name: the folder is self-contained."""
        if self._gstart_loaded is not None and push_to_hub:  # (the upload would miss the moments file)
            raise ValueError("save_pretrained(push_to_hub=True) with a Gaussian start: save the folder locally, then "
                             "upload it as a whole (its data_moments.safetensors beside the config)")
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        if self._gstart_loaded is None:
            return
        from ..sampling.gaussian_start import MOMENTS_FILE

        atomic_write_bytes(self._gstart_loaded.to_bytes(), os.path.join(os.fspath(save_directory), MOMENTS_FILE))
        config_path = os.path.join(os.fspath(save_directory), self.config_name)
        with open(config_path) as fh:
            config = json.load(fh)
        config["gaussian_start"] = MOMENTS_FILE
        atomic_write_bytes((json.dumps(config, indent=2, sort_keys=True) + "\n").encode(), config_path)

    def _start_of_run(self, steps: int):
        """The Gaussian start of a run of ``steps`` steps: the configured one up to ``gaussian_start_steps``."""
        limit = self.config.get("gaussian_start_steps")
        return self._gstart_loaded if limit is None or int(steps) <= int(limit) else None


#: the ``from_pretrained`` options that also apply to fetching the moments file from the Hub
_HUB_OPTIONS = ("cache_dir", "force_download", "token", "local_files_only", "revision")


def _saved_start(cls, where: str, subfolder: Optional[str], kwargs: dict):
    """The moments file that the scheduler config at ``where`` (a folder, or a Hub repository id) names by
    a bare file name, as a local path; None when it names none, or when the config cannot be read (then
    diffusers' ``from_pretrained`` reports why).  From the Hub the file comes through the Hub's cache, with
    the same revision, token and offline options as the config."""
    if os.path.isdir(where):
        folder = os.path.join(where, subfolder or "")
        name = _saved_key(os.path.join(folder, cls.config_name), "gaussian_start")
        return None if name is None else saved_moments(folder, name)
    if os.path.isfile(where):
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    hub = {k: kwargs[k] for k in _HUB_OPTIONS if k in kwargs}
    try:
        config = cls.load_config(where, subfolder=subfolder, **hub)
    except (OSError, ValueError):
        return None
    name = config.get("gaussian_start") if isinstance(config, dict) else None
    if not _bare_name(name):
        return None
    try:
        return hf_hub_download(where, name, subfolder=subfolder, **hub)
    except (OSError, EntryNotFoundError) as err:
        raise ValueError(f"the scheduler config of the Hub repository {where!r} (subfolder {subfolder!r}) names the moments "
                         f"file {name!r} (gaussian_start), which could not be fetched beside it: {err}") from err


def _saved_key(config_path: str, key: str):
    """``key`` of a saved scheduler config (None when the file or the key is missing; diffusers reports bad files)."""
    try:
        with open(config_path) as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return None
    return config.get(key) if isinstance(config, dict) else None
