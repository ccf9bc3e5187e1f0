"""Stop training on non-finite numbers *before* they reach a checkpoint (issue 4 §7).

:class:`ScoreModule` already stops on a NaN/inf **loss** (``stop_on_nonfinite``). A finite loss can
still come with an inf/NaN **gradient** (an overflow in the backward pass, a bad custom op); with
gradient clipping the inf norm turns every gradient into NaN, the optimizer writes NaN weights, and
the next periodic checkpoint would store them -- the "last good checkpoint" would not be good.

:class:`NonFiniteGuard` (a Lightning callback) closes both holes:

* ``on_before_optimizer_step`` (gradients all-reduced under DDP, not yet clipped): if the total
  gradient norm is not finite, raise :class:`FloatingPointError` naming the step -- every process sees
  the same all-reduced norm, so all of them stop together.  Skipped under ``16-mixed`` precision, whose
  ``GradScaler`` legitimately skips steps with inf gradients.  ``check_grads_every_n_steps`` trades the
  per-step cost (one norm over the gradients and one host sync) for detection latency;
* ``on_save_checkpoint``: refuses to write a checkpoint whose weights are not all finite (the error
  names the first offending tensor), so whatever is on disk was finite when it was written.

Use: ``Trainer(callbacks=[NonFiniteGuard()])`` or
``python train.py --trainer.callbacks+=lit_diffusion.reliability.NonFiniteGuard``.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

__all__ = ["NonFiniteGuard", "first_nonfinite"]


def first_nonfinite(state: dict) -> str | None:
    """Name of the first floating tensor of ``state`` holding a NaN or inf (``None`` if all finite)."""
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            return k
    return None


class NonFiniteGuard(pl.Callback):
    """Raise ``FloatingPointError`` on a non-finite gradient norm; never save non-finite weights.

    Args:
        check_grads_every_n_steps: check the gradient norm every this many optimizer steps (0: never).
        check_checkpoints: refuse to save a checkpoint with non-finite weights.
    """

    def __init__(self, check_grads_every_n_steps: int = 1, check_checkpoints: bool = True):
        super().__init__()
        if int(check_grads_every_n_steps) < 0:
            raise ValueError(
                f"NonFiniteGuard: check_grads_every_n_steps={check_grads_every_n_steps!r} is invalid; it must be >= 0"
            )
        self.every = int(check_grads_every_n_steps)
        self.check_checkpoints = bool(check_checkpoints)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.every or trainer.global_step % self.every:
            return
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 GradScaler: inf gradients are expected now and then and the step is skipped
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())
        if not math.isfinite(float(norm)):
            raise FloatingPointError(
                f"non-finite gradient norm {float(norm)} at global step {trainer.global_step}; stopping before "
                "the optimizer writes it into the weights. The last good checkpoint is kept."
            )

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self.check_checkpoints:
            return
        bad = first_nonfinite(checkpoint.get("state_dict", {}))
        if bad is not None:
            raise FloatingPointError(
                f"refusing to save a checkpoint at global step {trainer.global_step}: weight {bad!r} is not finite. "
                "The last good checkpoint is kept."
            )
