"""train.py's LightningCLI: embedded default run, resume from `last`, config files and overrides,
errors that name the bad key / class / value and the valid choices, loggers (wandb offline)."""

import glob
import os

import pytest
import torch

from lit_diffusion.cli.train import DiffusionCLI, main
from lit_diffusion.cli.train_setup import make_logger, wandb_mode




pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, "configs")


def _tiny(tmp_path, *extra):
    return [
        "--ckpt_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--logger", "csv",
        "--progress_bar", "none", "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1",
        "--data.init_args.n_samples", "1000", "--data.init_args.batch_size", "64",
        "--trainer.val_check_interval", "10", "--trainer.log_every_n_steps", "5", "--trainer.enable_model_summary", "false",
        "--samples.every_n_steps", "0", "--samples.n_samples", "64", "--samples.steps", "5",
        "--ckpt_every_n_steps", "10", *extra,
    ]


def test_default_run_then_resume_from_last(tmp_path, capsys):
    cli = main(_tiny(tmp_path, "--trainer.max_steps", "12", "--samples.every_n_steps", "5"))
    out = capsys.readouterr().out
    from lit_diffusion.runtime.lightning_io import AtomicCheckpointIO

    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    last = tmp_path / "ck" / "swissroll" / "last.ckpt"
    assert f"checkpoint: {last}" in out
    png = cli.report()["samples"]
    assert png and os.path.isfile(png) and png.endswith(".png") and f"samples:    {png}" in out
    pictures = sorted(os.listdir(tmp_path / "ck" / "swissroll" / "samples"))
    assert pictures == [f"samples_step{k:07d}.png" for k in (5, 10, 12)]  # every 5 steps and at the end
    ck = torch.load(last, weights_only=True)
    assert ck["global_step"] == 12  # written at the final step, not only at the periodic one (10)
    metrics = glob.glob(str(tmp_path / "logs" / "swissroll" / "version_*" / "metrics.csv"))
    header = open(metrics[0]).readline()
    for key in ("train/loss", "train/loss_t0.00-0.25", "train/lr", "train/grad_norm", "train/samples_per_sec", "val/loss"):
        assert key in header, key

    cli2 = main(_tiny(tmp_path, "--trainer.max_steps", "20", "--ckpt_path", "last"))
    assert cli2.trainer.global_step == 20
    assert int(cli2.model.ema.num_updates) == 20  # the EMA continued from the checkpoint's 12 updates
    assert torch.load(last, weights_only=True)["global_step"] == 20


@pytest.mark.parametrize("name", ["swissroll", "gmm", "digits", "mnist", "cifar10", "mnist-pretrained"])
def test_configs_parse_with_overrides(name, tmp_path):
    cli = DiffusionCLI(
        args=[
            "--config", os.path.join(CONFIGS, f"{name}.yaml"), "--model.sde", "VP", "--model.sde.beta_max", "15",
            "--trainer.devices", "1", "--logger", "none", "--ckpt_dir", str(tmp_path),
        ]
    )
    assert type(cli.model.sde).__name__ == "VP" and cli.model.sde.beta_max == 15.0
    # checkpoints/mnist holds the shipped model: the MNIST config trains into checkpoints/mnist-unet
    assert cli.config["run_name"] == {"mnist": "mnist-unet"}.get(name, name)
    assert cli.model.hparams["sde"]["init_args"]["beta_max"] == 15.0


def test_override_switches_class_and_sets_its_arguments(tmp_path):
    cli = DiffusionCLI(
        args=["--model.sde", "VE", "--model.sde.sigma_max", "80", "--model.loss", "SSM", "--model.loss.projections", "2",
              "--data", "MixtureDataModule", "--data.target", "bimodal_1d", "--model.net.init_args.dim", "1",
              "--logger", "none", "--ckpt_dir", str(tmp_path)]
    )
    assert type(cli.model.sde).__name__ == "VE" and cli.model.sde.sigma_max == 80.0
    assert type(cli.model.loss).__name__ == "SSM" and cli.model.loss.projections == 2
    assert cli.datamodule.target_name == "bimodal_1d"


def _error(capsys, args) -> str:
    with pytest.raises(SystemExit) as e:
        DiffusionCLI(args=args)
    assert e.value.code != 0
    return capsys.readouterr().err


def test_config_errors_name_the_key_class_or_value_and_choices(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lrr: 0.1\n")
    err = _error(capsys, ["--config", str(bad), "--logger", "none"])
    assert "lrr" in err
    err = _error(capsys, ["--model.sde", "VPX", "--logger", "none"])
    assert "VPX" in err and "valid model.sde choices" in err and "ContractiveOU" in err
    err = _error(capsys, ["--data", "Foo", "--logger", "none"])
    assert "Foo" in err and "SwissRollDataModule" in err
    err = _error(capsys, ["--model.optimizer", "adamx", "--logger", "none"])
    assert "adamx" in err and "adamw" in err and "sgd" in err
    err = _error(capsys, ["--logger", "neptune"])
    assert "neptune" in err and "tensorboard" in err
    # a value only the class itself can judge: the error names the argument and the valid range
    with pytest.raises(ValueError, match=r"batch_size=-3 .*positive integer"):
        DiffusionCLI(args=["--data.init_args.batch_size", "-3", "--logger", "none", "--ckpt_dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"beta_max=0.0 is invalid"):
        DiffusionCLI(args=["--model.sde.beta_max", "0", "--logger", "none", "--ckpt_dir", str(tmp_path)])


def test_wandb_offline_without_account_writes_local_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode() == "offline"
    main(_tiny(tmp_path, "--trainer.max_steps", "3", "--logger", "wandb", "--trainer.val_check_interval", "3"))
    assert os.environ.get("WANDB_MODE") in ("offline", "dryrun")  # WandbLogger(offline=True) says dryrun
    runs = glob.glob(str(tmp_path / "logs" / "wandb" / "offline-run-*"))
    assert runs, os.listdir(tmp_path / "logs")
    assert glob.glob(os.path.join(runs[0], "*.wandb"))  # the file `wandb sync` uploads later
    import wandb

    wandb.finish()
    # the run's SDE, loss, network and data are in the wandb config (the offline run's records)
    # (wandb's service process writes them asynchronously: wait for them, up to 30 s)
    import time

    keys = (b'"sde"', b'"loss"', b'"net"', b"run_config", b"SwissRollDataModule", b"TimeMLP")
    for _ in range(150):
        records = open(glob.glob(os.path.join(runs[0], "*.wandb"))[0], "rb").read()
        if all(k in records for k in keys):
            break
        time.sleep(0.2)
    for key in keys:
        assert key in records, key
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode() == "online"


@pytest.mark.parametrize("kind,pattern", [("csv", "metrics.csv"), ("tensorboard", "events.out.tfevents.*")])
def test_csv_and_tensorboard_loggers_one_flag_away(kind, pattern, tmp_path):
    from importlib.util import find_spec

    if kind == "tensorboard" and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        pytest.skip("tensorboard is an optional dependency and is not installed")
    main(_tiny(tmp_path, "--trainer.max_steps", "5", "--logger", kind))
    assert glob.glob(str(tmp_path / "logs" / "swissroll" / "version_*" / pattern))
    with pytest.raises(ValueError, match="valid choices"):
        make_logger("neptune", str(tmp_path), "x")


@pytest.mark.parametrize("config", sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs", "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as e:
        DiffusionCLI(args=["--config", config, "--print_config"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert "model:" in out and "quality:" in out


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    """Offline wandb: the interrupted run and its resume write the same wandb run id (the run id of
    run.json), so `wandb sync` shows one run, not one per resume."""
    import json
    import re

    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    main(_tiny(tmp_path, "--trainer.max_steps", "3", "--logger", "wandb", "--ckpt_every_n_steps", "3"))
    wandb.finish()
    main(_tiny(tmp_path, "--trainer.max_steps", "6", "--logger", "wandb", "--ckpt_every_n_steps", "3", "--ckpt_path", "last"))
    wandb.finish()
    run_id = json.loads((tmp_path / "ck" / "swissroll" / "run.json").read_text())["run_id"]
    runs = sorted(glob.glob(str(tmp_path / "logs" / "wandb" / "offline-run-*")))
    # offline-run-<time>-<id>; wandb adds "-1" to the folder when both runs start within the same second
    ids = {re.sub(r"^offline-run-\d+_\d+-([0-9a-z]+)(-\d+)?$", r"\1", os.path.basename(r)) for r in runs}
    assert len(runs) == 2 and ids == {run_id}, runs


def test_a_missing_data_folder_is_an_error_before_any_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}
    r = subprocess.run([sys.executable, str(root / "train.py"), "--data", "ImageFolderDataModule", "--data.root",
                        str(tmp_path / "does-not-exist"), "--ckpt_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "is not a directory" in r.stderr and "Traceback" not in r.stderr
    assert len((r.stdout + r.stderr).strip().splitlines()) <= 12, r.stdout + r.stderr
    assert "No seed found" not in r.stdout + r.stderr
    assert not (tmp_path / "ck").exists() and not (tmp_path / "logs").exists() and not (tmp_path / "wandb").exists()


def test_a_config_that_is_not_yaml_is_an_error_of_two_lines_or_so(tmp_path, capsys):
    """Read before anything else (also by the translation of former class paths): exit 2, the file and
    the YAML error named, no traceback."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  sde: [\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(bad), "--ckpt_dir", str(tmp_path / "ck"), "--logger", "none"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"config file '{bad}' is not valid YAML" in err and "Traceback" not in err
