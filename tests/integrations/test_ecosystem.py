"""Lightning/wandb/torch conventions: a short train.py --help, the run's configuration in every
logger and in files no other run overwrites, a refused second weight average, min-SNR-gamma,
torch.compile, progress bars."""

import glob
import os
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
import yaml

from lit_diffusion.cli.train import main
from lit_diffusion.training.losses import DSM
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import TimeMLP
from lit_diffusion.sampling.samplers import sample
from lit_diffusion.core.sdes import VP
from lit_diffusion.core.targets import ring8_2d

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_help_is_short_and_lists_the_project_classes():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) < 40
    for name in ("TimeMLP", "UNet", "VP", "VE", "DSM", "DigitsDataModule", "MNISTDataModule", "--help-full"):
        assert name in res.stdout, name
    assert "torch.nn" not in res.stdout and "Conv2d" not in res.stdout


def _tiny(tmp_path, run_name, *extra):
    return [
        "--ckpt_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--logger", "csv",
        "--progress_bar", "none", "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1",
        "--data.init_args.n_samples", "500", "--data.init_args.batch_size", "64", "--trainer.max_steps", "2",
        "--trainer.enable_model_summary", "false", "--samples.every_n_steps", "0", "--samples.n_samples", "8",
        "--samples.steps", "2", "--run_name", run_name, *extra,
    ]


def test_run_config_reaches_the_loggers_and_is_not_overwritten(tmp_path):
    main(_tiny(tmp_path, "first", "--model.lr", "0.001"))
    main(_tiny(tmp_path, "second", "--model.lr", "0.003"))
    first = yaml.safe_load(open(tmp_path / "ck" / "first" / "config.yaml"))
    second = yaml.safe_load(open(tmp_path / "ck" / "second" / "config.yaml"))
    assert first["model"]["lr"] == 0.001 and second["model"]["lr"] == 0.003 and first["run_name"] == "first"
    assert not os.path.exists(tmp_path / "logs" / "config.yaml")
    hp = yaml.safe_load(open(glob.glob(str(tmp_path / "logs" / "first" / "version_*" / "hparams.yaml"))[0]))
    assert hp["sde"]["class_path"] == "VP" and hp["loss"]["class_path"] == "DSM" and hp["net"]["class_path"] == "TimeMLP"
    assert hp["run_config"]["data"]["class_path"].endswith("SwissRollDataModule")
    assert glob.glob(str(tmp_path / "logs" / "first" / "version_*" / "config.yaml"))


def test_train_py_prints_no_lightning_args_warning(tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *_tiny(tmp_path, "w")], capture_output=True,
                         text=True, timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "args parameter" not in res.stderr + res.stdout


def test_a_second_weight_average_is_refused(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from lit_diffusion.training.data import TensorDataModule

    module = ScoreModule(TimeMLP(dim=2, hidden=8, n_blocks=1), "VP")
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[EMAWeightAveraging()], default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"keeps its own EMA .*EMAWeightAveraging"):
        trainer.fit(module, TensorDataModule(torch.randn(64, 2), batch_size=16))


def test_min_snr_gamma_weighting():
    """min_snr weights the epsilon MSE by min(SNR, gamma) / SNR (Hang et al.)."""
    sde, x0 = VP(), torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    net = TimeMLP(dim=2, hidden=16, n_blocks=1, zero_init=False)
    plain = DSM()(net, sde, x0, generator=torch.Generator().manual_seed(1))  # noqa: F841 (same draws below)
    per_plain = DSM().per_sample(net, sde, x0, generator=torch.Generator().manual_seed(1))
    per_min = DSM(weighting="min_snr", min_snr_gamma=2.0).per_sample(net, sde, x0, generator=torch.Generator().manual_seed(1))
    t, _ = DSM().sample_time(sde, 512, generator=torch.Generator().manual_seed(1))
    snr = sde.snr(t)
    assert torch.allclose(per_min, per_plain * torch.clamp(snr, max=2.0) / snr, rtol=1e-5)
    assert (snr > 2).any() and (snr < 2).any()
    with pytest.raises(ValueError, match="min_snr_gamma=0"):
        DSM(weighting="min_snr", min_snr_gamma=0)


def test_compile_flag_trains_and_keeps_plain_weights(tmp_path):
    from lit_diffusion.training.data import TensorDataModule

    torch.manual_seed(0)
    module = ScoreModule(TimeMLP(dim=2, hidden=8, n_blocks=1), "VP", compile="eager", warmup_steps=0)
    keys = set(module.state_dict())
    pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path)).fit(
        module, TensorDataModule(torch.randn(64, 2), batch_size=16))
    assert module._train_net() is not module.net and set(module.state_dict()) == keys
    with pytest.raises(ValueError, match="compile=3"):
        ScoreModule(TimeMLP(dim=2), compile=3)


def test_sample_progress_bar(capfd):
    sample(ring8_2d(), VP(), shape=(4, 2), steps=5, progress=True)
    err = capfd.readouterr().err
    assert "multistep x5" in err and "5/5" in err  # the default sampler: auto = multistep
    sample(ring8_2d(), VP(), shape=(4, 2), steps=5)
    assert capfd.readouterr().err == ""


def test_validation_tracks_sample_quality(tmp_path):
    """val/w1, val/mmd2 and the held-out likelihood val/nll reach the logger at every validation and fall
    as the model learns; the last val/nll is log_likelihood() of the same points."""
    import csv

    from lit_diffusion.training.callbacks import SampleQuality
    from lit_diffusion.training.data import MixtureDataModule

    torch.manual_seed(0)
    module = ScoreModule(TimeMLP(dim=2, hidden=64, n_blocks=2), "VP", lr=3e-3, warmup_steps=10, ema_decay=0.9)
    quality = SampleQuality(every_n_validations=1, n_samples=400, steps=20, likelihood_n=64)
    logger = pl.loggers.CSVLogger(str(tmp_path), name="q")
    trainer = pl.Trainer(max_steps=300, val_check_interval=100, check_val_every_n_epoch=None, logger=logger,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[quality], num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, MixtureDataModule("ring8_2d", n_samples=4000, batch_size=256, val_fraction=0.25, labels=False))
    rows = list(csv.DictReader(open(glob.glob(str(tmp_path / "q" / "version_*" / "metrics.csv"))[0])))
    w1 = [float(r["val/w1"]) for r in rows if r.get("val/w1")]
    mmd = [float(r["val/mmd2"]) for r in rows if r.get("val/mmd2")]
    assert len(w1) == len(mmd) == 3
    assert w1[-1] < 0.75 * w1[0], w1
    assert all(abs(v) < 1 for v in mmd)  # unbiased MMD² estimates (noisy around small values)
    nll = [float(r["val/nll"]) for r in rows if r.get("val/nll")]
    assert len(nll) == 3 and nll[-1] < nll[0] - 0.1, nll
    from lit_diffusion.evaluation.likelihood import log_likelihood

    ref = trainer.datamodule.eval_data(1000)[:64].float()
    direct = log_likelihood(module, ref, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(0))
    assert abs(float(-direct.mean()) / 2 - nll[-1]) < 1e-4
    with pytest.raises(ValueError, match="every_n_validations=-1"):
        SampleQuality(every_n_validations=-1)


def test_sample_quality_scores_mnist_images_with_fid_and_kid():
    from lit_diffusion.training.callbacks import SampleQuality
    from lit_diffusion.training.image_data import MNISTDataModule

    module = ScoreModule.from_pretrained(os.path.join(ROOT, "checkpoints", "mnist"))
    ref = MNISTDataModule(limit=600).eval_data()
    scores = SampleQuality(n_samples=40, steps=4).score(module, ref)
    assert set(scores) == {"val/fid_mnist", "val/kid_mnist"} and all(torch.isfinite(torch.tensor(v)) for v in scores.values())
    bpd = SampleQuality(likelihood_n=2, likelihood_rtol=0.05).likelihood(module, ref)  # images: bits per dimension
    assert set(bpd) == {"val/bpd", "val/bpd_se"} and 0.5 < bpd["val/bpd"] < 4, bpd


def test_help_lists_exactly_the_registered_classes():
    from lit_diffusion.cli.train_checks import HELP_NAMES
    from lit_diffusion.training.registry import registered

    for kind, names in HELP_NAMES.items():
        # the package's own classes (other tests register classes of their own in the same process)
        builtin = {n for n, c in registered(kind).items() if c.__module__.startswith(("lit_diffusion.", "diffusers"))}
        assert sorted(names) == sorted(builtin), kind


def test_train_help_does_not_import_lightning():
    code = ("import runpy, sys; sys.argv = ['train.py', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('LIGHTNING' if 'lightning' in sys.modules else 'NO-LIGHTNING')") % os.path.join(ROOT, "train.py")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip().splitlines()[-1] == "NO-LIGHTNING", res.stdout[-500:] + res.stderr[-500:]
