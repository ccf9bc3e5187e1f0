"""lit_diffusion: score-based diffusion models with PyTorch Lightning."""

from .sdes import OU, VE, VP, SubVP, ContractiveOU, ContractiveVP, LinearSDE, get_sde
from .parametrizations import PREDICTION_TYPES, convert
from .fields import Field, as_field
from .targets import GaussianMixture, get_target
from .losses import DSM, ESM, ISM, SSM, get_loss

__version__ = "0.1.0"

__all__ = [
    "OU", "VE", "VP", "SubVP", "ContractiveOU", "ContractiveVP", "LinearSDE", "get_sde",
    "PREDICTION_TYPES", "convert", "Field", "as_field", "GaussianMixture", "get_target",
    "DSM", "SSM", "ISM", "ESM", "get_loss",
]
