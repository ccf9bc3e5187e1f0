"""Networks that fail on purpose, for tests/runtime/test_reliability.py and tests/cli/test_accelerate.py.

Importable as ``faulty_nets`` when ``tests/scripts`` is on ``sys.path`` / ``PYTHONPATH`` (so a
``train.py`` subprocess can name ``faulty_nets.NaNAfterMLP`` as ``--model.net`` class path).
"""

import torch

from lit_diffusion.training.networks import TimeMLP


class NaNAfterMLP(TimeMLP):
    """A :class:`TimeMLP` whose output becomes NaN from its ``nan_after + 1``-th training-mode call on
    (eval-mode calls -- validation, sampling -- are not counted and stay finite)."""

    def __init__(self, nan_after: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.nan_after = int(nan_after)
        self.calls = 0

    def forward(self, x, t):
        out = super().forward(x, t)
        if self.training:
            self.calls += 1
            if self.calls > self.nan_after:
                out = out * float("nan")
        return out


class _InfGrad(torch.autograd.Function):
    """Identity forward; the backward pass turns every gradient into inf."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class InfGradAfterMLP(TimeMLP):
    """A :class:`TimeMLP` whose loss stays finite but whose gradients are inf/NaN from the
    ``after + 1``-th training-mode call on (the case where a bad optimizer step would write
    non-finite weights into the next checkpoint although the loss looked fine)."""

    def __init__(self, after: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.after = int(after)
        self.calls = 0

    def forward(self, x, t):
        out = super().forward(x, t)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = _InfGrad.apply(out)
        return out


# Checkpoints and configs build only registered classes (lit_diffusion.training.registry): registering is the
# explicit act that makes these test networks buildable by name.
from lit_diffusion.training.registry import register  # noqa: E402

register("net", "NaNAfterMLP", NaNAfterMLP)
register("net", "InfGradAfterMLP", InfGradAfterMLP)
