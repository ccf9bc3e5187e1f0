"""Crash-safe checkpoint files (issue 4 §7).

Why this exists: Lightning 2.6's ``TorchCheckpointIO`` saves through
``lightning.fabric.utilities.cloud_io._atomic_save``: it serialises to memory, then writes inside an
``fsspec`` transaction.  For a local path the transaction writes to ``tempfile.mkstemp()`` -- in the
*system temporary folder*, not next to the checkpoint -- and commits with ``shutil.move``.  That is an
atomic ``rename`` only when ``/tmp`` and the checkpoint folder are on the same file system; on a
cluster (checkpoints on NFS/Lustre/GPFS, ``/tmp`` node-local) ``shutil.move`` falls back to
*copy-then-delete*, and a job killed during the copy leaves a truncated ``last.ckpt``.  Nothing is
``fsync``'ed either, so after a node crash the renamed file can be empty, and a SIGKILL during the
write leaves the temporary file behind in ``/tmp``.

:class:`AtomicCheckpointIO` writes ``<dir>/.<name>.<random>.tmp`` in the checkpoint's own folder,
``fsync``'s it, ``os.replace``'s it over the target (atomic on POSIX within one file system) and
``fsync``'s the folder; leftovers of killed writers are removed at the next save.  Remote URLs
(``s3://``...) go through Lightning's own code.  It also loads with ``weights_only=True`` unless told
otherwise.

Use: ``Trainer(plugins=[AtomicCheckpointIO()])`` or, on the command line,
``python train.py --trainer.plugins lit_diffusion.checkpoint_io.AtomicCheckpointIO``.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Callable, Optional

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_write_bytes", "atomic_torch_save", "newest_checkpoint", "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


def _is_local(path) -> bool:
    s = os.fspath(path)
    return "://" not in s or s.startswith("file://")


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _clean_stale(folder: str, name: str) -> None:
    """Remove temporary files of ``name`` left by writers that were killed."""
    prefix = f".{name}."
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for e in entries:
        if e.startswith(prefix) and e.endswith(TMP_SUFFIX):
            try:
                os.remove(os.path.join(folder, e))
            except OSError:
                pass


def newest_checkpoint(folder) -> Optional[str]:
    """The most recently written ``*.ckpt`` file of ``folder`` (``last.ckpt`` or ``step=N.ckpt``;
    temporary files of killed writers are ignored), or ``None``.

    Lightning's ``ModelCheckpoint`` writes ``step=N.ckpt`` and *then* ``last.ckpt``: a kill between the
    two leaves ``last.ckpt`` one interval behind, and Lightning's ``ckpt_path="last"`` (which only looks
    at ``last*.ckpt``) would lose that interval.  Resuming from this file does not.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    best, best_t = None, None
    for n in names:
        if not n.endswith(".ckpt") or n.startswith("."):
            continue
        p = os.path.join(folder, n)
        try:
            t = os.stat(p).st_mtime_ns
        except OSError:
            continue
        if best_t is None or t > best_t or (t == best_t and n == "last.ckpt"):
            best, best_t = p, t
    return best


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(data: bytes, path) -> str:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one:
    temporary file in the same folder + ``fsync`` + ``os.replace`` + ``fsync`` of the folder."""
    path = os.fspath(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(folder, exist_ok=True)
    _clean_stale(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def atomic_torch_save(obj: Any, path) -> str:
    """``torch.save(obj)`` written with :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(buf.getbuffer(), path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, fsync'ed local saves; ``weights_only=True`` loads by default."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path,
        map_location: Optional[Callable] = lambda storage, loc: storage,
        weights_only: Optional[bool] = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True if weights_only is None else weights_only)
