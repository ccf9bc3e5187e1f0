"""The forward SDEs of the package (docs/maths.md §1), by name: every process of :mod:`.sde_vp` and
:mod:`.sde_ou` on the base class of :mod:`.linear_sde`.

Every SDE here has the form ``dX = (a(t) X + b(t)) dt + g(t) dW`` and Gaussian transition kernels
``X_t | X_0 = x ~ N(alpha(t) x + m(t), sigma(t)^2 I)``; the reverse-time SDE and the probability-flow
ODE (§1, Haussmann–Pardoux) are :meth:`LinearSDE.reverse`.  This module is where the processes are
listed (:data:`SDE_CLASSES`, :func:`get_sde`) and where the package imports them from.
"""

from __future__ import annotations

from typing import Union

from .linear_sde import LinearSDE, ReverseSDE, TimeLike, as_time, broadcast_to, compute_dtype  # noqa: F401
from .sde_ou import OU, VE, ContractiveOU
from .sde_vp import VP, ContractiveVP, SubVP

__all__ = [
    "LinearSDE", "OU", "VE", "VP", "SubVP", "ContractiveOU", "ContractiveVP", "SDE_CLASSES", "get_sde",
    "broadcast_to", "compute_dtype", "as_time",
]


SDE_CLASSES = {
    "OU": OU,
    "VE": VE,
    "VP": VP,
    "SubVP": SubVP,
    "ContractiveOU": ContractiveOU,
    "ContractiveVP": ContractiveVP,
}
_ALIASES = {"subvp": "SubVP", "cou": "ContractiveOU", "cvp": "ContractiveVP"}


def get_sde(name: Union[str, LinearSDE], **kwargs) -> LinearSDE:
    """Build an SDE by name (``"VP"``, ``"ve"``, ``"cou"``...) or return an instance unchanged."""
    if isinstance(name, LinearSDE):
        if kwargs:
            raise ValueError("get_sde: keyword arguments given with an SDE instance")
        return name
    key = {k.lower(): k for k in SDE_CLASSES}.get(str(name).lower()) or _ALIASES.get(str(name).lower())
    if key is None:
        raise ValueError(f"unknown SDE {name!r}; valid choices: {sorted(SDE_CLASSES)} (aliases {sorted(_ALIASES)})")
    return SDE_CLASSES[key](**kwargs)
