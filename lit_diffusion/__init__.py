"""lit_diffusion: score-based diffusion models with PyTorch Lightning."""

from .sdes import OU, VE, VP, SubVP, ContractiveOU, ContractiveVP, LinearSDE, get_sde
from .parametrizations import PREDICTION_TYPES, convert
from .fields import Field, as_field
from .targets import GaussianMixture, get_target

__version__ = "0.1.0"
