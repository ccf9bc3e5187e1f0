"""Which processes are alive on this machine: what the run lock and the temporary-file cleanup ask
(no Lightning, no torch: the run lock is taken before anything heavy is imported)."""

from __future__ import annotations

import os

__all__ = ["host_tag", "pid_alive"]


def host_tag() -> str:
    """This host's name with only letters, digits, '-' and '_' (for file names)."""
    import socket

    return "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# signals before the training loop owns them
# ------------------------------------------------------------------------------------------------
_EARLY = {"active": False}
EARLY_EXIT_CODES = {"SIGTERM": 143, "SIGINT": 130}


def _early_stop(signum, frame):
    import signal

    if not _EARLY["active"]:
        return  # the Trainer owns the signals now (Lightning composes this handler with its own)
    name = signal.Signals(signum).name
    print(f"received {name} before training started: nothing to save; exiting with status {EARLY_EXIT_CODES[name]}",
          flush=True)
    raise SystemExit(EARLY_EXIT_CODES[name])


def exit_early_on_signal() -> None:
    """Until :func:`hand_over_signals`, SIGTERM / SIGINT end the process at once with status 143 / 130
    (nothing has been trained yet, so nothing is lost): a run killed while it imports, builds or
    loads exits as it would during training, not with a raw signal death or a traceback."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    _EARLY["active"] = True
    signal.signal(signal.SIGTERM, _early_stop)
    signal.signal(signal.SIGINT, _early_stop)


def hand_over_signals() -> None:
    """The training loop handles signals from now on (save, then exit)."""
    _EARLY["active"] = False
