"""One run per checkpoint folder, by identity: which checkpoint a resume may use, and what a new run
does with an older run's files.

Every run has a ``run_id`` (a random hex string), written to ``<folder>/run.json`` when the run
starts and into every checkpoint it saves (``checkpoint["run_id"]``, by :class:`RunStamp` under
Lightning and by the Accelerate loop).  Then:

* ``--ckpt_path last`` considers only the folder's checkpoints of the folder's run (a folder of an
  older version, with no ``run.json``, adopts its checkpoints once); among them the highest global
  step wins, and a file is *skipped with a warning naming it* when it is unreadable, belongs to
  another run, states a global step that its own loop state contradicts, or does not fit the model
  (checked by the caller's ``fits``);
* a new run (no ``--ckpt_path``) in a folder holding checkpoints moves them, and the old
  ``run.json``, aside into ``<folder>/previous/<old run id>-<time>/`` and says so: nothing is deleted,
  and no later ``--ckpt_path last`` can pick an older run's file;
* ``--ckpt_path FILE`` continues the run that wrote ``FILE`` (its ``run_id``; a file without one starts
  a new identity); checkpoints of any other run in the folder are moved aside as above.

Only the process of global rank 0 moves files or writes ``run.json`` (:func:`prepare_run`,
``write=True``); the others make the same choice read-only.
"""

from __future__ import annotations

import json
import os
import time
import uuid
import warnings
from typing import Callable, Optional

__all__ = ["RUN_FILE", "PREVIOUS", "read_run_id", "prepare_run", "checkpoint_candidates", "RunStamp", "MAX_STEP"]

RUN_FILE = "run.json"
PREVIOUS = "previous"
#: the largest global step a checkpoint may state (far beyond any real run; a crafted 10**15 is refused)
MAX_STEP = 10**12


def read_run_id(folder) -> Optional[str]:
    """The ``run_id`` of ``<folder>/run.json`` (``None`` when absent or unreadable)."""
    try:
        with open(os.path.join(folder, RUN_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    rid = data.get("run_id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and rid else None


def _write_run_file(folder: str, run_id: str, extra: Optional[dict] = None) -> None:
    from ..runtime.checkpoint_io import atomic_write_bytes

    os.makedirs(folder, exist_ok=True)
    data = {"run_id": run_id, "updated": time.time(), **dict(extra or {})}
    atomic_write_bytes(json.dumps(data, indent=1, sort_keys=True).encode(), os.path.join(folder, RUN_FILE))


def _step_of(ckpt: dict, path: str) -> int:
    """The global step of a loaded checkpoint, checked against its own loop state."""
    from ..runtime.checkpoint_io import CheckpointError

    step = ckpt.get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or not (0 <= step <= MAX_STEP):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: global_step={step!r} (an integer in [0, {MAX_STEP}])")
    try:
        loop = ckpt["loops"]["fit_loop"]["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"]
        done = int(loop["total"]["completed"])
    except (KeyError, TypeError, ValueError):
        return step  # no loop state (an older or hand-made file): the stated step stands
    if done != step:
        raise CheckpointError(
            f"{path!r} is not a valid checkpoint: it states global_step={step} but its loop state has {done} optimizer steps"
        )
    return step


def checkpoint_candidates(folder, run_id: Optional[str] = None) -> list[tuple[str, int, Optional[str]]]:
    """``[(path, global step, run id)]`` of the readable ``*.ckpt`` files of ``folder`` (not its
    sub-folders), best first: highest step, then ``last.ckpt``, then the newest file.  Unreadable
    files, files whose step their loop state contradicts, and (when ``run_id`` is given) files of
    another run are skipped with a warning naming each."""
    from ..runtime.checkpoint_io import CheckpointError, read_checkpoint

    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for n in names:
        p = os.path.join(folder, n)
        if not n.endswith(".ckpt") or n.startswith(".") or not os.path.isfile(p):
            continue
        try:
            ckpt = read_checkpoint(p, require=("global_step",))
            step = _step_of(ckpt, p)
        except CheckpointError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            continue
        rid = ckpt.get("run_id") if isinstance(ckpt.get("run_id"), str) else None
        if run_id is not None and rid != run_id:
            warnings.warn(f"skipping {p!r}: it belongs to another run ({rid or 'no run id'}) than this folder's ({run_id})",
                          stacklevel=2)
            continue
        found.append(((step, n == "last.ckpt", os.stat(p).st_mtime_ns), p, step, rid))
    found.sort(key=lambda f: f[0], reverse=True)
    return [(p, step, rid) for _, p, step, rid in found]


def _set_aside(folder: str, keep: set, old_run: Optional[str], write: bool) -> Optional[str]:
    """Move the checkpoints of ``folder`` other than ``keep`` (and ``run.json``) into
    ``previous/<old run>-<time>/``; returns that folder (``None`` when there was nothing to move)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    move = [n for n in names if n.endswith(".ckpt") and not n.startswith(".") and os.path.join(folder, n) not in keep
            and os.path.isfile(os.path.join(folder, n))]
    if not move:
        return None
    dest = os.path.join(folder, PREVIOUS, f"{old_run or 'unknown-run'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if write:
        os.makedirs(dest, exist_ok=True)
        for n in move + ([RUN_FILE] if os.path.exists(os.path.join(folder, RUN_FILE)) else []):
            os.replace(os.path.join(folder, n), os.path.join(dest, n))
        warnings.warn(
            f"checkpoint folder {folder!r} held {len(move)} checkpoint(s) of another run ({old_run or 'no run id'}): "
            f"moved to {dest!r} so that this run never resumes from them", stacklevel=3,
        )
    return dest


def _resume_last(folder: str, folder_run: Optional[str], fits, log) -> tuple:
    """``--ckpt_path last``: the newest checkpoint of this run that ``fits`` the model, as ``(path,
    run_id, the checkpoint's run id)``, or ``(None, None, None)`` for a folder without one; a run whose
    checkpoints all fail ``fits`` is an error (a changed configuration, not a fresh start: its files
    are never set aside silently)."""
    from ..runtime.checkpoint_io import CheckpointError

    unfit: list = []
    for p, step, rid in checkpoint_candidates(folder, folder_run):
        try:
            if fits is not None:
                fits(p)
        except CheckpointError as e:
            warnings.warn(f"skipping {p!r}: {e}", stacklevel=3)
            unfit.append(e)
            continue
        if log is not None:
            log(f"resuming from {p} (global step {step})")
        return p, folder_run or rid, rid
    if unfit:
        raise unfit[0]
    warnings.warn(f"--ckpt_path last: no checkpoint of this run in {folder!r} yet; starting from scratch", stacklevel=3)
    return None, None, None


def prepare_run(
    folder: str,
    ckpt_path: Optional[str],
    fits: Optional[Callable[[str], object]] = None,
    write: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> tuple[Optional[str], str]:
    """Decide what this run resumes from and its identity: ``(resume path or None, run_id)``.

    ``ckpt_path``: ``None`` (a new run), ``"last"`` or a file.  ``fits(path)`` raises
    :class:`~lit_diffusion.runtime.checkpoint_io.CheckpointError` for a checkpoint that cannot continue this
    model (another SDE, a missing weight...): with ``"last"`` such files are skipped with a warning,
    an explicit file is refused.  ``write``: move older runs' files aside and write ``run.json`` (the
    process of global rank 0 only)."""
    from ..runtime.checkpoint_io import read_checkpoint

    folder = os.fspath(folder)
    folder_run = read_run_id(folder)
    resume, run_id, resume_rid = None, None, None
    if ckpt_path == "last":
        resume, run_id, resume_rid = _resume_last(folder, folder_run, fits, log)
    elif ckpt_path is not None:
        if not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path!r}: no such checkpoint file (or use 'last')")
        ckpt = read_checkpoint(ckpt_path, require=("state_dict", "global_step"))
        _step_of(ckpt, ckpt_path)
        if fits is not None:
            fits(ckpt_path)
        resume = ckpt_path
        rid = ckpt.get("run_id")
        run_id = resume_rid = rid if isinstance(rid, str) and rid else None
    if run_id is None:
        run_id = uuid.uuid4().hex
    keep = set()
    if resume is not None and os.path.dirname(os.path.abspath(resume)) == os.path.abspath(folder):
        keep.add(os.path.join(folder, os.path.basename(resume)))
    if folder_run != run_id or resume is None:
        # the folder's files are another run's (or a new run starts): set them aside, never mix
        same = [] if resume is None else [c[0] for c in checkpoint_candidates_quiet(folder) if c[2] in (run_id, resume_rid)]
        _set_aside(folder, keep | set(same), folder_run, write)
    if write:
        _write_run_file(folder, run_id)
    return resume, run_id


def checkpoint_candidates_quiet(folder) -> list[tuple[str, int, Optional[str]]]:
    """:func:`checkpoint_candidates` of every run, without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return checkpoint_candidates(folder)


def _callback_base():
    import lightning.pytorch as pl

    return pl.Callback


class RunStamp(_callback_base()):
    """Writes ``checkpoint["run_id"]`` into every checkpoint the Trainer saves."""

    def __init__(self, run_id: Optional[str] = None):
        super().__init__()
        self.run_id = run_id

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.run_id is not None:
            checkpoint["run_id"] = self.run_id
