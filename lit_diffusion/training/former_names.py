"""The package's former module names, as data: before the package was split into layer folders every
module lived at the top (``lit_diffusion.sdes``).  Checkpoints and configs of that layout name classes
by those paths; :data:`FORMER_MODULES` maps each former module to its home now and
:func:`current_path` translates a class path (the registry accepts the former paths as aliases, and
``train.py`` reads configs with them translated, with a warning)."""

from __future__ import annotations

import importlib

__all__ = ["FORMER_MODULES", "current_path"]


# former top-level module -> its module(s) now (the names checkpoints and configs of the first version used)
FORMER_MODULES = {
    f"lit_diffusion.{old}": tuple(f"lit_diffusion.{n}" for n in ((new,) if isinstance(new, str) else new))
    for old, new in {
        "sdes": "core.sdes", "discrete_vp": "core.discrete_vp", "fields": "core.fields",
        "parametrizations": "core.parametrizations", "schedules": "core.schedules", "targets": "core.targets",
        "utils": "core.utils", "affine_plan": "sampling.affine_plan", "integrators": "sampling.integrators",
        "inpainting": "sampling.inpainting", "samplers": "sampling.samplers", "metrics": "evaluation.metrics",
        "feature_net": "evaluation.feature_net", "evaluate": "evaluation.evaluate",
        "checkpoint_io": ("runtime.checkpoint_io", "runtime.lightning_io"), "pictures": "runtime.pictures", "reliability": "runtime.reliability",
        "run_lock": "runtime.run_lock", "autoencoder": "training.autoencoder", "callbacks": "training.callbacks",
        "data": ("training.data", "training.image_data"), "ema": "training.ema", "losses": "training.losses", "module": "training.module",
        "networks": "training.networks", "pretrained": "training.pretrained", "registry": "training.registry",
        "export": "integrations.export", "pipelines": "integrations.pipelines", "scheduler": "integrations.scheduler",
        "accelerate_train": "cli.accelerate_train", "demo": "cli.demo", "sampling_cli": "cli.sample",
    }.items()
}


def current_path(class_path: str) -> str:
    """``class_path`` with a former module name replaced by the module's home now
    (``"lit_diffusion.sdes.VP"`` -> ``"lit_diffusion.core.sdes.VP"``); any other path unchanged."""
    if isinstance(class_path, str) and "." in class_path:
        module, _, name = class_path.rpartition(".")
        homes = FORMER_MODULES.get(module, ())
        for home in homes:  # a former module split in two: the one that holds the name
            if len(homes) == 1 or hasattr(importlib.import_module(home), name):
                return f"{home}.{name}"
    return class_path
