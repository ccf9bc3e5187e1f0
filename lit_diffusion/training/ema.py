"""Exponential moving average of a network's weights, kept inside the LightningModule.

Lightning 2.6 ships ``EMAWeightAveraging`` (``lightning.pytorch.callbacks``); we do not use it
because it swaps the averaged weights *into* the trained module during validation and at the end of
``fit`` (so the raw weights are gone after training), averages the whole LightningModule, and has no
decay warm-up. Here the average is a frozen copy of the network registered as a sub-module
(``module.ema``): it lives in the module's ``state_dict`` (so every checkpoint holds it, as plain
tensors, and it is restored exactly on resume), moves with the module between devices, is broadcast
by DDP with the rest of the module, and the raw weights stay untouched.

Update rule, the same for both launchers (:meth:`EMA.step`, called after every optimizer step
``n = 1, 2, ...``; ``num_updates`` counts the optimizer steps)::

    d_n  = min(decay, (1 + n) / (warmup + n))     (warmup > 0; d_n = decay when warmup == 0)
    ema <- d_n * ema + (1 - d_n) * theta           at the steps n that are multiples of every_n_steps

Floating buffers (e.g. normalisation statistics) are averaged the same way; integer buffers are
copied.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(n: int, decay: float, warmup: int) -> float:
    """The decay used for the ``n``-th update (``n >= 1``)."""
    if warmup <= 0:
        return float(decay)
    return float(min(decay, (1.0 + n) / (warmup + n)))


class EMA(nn.Module):
    """A frozen copy of ``model`` that tracks an exponential moving average of its weights."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 10, every_n_steps: int = 1):
        super().__init__()
        decay = float(decay)
        if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
            raise ValueError(f"EMA: decay={decay!r} is invalid; it must be in [0, 1)")
        if int(warmup) != warmup or warmup < 0:
            raise ValueError(f"EMA: warmup={warmup!r} is invalid; it must be an integer >= 0")
        if int(every_n_steps) != every_n_steps or every_n_steps < 1:
            raise ValueError(f"EMA: every_n_steps={every_n_steps!r} is invalid; it must be an integer >= 1")
        self.decay, self.warmup, self.every_n_steps = decay, int(warmup), int(every_n_steps)
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return ema_decay_at(int(self.num_updates) + 1, self.decay, self.warmup)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """One EMA update from ``model``'s current weights; returns the decay used."""
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        if len(ema_p) != len(src_p):
            raise RuntimeError("EMA.update: the model's parameters do not match the averaged copy")
        same = [(e, s.to(e.dtype)) for e, s in zip(ema_p, src_p)]
        if same:
            torch._foreach_lerp_([e for e, _ in same], [s for _, s in same], 1.0 - d)
        for e, s in zip(self.module.buffers(), model.buffers()):
            if e.dtype.is_floating_point:
                e.lerp_(s.detach().to(e.dtype), 1.0 - d)
            else:
                e.copy_(s)
        self.num_updates += 1
        return d

    def step(self, model: nn.Module):
        """Call after every optimizer step: counts the step and, every ``every_n_steps`` steps,
        averages ``model`` in with the decay of that step number (the one rule both launchers use).
        Returns the decay used, or ``None`` on a step without update."""
        n = int(self.num_updates) + 1
        if n % self.every_n_steps == 0:
            return self.update(model)
        self.num_updates += 1
        return None

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
