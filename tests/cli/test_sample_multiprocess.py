"""sample.py under ``accelerate launch`` with two CPU processes gives exactly the samples of one
process (per-sample seeds seed+i, fixed index chunks dealt round-robin, gathered and ordered by index
on rank 0).  Note: ``accelerate launch --cpu`` silently starts ONE process, hence ``--multi_gpu`` with
``Accelerator(cpu=True)`` (sample.py ``--cpu``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]




def _load(out: Path):
    d = np.load(out / "samples.npz")
    return d["samples"], d["indices"], json.loads(str(d["args"]))


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="the accelerate launcher is not on PATH")
def test_two_processes_give_the_samples_of_one(ckpt, tmp_path):
    from lit_diffusion.cli.sample import main

    # 7 samples in chunks of 2: rank 0 gets indices {0,1,4,5}, rank 1 {2,3,6}; ddram draws per-sample
    # midpoints and noise, so any mix-up of seeds or order would show
    common = ["-c", str(ckpt), "--n", "7", "--batch-size", "2", "--steps", "4", "--sampler", "ddram", "--seed", "3", "--cpu", "--no-progress"]
    one = tmp_path / "one"
    assert main(common + ["--out", str(one)]) == 0

    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [
        shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(REPO / "sample.py"), *common, "--out", str(two),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=420, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "2 processes" in r.stdout

    x1, i1, m1 = _load(one)
    x2, i2, m2 = _load(two)
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    np.testing.assert_array_equal(i1, np.arange(7))
    np.testing.assert_array_equal(i2, np.arange(7))
    np.testing.assert_array_equal(x2, x1)  # bit for bit: each chunk is computed with the same batch
    assert np.isfinite(x1).all() and np.abs(np.diff(x1, axis=0)).min() > 0  # 7 distinct samples
    assert sorted(p.name for p in two.iterdir()) == ["samples.npz", "samples.png"]
