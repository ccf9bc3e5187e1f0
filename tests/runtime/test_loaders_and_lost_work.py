"""Every loader behind the registry, resume within one run, signals honoured to the end, atomic
folders, bounded inputs (docs/reliability.md, "Red-team table").  Each test fails on the code before
these guarantees: a crafted file, a real signal or kill, or a monkeypatched kill point."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_diffusion.core.sdes import VE, VP  # noqa: E402
from lit_diffusion.runtime.checkpoint_io import CheckpointError  # noqa: E402
from lit_diffusion.runtime.run_lock import LOCK_NAME, FolderLockedError, RunLock  # noqa: E402
from lit_diffusion.training.module import ScoreModule  # noqa: E402
from lit_diffusion.training.networks import TimeMLP  # noqa: E402

from test_reliability import TINY_TRAIN as TINY  # noqa: E402
from test_reliability import _env, accelerate_train_in_process  # noqa: E402

HELPERS = '''
MARKER = {marker!r}
open(MARKER, "w").write("helpers.py was imported")
import torch
from torch import nn


class Net(nn.Module):
    prediction_type = "epsilon"

    def __init__(self, dim: int = 2):
        super().__init__()
        self.lin = nn.Linear(dim + 1, dim)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], 1))


class Callback:
    pass
'''


def _helpers(tmp_path: Path) -> Path:
    """``helpers.py`` in ``tmp_path``: importing it creates the returned marker file."""
    marker = tmp_path / "HELPERS_IMPORTED"
    (tmp_path / "helpers.py").write_text(HELPERS.format(marker=str(marker)))
    return marker


@pytest.fixture
def restore_signals():
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, h in old.items():
        signal.signal(s, h)


def run_training(*args, **kw):
    from lit_diffusion.cli.train import main

    return main([*TINY, *args], **kw)


# --------------------------------------------------------------------------------------------
# 1. ScoreModule.load_from_checkpoint (Lightning's loader) goes through the registry
# --------------------------------------------------------------------------------------------
def _tiny_ckpt(tmp_path: Path, **hp_changes) -> Path:
    m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2])
    hp = {**dict(m.hparams), **hp_changes}
    path = tmp_path / "crafted.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp, "global_step": 3, "epoch": 0,
                "pytorch-lightning_version": "2.6.0"}, path)
    return path


def test_load_from_checkpoint_never_imports_what_a_checkpoint_names(tmp_path, monkeypatch):
    marker = _helpers(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for net in ({"class_path": "helpers.Net", "init_args": {"dim": 2}},
                {"class_path": "torchvision.models.resnet18", "init_args": {"weights": "DEFAULT"}}):
        path = _tiny_ckpt(tmp_path, net=net, _instantiator="lightning.pytorch.cli.instantiate_module",
                          _class_path="lit_diffusion.training.module.ScoreModule")
        with pytest.raises(CheckpointError, match="not a registered net class"):
            ScoreModule.load_from_checkpoint(str(path))
    assert not marker.exists() and "helpers" not in sys.modules
    with pytest.raises(ValueError, match="weights_only=False is refused"):
        ScoreModule.load_from_checkpoint(str(path), weights_only=False)


def test_train_py_checkpoints_store_no_instantiator_and_old_ones_load_safely(tmp_path):
    run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "3")
    ck = torch.load(tmp_path / "swissroll" / "last.ckpt", weights_only=True)
    assert "_instantiator" not in ck["hyper_parameters"] and "_class_path" not in ck["hyper_parameters"]
    # an older checkpoint that carries LightningCLI's instantiator still loads, through the registry
    ck["hyper_parameters"]["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    torch.save(ck, tmp_path / "old.ckpt")
    m = ScoreModule.load_from_checkpoint(str(tmp_path / "old.ckpt"))
    assert all(torch.equal(v, ck["state_dict"][k]) for k, v in m.state_dict().items())
    assert ScoreModule.load_from_checkpoint(str(tmp_path / "old.ckpt"), lr=0.5).hparams.lr == 0.5  # overrides in code


# --------------------------------------------------------------------------------------------
# 2. configs name registered classes only; --register is the opt-in
# --------------------------------------------------------------------------------------------
PLAIN = ["--logger", "none", "--progress_bar", "none", "--samples.every_n_steps", "0", "--samples.n_samples", "8",
         "--samples.steps", "2", "--trainer.limit_val_batches", "0", "--data.init_args.n_samples", "200",
         "--trainer.enable_model_summary", "false"]


@pytest.mark.parametrize("entry", [
    "model:\n  net:\n    class_path: helpers.Net\n",
    "model:\n  net:\n    class_path: torchvision.models.resnet18\n    init_args: {weights: DEFAULT}\n",
    "trainer:\n  callbacks:\n    - class_path: helpers.Callback\n",
    "data:\n  class_path: this.Anything\n",
])
def test_config_class_paths_outside_the_registry_are_refused(entry, tmp_path, monkeypatch, capsys):
    """Through ``train.main`` (what train.py runs) in this process, with ``helpers.py`` importable from the
    path: exit 2 with a short message, nothing named imported, no folder or download made."""
    from lit_diffusion.cli.train import main

    marker = _helpers(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(entry)
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--ckpt_dir", str(tmp_path / "ck"), *PLAIN])
    err = capsys.readouterr().err
    assert e.value.code == 2, err[-2000:]
    assert "configs are data" in err and ("valid" in err or "--register" in err), err[-2000:]
    assert len(err.strip().splitlines()) <= 4, err
    assert not marker.exists() and "helpers" not in sys.modules
    assert not (tmp_path / "torch_home").exists() and not (tmp_path / "ck").exists()


def _env_importing(folder):
    """The test environment with ``folder`` (where ``helpers.py`` lies) first on the import path."""
    env = _env()
    env["PYTHONPATH"] = f"{folder}{os.pathsep}{env['PYTHONPATH']}"
    return env


def test_train_py_refuses_an_unregistered_class_before_anything(tmp_path):
    """The same refusal as a user meets it: ``python train.py --config`` in a fresh interpreter."""
    marker = _helpers(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  net:\n    class_path: helpers.Net\n")
    env = {**_env_importing(tmp_path), "TORCH_HOME": str(tmp_path / "torch_home")}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(cfg), "--ckpt_dir", str(tmp_path / "ck"),
                        *PLAIN], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "configs are data" in r.stderr and "valid model.net choices" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) <= 4, r.stderr
    assert not marker.exists() and not (tmp_path / "torch_home").exists() and not (tmp_path / "ck").exists()


def test_register_flag_is_the_explicit_way_to_train_a_class_of_ones_own(tmp_path):
    marker = _helpers(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  net:\n    class_path: helpers.Net\n    init_args: {dim: 2}\n")
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "--register", "helpers.Net", "--config", str(cfg),
                        "--ckpt_dir", str(tmp_path / "ck"), "--trainer.max_steps", "2", *PLAIN],
                       cwd=tmp_path, env=_env_importing(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert marker.exists()
    ck = torch.load(tmp_path / "ck" / "swissroll" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 2 and ck["hyper_parameters"]["net"]["class_path"] == "Net"


# --------------------------------------------------------------------------------------------
# 3-4. export folders: no code run; no symbolic link out of a model folder
# --------------------------------------------------------------------------------------------
def _tiny_unet_module(sde):
    from lit_diffusion.training.losses import DSM
    from lit_diffusion.training.networks import UNet

    torch.manual_seed(0)
    m = ScoreModule(UNet("tiny", in_channels=1, sample_size=8), sde, DSM(dim_reduction="mean"), ema_decay=0.0)
    m.data_shape = (1, 8, 8)
    return m


def test_lit_pipeline_loads_an_export_without_running_its_code(tmp_path):
    from lit_diffusion.integrations.export import export_pipeline
    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline

    folder = Path(export_pipeline(_tiny_unet_module(VE(sigma_max=50.0)), str(tmp_path / "ve")))
    marker = tmp_path / "PIPELINE_RAN"
    (folder / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    pipe = LitDiffusionPipeline.from_pretrained(folder)
    assert type(pipe.scheduler).__name__ == "SDEScheduler" and not marker.exists()
    assert "LitDiffusionPipeline.from_pretrained(folder)" in (folder / "README.md").read_text().split("```")[1].splitlines()[2]


def test_links_out_of_a_model_folder_are_refused(tmp_path):
    from lit_diffusion.integrations.export import export_pipeline
    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline
    from lit_diffusion.training.pretrained import save_pretrained

    m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], ema_decay=0.0)
    good = Path(save_pretrained(m, tmp_path / "good"))
    outside = tmp_path / "outside"
    shutil.copytree(good, outside)
    # weights that link outside
    linked = tmp_path / "linked"
    linked.mkdir()
    shutil.copy(good / "config.json", linked / "config.json")
    os.symlink(outside / "model.safetensors", linked / "model.safetensors")
    with pytest.raises(CheckpointError, match="leads outside the model folder"):
        ScoreModule.from_pretrained(linked)
    # an autoencoder sub-folder that links outside (the check runs before anything is loaded)
    cfg = json.loads((good / "config.json").read_text())
    cfg["hyper_parameters"]["autoencoder"] = "ae"
    ae = tmp_path / "ae_folder"
    shutil.copytree(good, ae)
    shutil.copy(good / "model.safetensors", tmp_path / "model.safetensors")
    latent = tmp_path / "latent"
    latent.mkdir()
    (latent / "config.json").write_text(json.dumps(cfg))
    shutil.copy(good / "model.safetensors", latent / "model.safetensors")
    os.symlink(ae, latent / "ae")
    with pytest.raises(CheckpointError, match="leads outside the model folder"):
        ScoreModule.from_pretrained(latent)
    # an exported pipeline whose unet/ links outside
    exp = Path(export_pipeline(_tiny_unet_module(VE(sigma_max=50.0)), str(tmp_path / "exp")))
    shutil.move(str(exp / "unet"), str(tmp_path / "unet_outside"))
    os.symlink(tmp_path / "unet_outside", exp / "unet")
    with pytest.raises(CheckpointError, match="leads outside"):
        LitDiffusionPipeline.from_pretrained(exp)


# --------------------------------------------------------------------------------------------
# 5-6. resume stays within one run and falls back past unfit files
# --------------------------------------------------------------------------------------------
def test_a_new_run_sets_an_older_runs_checkpoints_aside_and_last_resumes_its_own(tmp_path, capsys):
    ck = tmp_path / "swissroll"
    run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "12", "--ckpt_every_n_steps", "4")
    old_run = json.loads((ck / "run.json").read_text())["run_id"]
    assert torch.load(ck / "last.ckpt", weights_only=True)["global_step"] == 12
    with pytest.warns(UserWarning, match="of another run .* moved to"):
        run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "4", "--ckpt_every_n_steps", "4")
    new_run = json.loads((ck / "run.json").read_text())["run_id"]
    assert new_run != old_run
    aside = list((ck / "previous").glob(f"{old_run}-*"))
    assert len(aside) == 1 and torch.load(aside[0] / "last.ckpt", weights_only=True)["global_step"] == 12
    capsys.readouterr()
    run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "8", "--ckpt_every_n_steps", "4", "--ckpt_path", "last")
    out = capsys.readouterr().out
    assert "global step 4" in out and "global step 12" not in out
    last = torch.load(ck / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and last["run_id"] == new_run


def test_resume_skips_unfit_and_inconsistent_newest_files(tmp_path, capsys):
    ck = tmp_path / "swissroll"
    run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "8", "--ckpt_every_n_steps", "4")
    good = torch.load(ck / "last.ckpt", weights_only=True)
    missing = dict(good, global_step=9)
    missing["loops"] = None
    missing["state_dict"] = {k: v for i, (k, v) in enumerate(good["state_dict"].items()) if i}  # a weight removed
    torch.save(missing, ck / "step=9.ckpt")
    torch.save(dict(good, global_step=10**15), ck / "step=1000000000000000.ckpt")  # beyond any run
    torch.save(dict(good, global_step=10**11), ck / "step=100000000000.ckpt")  # its loop state says 8
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "12", "--ckpt_every_n_steps", "4", "--ckpt_path", "last")
    said = " ".join(str(x.message) for x in w)
    assert "step=9.ckpt" in said and "does not fit this model" in said
    assert "step=1000000000000000.ckpt" in said and "an integer in [0, 1000000000000]" in said
    assert "step=100000000000.ckpt" in said and "loop state has 8" in said
    assert "global step 8" in capsys.readouterr().out
    assert torch.load(ck / "last.ckpt", weights_only=True)["global_step"] == 12


# --------------------------------------------------------------------------------------------
# 7. signals are honoured after the loop: the final picture and export
# --------------------------------------------------------------------------------------------
def _slow_after_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(200):  # 10 s of "work" unless the signal ends it
        time.sleep(0.05)


def test_sigterm_during_the_final_picture_saves_and_exits_143(tmp_path, monkeypatch, restore_signals):
    from lit_diffusion.training.callbacks import SamplePictures

    monkeypatch.setattr(SamplePictures, "draw", _slow_after_signal)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        run_training("--ckpt_dir", str(tmp_path), "--trainer.max_steps", "6", "--ckpt_every_n_steps", "4")
    assert e.value.code == 143 and time.perf_counter() - t0 < 9
    assert torch.load(tmp_path / "swissroll" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_sigterm_during_the_accelerate_export_exits_143(tmp_path, monkeypatch, restore_signals):
    import lit_diffusion.training.accelerate_loop as loop

    monkeypatch.setattr(loop, "save_pretrained", _slow_after_signal)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit) as e:
        accelerate_train_in_process(tmp_path / "ck")
    assert e.value.code == 143 and time.perf_counter() - t0 < 15
    assert torch.load(tmp_path / "ck" / "swissroll" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_sigterm_before_training_starts_exits_143_and_frees_the_folder(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), *TINY, "--ckpt_dir", str(tmp_path / "ck")]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 30
    while not (tmp_path / "ck" / "swissroll" / LOCK_NAME).exists() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)  # while it imports and builds
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 143, out[-2000:]
    assert not (tmp_path / "ck" / "swissroll" / LOCK_NAME).exists()


# --------------------------------------------------------------------------------------------
# 8. the run lock
# --------------------------------------------------------------------------------------------
def test_a_signal_during_or_just_after_acquire_leaves_no_lock(tmp_path, monkeypatch):
    """SIGTERM before training raises SystemExit(143) wherever the interpreter is: inside ``acquire``
    after the lock file is linked (the full suite once caught train.py there), or after it returned but
    before the caller kept the lock. Neither may leave the folder locked."""
    from lit_diffusion.runtime.run_lock import RunLock

    lock = RunLock(tmp_path / "a")

    def interrupted():
        raise SystemExit(143)

    monkeypatch.setattr(lock, "_start_heartbeat", interrupted)  # right after the lock file is in place
    with pytest.raises(SystemExit):
        lock.acquire()
    assert not (tmp_path / "a" / LOCK_NAME).exists() and not lock.held
    # a fresh interpreter that takes the lock and exits without releasing it (the caller never got it)
    code = ("import sys; from lit_diffusion.runtime.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
            "import os; assert os.path.exists(os.path.join(sys.argv[1], '.run.lock')); raise SystemExit(143)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], env=_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 143, p.stderr[-2000:]
    assert not (tmp_path / "b" / LOCK_NAME).exists()


def test_lock_write_failure_leaves_no_lock_and_a_clear_error(tmp_path, monkeypatch):
    import lit_diffusion.runtime.run_lock as rl

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rl.json, "dump", full_disk)
    with pytest.raises(FolderLockedError, match="could not write the run lock .* No space left"):
        RunLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    RunLock(tmp_path / "run").acquire().release()  # the folder is not blocked


def test_lock_with_odd_fields_or_a_recycled_pid_does_not_block(tmp_path):
    import socket

    from lit_diffusion.runtime.run_lock import process_start

    lock = tmp_path / "run" / LOCK_NAME
    lock.parent.mkdir()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": "abc", "started": "yesterday"}))
    with pytest.raises(FolderLockedError, match="unknown|unreadable|pid abc"):  # fresh: refused, no TypeError
        RunLock(tmp_path / "run", heartbeat_s=1, stale_after_s=5).acquire()
    old = time.time() - 60
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="unreadable"):
        RunLock(tmp_path / "run", heartbeat_s=1, stale_after_s=5).acquire().release()
    # a live pid whose process started at another time than the lock says: the pid was reused
    start = process_start(1)
    if start is None:
        pytest.skip("no /proc on this system")
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "proc_start": start + 1, "started": time.time()}))
    with pytest.warns(UserWarning, match="pid was reused"):
        RunLock(tmp_path / "run").acquire().release()


def test_the_lock_is_taken_before_lightning_is_imported(tmp_path):
    code = ("import sys; from lit_diffusion.cli.train_checks import take_run_lock; "
            f"l = take_run_lock(['--ckpt_dir', {str(tmp_path)!r}, '--run_name', 'r']); "
            "print(l.folder, 'lightning' in sys.modules, 'diffusers' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(tmp_path / "r"), "False", "False"]


# --------------------------------------------------------------------------------------------
# 9. folders are replaced as a whole
# --------------------------------------------------------------------------------------------
SAVER = r'''
import sys, torch
from lit_diffusion.core.sdes import VE, VP
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import TimeMLP
from lit_diffusion.training.pretrained import save_pretrained
mods = []
for tag, sde in (("vp", VP()), ("ve", VE())):
    m = ScoreModule(net=TimeMLP(dim=2, hidden=256, n_blocks=3), sde=sde, data_shape=[2], ema_decay=0.0)
    with torch.no_grad():
        for p in m.net.parameters():
            p.fill_(1.0 if tag == "vp" else 2.0)
    mods.append((tag, m))
i = 0
while True:
    tag, m = mods[i % 2]
    save_pretrained(m, sys.argv[1], info={"tag": tag})
    if i == 1:
        print("ready", flush=True)
    i += 1
'''


def test_save_pretrained_killed_at_random_never_mixes_weights_and_config(tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "model"
    rng = random.Random(0)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(folder)], env=_env(), stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.5))
        p.kill()
        p.wait()
        cfg = json.loads((folder / "config.json").read_text())
        weights = load_file(str(folder / "model.safetensors"))
        value = 1.0 if cfg["info"]["tag"] == "vp" else 2.0
        assert cfg["hyper_parameters"]["sde"]["class_path"] == cfg["info"]["tag"].upper()
        params = [k for k in weights if not k.endswith("freqs")]  # the parameters; the one buffer is shared
        assert params and all(bool((weights[k] == value).all()) for k in params)


def test_export_over_an_old_export_interrupted_leaves_the_old_one_whole(tmp_path, monkeypatch):
    import lit_diffusion.integrations.export as export

    folder = tmp_path / "exp"
    export.export_pipeline(_tiny_unet_module(VE(sigma_max=50.0)), str(folder))

    def digest():
        return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}

    before = digest()
    real = export.atomic_write_bytes

    def killed(data, path):  # the kill point: after the U-Net and scheduler are written, before the README
        if str(path).endswith("README.md"):
            raise KeyboardInterrupt
        return real(data, path)

    monkeypatch.setattr(export, "atomic_write_bytes", killed)
    new = _tiny_unet_module(VP())
    with torch.no_grad():
        for p in new.net.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        export.export_pipeline(new, str(folder), sampler="ddram")
    assert digest() == before
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # the staged folder is gone too


# --------------------------------------------------------------------------------------------
# 10. NaN is a failure
# --------------------------------------------------------------------------------------------
def test_nan_samples_raise_and_sample_py_writes_nothing(tmp_path, capsys):
    from lit_diffusion.cli.sample import main as sample_main
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.training.pretrained import save_pretrained

    m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], ema_decay=0.0)
    with torch.no_grad():
        m.net.out.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="4 of 4 samples contain NaN"):
        sample(m.net, m.sde, shape=(4, 2), steps=3, prediction_type=m.prediction_type)
    assert torch.isnan(sample(m.net, m.sde, shape=(4, 2), steps=3, prediction_type=m.prediction_type,
                              check_finite=False).samples).all()
    folder = save_pretrained(m, tmp_path / "nan_model")
    code = sample_main(["-c", folder, "--out", str(tmp_path / "out"), "--n", "4", "--steps", "2", "--no-progress"])
    assert code == 1
    assert "contain NaN or inf" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# --------------------------------------------------------------------------------------------
# 11. bounds on sizes that come from outside
# --------------------------------------------------------------------------------------------
def test_sizes_from_outside_are_bounded_before_any_work(tmp_path, capsys):
    from lit_diffusion.cli.sample import main as sample_main
    from lit_diffusion.cli.config_files import load_config_text
    from lit_diffusion.integrations.scheduler import SDEScheduler
    from lit_diffusion.sampling.samplers import sample

    t0 = time.perf_counter()
    s = SDEScheduler()
    with pytest.raises(ValueError, match=r"num_inference_steps=1000000 .* \[1, 100000\]"):
        s.set_timesteps(10**6)
    with pytest.raises(ValueError, match=r"num_train_timesteps=30000000 .* \[1, 100000\]"):
        SDEScheduler(sde="VP", num_train_timesteps=3 * 10**7)
    with pytest.raises(ValueError, match=r"num_train_timesteps=30000000"):
        SDEScheduler(num_train_timesteps=3 * 10**7)
    with pytest.raises(ValueError, match=r"steps=1000000 .* \[1, 100000\]"):
        sample(lambda x, t: x, VP(), shape=(2, 2), steps=10**6, prediction_type="epsilon")
    assert time.perf_counter() - t0 < 5
    code = sample_main(["-c", str(ROOT / "checkpoints" / "mnist"), "--out", str(tmp_path / "o"), "--n", str(10**9)])
    err = capsys.readouterr().err
    assert code == 2 and "--n 1000000000" in err and "GiB" in err and "the bound here is --n" in err
    # a 1 KB YAML "billion laughs": refused with the bound, in no time
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1100
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"expands to \d+ YAML nodes .* the bound is 100000"):
        load_config_text(str(bomb))
    with pytest.raises(ValueError, match="YAML nodes"):
        run_training("--config", str(bomb), "--ckpt_dir", str(tmp_path / "ck"), exit_on_error=False)
    assert time.perf_counter() - t0 < 10


def test_a_refused_register_flag_leaves_no_lock(tmp_path):
    """--register of a module that does not exist is refused after the lock was taken: the lock (and
    the folder it created) is released, and the next run starts."""
    with pytest.raises(ValueError, match="--register 'no_such_module.Net': cannot import it"):
        run_training("--register", "no_such_module.Net", "--ckpt_dir", str(tmp_path / "ck"), exit_on_error=False)
    assert not (tmp_path / "ck").exists()
