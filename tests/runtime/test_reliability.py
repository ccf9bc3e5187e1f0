"""Reliability of training.

* SIGKILL: ``train.py`` killed at random times resumes with ``--ckpt_path last`` exactly where its last
  checkpoint left off (same global step, same weights), and every checkpoint file ever present loads
  with ``weights_only=True`` (atomic writes: :class:`lit_diffusion.runtime.lightning_io.AtomicCheckpointIO`,
  also hammered directly by a writer killed mid-write);
* non-finite numbers: a NaN loss stops ``train.py`` with a clear message and the last checkpoint is
  finite; an inf gradient under a finite loss is caught by :class:`lit_diffusion.runtime.reliability.NonFiniteGuard`
  before it reaches the weights (without the guard a NaN checkpoint is written: the control);
* config mistakes (typo in a key, unknown class, invalid value) name the culprit and the valid choices;
* a crafted pickle (its unpickling would create a marker file) is refused by every loading path:
  ``ScoreModule.load_checkpoint``, ``train.py --ckpt_path``, the accelerate loop's resume,
  ``export_pipeline`` and the sampling CLI's loader -- the marker is never created.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

from lit_diffusion.training.module import ScoreModule  # noqa: E402
from lit_diffusion.runtime.checkpoint_io import CheckpointError  # noqa: E402

TINY_TRAIN = [
    "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1", "--model.net.init_args.time_dim", "8",
    "--data.init_args.n_samples", "1000", "--data.init_args.batch_size", "32",
    "--model.warmup_steps", "2", "--model.lr_schedule", "constant",
    "--logger", "none", "--progress_bar", "none",
    "--samples.every_n_steps", "0", "--samples.n_samples", "16", "--samples.steps", "2",
    "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1000", "--trainer.enable_model_summary", "false",
]


def _env():
    env = dict(os.environ)
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SCRIPTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for k in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK"):
        env.pop(k, None)
    return env


def _train_cmd(*args):
    return [sys.executable, str(ROOT / "train.py"), *TINY_TRAIN, *args]


def _load_all_checkpoints(folder: Path) -> dict:
    """Every ``*.ckpt`` in ``folder`` loaded with weights_only=True -> {name: global_step}."""
    out = {}
    for f in sorted(folder.glob("*.ckpt")):
        ck = torch.load(f, map_location="cpu", weights_only=True)
        assert "state_dict" in ck and "global_step" in ck, f
        out[f.name] = int(ck["global_step"])
    return out


def _global_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except FileNotFoundError:
        return -1


# --------------------------------------------------------------------------------------------
# atomic checkpoint files
# --------------------------------------------------------------------------------------------
def _hammer(path: Path, mode: str, kills: int, rng: random.Random, stop_on_broken: bool = False):
    """Start the writer, kill it ``kills`` times at random moments; returns the load outcome of each kill."""
    outcomes = []
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, str(SCRIPTS / "atomic_writer.py"), str(path), mode],
                             stdout=subprocess.PIPE, text=True, env=_env())
        try:
            assert p.stdout.readline().strip() == "ready"
            time.sleep(rng.uniform(0.05, 0.8))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            w = ck["state_dict"]["w"]
            ok = w.shape == (2_000_000,) and bool((w == float(ck["global_step"])).all())
        except Exception:  # noqa: BLE001 - a truncated file
            ok = False
        outcomes.append(ok)
        if stop_on_broken and not ok:
            break
    return outcomes


def test_atomic_checkpoint_io_survives_sigkill_mid_write(tmp_path):
    path = tmp_path / "last.ckpt"
    outcomes = _hammer(path, "atomic", kills=2, rng=random.Random(0))
    assert all(outcomes), outcomes
    # only the target and at most one leftover temporary file of the killed writer
    leftovers = [f.name for f in tmp_path.iterdir() if f.name != "last.ckpt"]
    assert len(leftovers) <= 1 and all(n.startswith(".last.ckpt.") and n.endswith(".tmp") for n in leftovers)
    # the next save cleans the leftover up
    from lit_diffusion.runtime.lightning_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"global_step": 0, "state_dict": {}}, path)
    assert [f.name for f in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_plain_torch_save_control_does_break(tmp_path):
    """The control: the same writer with a plain ``torch.save`` leaves a truncated file when killed
    mid-write (so the atomic test above is able to fail)."""
    outcomes = _hammer(tmp_path / "last.ckpt", "plain", kills=12, rng=random.Random(1), stop_on_broken=True)
    assert not all(outcomes), "12 kills never caught the plain writer mid-write"


# --------------------------------------------------------------------------------------------
# train.py killed and resumed
# --------------------------------------------------------------------------------------------
def _kill_and_resume(tmp_path: Path, kills: int, seed: int):
    rng = random.Random(seed)
    ckdir = tmp_path / "ck" / "run"
    record = tmp_path / "starts.jsonl"
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(
        "trainer:\n  callbacks:\n    - class_path: step_recorder.StartRecorder\n"
        f"      init_args: {{path: {json.dumps(str(record))}}}\n"
    )
    common = ["--register", "step_recorder.StartRecorder", "--config", str(cfg), "--ckpt_dir", str(tmp_path / "ck"), "--run_name", "run",
              "--ckpt_every_n_steps", "4"]
    expected_starts = [0]
    last_step = -1
    for k in range(kills):
        args = common + ["--trainer.max_steps", "100000"] + (["--ckpt_path", "last"] if k else [])
        p = subprocess.Popen(_train_cmd(*args), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.time() + 180
            # wait until this run wrote a checkpoint beyond the one it resumed from, then a random moment
            while _global_step(ckdir / "last.ckpt") <= max(last_step, 0):
                assert p.poll() is None, f"train.py exited early:\n{p.stderr.read()[-4000:]}"
                assert time.time() < deadline, "no checkpoint within 180 s"
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.0))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
        steps = _load_all_checkpoints(ckdir)  # every file present loads with weights_only=True
        assert "last.ckpt" in steps
        # a kill between ModelCheckpoint's step=N.ckpt and last.ckpt writes may leave last.ckpt one
        # interval behind: --ckpt_path last resumes from the newest file, so nothing is lost either way
        last_step = max(steps.values())
        assert last_step % 4 == 0 and last_step > 0
        assert steps["last.ckpt"] in (last_step, last_step - 4)
        expected_starts.append(last_step)
    # resume once more and finish 8 steps after the last checkpoint
    newest = max(ckdir.glob("*.ckpt"), key=lambda f: (f.stat().st_mtime_ns, f.name == "last.ckpt"))
    final_ck = torch.load(newest, map_location="cpu", weights_only=True)
    assert final_ck["global_step"] == last_step
    from step_recorder import params_sha1

    r = subprocess.run(_train_cmd(*common, "--ckpt_path", "last", "--trainer.max_steps", str(last_step + 8)),
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    starts = [json.loads(line) for line in record.read_text().splitlines()]
    # every run started where the last checkpoint left off (no progress lost beyond it)
    assert [s["global_step"] for s in starts] == expected_starts
    assert starts[-1]["params_sha1"] == params_sha1(final_ck["state_dict"])
    done = _load_all_checkpoints(ckdir)
    assert done["last.ckpt"] == last_step + 8


@pytest.mark.multiprocess
def test_train_py_sigkill_then_resume_loses_nothing(tmp_path):
    _kill_and_resume(tmp_path, kills=1, seed=0)


@pytest.mark.multiprocess
@pytest.mark.slow
def test_train_py_killed_repeatedly_at_random_times(tmp_path):
    _kill_and_resume(tmp_path, kills=4, seed=1)


# --------------------------------------------------------------------------------------------
# NaN / inf
# --------------------------------------------------------------------------------------------
def test_nan_loss_stops_train_py_and_keeps_last_good_checkpoint(tmp_path):
    r = subprocess.run(
        _train_cmd("--register", "faulty_nets.NaNAfterMLP", "--model.net", "faulty_nets.NaNAfterMLP",
                   "--model.net.init_args.nan_after", "9",
                   "--model.net.init_args.dim", "2", "--trainer.max_steps", "50", "--ckpt_every_n_steps", "4",
                   "--ckpt_dir", str(tmp_path / "ck"), "--run_name", "run"),
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode != 0
    assert "FloatingPointError" in r.stderr and "non-finite training loss nan at global step 9" in r.stderr, r.stderr[-3000:]
    ck = torch.load(tmp_path / "ck" / "run" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())


def _fit_inf_grad(tmp_path: Path, guard: bool):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    from faulty_nets import InfGradAfterMLP
    from lit_diffusion.runtime.lightning_io import AtomicCheckpointIO
    from lit_diffusion.training.data import SwissRollDataModule
    from lit_diffusion.runtime.reliability import NonFiniteGuard

    pl.seed_everything(0, verbose=False)
    module = ScoreModule(net=InfGradAfterMLP(after=7, dim=2, hidden=16, n_blocks=1, time_dim=8), warmup_steps=2)
    cbs = [ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=4, save_last=True, save_top_k=-1)]
    if guard:
        cbs.append(NonFiniteGuard())
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=30, logger=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, gradient_clip_val=1.0, callbacks=cbs, plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(FloatingPointError) as e:
        trainer.fit(module, datamodule=SwissRollDataModule(n_samples=1000, batch_size=32))
    return str(e.value), torch.load(tmp_path / "last.ckpt", weights_only=True)


def _finite(ck) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in ck["state_dict"].values() if v.is_floating_point())


def test_inf_gradient_is_stopped_before_it_reaches_a_checkpoint(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # control: without the guard the clipped inf gradient writes NaN weights into step 8's checkpoint
        msg, ck = _fit_inf_grad(tmp_path / "plain", guard=False)
        assert ck["global_step"] == 8 and not _finite(ck)
        # with NonFiniteGuard: stopped at step 7, the last checkpoint (step 4) is finite
        msg, ck = _fit_inf_grad(tmp_path / "guarded", guard=True)
        assert "non-finite gradient norm" in msg and "global step 7" in msg
        assert ck["global_step"] == 4 and _finite(ck)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# config mistakes
# --------------------------------------------------------------------------------------------
def test_typo_in_config_key_names_it_and_the_valid_keys(tmp_path, monkeypatch, capsys):
    """Through ``train.main`` (what train.py runs), in this process."""
    from lit_diffusion.cli.train import main

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("model:\n  lrr: 0.01\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--logger", "none"])
    err = capsys.readouterr().err
    assert "lrr" in err, err[-2000:]
    assert "lr" in err.replace("lrr", "") and ("did you mean" in err.lower() or "valid" in err.lower()), err[-2000:]
    assert not (tmp_path / "checkpoints").exists()  # failed before any work
    assert e.value.code == 2 and len(err.strip().splitlines()) <= 4 and "usage:" not in err, err  # no wall of usage


@pytest.mark.parametrize(
    "args, names",
    [
        (["--model.sde", "VPX"], ["VPX", "'VP'", "'VE'", "'SubVP'"]),
        (["--model.loss", "dsmm"], ["dsmm", "DSM"]),
        (["--model.optimizer", "adamx"], ["adamx", "adamw", "sgd"]),
        (["--data", "SwissRol"], ["SwissRol", "SwissRollDataModule", "DigitsDataModule"]),
        (["--model.lrr", "0.1"], ["lrr"]),
    ],
)
def test_bad_cli_values_name_value_and_choices(tmp_path, args, names):
    from jsonargparse import ArgumentError

    from lit_diffusion.cli.train import DiffusionCLI

    with pytest.raises((ArgumentError, ValueError, SystemExit)) as e:
        DiffusionCLI(args=[*args, "--logger", "none"], exit_on_error=False)
    msg = str(e.value)
    for n in names:
        assert n in msg, f"{n!r} not in error:\n{msg}"


def test_invalid_numeric_value_is_named(tmp_path):
    from lit_diffusion.cli.train import DiffusionCLI

    with pytest.raises(ValueError, match=r"lr=-1\.0 is invalid"):
        DiffusionCLI(args=["--model.lr", "-1", "--logger", "none", "--ckpt_dir", str(tmp_path)], exit_on_error=False)


# --------------------------------------------------------------------------------------------
# crafted pickles
# --------------------------------------------------------------------------------------------
class _Evil:
    """Unpickling this creates ``marker`` (``open(marker, 'w')``): arbitrary code at load time."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """A real checkpoint of a tiny module with a code-running object slipped into it."""
    marker = tmp_path / "PWNED"
    m = ScoreModule(net=__import__("lit_diffusion.training.networks", fromlist=["TimeMLP"]).TimeMLP(dim=2, hidden=8, n_blocks=1),
                    data_shape=[2])
    ckpt = {"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "global_step": 3, "epoch": 0,
            "pytorch-lightning_version": "2.6.0", "payload": _Evil(str(marker))}
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    # the file is really dangerous: an unrestricted unpickler runs the payload
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_crafted_pickle_refused_by_load_checkpoint(crafted):
    path, marker = crafted
    with pytest.raises(CheckpointError, match="not a valid checkpoint: it holds pickled code"):
        ScoreModule.load_checkpoint(str(path))
    assert not marker.exists()


def test_crafted_pickle_refused_by_train_py_resume(crafted, tmp_path):
    path, marker = crafted
    from lit_diffusion.cli.train import main

    with pytest.raises(CheckpointError, match="not a valid checkpoint: it holds pickled code"):
        main([*TINY_TRAIN, "--ckpt_path", str(path), "--ckpt_dir", str(tmp_path / "ck"), "--trainer.max_steps", "5"],
             exit_on_error=False)
    assert not marker.exists()


def accelerate_train_in_process(ckpt_dir, *args):
    """Run the Accelerate launcher's ``train`` in this process on a small swiss roll (5 steps), with
    Accelerate's global state reset before and after."""
    from accelerate.state import AcceleratorState, GradientState

    from lit_diffusion.cli.accelerate_train import build_parser, train

    cfg = build_parser().parse_args(["--cpu", "true", "--logger", "none", "--ckpt_dir", str(ckpt_dir),
                                     "--trainer", "{max_steps: 5}", "--data.init_args.n_samples", "500", *args])
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        return train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_crafted_pickle_refused_by_accelerate_resume(crafted, tmp_path):
    path, marker = crafted
    with pytest.raises(CheckpointError, match="not a valid checkpoint: it holds pickled code"):
        accelerate_train_in_process(tmp_path / "ck", "--ckpt_path", str(path))
    assert not marker.exists()


def test_crafted_pickle_refused_by_export_and_sampling_loaders(crafted, tmp_path):
    path, marker = crafted
    from lit_diffusion.integrations.export import export_pipeline

    with pytest.raises(CheckpointError, match="not a valid checkpoint: it holds pickled code"):
        export_pipeline(str(path), str(tmp_path / "pipe"))
    assert not marker.exists()
    try:
        from lit_diffusion.cli.sample_models import load_lightning
    except ImportError:
        pytest.skip("lit_diffusion.cli.sample is not available")
    with pytest.raises(CheckpointError, match="not a valid checkpoint") as e:
        load_lightning(str(path))
    assert "weights_only=False" not in str(e.value) and "weights_only` set to `False" not in str(e.value)
    assert not marker.exists()
