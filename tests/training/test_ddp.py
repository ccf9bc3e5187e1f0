"""Lightning DDP through Trainer flags: two real processes on CPU (gloo).

``tests/scripts/ddp_lightning.py`` is started as a plain ``python script.py`` subprocess; Lightning
re-launches it as rank 1.  Checked: both processes ran (world size 2, distinct pids, ranks 0 and 1),
they trained on different shards (DistributedSampler), their per-process losses differ, and after
training the replicas are bit-identical (raw weights: DDP all-reduces the gradients; EMA weights: each
process averages identical weights), and the checkpoint rank 0 wrote holds exactly those weights.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_diffusion.training.module import ScoreModule

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_lightning.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.multiprocess
def test_lightning_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    steps = 6
    env = dict(os.environ)
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "SLURM_JOB_ID", "SLURM_NTASKS"):
        env.pop(k, None)
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WANDB_MODE="offline",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), str(out), str(steps)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, f"DDP script failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    a, b = (json.loads((out / f"rank{i}.json").read_text()) for i in range(2))

    assert {a["rank"], b["rank"]} == {0, 1}
    assert a["world_size"] == b["world_size"] == 2 and a["pid"] != b["pid"], "two processes did not really run"
    assert a["strategy"] == "DDPStrategy" and a["process_group_backend"] == "gloo"
    assert a["global_step"] == b["global_step"] == steps
    assert len(a["batches"]) == len(b["batches"]) == steps
    assert not set(a["batches"]) & set(b["batches"]), "both processes trained on the same batches"
    assert a["losses"] != b["losses"]
    # every rank draws its own diffusion noise: the times of the two processes differ at every step
    assert len(a["times"]) == len(b["times"]) == steps
    assert all(ta != tb for ta, tb in zip(a["times"], b["times"])), "both ranks drew the same training noise"
    pa, pb = torch.tensor(a["params"]), torch.tensor(b["params"])
    assert torch.equal(pa, pb), f"replicas diverged: max |diff| = {(pa - pb).abs().max()}"
    assert torch.equal(torch.tensor(a["ema"]), torch.tensor(b["ema"]))

    m = ScoreModule.load_checkpoint(str(out / "final.ckpt"))  # weights_only=True
    vec = torch.cat([p.detach().reshape(-1) for p in m.net.parameters()])
    assert torch.equal(vec, pa)
    assert m.net.out.weight.abs().sum() > 0  # the zero-initialised output layer trained


@pytest.mark.multiprocess
@pytest.mark.slow
def test_train_py_ddp_on_cpu_then_resume(tmp_path):
    """``python train.py --trainer.strategy ddp --trainer.devices 2`` on the CPU writes one last.ckpt
    (rank 0, atomic), and a DDP resume from it continues the global step."""
    env = dict(os.environ)
    for k in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK"):
        env.pop(k, None)
    env.update(MASTER_ADDR="127.0.0.1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    common = [
        sys.executable, str(ROOT / "train.py"), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "ddp", "--ckpt_every_n_steps", "5", "--logger", "csv", "--log_dir", str(tmp_path / "logs"),
        "--progress_bar", "none", "--samples.every_n_steps", "0", "--samples.n_samples", "50", "--samples.steps", "5",
        "--model.net.init_args.hidden", "16", "--data.init_args.n_samples", "2000", "--trainer.limit_val_batches", "0",
        "--ckpt_dir", str(tmp_path / "ck"), "--run_name", "ddp",
    ]
    for max_steps, extra in ((10, []), (16, ["--ckpt_path", "last"])):
        env["MASTER_PORT"] = str(free_port())
        r = subprocess.run(common + ["--trainer.max_steps", str(max_steps), *extra], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-4000:]
        ck = torch.load(tmp_path / "ck" / "ddp" / "last.ckpt", weights_only=True)
        assert ck["global_step"] == max_steps
    m = ScoreModule.load_checkpoint(str(tmp_path / "ck" / "ddp" / "last.ckpt"))
    assert all(torch.isfinite(p).all() for p in m.parameters())
