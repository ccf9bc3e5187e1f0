"""The one checkpoint schema of both launchers: Lightning's dictionary (``state_dict`` with the EMA,
``hyper_parameters``, ``global_step``, optimizer and scheduler states, the fit loop's progress and the
data module's position), written by the Accelerate loop so that ``train.py --ckpt_path`` and
``ScoreModule.load_from_checkpoint`` read it, and the other way round; and the resume check of both
launchers (a checkpoint of the same SDE, loss and network, with weights that fit)."""

from __future__ import annotations

import os
from typing import Optional

from ..runtime.checkpoint_io import atomic_torch_save


def _progress(total: int, current: int, started: bool = True, processed: bool = True) -> dict:
    d = {"total": {"ready": total, "completed": total}, "current": {"ready": current, "completed": current}}
    for key in (("started",) if started else ()) + (("processed",) if processed else ()):
        d["total"][key], d["current"][key] = total, current
    return d


def lightning_loops(step: int, micro: int, n_batches: int, accumulate: int = 1) -> dict:
    """The ``loops`` entry of a Lightning checkpoint after ``step`` optimizer steps and ``micro``
    micro-batches (``n_batches`` per epoch), so that ``train.py --ckpt_path`` continues an Accelerate
    run at the right global step, epoch and batch."""
    epoch, in_epoch = divmod(int(micro), int(n_batches))
    steps_in_epoch = in_epoch // max(int(accumulate), 1)
    empty = {**_progress(0, 0), "is_last_batch": False}
    return {
        "fit_loop": {
            "state_dict": {},
            "epoch_loop.state_dict": {"_batches_that_stepped": int(step)},
            "epoch_loop.batch_progress": {**_progress(int(micro), in_epoch), "is_last_batch": False},
            "epoch_loop.scheduler_progress": _progress(int(step), steps_in_epoch, started=False, processed=False),
            "epoch_loop.automatic_optimization.state_dict": {},
            "epoch_loop.automatic_optimization.optim_progress": {"optimizer": {
                "step": _progress(int(step), steps_in_epoch, started=False, processed=False),
                "zero_grad": _progress(int(step), steps_in_epoch, processed=False),
            }},
            "epoch_loop.manual_optimization.state_dict": {},
            "epoch_loop.manual_optimization.optim_step_progress": _progress(0, 0, started=False, processed=False),
            "epoch_loop.val_loop.state_dict": {},
            "epoch_loop.val_loop.batch_progress": dict(empty),
            "epoch_progress": {"total": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1, "processed": epoch},
                               "current": {"ready": epoch + 1, "completed": epoch, "started": epoch + 1, "processed": epoch}},
        },
        "validate_loop": {"state_dict": {}, "batch_progress": dict(empty)},
        "test_loop": {"state_dict": {}, "batch_progress": dict(empty)},
        "predict_loop": {"state_dict": {}, "batch_progress": _progress(0, 0)},
    }


def save_training_checkpoint(accelerator, module, optimizer, scheduler, step: int, ckpt_dir: str, resume_state: Optional[dict] = None,
          run_id: Optional[str] = None) -> str:
    os.makedirs(ckpt_dir, exist_ok=True)
    ckpt = {
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "hyper_parameters": {k: v for k, v in dict(module.hparams).items() if k not in ("_instantiator", "_class_path")},
        "run_id": run_id,
        "global_step": int(step),
        "epoch": 0,
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        "data_shape": None if module.data_shape is None else [int(s) for s in module.data_shape],
        "prediction_type": module.prediction_type,
        "launcher": "accelerate",
        "world_size": int(accelerator.num_processes),
        # what Lightning's loaders look for: ScoreModule.load_from_checkpoint reads this file too
        "pytorch-lightning_version": _lightning_version(),
        "hparams_name": "kwargs",
    }
    if resume_state is not None:  # what train.py needs to continue this run (one schema for both launchers)
        micro, n_batches = int(resume_state["micro"]), int(resume_state["n_batches"])
        ckpt["loops"] = lightning_loops(step, micro, n_batches, int(resume_state.get("accumulate", 1)))
        ckpt["epoch"] = micro // n_batches
        dm = resume_state["data"]
        ckpt[type(dm).__qualname__] = {"epoch": micro // n_batches, "batches": micro % n_batches,
                                       "batch_size": int(dm.batch_size), "world_size": int(accelerator.num_processes)}
    path = os.path.join(ckpt_dir, f"step={step}.ckpt")
    # last.ckpt first: a kill between the two writes leaves last.ckpt the newest checkpoint
    atomic_torch_save(ckpt, os.path.join(ckpt_dir, "last.ckpt"))
    atomic_torch_save(ckpt, path)
    for name in os.listdir(ckpt_dir):  # keep the newest step file only (as train.py does)
        if name.startswith("step=") and name.endswith(".ckpt") and name != os.path.basename(path):
            try:
                os.remove(os.path.join(ckpt_dir, name))
            except OSError:
                pass
    return path


def _lightning_version() -> str:
    import lightning

    return str(lightning.__version__)


def check_resume(path: str, model) -> dict:
    """Refuse to resume from ``path`` unless it is a valid checkpoint whose hyper-parameters the
    registry trusts and whose SDE, loss and network match ``model``'s (the message shows both)."""
    from ..runtime.checkpoint_io import CheckpointError, read_checkpoint
    from .module import ScoreModule, describe
    from .registry import UntrustedConfigError, check_description

    ckpt = read_checkpoint(path, require=("state_dict", "global_step"))
    try:
        hp = ScoreModule.check_hparams(dict(ckpt.get("hyper_parameters") or {}), where=repr(path))
    except UntrustedConfigError as e:
        raise CheckpointError(str(e)) from None
    diffs = []
    for kind in ("sde", "loss", "net"):
        if hp.get(kind) is None:
            continue
        mine = describe(getattr(model, kind), kind)
        theirs = hp[kind]
        c1, a1 = check_description(theirs, kind)
        c2 = type(getattr(model, kind))
        a2 = mine["init_args"]
        a1n, a2n = normalised_args(a1), normalised_args(a2)
        shared = set(a1n) & set(a2n)
        if c1 is not c2 or any(a1n[k] != a2n[k] for k in shared):
            diffs.append(f"  {kind}: checkpoint {show_description(theirs)}\n  {' ' * len(kind)}  this run   {show_description(mine)}")
    if diffs:
        raise CheckpointError(
            f"refusing to resume from {path!r}: it was trained with a different model than this run's configuration:\n"
            + "\n".join(diffs)
            + "\nresume with the checkpoint's settings (or start a new run with another --run_name)"
        )
    check_weights_fit(path, ckpt.get("state_dict"), model)
    return ckpt


def check_weights_fit(path: str, state, model) -> None:
    """The checkpoint's weights have exactly the model's names and shapes (else CheckpointError)."""
    from ..runtime.checkpoint_io import CheckpointError

    if not isinstance(state, dict):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: its state_dict is a {type(state).__name__}")
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}
    missing, extra = sorted(set(mine) - set(theirs)), sorted(set(theirs) - set(mine))
    wrong = sorted(k for k in set(mine) & set(theirs) if mine[k] != theirs[k])
    if missing or extra or wrong:
        raise CheckpointError(
            f"{path!r} does not fit this model: missing weights {missing[:3]}, unexpected {extra[:3]}, "
            f"wrong shapes {[(k, theirs[k], mine[k]) for k in wrong[:3]]}"
        )


def normalised_args(args: dict) -> dict:
    def n(v):
        if isinstance(v, (list, tuple)):
            return [n(u) for u in v]
        if isinstance(v, dict):
            return {k: n(u) for k, u in v.items()}
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        return v

    return {k: n(v) for k, v in dict(args).items()}


def show_description(desc) -> str:
    if isinstance(desc, str):
        return desc
    args = ", ".join(f"{k}={v!r}" for k, v in sorted(dict(desc.get("init_args") or {}).items()))
    return f"{desc.get('class_path')}({args})"
