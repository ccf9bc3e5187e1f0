"""lit_diffusion: score-based diffusion models with PyTorch Lightning."""

from .core.sdes import OU, VE, VP, SubVP, ContractiveOU, ContractiveVP, LinearSDE, get_sde
from .core.parametrizations import PREDICTION_TYPES, convert
from .core.fields import Field, as_field
from .core.targets import GaussianMixture, get_target

__version__ = "0.1.0"

_LAZY = {
    "DSM": ("lit_diffusion.training.losses", "DSM"),
    "ESM": ("lit_diffusion.training.losses", "ESM"),
    "ISM": ("lit_diffusion.training.losses", "ISM"),
    "SSM": ("lit_diffusion.training.losses", "SSM"),
    "get_loss": ("lit_diffusion.training.losses", "get_loss"),
    "SDEScheduler": ("lit_diffusion.integrations.scheduler", "SDEScheduler"),
    "DiscreteVP": ("lit_diffusion.core.discrete_vp", "DiscreteVP"),
    "ScoreModule": ("lit_diffusion.training.module", "ScoreModule"),
    "sample": ("lit_diffusion.sampling.samplers", "sample"),
    "TimeMLP": ("lit_diffusion.training.networks", "TimeMLP"),
    "UNet": ("lit_diffusion.training.networks", "UNet"),
    "export_pipeline": ("lit_diffusion.integrations.export", "export_pipeline"),
    "LitDiffusionPipeline": ("lit_diffusion.integrations.pipelines", "LitDiffusionPipeline"),
}


def __getattr__(name):
    """Heavy parts (the training layer, Lightning, diffusers) are imported on first use."""
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
    "LitDiffusionPipeline",
]
