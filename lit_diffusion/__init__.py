"""lit_diffusion: score-based diffusion models with PyTorch Lightning."""

from .sdes import OU, VE, VP, SubVP, ContractiveOU, ContractiveVP, LinearSDE, get_sde
from .parametrizations import PREDICTION_TYPES, convert
from .fields import Field, as_field
from .targets import GaussianMixture, get_target
from .losses import DSM, ESM, ISM, SSM, get_loss

__version__ = "0.1.0"

_LAZY = {
    "SDEScheduler": ("lit_diffusion.scheduler", "SDEScheduler"),
    "DiscreteVP": ("lit_diffusion.discrete_vp", "DiscreteVP"),
    "ScoreModule": ("lit_diffusion.module", "ScoreModule"),
    "sample": ("lit_diffusion.samplers", "sample"),
    "TimeMLP": ("lit_diffusion.networks", "TimeMLP"),
    "UNet": ("lit_diffusion.networks", "UNet"),
    "export_pipeline": ("lit_diffusion.export", "export_pipeline"),
}


def __getattr__(name):
    """Heavy parts (diffusers, Lightning) are imported on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'lit_diffusion' has no attribute {name!r}")


__all__ = [
    "OU", "VE", "VP", "SubVP", "ContractiveOU", "ContractiveVP", "LinearSDE", "get_sde",
    "PREDICTION_TYPES", "convert", "Field", "as_field", "GaussianMixture", "get_target",
    "DSM", "SSM", "ISM", "ESM", "get_loss",
    "SDEScheduler", "DiscreteVP", "ScoreModule", "sample", "TimeMLP", "UNet", "export_pipeline",
]
