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
    "GaussianStart": ("lit_diffusion.sampling.gaussian_start", "GaussianStart"),
    "TimeMLP": ("lit_diffusion.training.networks", "TimeMLP"),
    "UNet": ("lit_diffusion.training.networks", "UNet"),
    "export_pipeline": ("lit_diffusion.integrations.export", "export_pipeline"),
    "LitDiffusionPipeline": ("lit_diffusion.integrations.pipelines", "LitDiffusionPipeline"),
}


#: functions of a model that also take a model on disk here: ``lit_diffusion.log_likelihood("checkpoints/mnist",
#: x)`` loads the folder (or checkpoint) with ``ScoreModule.load`` first; the layer functions take objects
_MODEL_FUNCTIONS = {
    "log_likelihood": "lit_diffusion.evaluation.likelihood",
    "bits_per_dim": "lit_diffusion.evaluation.likelihood",
    "variational_bpd": "lit_diffusion.evaluation.variational_bound",
    "encode": "lit_diffusion.sampling.inversion",
    "decode": "lit_diffusion.sampling.inversion",
}


def _taking_paths(name: str):
    import functools
    import importlib

    target = getattr(importlib.import_module(_MODEL_FUNCTIONS[name]), name)

    @functools.wraps(target)
    def call(model, *args, **kwargs):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from .training.module import ScoreModule

            model = ScoreModule.load(model)
        return target(model, *args, **kwargs)

    return call


def __getattr__(name):
    """Heavy parts (the training layer, Lightning, diffusers) are imported on first use."""
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    if name in _MODEL_FUNCTIONS:
        return _taking_paths(name)
    raise AttributeError(f"module 'lit_diffusion' has no attribute {name!r}")


__all__ = [
    "OU", "VE", "VP", "SubVP", "ContractiveOU", "ContractiveVP", "LinearSDE", "get_sde",
    "PREDICTION_TYPES", "convert", "Field", "as_field", "GaussianMixture", "get_target",
    "DSM", "SSM", "ISM", "ESM", "get_loss",
    "SDEScheduler", "DiscreteVP", "ScoreModule", "sample", "GaussianStart", "TimeMLP", "UNet", "export_pipeline",
    "LitDiffusionPipeline", "log_likelihood", "bits_per_dim", "variational_bpd", "encode", "decode",
]
