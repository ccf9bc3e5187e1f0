"""What a network predicts, and the exact conversions between predictions (docs/maths.md §2).

With ``X~ = X - m(t)`` the centred state and ``X~ = alpha x0 + sigma eps``:

* ``score``          ``s = (alpha D + m - X) / sigma^2 = -eps / sigma``
* ``epsilon``        ``eps``
* ``denoiser`` (x0)  ``D = (X~ + sigma^2 s) / alpha``
* ``v``              ``v = alpha eps - sigma x0`` (the VP convention; for other SDEs the same
  definition is inverted exactly with the factor ``alpha^2 + sigma^2``, which is 1 for VP)
* ``relative_score`` ``r = s + X~ / v_prior`` (``v_prior``: the prior variance of the SDE)

Every conversion goes through ``eps``; all arithmetic is in float32/float64 (half-precision network
outputs are promoted), and ``t`` may be a scalar or per-sample.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from .sdes import LinearSDE, as_time, compute_dtype

__all__ = ["PREDICTION_TYPES", "canonical_prediction", "convert", "to_epsilon", "from_epsilon"]

PREDICTION_TYPES = ("score", "epsilon", "denoiser", "v", "relative_score")
_ALIASES = {
    "eps": "epsilon",
    "noise": "epsilon",
    "x0": "denoiser",
    "sample": "denoiser",
    "data": "denoiser",
    "v_prediction": "v",
    "relative": "relative_score",
}


def canonical_prediction(name: str) -> str:
    """Normalise a prediction-type name (diffusers' ``epsilon``/``sample``/``v_prediction`` too)."""
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction type {name!r}; valid choices: {list(PREDICTION_TYPES)} "
            f"(aliases {sorted(_ALIASES)})"
        )
    return key


def _coefs(sde: LinearSDE, x: Tensor, t):
    dtype = compute_dtype(x, t)
    x = x.to(dtype)
    t = as_time(t, x)
    alpha, m, sigma = sde.marginal_coefficients(t, x)
    return x - m, alpha, sigma


def to_epsilon(pred: Tensor, kind: str, x: Tensor, t, sde: LinearSDE) -> Tensor:
    """The noise prediction ``eps`` equivalent to ``pred`` (of type ``kind``) at ``(x, t)``."""
    kind = canonical_prediction(kind)
    xc, alpha, sigma = _coefs(sde, x, t)
    pred = pred.to(xc.dtype)
    if kind == "epsilon":
        return pred
    if kind == "score":
        return -sigma * pred
    if kind == "denoiser":
        return (xc - alpha * pred) / sigma
    if kind == "v":
        return (sigma * xc + alpha * pred) / (alpha**2 + sigma**2)
    # relative_score
    return -sigma * (pred - xc / sde.prior_var)


def from_epsilon(eps: Tensor, kind: str, x: Tensor, t, sde: LinearSDE) -> Tensor:
    """Convert a noise prediction to ``kind`` at ``(x, t)``."""
    kind = canonical_prediction(kind)
    xc, alpha, sigma = _coefs(sde, x, t)
    eps = eps.to(xc.dtype)
    if kind == "epsilon":
        return eps
    if kind == "score":
        return -eps / sigma
    if kind == "denoiser":
        return (xc - sigma * eps) / alpha
    if kind == "v":
        return alpha * eps - sigma * (xc - sigma * eps) / alpha
    return -eps / sigma + xc / sde.prior_var


def convert(pred: Tensor, src: str, dst: str, x: Tensor, t, sde: LinearSDE) -> Tensor:
    """Exact conversion of a prediction of type ``src`` into type ``dst`` (§2)."""
    src, dst = canonical_prediction(src), canonical_prediction(dst)
    if src == dst:
        return pred.to(compute_dtype(x, t, pred))
    return from_epsilon(to_epsilon(pred, src, x, t, sde), dst, x, t, sde)


def declared_prediction(model, prediction_type: Optional[str] = None) -> str:
    """The prediction type a model declares (``model.prediction_type``), or the one given."""
    kind = prediction_type if prediction_type is not None else getattr(model, "prediction_type", None)
    if kind is None:
        raise ValueError(
            f"{type(model).__name__} declares no prediction type: set its `prediction_type` attribute "
            f"or pass prediction_type=, one of {list(PREDICTION_TYPES)}"
        )
    return canonical_prediction(kind)
