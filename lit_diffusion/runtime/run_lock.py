"""One run per checkpoint folder: a lock file that names its owner and proves it is alive.

Two runs writing the same checkpoint folder overwrite each other's files (and, before this lock, one of
them crashed or silently wrote ``last-v1.ckpt``).  :class:`RunLock` makes the folder's owner explicit:

* ``<folder>/.run.lock`` is created with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and holds the
  owner's host, pid, start time and command line as JSON;
* while the run lives, a daemon thread rewrites the lock's ``heartbeat`` every ``heartbeat_s`` seconds;
* a second run finds the file and is refused at once with :class:`FolderLockedError`, naming the folder
  and the owner (pid, host, since when);
* a lock left by a dead run is taken over, with a warning saying so: on the same host when its pid no
  longer exists, on any host when its heartbeat is older than ``stale_after_s`` (node loss, kill -9 of
  a process on another machine), and at once when it was written by an earlier run of the same SLURM
  job (``SLURM_JOB_ID`` equal, ``SLURM_RESTART_COUNT`` different: a requeued job).

The lock is released (the file removed) when the run ends, also on exceptions and signals.

The lock file is never seen half-written: its content is written and fsync'ed in a temporary file
first, then *linked* to ``.run.lock`` (``os.link`` fails when the name exists: the same exclusivity
as ``O_EXCL``), so a full disk or a kill leaves either no lock or a complete one.  A lock whose fields
are not what this module writes (a crafted or foreign file) is described as unreadable and is stale
once older than two heartbeats.  On Linux the owner's process start time (``/proc/<pid>/stat``) and the
boot id are recorded too, so a pid recycled by an unrelated process, or a reboot, does not keep a dead
run's lock alive.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from typing import Optional

from .processes import host_tag, pid_alive

__all__ = ["RunLock", "FolderLockedError", "LOCK_NAME", "process_start", "boot_id"]

LOCK_NAME = ".run.lock"


def process_start(pid: int) -> Optional[int]:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), else ``None``."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            stat = f.read()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> Optional[str]:
    """This boot's id (Linux), else ``None``."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


class FolderLockedError(RuntimeError):
    """Another live run holds the checkpoint folder."""


class RunLock:
    """Exclusive ownership of a checkpoint folder (use as a context manager or acquire/release)."""

    def __init__(self, folder: str, heartbeat_s: float = 30.0, stale_after_s: float = 600.0):
        if not (heartbeat_s > 0 and stale_after_s > heartbeat_s):
            raise ValueError(f"RunLock: need 0 < heartbeat_s ({heartbeat_s}) < stale_after_s ({stale_after_s})")
        self.folder = os.path.abspath(os.fspath(folder))
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.heartbeat_s = float(heartbeat_s)
        self.stale_after_s = float(stale_after_s)
        self.held = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "proc_start": process_start(os.getpid()),
            "boot_id": boot_id(),
            "started": time.time(),
            "argv": " ".join(sys.argv)[:500],
            "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
        }

    # ------------------------------------------------------------------ state of the lock file
    def owner(self) -> Optional[dict]:
        """The lock file's content (``None`` when there is no lock; ``{}`` when it is unreadable)."""
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _age(self) -> float:
        try:
            return time.time() - os.stat(self.path).st_mtime
        except OSError:
            return 0.0

    def _stale_reason(self, info: dict) -> Optional[str]:
        job = self._info["slurm_job"]
        if job is not None and info.get("slurm_job") == job and info.get("slurm_restart") != self._info["slurm_restart"]:
            return f"SLURM job {job} was requeued (restart {self._info['slurm_restart']}); the lock is its previous run's"
        pid = info.get("pid")
        if not info or isinstance(pid, bool) or not isinstance(pid, int) or not isinstance(info.get("host"), str):
            return "the lock file is unreadable" if self._age() > self.heartbeat_s * 2 else None
        if info.get("host") == socket.gethostname():
            if not pid_alive(pid):
                return f"process {pid} on this host no longer exists"
            if isinstance(info.get("boot_id"), str) and boot_id() not in (None, info["boot_id"]):
                return "the machine was restarted since the lock was written"
            start = info.get("proc_start")
            now = process_start(pid)
            if isinstance(start, int) and now is not None and now != start:
                return f"process {pid} is another process now (its pid was reused)"
            return None
        age = self._age()
        if age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (> {self.stale_after_s:.0f} s): the run or its node is gone"
        return None

    @staticmethod
    def describe_owner(info: dict) -> str:
        if not info:
            return "an unknown run (unreadable lock file)"
        started = info.get("started")
        try:
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
        except (TypeError, ValueError, OverflowError, OSError):
            since = "an unknown time"
        return f"pid {info.get('pid')} on host {info.get('host')} (since {since}; command: {str(info.get('argv', '?'))[:200]})"

    # ------------------------------------------------------------------ acquire / release
    def _create(self) -> bool:
        """Create the complete lock file atomically; False when a lock exists."""
        import tempfile

        fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.{host_tag()}-{os.getpid()}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            with open(tmp, "w") as f:
                json.dump({**self._info, "heartbeat": time.time()}, f)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
            return True
        finally:
            try:
                os.remove(tmp)
            except OSError:
                pass

    def acquire(self) -> "RunLock":
        """Take the lock (:class:`FolderLockedError` when a live run holds it). A signal's exception
        (SIGTERM's ``SystemExit``, Ctrl-C) that interrupts it, or ends the process before the caller
        could keep the returned lock, does not leave the lock behind: the lock file is ours only while
        this object can release it (on the way out of ``acquire``, else at interpreter exit)."""
        if self.held:
            return self
        try:
            self._acquire()
        except BaseException:
            self._drop()
            raise
        import atexit

        atexit.register(self.release)
        return self

    def _acquire(self) -> None:
        # the folders this lock creates, removed again at release when the run left nothing in them
        self._created = []
        p = self.folder
        while p and not os.path.isdir(p) and os.path.dirname(p) != p:
            self._created.append(p)
            p = os.path.dirname(p)
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(3):
            try:
                created = self._create()
            except OSError as e:
                raise FolderLockedError(
                    f"could not write the run lock {self.path!r}: {e.strerror or e} (is the disk full or the folder read-only?)"
                ) from None
            if not created:
                info = self.owner()
                if info is None:
                    continue  # released meanwhile
                reason = self._stale_reason(info)
                if reason is None:
                    raise FolderLockedError(
                        f"checkpoint folder {self.folder!r} is in use by another run: {self.describe_owner(info)}. "
                        f"Wait for it to finish, choose another --run_name/--ckpt_dir, or, if that run is gone, "
                        f"remove {self.path!r}"
                    ) from None
                warnings.warn(
                    f"taking over checkpoint folder {self.folder!r}: the lock of {self.describe_owner(info)} is stale ({reason})",
                    stacklevel=2,
                )
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            self.held = True
            self._start_heartbeat()
            return
        raise FolderLockedError(f"could not lock checkpoint folder {self.folder!r}: another run keeps taking it")

    def _start_heartbeat(self) -> None:
        self._stop.clear()

        def beat():
            while not self._stop.wait(self.heartbeat_s):
                try:
                    if (self.owner() or {}).get("pid") != self._info["pid"]:
                        return  # someone took the lock over (we were presumed dead): stop touching it
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="lit-diffusion-run-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if not self.held:
            return
        import atexit

        atexit.unregister(self.release)
        self._drop()

    def _drop(self) -> None:
        """Stop the heartbeat, remove the lock file if it is this run's, and the folders it created if empty."""
        self._stop.set()
        self.held = False
        info = self.owner()
        if info is not None and info.get("pid") == self._info["pid"] and info.get("host") == self._info["host"]:
            try:
                os.remove(self.path)
            except OSError:
                pass
        for p in getattr(self, "_created", []):  # innermost first; a folder holding anything stays
            try:
                os.rmdir(p)
            except OSError:
                break

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
