"""``python atomic_writer.py <path> atomic|plain``: write ever-changing ~8 MB checkpoints to ``path``
forever, through :class:`lit_diffusion.runtime.lightning_io.AtomicCheckpointIO` (``atomic``) or a plain
``torch.save(obj, path)`` (``plain``); tests/runtime/test_reliability.py kills it with SIGKILL at random times.
Prints ``ready`` after the first complete write."""

import sys

import torch

from lit_diffusion.runtime.lightning_io import AtomicCheckpointIO

path, mode = sys.argv[1], sys.argv[2]
io = AtomicCheckpointIO()
i = 0
while True:
    ckpt = {"global_step": i, "state_dict": {"w": torch.full((2_000_000,), float(i))}}
    if mode == "atomic":
        io.save_checkpoint(ckpt, path)
    else:
        torch.save(ckpt, path)
    if i == 0:
        print("ready", flush=True)
    i += 1
