"""The two launchers share one training semantics: the same EMA rule, the same noise seeds, the same
checkpoint schema (each loads the other's checkpoints), and a CSV / tracker / progress bar in the
Accelerate loop."""

import csv

import pytest
import torch

from lit_diffusion.cli.accelerate_train import build_parser, train
from lit_diffusion.cli.train import main
from lit_diffusion.training.ema import EMA, ema_decay_at
from lit_diffusion.training.module import ScoreModule

COMMON = [
    "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1", "--model.net.init_args.time_dim", "8",
    "--data.init_args.n_samples", "512", "--data.init_args.batch_size", "32", "--model.warmup_steps", "2",
    "--model.ema_every_n_steps", "3", "--model.ema_decay", "0.9", "--trainer.max_steps", "20",
    "--trainer.log_every_n_steps", "5", "--ckpt_every_n_steps", "100",
]


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_ema_rule_counts_optimizer_steps():
    net = torch.nn.Linear(2, 2)
    ema = EMA(net, decay=0.9, warmup=10, every_n_steps=3)
    used = [ema.step(net) for _ in range(7)]
    assert used[:2] == [None, None] and used[3:5] == [None, None] and used[6] is None
    assert used[2] == pytest.approx(ema_decay_at(3, 0.9, 10)) and used[5] == pytest.approx(ema_decay_at(6, 0.9, 10))
    assert int(ema.num_updates) == 7


def test_twenty_steps_under_each_launcher_give_the_same_ema(tmp_path, fresh_accelerate):
    """Same config and seed: the Lightning CLI and the Accelerate loop reach the same raw and EMA
    weights (EMA every 3 steps), and each launcher loads the other's checkpoint."""
    main(["--ckpt_dir", str(tmp_path / "pl"), "--logger", "none", "--progress_bar", "none", "--run_name", "r",
          "--samples.every_n_steps", "0", "--samples.n_samples", "4", "--samples.steps", "2",
          "--quality.every_n_validations", "0", "--trainer.limit_val_batches", "0", "--trainer.enable_model_summary",
          "false", *COMMON])
    res = train(build_parser().parse_args(["--ckpt_dir", str(tmp_path / "acc"), "--run_name", "r", "--logger", "csv",
                                           "--log_dir", str(tmp_path / "logs"), "--cpu", "true", *COMMON]))
    lit = ScoreModule.load_checkpoint(str(tmp_path / "pl" / "r" / "last.ckpt"))
    acc = res.module
    for a, b in zip(lit.ema.module.parameters(), acc.ema.module.parameters()):
        assert torch.allclose(a, b.cpu(), atol=1e-6), (a - b.cpu()).abs().max()
    for a, b in zip(lit.net.parameters(), acc.net.parameters()):
        assert torch.allclose(a, b.cpu(), atol=1e-6)
    assert int(lit.ema.num_updates) == int(acc.ema.num_updates) == 20
    # the Accelerate checkpoint is read by Lightning's own loader too
    acc_ckpt = str(tmp_path / "acc" / "r" / "last.ckpt")
    back = ScoreModule.load_from_checkpoint(acc_ckpt, weights_only=True)
    assert all(torch.equal(p, q.cpu()) for p, q in zip(back.ema.module.parameters(), acc.ema.module.parameters()))
    # a real CSV
    rows = list(csv.DictReader(open(tmp_path / "logs" / "r" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20] and all(float(r["train/loss"]) > 0 for r in rows)


def test_accelerate_tracker_config_is_flat_and_complete():
    from lit_diffusion.training.accelerate_loop import tracker_config

    cfg = build_parser().parse_args(["--model.lr", "0.003"])
    flat = tracker_config(cfg, ScoreModule(**{}))
    assert flat["model.lr"] == 0.003 and flat["model.sde.class_path"] == "VP" and "data.class_path" in flat
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_accelerate_progress_bar(tmp_path, fresh_accelerate, capfd):
    train(build_parser().parse_args(["--ckpt_dir", str(tmp_path), "--run_name", "p", "--cpu", "true",
                                     *COMMON[:-6], "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "2"]))
    err = capfd.readouterr().err
    assert "train" in err and "4/4" in err


def _pl(tmp_path, folder, steps, *extra):
    return main(["--ckpt_dir", str(tmp_path / folder), "--logger", "none", "--progress_bar", "none", "--run_name", "r",
                 "--samples.every_n_steps", "0", "--samples.n_samples", "4", "--samples.steps", "2",
                 "--quality.every_n_validations", "0", "--trainer.limit_val_batches", "0",
                 "--trainer.enable_model_summary", "false", *COMMON, "--trainer.max_steps", str(steps), *extra])


def _acc(tmp_path, folder, steps, *extra):
    return train(build_parser().parse_args(["--ckpt_dir", str(tmp_path / folder), "--run_name", "r", "--cpu", "true",
                                            "--progress_bar", "none", *COMMON, "--trainer.max_steps", str(steps), *extra]))


def _weights(path):
    m = ScoreModule.load_checkpoint(str(path))
    return [p.detach().clone() for p in list(m.net.parameters()) + list(m.ema.module.parameters())]


@pytest.mark.parametrize("first", ["accelerate", "lightning"])
def test_a_run_continues_under_the_other_launcher(tmp_path, fresh_accelerate, first):
    """30 steps = 14 under one launcher + 16 under the other (across an epoch boundary), checkpoint to
    checkpoint: same global step, data order, noise, optimizer, schedule and EMA as 30 under one.
    (A constant learning rate: a cosine schedule depends on the max_steps each run was started with.)"""
    import shutil

    const = ["--model.lr_schedule", "constant"]
    _pl(tmp_path, "ref", 30, *const)
    if first == "accelerate":
        _acc(tmp_path, "a", 14, *const)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        _pl(tmp_path, "b", 30, "--ckpt_path", "last", *const)
    else:
        _pl(tmp_path, "a", 14, *const)
        shutil.copytree(tmp_path / "a", tmp_path / "b")
        _acc(tmp_path, "b", 30, "--ckpt_path", "last", *const)
    import torch as _t

    ref, got = _weights(tmp_path / "ref" / "r" / "last.ckpt"), _weights(tmp_path / "b" / "r" / "last.ckpt")
    assert _t.load(str(tmp_path / "b" / "r" / "last.ckpt"), weights_only=True)["global_step"] == 30
    for a, b in zip(ref, got):
        assert _t.allclose(a, b, atol=1e-5), (a - b).abs().max()
