"""Accelerate launcher: ``lit_diffusion/accelerate_train.py``.

* two real processes on CPU (``accelerate launch --multi_gpu --num_processes 2`` + ``Accelerator(cpu=True)``,
  gloo): world size 2, different data shards, identical replicas (raw and EMA weights) after training,
  and the checkpoint the main process wrote holds exactly those weights;
* in one process: an interrupted run resumed with ``--ckpt_path last`` ends bit-identical to the
  uninterrupted run (data order, noise, optimizer, schedule and EMA all restored); checkpoints load
  with ``weights_only=True`` through ``ScoreModule.load_checkpoint``; a NaN loss or an inf gradient
  stops the run and the last checkpoint stays finite.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from lit_diffusion.cli.accelerate_train import build_parser, train  # noqa: E402
from lit_diffusion.training.module import ScoreModule  # noqa: E402

TINY = [
    "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1", "--model.net.init_args.time_dim", "8",
    "--data.init_args.n_samples", "512", "--data.init_args.batch_size", "32",
    "--model.warmup_steps", "2", "--logger", "none", "--cpu", "true",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # this checkout's package first (the scripts' own folder would otherwise come first on sys.path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("LOCAL_RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _launch_two(tmp_path, extra, timeout=240):
    out = tmp_path / "ranks"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        str(SCRIPTS / "accelerate_sync.py"), str(out),
        "--ckpt_dir", str(tmp_path / "ckpt"), "--run_name", "acc", *TINY, *extra,
    ]
    r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"accelerate launch failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    ranks = [json.loads((out / f"rank{i}.json").read_text()) for i in range(2)]
    return ranks, r


def _check_in_sync(ranks, steps):
    a, b = ranks
    assert {a["rank"], b["rank"]} == {0, 1}
    assert a["world_size"] == b["world_size"] == 2, "two processes did not really run"
    assert "MULTI_CPU" in a["distributed_type"]
    assert a["global_step"] == b["global_step"] == steps
    # different data shards: no batch seen by both processes
    assert len(a["batches"]) == len(b["batches"]) == steps
    assert not set(a["batches"]) & set(b["batches"])
    # different data (and noise) -> different per-process losses, all finite
    assert a["losses"] != b["losses"]
    assert all(torch.isfinite(torch.tensor(a["losses"] + b["losses"])))
    # every rank draws its own diffusion noise: the times of the two processes differ at every step
    assert len(a["times"]) == len(b["times"]) == steps
    assert all(ta != tb for ta, tb in zip(a["times"], b["times"])), "both ranks drew the same training noise"
    # replicas in sync: bit-identical raw and EMA weights
    pa, pb = torch.tensor(a["params"]), torch.tensor(b["params"])
    assert pa.numel() > 100 and torch.equal(pa, pb)
    assert torch.equal(torch.tensor(a["ema"]), torch.tensor(b["ema"]))
    return pa


@pytest.mark.multiprocess
def test_two_processes_gloo_stay_in_sync(tmp_path):
    steps = 6
    ranks, r = _launch_two(tmp_path, ["--trainer", f"{{max_steps: {steps}, log_every_n_steps: 3}}", "--ckpt_every_n_steps", "4"])
    pa = _check_in_sync(ranks, steps)
    # the checkpoint written by the main process holds the trained replica, loads weights_only
    ckpt = tmp_path / "ckpt" / "acc" / "last.ckpt"
    raw = torch.load(ckpt, weights_only=True)
    assert raw["global_step"] == steps and raw["world_size"] == 2
    m = ScoreModule.load_checkpoint(str(ckpt))
    vec = torch.cat([p.detach().reshape(-1) for p in m.net.parameters()])
    assert torch.equal(vec, pa)
    # and it trained: the zero-initialised output layer has moved
    assert m.net.out.weight.abs().sum() > 0
    assert (tmp_path / "ckpt" / "acc" / "pretrained" / "model.safetensors").is_file()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_bf16_autocast_stay_in_sync(tmp_path):
    steps = 4
    ranks, _ = _launch_two(tmp_path, ["--trainer", f"{{max_steps: {steps}}}", "--mixed_precision", "bf16"])
    assert ranks[0]["mixed_precision"].endswith("bf16") or "bf16" in ranks[0]["mixed_precision"]
    _check_in_sync(ranks, steps)


# --------------------------------------------------------------------------------------------
# one process, in this interpreter
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: extra threads only contend for the 2 shared cores
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.set_num_threads(threads)


def _cfg(tmp_path, *extra):
    return build_parser().parse_args(["--ckpt_dir", str(tmp_path), "--run_name", "r", *TINY, *extra])


class _Stop(Exception):
    pass


def _params(m):
    return torch.cat([p.detach().reshape(-1) for p in m.state_dict().values() if p.dtype.is_floating_point])


def test_resume_after_interruption_is_exact(tmp_path, fresh_accelerate):
    """Interrupted at step 13 (last checkpoint at 10), resumed with --ckpt_path last: the final
    weights, EMA and optimizer step equal the uninterrupted 20-step run's exactly."""
    common = ["--trainer", "{max_steps: 20, log_every_n_steps: 5}", "--ckpt_every_n_steps", "5"]
    ref = train(_cfg(tmp_path / "ref", *common))
    assert ref.global_step == 20

    def stop_at_13(step, batch, loss, acc):
        if step == 13:
            raise _Stop()

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with pytest.raises(_Stop):
        train(_cfg(tmp_path / "run", *common), on_step=stop_at_13)
    last = tmp_path / "run" / "r" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    first = []
    res = train(_cfg(tmp_path / "run", *common, "--ckpt_path", "last"),
                on_step=lambda step, *a: first.append(step))
    assert first[0] == 11 and res.global_step == 20
    assert torch.equal(_params(res.module), _params(ref.module))
    final = torch.load(tmp_path / "run" / "r" / "last.ckpt", weights_only=True)
    assert final["global_step"] == 20
    assert int(final["state_dict"]["ema.num_updates"]) == 20


def test_gradient_accumulation_takes_one_optimizer_step_per_k_micro_batches(tmp_path, fresh_accelerate):
    """``trainer.accumulate_grad_batches: 2``: 3 optimizer steps consume 6 micro-batches (as Lightning's
    loop counts them in the checkpoint) and Adam has stepped 3 times."""
    res = train(_cfg(tmp_path, "--trainer", "{max_steps: 3, accumulate_grad_batches: 2}"))
    ck = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    assert res.global_step == ck["global_step"] == 3
    assert ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 6
    adam_steps = {float(v["step"]) for v in ck["optimizer_states"][0]["state"].values()}
    assert adam_steps == {3.0}


def test_checkpoint_loads_weights_only_and_rebuilds_module(tmp_path, fresh_accelerate):
    res = train(_cfg(tmp_path, "--trainer", "{max_steps: 3}"))
    m = ScoreModule.load_checkpoint(str(tmp_path / "r" / "last.ckpt"))
    assert torch.equal(_params(m), _params(res.module))
    assert m.data_shape == (2,)
    folder = ScoreModule.load(tmp_path / "r" / "pretrained")  # the pretrained folder of the final weights
    assert torch.equal(folder.net.out.weight, res.module.sampling_net(True).out.weight.detach())
    assert folder.pretrained_info["global_step"] == 3


@pytest.mark.parametrize("net", ["faulty_nets.NaNAfterMLP", "faulty_nets.InfGradAfterMLP"])
def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path, fresh_accelerate, net):
    arg = "nan_after" if "NaN" in net else "after"
    cfg = _cfg(
        tmp_path, "--model.net", net, f"--model.net.init_args.{arg}", "7", "--model.net.init_args.dim", "2",
        "--trainer", "{max_steps: 30}", "--ckpt_every_n_steps", "3",
    )
    with pytest.raises(FloatingPointError, match="non-finite") as e:
        train(cfg)
    assert "global step 7" in str(e.value)
    ck = torch.load(tmp_path / "r" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.dtype.is_floating_point)


def test_bad_options_name_the_valid_choices(tmp_path):
    p = build_parser(exit_on_error=False)
    with pytest.raises(Exception, match="bf16"):
        p.parse_args(["--mixed_precision", "fp8"])
    from lit_diffusion.cli.accelerate_train import _trainer_options

    with pytest.raises(ValueError, match="max_steps"):
        _trainer_options({"max_steps": -3})
    with pytest.raises(ValueError, match="valid choices"):
        _trainer_options({"precision": "fp8"})
