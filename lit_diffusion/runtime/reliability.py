"""Stop training on non-finite numbers *before* they reach a checkpoint.

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
``python train.py --trainer.callbacks+=lit_diffusion.runtime.reliability.NonFiniteGuard``.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

__all__ = ["NonFiniteGuard", "first_nonfinite", "SignalCheckpoint", "TrainingInterrupted", "EXIT_CODES", "exit_on_signal"]


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


# --------------------------------------------------------------------------------------------
# SIGTERM / SIGINT: save at the current step, then exit non-zero
# --------------------------------------------------------------------------------------------
EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


class TrainingInterrupted(SystemExit):
    """Raised after a signal made the run save its state; ``code`` is 128 + the signal number
    (143 for SIGTERM, 130 for SIGINT), so a scheduler never mistakes it for success."""

    def __init__(self, signame: str, checkpoint: str | None, step: int):
        super().__init__(EXIT_CODES.get(signame, 1))
        self.signame, self.checkpoint, self.step = signame, checkpoint, step


class SignalCheckpoint(pl.Callback):
    """On SIGTERM (what SLURM and Kubernetes send first) or SIGINT (Ctrl-C), finish the current
    optimizer step, write a checkpoint at it (through the Trainer's CheckpointIO: atomically), print
    its path, and end the run with exit status 143 (SIGTERM) or 130 (SIGINT).

    The signal only sets a flag (Lightning's own SIGTERM flag, which Lightning broadcasts from rank 0
    to every DDP process at each batch), so the weights, the optimizer and the EMA are always saved
    between two steps, never half-updated.  SIGINT is routed through the same flag.  ``path`` is the
    file written (default ``<dirpath>/last.ckpt``).
    """

    def __init__(self, dirpath: str | None = None, filename: str = "last.ckpt"):
        super().__init__()
        self.dirpath, self.filename = dirpath, filename
        self.signame: str | None = None
        self.saved: str | None = None
        self._old_int = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from .processes import hand_over_signals

        hand_over_signals()  # Lightning's flag handler is installed: a signal now saves before exiting

    def on_train_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        lightning_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            self.signame = self.signame or signal.Signals(signum).name
            if callable(lightning_term):
                lightning_term(signum, frame)

        signal.signal(signal.SIGTERM, on_term)  # Lightning restores the original handler at teardown
        self._old_int = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, on_term)

    def _restore(self) -> None:
        import signal
        import threading

        if self._old_int is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._old_int)
            self._old_int = None

    def on_train_end(self, trainer, pl_module) -> None:
        """The loop is over: save the final step now (before the end-of-training picture and
        export), then let a signal end the process at once, with its exit status."""
        self._restore()
        self.final = self._save_final(trainer)
        if self.signame is not None:  # arrived while the final checkpoint was written
            raise TrainingInterrupted(self.signame, self.final, trainer.global_step)
        exit_on_signal(self.final, trainer.global_step, trainer.is_global_zero)

    def _save_final(self, trainer) -> str | None:
        import os

        from lightning.pytorch.callbacks import ModelCheckpoint

        step = trainer.global_step
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and getattr(cb, "_last_global_step_saved", -1) == step and cb.last_model_path:
                return cb.last_model_path
        path = os.path.join(self.dirpath or trainer.default_root_dir, self.filename)
        trainer.save_checkpoint(path, weights_only=False)
        for cb in trainer.checkpoint_callbacks:  # the checkpoint callback knows it is saved at this step
            if isinstance(cb, ModelCheckpoint):
                cb._last_global_step_saved = step
        return path

    def on_exception(self, trainer, pl_module, exception) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        self._restore()
        if not isinstance(exception, SIGTERMException):
            return
        signame = self.signame or "SIGTERM"
        import os

        folder = self.dirpath or trainer.default_root_dir
        path = os.path.join(folder, self.filename)
        trainer.save_checkpoint(path, weights_only=False)  # full state to resume (and no Lightning note)
        self.saved = path
        if trainer.is_global_zero:
            print(
                f"received {signame}: saved a checkpoint at global step {trainer.global_step} -> {path}\n"
                f"resume with --ckpt_path last; exiting with status {EXIT_CODES.get(signame, 1)}",
                flush=True,
            )

    final: str | None = None

    def interrupted(self, step: int) -> TrainingInterrupted:
        """The exception that ends the process after a signal (raised by the CLI once Lightning has
        torn the run down)."""
        return TrainingInterrupted(self.signame or "SIGTERM", self.saved, step)


def exit_on_signal(checkpoint: str | None, step: int, verbose: bool = True) -> None:
    """From now on (training is over, its final checkpoint saved), SIGTERM / SIGINT end the process at
    once with :class:`TrainingInterrupted` (status 143 / 130), whatever it is doing (the final picture,
    an export): nothing is left to save, and a scheduler's grace period is never spent."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        name = signal.Signals(signum).name
        if verbose:
            print(f"received {name} after training: the checkpoint at global step {step} is saved -> {checkpoint}; "
                  f"exiting with status {EXIT_CODES.get(name, 1)}", flush=True)
        raise TrainingInterrupted(name, checkpoint, step)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
