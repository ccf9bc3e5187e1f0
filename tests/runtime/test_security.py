"""Checkpoints that cannot run code, runs that cannot collide, signals that save (docs/reliability.md).

* crafted checkpoints *without* pickled code whose hyper-parameters name a file-writing function of the
  package, ``torch.save``, a method, a class outside the registry, or a registered class with
  non-JSON / unknown arguments are refused by ``sample.py``, ``ScoreModule.load_checkpoint``,
  ``export_pipeline``, ``train.py --ckpt_path`` and the Accelerate resume, and nothing is written;
* a second run in a live run's checkpoint folder is refused (folder, pid, host named); a dead run's lock
  is taken over; temp-file cleanup leaves other live writers' files alone;
* ``--ckpt_path last`` picks the highest global step (not the newest file), skips unreadable files, and
  the ``checkpoint:`` line names the file written after resuming a copied folder;
* SIGTERM / SIGINT write a checkpoint at the current step and exit 143 / 130 (Lightning and Accelerate);
* smaller holes: resume with another SDE, corrupt/empty checkpoints, scheduler shapes, PC on a zero
  network, bad seeds and config files, moment matching's evaluation count, sample.py outputs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"
sys.path.insert(0, str(ROOT))

from lit_diffusion.runtime.checkpoint_io import CheckpointError  # noqa: E402
from lit_diffusion.training.run_folder import checkpoint_candidates  # noqa: E402
from lit_diffusion.training.module import ScoreModule  # noqa: E402
from lit_diffusion.training.networks import TimeMLP  # noqa: E402
from lit_diffusion.training.registry import UntrustedConfigError, build, describe  # noqa: E402
from lit_diffusion.runtime.run_lock import LOCK_NAME, FolderLockedError, RunLock  # noqa: E402

from test_reliability import TINY_TRAIN as TINY  # noqa: E402  (the tiny swiss-roll run of the reliability tests)
from test_reliability import _env, accelerate_train_in_process  # noqa: E402


# --------------------------------------------------------------------------------------------
# 1. crafted checkpoints (no pickle: they pass weights_only=True)
# --------------------------------------------------------------------------------------------
def _crafted(tmp_path: Path, field: str, desc) -> tuple[Path, Path]:
    """A real tiny checkpoint whose ``hyper_parameters[field]`` is replaced by ``desc``; any
    ``{MARKER}`` in it becomes a path that a successful attack would create."""
    marker = tmp_path / "PWNED"
    m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2])
    hp = dict(m.hparams)
    hp[field] = json.loads(json.dumps(desc).replace("{MARKER}", str(marker)))
    ck = {"state_dict": m.state_dict(), "hyper_parameters": hp, "global_step": 3, "epoch": 0,
          "pytorch-lightning_version": "2.6.0", "data_shape": [2]}
    path = tmp_path / f"crafted_{field}.ckpt"
    torch.save(ck, path)
    torch.load(path, weights_only=True)  # no pickled code: it passes the unpickler's checks
    return path, marker


ATTACKS = {
    "package_file_writer": ("net", {"class_path": "lit_diffusion.runtime.checkpoint_io.atomic_write_bytes",
                                     "init_args": {"data": "import os", "path": "{MARKER}"}}),
    "torch_save": ("net", {"class_path": "torch.save", "init_args": {"obj": 1, "f": "{MARKER}"}}),
    "method_path": ("sde", {"class_path": "lit_diffusion.runtime.lightning_io.AtomicCheckpointIO.save_checkpoint",
                            "init_args": {"checkpoint": {}, "path": "{MARKER}"}}),
    "class_outside_registry": ("loss", {"class_path": "lit_diffusion.training.callbacks.SamplePictures",
                                        "init_args": {"out_dir": "{MARKER}"}}),
    "torch_nn_class": ("net", {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 2}}),
    "non_json_argument": ("sde", {"class_path": "VP", "init_args": {"beta_max": {"class_path": "torch.save"}, "T": [1]}}),
    "unknown_argument": ("sde", {"class_path": "VP", "init_args": {"path": "{MARKER}"}}),
    "unknown_hparam": ("checkpoint_io", "{MARKER}"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_crafted_checkpoint_refused_everywhere(attack, tmp_path, capsys):
    field, desc = ATTACKS[attack]
    path, marker = _crafted(tmp_path, field, desc)
    # ScoreModule.load_checkpoint
    with pytest.raises(CheckpointError, match="not trusted|not a registered|no argument|does not fit|unknown entry"):
        ScoreModule.load_checkpoint(str(path))
    # Lightning's own loader, documented in docs/multigpu.md, goes through the same checks
    with pytest.raises(CheckpointError, match="not trusted|not a registered|no argument|does not fit|unknown entry"):
        ScoreModule.load_from_checkpoint(str(path))
    # export_pipeline
    from lit_diffusion.integrations.export import export_pipeline

    with pytest.raises(CheckpointError):
        export_pipeline(str(path), str(tmp_path / "pipe"))
    assert not (tmp_path / "pipe").exists()
    # sample.py
    from lit_diffusion.cli.sample import main as sample_main

    assert sample_main(["-c", str(path), "--out", str(tmp_path / "out"), "--n", "4", "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert re.search("not trusted|no argument|does not fit|not plain JSON", err), err
    assert not (tmp_path / "out").exists()
    # train.py resume
    from lit_diffusion.cli.train import main as train_main

    with pytest.raises(CheckpointError):
        train_main([*TINY, "--ckpt_path", str(path), "--ckpt_dir", str(tmp_path / "ck"), "--trainer.max_steps", "5"],
                   exit_on_error=False)
    assert not list((tmp_path / "ck").rglob("*.ckpt"))
    assert not marker.exists()


def test_crafted_checkpoint_refused_by_accelerate_resume(tmp_path):
    path, marker = _crafted(tmp_path, *ATTACKS["package_file_writer"])
    with pytest.raises(CheckpointError, match="not a registered"):
        accelerate_train_in_process(tmp_path / "ck", "--ckpt_path", str(path))
    assert not marker.exists() and not list((tmp_path / "ck").rglob("*.ckpt"))


def test_registry_names_old_paths_and_checks_before_calling():
    vp = build({"class_path": "VP", "init_args": {"beta_max": 10}}, "sde")
    assert vp.beta_max == 10
    old = build({"class_path": "lit_diffusion.sdes.VP", "init_args": {"beta_max": 10}}, "sde")  # old checkpoints
    assert type(old) is type(vp)
    assert describe(vp, "sde") == {"class_path": "VP", "init_args": {"beta_min": 0.1, "beta_max": 10.0, "T": 1.0, "t_min": 0.001}}
    with pytest.raises(UntrustedConfigError, match="does not fit the type"):
        build({"class_path": "VP", "init_args": {"beta_max": "ten"}}, "sde")
    with pytest.raises(UntrustedConfigError, match="valid choices"):
        build({"class_path": "TimeMLP"}, "sde")  # right name, wrong kind


def test_a_deferred_builtin_is_registered_when_first_named(monkeypatch):
    """A built-in class of another package (diffusers' UNet2DModel) is registered only when a description,
    a listing or a clashing name needs it; tried with a stand-in so that this process's imports do not matter."""
    from torch import nn

    from lit_diffusion.training import registry

    class FarNet(nn.Module):
        pass

    FarNet.__module__ = "farpkg.nets"
    calls = []

    def load():
        calls.append(1)
        registry.register("net", "FarNet", FarNet, aliases=("farpkg.FarNet",))

    def defer():  # FarNet waits to be registered (again: register replaces nothing, so a reload is harmless)
        monkeypatch.setattr(registry, "_DEFERRED", {"net": [("farpkg", ("FarNet",), load)]})

    for kind in registry.KINDS:  # the real built-ins, loaded into the real tables; then copies of those for this test
        registry.registered(kind)
    monkeypatch.setattr(registry, "_REGISTRY", {k: dict(v) for k, v in registry._REGISTRY.items()})
    monkeypatch.setattr(registry, "_ALIASES", {k: dict(v) for k, v in registry._ALIASES.items()})
    defer()
    assert registry.resolve("net", "TimeMLP").__name__ == "TimeMLP" and registry.stable_name("net", nn.Linear) is None
    assert calls == []  # our own names and other modules' classes never load it
    assert registry.resolve("net", "farnet") is FarNet and calls == [1]  # case-insensitive, loaded once
    assert registry.resolve("net", "farpkg.FarNet") is FarNet and registry.stable_name("net", FarNet) == "FarNet"
    defer()
    assert registry.stable_name("net", FarNet) == "FarNet" and calls == [1, 1]  # a class of its package loads it
    defer()
    with pytest.raises(ValueError, match="'FarNet' is already taken"):  # a clash with it is said at once
        registry.register("net", "FarNet", nn.Linear)
    defer()
    assert "FarNet" in registry.registered("net")  # a listing holds it


def test_training_a_registered_mlp_never_imports_diffusers():
    """In a fresh interpreter: a TimeMLP module built and described through the registry leaves diffusers
    unimported (its import is a second or more of every train.py start); naming UNet2DModel then works."""
    code = ("import sys\n"
            "from lit_diffusion.training.module import ScoreModule\n"
            "from lit_diffusion.training.registry import describe, resolve, stable_name\n"
            "m = ScoreModule(net={'class_path': 'TimeMLP', 'init_args': {'dim': 2, 'hidden': 8, 'n_blocks': 1}}, sde='VP')\n"
            "d = describe(m.net, 'net')\n"
            "print('BEFORE', 'diffusers' in sys.modules, d['class_path'])\n"
            "cls = resolve('net', 'unet2dmodel')\n"
            "print('AFTER', cls.__module__.split('.')[0], resolve('net', 'diffusers.models.UNet2DModel') is cls, "
            "stable_name('net', cls))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["BEFORE", "False", "TimeMLP", "AFTER", "diffusers", "True", "UNet2DModel"], r.stdout


# --------------------------------------------------------------------------------------------
# 2. one run per checkpoint folder
# --------------------------------------------------------------------------------------------
def test_lock_refuses_live_owner_and_takes_over_dead_one(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from lit_diffusion.runtime.run_lock import RunLock\n"
        "RunLock(%r).acquire(); print('locked', flush=True); time.sleep(60)" % (str(ROOT), str(tmp_path / "run")))],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError) as e:
            RunLock(tmp_path / "run").acquire()
        msg = str(e.value)
        assert str(tmp_path / "run") in msg and f"pid {holder.pid}" in msg and socket.gethostname() in msg
    finally:
        holder.kill()
        holder.wait()
    # the holder died (kill -9): its lock is stale and taken over, with a warning saying so
    with pytest.warns(UserWarning, match=f"taking over .* pid {holder.pid} .*no longer exists"):
        lock = RunLock(tmp_path / "run").acquire()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_lock_of_another_host_is_refused_until_its_heartbeat_is_stale(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lock_file = folder / LOCK_NAME
    lock_file.write_text(json.dumps({"host": "other-node", "pid": 1, "started": time.time(), "argv": "train.py"}))
    with pytest.raises(FolderLockedError, match="host other-node"):
        RunLock(folder, heartbeat_s=1, stale_after_s=30).acquire()
    missed = time.time() - 10
    os.utime(lock_file, (missed, missed))  # ten heartbeats missed, still younger than stale_after_s: a slow node
    with pytest.raises(FolderLockedError, match="host other-node"):
        RunLock(folder, heartbeat_s=1, stale_after_s=30).acquire()
    old = time.time() - 120
    os.utime(lock_file, (old, old))  # no heartbeat for two minutes: the node is gone
    with pytest.warns(UserWarning, match="heartbeat is 1[12][0-9] s old"):
        RunLock(folder, heartbeat_s=1, stale_after_s=30).acquire().release()


def test_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"host": "node3", "pid": 7, "started": time.time(),
                                                "slurm_job": "991", "slurm_restart": "0"}))
    monkeypatch.setenv("SLURM_JOB_ID", "992")
    with pytest.raises(FolderLockedError):  # another job: its heartbeat is fresh
        RunLock(folder).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.warns(UserWarning, match="SLURM job 991 was requeued"):
        RunLock(folder).acquire().release()


def test_two_concurrent_train_runs_one_is_refused(tmp_path):
    """Two real ``train.py`` processes aimed at one folder: one trains, the other exits 2 at once."""
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "--ckpt_dir", str(tmp_path / "ck"), "--trainer.max_steps", "100000"]
    a = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while not (tmp_path / "ck" / "swissroll" / LOCK_NAME).exists() and time.time() < deadline:
            time.sleep(0.1)
        b = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
        assert b.returncode == 2, b.stderr[-2000:]
        assert "is in use by another run" in b.stderr and f"pid {a.pid}" in b.stderr and socket.gethostname() in b.stderr
        assert a.poll() is None  # the first run goes on
    finally:
        a.send_signal(signal.SIGTERM)
        out_a, _ = a.communicate(timeout=120)
    assert a.returncode == 143, out_a[-2000:]
    assert not list((tmp_path / "ck" / "swissroll").glob("last-v*.ckpt"))
    assert not (tmp_path / "ck" / "swissroll" / LOCK_NAME).exists()


def test_accelerate_run_in_a_held_folder_is_refused(tmp_path):
    held = RunLock(tmp_path / "ck" / "swissroll").acquire()  # a live run (this process) holds the folder
    try:
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):
            accelerate_train_in_process(tmp_path / "ck")
    finally:
        held.release()
    assert not list((tmp_path / "ck").rglob("*.ckpt"))


def test_temp_cleanup_removes_only_dead_writers_files(tmp_path):
    from lit_diffusion.runtime.checkpoint_io import _host, atomic_write_bytes

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = f".last.ckpt.{_host()}-{os.getppid()}.abc.tmp"  # our parent: alive
    gone = f".last.ckpt.{_host()}-{dead.pid}.abc.tmp"
    other_host = ".last.ckpt.elsewhere-1.abc.tmp"
    for n in (live, gone, other_host):
        (tmp_path / n).write_bytes(b"partial")
    atomic_write_bytes(b"new", tmp_path / "last.ckpt")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live, other_host, "last.ckpt"])


# --------------------------------------------------------------------------------------------
# 3. resume by global step
# --------------------------------------------------------------------------------------------
def test_latest_checkpoint_by_step_not_file_time(tmp_path):
    m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2])
    for step in (1200, 425):  # step=425 written last: the newest file
        torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams), "global_step": step},
                   tmp_path / f"step={step}.ckpt")
        time.sleep(0.01)
    (tmp_path / "last.ckpt").write_bytes(b"\x00" * 100)  # newest and corrupt
    with pytest.warns(UserWarning, match=r"skipping .*last.ckpt.* not a valid checkpoint"):
        best = checkpoint_candidates(tmp_path)[0][0]
    assert Path(best).name == "step=1200.ckpt"


def test_resume_in_a_copied_folder_reports_the_file_written(tmp_path, capsys):
    from lit_diffusion.cli.train import main

    main([*TINY, "--ckpt_dir", str(tmp_path / "a"), "--trainer.max_steps", "10", "--ckpt_every_n_steps", "5"])
    (tmp_path / "b").mkdir()
    for f in (tmp_path / "a" / "swissroll").glob("*.ckpt"):  # copied file by file: new file times
        shutil.copy(f, tmp_path / "b" / f.name)
    capsys.readouterr()
    main([*TINY, "--ckpt_dir", str(tmp_path), "--run_name", "b", "--trainer.max_steps", "20", "--ckpt_path", "last"])
    out = capsys.readouterr().out
    assert "resuming from" in out and "global step 10" in out
    written = out.split("checkpoint: ")[1].split()[0]
    assert written == str(tmp_path / "b" / "last.ckpt")
    assert torch.load(written, weights_only=True)["global_step"] == 20
    assert not list((tmp_path / "b").glob("last-v*.ckpt"))


def test_resume_with_another_sde_is_refused(tmp_path):
    from lit_diffusion.cli.train import main

    main([*TINY, "--ckpt_dir", str(tmp_path), "--trainer.max_steps", "4"])
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "swissroll").glob("*.ckpt")}
    with pytest.raises(CheckpointError) as e:
        main([*TINY, "--ckpt_dir", str(tmp_path), "--trainer.max_steps", "8", "--ckpt_path", "last", "--model.sde", "VE"],
             exit_on_error=False)
    msg = str(e.value)
    assert "different model" in msg and "checkpoint VP(" in msg and "this run   VE(" in msg
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "swissroll").glob("*.ckpt")} == before


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated zip"])
def test_corrupt_or_empty_checkpoint_is_named_not_valid(tmp_path, content):
    from lit_diffusion.cli.train import main

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.ckpt' is not a valid checkpoint") as e:
        ScoreModule.load_checkpoint(str(bad))
    assert "weights_only" not in str(e.value)
    with pytest.raises(CheckpointError, match="not a valid checkpoint"):
        main([*TINY, "--ckpt_dir", str(tmp_path / "ck"), "--ckpt_path", str(bad)], exit_on_error=False)


# --------------------------------------------------------------------------------------------
# 4. signals
# --------------------------------------------------------------------------------------------
def _signal_run(cmd, folder: Path, sig, cwd):
    p = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not list(folder.glob("step=*.ckpt")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, p.stdout.read()[-3000:]
    p.send_signal(sig)
    out, _ = p.communicate(timeout=120)
    return p.returncode, out


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_at_the_current_step_lightning(tmp_path, sig, code):
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "--ckpt_dir", str(tmp_path / "ck"),
           "--trainer.max_steps", "100000", "--ckpt_every_n_steps", "20"]
    rc, out = _signal_run(cmd, tmp_path / "ck" / "swissroll", sig, tmp_path)
    assert rc == code, out[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith(f"received {sig.name}")]
    assert line, out[-3000:]
    step = int(line[0].split("global step ")[1].split()[0])
    path = line[0].split("-> ")[1].strip()
    assert torch.load(path, weights_only=True)["global_step"] == step >= 20
    assert "weights_only` was not set" not in out  # the signal's save says what it saves (no Lightning note)


@pytest.mark.multiprocess
def test_signal_saves_at_the_current_step_accelerate(tmp_path):
    cmd = [sys.executable, "-m", "lit_diffusion.cli.accelerate_train", "--cpu", "true", "--logger", "none",
           "--ckpt_dir", str(tmp_path / "ck"), "--trainer", "{max_steps: 100000}", "--ckpt_every_n_steps", "20",
           "--data.init_args.n_samples", "500", "--model.net.init_args.hidden", "16"]
    rc, out = _signal_run(cmd, tmp_path / "ck" / "swissroll", signal.SIGTERM, tmp_path)
    assert rc == 143, out[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("received SIGTERM")][0]
    step = int(line.split("global step ")[1].split()[0])
    assert torch.load(line.split("-> ")[1].strip(), weights_only=True)["global_step"] == step >= 20
    assert not (tmp_path / "ck" / "swissroll" / LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------
# 5. smaller holes
# --------------------------------------------------------------------------------------------
def test_scheduler_refuses_wrong_shapes_and_nonfinite_outputs():
    from lit_diffusion.integrations.scheduler import SDEScheduler

    s = SDEScheduler(sampler="euler")
    s.set_timesteps(3)
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"model_output has shape \(2, 3, 4, 1\) but sample has shape \(2, 3, 4, 4\)"):
        s.step(torch.randn(2, 3, 4, 1), s.timesteps[0], x)  # would broadcast silently
    with pytest.raises(ValueError, match="shape"):
        s.step(torch.randn(1, 3, 4, 4), s.timesteps[0], x)
    bad = torch.randn(2, 3, 4, 4)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="1 NaN/inf"):
        s.step(bad, s.timesteps[0], x)


def test_pc_with_a_zero_network_stays_finite():
    from lit_diffusion.sampling.samplers import langevin_corrector_step, sample
    from lit_diffusion.core.sdes import VP

    x = torch.randn(8, 2)
    out = langevin_corrector_step(x, torch.zeros_like(x), 0.16, 1.0, torch.randn_like(x))
    assert torch.equal(out, x)  # no usable step size: the sample stays

    class Zero(torch.nn.Module):
        prediction_type = "score"

        def forward(self, x, t):
            return torch.zeros_like(x)

    res = sample(Zero(), VP(), shape=(16, 2), sampler="pc", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.samples).all()


def test_bad_seed_and_config_files_are_named(tmp_path, ckpt, capsys, monkeypatch):
    from lit_diffusion.cli.config_files import check_config_files
    from lit_diffusion.cli.sample import main as sample_main

    for seed in ("-1", str(2**63)):
        assert sample_main(["-c", str(ckpt), "--seed", seed, "--out", str(tmp_path / "o")]) == 2
        assert f"--seed {int(seed)} is invalid" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"seed=-3 is invalid"):
        ScoreModule(seed=-3)
    binary = tmp_path / "model.yaml"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff")
    with pytest.raises(ValueError, match=r"model.yaml' is not a text \(UTF-8 YAML\) file"):
        check_config_files(["--config", str(binary)])
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  sde:\n    class_path: VP\n    init_args: {beta_maxx: 20}\n")
    with pytest.raises(ValueError, match=r"typo.yaml': model.sde.init_args: VP has no argument 'beta_maxx'; valid arguments: \['T', 'beta_max'"):
        check_config_files(["--config", str(typo)])
    from lit_diffusion.cli.train import main as train_main  # what train.py runs (in this process)

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        train_main(["--config", str(typo)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "beta_maxx" in err and len(err.splitlines()) < 5, err


def test_moment_matching_reports_the_evaluations_it_counts(ckpt, tmp_path, monkeypatch):
    from lit_diffusion.cli import sample as sampling_cli
    from lit_diffusion.runtime.precision import NetworkRunner

    calls = [0]
    forward = NetworkRunner.forward

    def counting(self, x, t, class_labels=None):
        calls[0] += 1
        return forward(self, x, t, class_labels)

    monkeypatch.setattr(NetworkRunner, "forward", counting)
    summary = sampling_cli.run(["-c", str(ckpt), "--sampler", "moment_matching", "--steps", "3", "--n", "8",
                                "--batch-size", "8", "--out", str(tmp_path / "o"), "--no-progress", "--no-png"])
    assert summary["nfe_per_sample"] == calls[0] > 3


def test_sample_outputs_checked_paired_and_permissions(ckpt, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from lit_diffusion.cli import sample as sampling_cli
    from lit_diffusion.runtime.checkpoint_io import _host

    t0 = time.time()
    assert sampling_cli.main(["-c", str(ckpt), "--out", "/proc/lit_diffusion_test/out", "--steps", "500", "--n", "4096"]) == 2
    assert "is not writable" in capsys.readouterr().err and time.time() - t0 < 30  # refused before sampling
    assert sampling_cli.main(["-c", str(ckpt), "--out", str(tmp_path / "s.png"), "--steps", "500", "--n", "4096"]) == 2
    err = capsys.readouterr().err
    assert "s.png' names a file" in err and "samples.png" in err and not (tmp_path / "s.png").exists()
    assert time.time() - t0 < 30
    out = tmp_path / "o"
    args = ["-c", str(ckpt), "--out", str(out), "--n", "8", "--steps", "2", "--no-progress"]
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".samples.npz.{_host()}-{dead.pid}.x.tmp"
    stale.write_bytes(b"partial")
    old_umask = os.umask(0o022)
    try:
        first = sampling_cli.run(args)
    finally:
        os.umask(old_umask)
    assert not stale.exists()
    assert (out / "samples.npz").stat().st_mode & 0o777 == 0o644
    run_id = first["written"]["run_id"]
    assert run_id in Image.open(out / "samples.png").info["Description"]
    assert json.loads(str(np.load(out / "samples.npz")["args"]))["run_id"] == run_id
    # a crash while moving the second run's picture into place: never run 1's picture beside run 2's samples
    real_replace = os.replace

    def crash_on_png(src, dst):
        if str(dst).endswith("samples.png"):
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_png)
    with pytest.raises(KeyboardInterrupt):
        sampling_cli.run(args + ["--seed", "100"])
    monkeypatch.setattr(os, "replace", real_replace)
    second = json.loads(str(np.load(out / "samples.npz")["args"]))["run_id"]
    assert second != run_id and not (out / "samples.png").exists()
    assert sorted(p.name for p in out.iterdir()) == ["samples.npz"]
