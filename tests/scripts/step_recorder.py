"""A Lightning callback for tests/runtime/test_reliability.py, importable as ``step_recorder`` when
``tests/scripts`` is on ``PYTHONPATH``: at the start of training (after any resume) it appends one
JSON line ``{"global_step", "params_sha1", "pid"}`` to ``path``."""

import hashlib
import json
import os

import lightning.pytorch as pl


def params_sha1(state_dict) -> str:
    h = hashlib.sha1()
    for k in sorted(state_dict):
        v = state_dict[k]
        if k.startswith("net.") and v.is_floating_point():
            h.update(k.encode())
            h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class StartRecorder(pl.Callback):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            rec = {"global_step": trainer.global_step, "params_sha1": params_sha1(pl_module.state_dict()), "pid": os.getpid()}
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")
