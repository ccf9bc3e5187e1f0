"""Crash-safe checkpoint files.

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
``python train.py --trainer.plugins lit_diffusion.runtime.lightning_io.AtomicCheckpointIO``.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Any, Callable

import torch

from .processes import host_tag as _host, pid_alive

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_torch_save",
    "read_checkpoint",
    "inside_folder",
    "atomic_folder",
    "TMP_SUFFIX",
]

TMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint (file or folder) that cannot be read, is not a checkpoint of this package, or
    describes something the registry refuses to build."""


def read_checkpoint(path, map_location="cpu", require: tuple[str, ...] = ("state_dict",)) -> dict:
    """Load a checkpoint file with ``torch.load(weights_only=True)``; anything unreadable (empty,
    truncated, not a PyTorch file, or a pickle that asks for code) raises :class:`CheckpointError`
    "not a valid checkpoint" naming the file.  PyTorch's own advice in that case (retry with
    ``weights_only=False``) is never passed on: that would run the file's code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or unsafe file
        size, msg = os.path.getsize(path), str(e)
        if size == 0:
            why = "it is empty"
        elif "Unsupported global" in msg or "GLOBAL" in msg:
            why = "it holds pickled code or objects, which are never loaded (only tensors and plain data are)"
        else:
            why = f"it is corrupt, truncated or not a PyTorch checkpoint ({size} bytes; {type(e).__name__})"
        raise CheckpointError(f"{path!r} is not a valid checkpoint: {why}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: it holds a {type(ckpt).__name__}, not a dictionary")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path!r} is not a valid checkpoint of this package: no {missing} (found {sorted(ckpt)[:8]})")
    return ckpt


def inside_folder(folder, *parts) -> str:
    """``folder/parts...`` if its real path (every symbolic link resolved) lies inside the real path of
    ``folder``, and so does everything under it when it is a folder; else :class:`CheckpointError`.
    A model folder can then never make a loader read a file outside it through a link."""
    root = os.path.realpath(os.fspath(folder))
    path = os.path.join(os.fspath(folder), *[os.fspath(p) for p in parts])

    def check(p: str) -> None:
        real = os.path.realpath(p)
        if real != root and not real.startswith(root + os.sep):
            raise CheckpointError(
                f"{p!r} leads outside the model folder {os.fspath(folder)!r} (to {real!r}); links out of a model folder "
                "are refused"
            )

    check(path)
    if os.path.isdir(path):
        for base, dirs, files in os.walk(path):
            for n in dirs + files:
                check(os.path.join(base, n))
    return path


def is_local_path(path) -> bool:
    s = os.fspath(path)
    return "://" not in s or s.startswith("file://")


def fsync_dir(folder: str) -> None:
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


def _tmp_prefix(name: str) -> str:
    return f".{name}.{_host()}-{os.getpid()}."


def _clean_stale(folder: str, name: str) -> None:
    """Remove temporary files of ``name`` left by *dead* writers of this machine (``.<name>.<host>-<pid>.
    <random>.tmp``).  Files of live processes -- another run writing now -- and of other machines are
    never touched."""
    prefix = f".{name}."
    host = _host()
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for e in entries:
        if not (e.startswith(prefix) and e.endswith(TMP_SUFFIX)):
            continue
        owner = e[len(prefix):].split(".", 1)[0]
        h, _, pid = owner.rpartition("-")
        if h != host or not pid.isdigit() or (int(pid) != os.getpid() and pid_alive(int(pid))):
            continue
        if int(pid) == os.getpid():
            continue  # this process writes one file at a time; its own temp file is in use
        try:
            target = os.path.join(folder, e)
            if os.path.isdir(target) and not os.path.islink(target):
                import shutil

                shutil.rmtree(target, ignore_errors=True)  # a staged folder (atomic_folder)
            else:
                os.remove(target)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staged_path(path) -> str:
    """A new empty temporary file beside ``path`` (same folder: ``os.replace`` is atomic there), with
    the usual permissions, after removing the temporary files of this name left by dead writers."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(folder, exist_ok=True)
    _clean_stale(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(name), suffix=TMP_SUFFIX, dir=folder)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    return tmp


def atomic_write(path, write: Callable[[str], None], fsync: bool = True) -> str:
    """The one atomic writer: ``write(tmp)`` fills a staged temporary file, which is fsync'ed and
    moved onto ``path`` with ``os.replace`` (then the folder is fsync'ed), so ``path`` is always the
    old file or the complete new one; the temporary file is removed on any error or signal."""
    path = os.fspath(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    tmp = staged_path(path)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))
    return path


def atomic_write_bytes(data: bytes, path) -> str:
    """Write ``data`` to ``path`` with :func:`atomic_write`."""

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_torch_save(obj: Any, path) -> str:
    """``torch.save(obj)`` written with :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(buf.getbuffer(), path)


def _exchange(a: str, b: str) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class atomic_folder:
    """Write a whole folder so that a reader sees the old folder or the new one, never a mix::

        with atomic_folder("exports/mnist") as tmp:
            write everything into tmp

    The new folder is written in ``.<name>.<host>-<pid>.<random>.tmp`` beside the target and fsync'ed;
    on success it is swapped with the old folder in one atomic step (``renameat2(RENAME_EXCHANGE)`` on
    Linux; elsewhere two renames, between which the target is briefly absent but never mixed), and the
    old one is removed.  On an error or a signal the staged folder is removed and the old folder is
    untouched; a kill leaves a staged folder that the next write of the same target removes.
    ``keep_others``: entries of the old folder that the writer did not write (a README, pictures) are
    carried into the new one."""

    def __init__(self, path, keep_others: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.keep_others = keep_others

    def __enter__(self) -> str:
        parent, name = os.path.split(self.path)
        os.makedirs(parent, exist_ok=True)
        _clean_stale(parent, name)
        self.stage = tempfile.mkdtemp(prefix=_tmp_prefix(name), suffix=TMP_SUFFIX, dir=parent)
        os.chmod(self.stage, 0o777 & ~_umask())
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil

        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return
        try:
            if self.keep_others and os.path.isdir(self.path):
                self._carry_others()
            for base, _, files in os.walk(self.stage):
                for n in files:
                    with open(os.path.join(base, n), "rb") as f:
                        os.fsync(f.fileno())
                fsync_dir(base)
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                if _exchange(self.stage, self.path):
                    shutil.rmtree(self.stage, ignore_errors=True)  # now the old folder
                else:
                    old = self.stage + ".old"
                    os.rename(self.path, old)
                    os.rename(self.stage, self.path)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.stage, self.path)
        except BaseException:
            shutil.rmtree(self.stage, ignore_errors=True)
            raise
        fsync_dir(os.path.dirname(self.path))

    def _carry_others(self) -> None:
        import shutil

        for n in os.listdir(self.path):
            src, dst = os.path.join(self.path, n), os.path.join(self.stage, n)
            if os.path.lexists(dst):
                continue
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
