"""ScoreModule with a real Lightning Trainer: fits, loss decrease, EMA formula, resume, precision,
plain-type checkpoints (weights_only=True)."""


import lightning.pytorch as pl
import pytest
import torch

from lit_diffusion.training.data import SwissRollDataModule

from lit_diffusion.training.image_data import DigitsDataModule
from lit_diffusion.training.ema import EMA, ema_decay_at
from lit_diffusion.training.losses import DSM
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import TimeMLP, UNet
from lit_diffusion.core.sdes import VE, VP





def _trainer(tmp_path, **kw):
    base = dict(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=str(tmp_path), num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", devices=1,
    )
    base.update(kw)
    return pl.Trainer(**base)


def _held_out_loss(module, x, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return float(module.loss(module.field(ema=False).model, module.sde, x, generator=g))


def test_swissroll_loss_decreases_clearly(tmp_path):
    torch.manual_seed(0)
    dm = SwissRollDataModule(n_samples=4000, batch_size=128)
    m = ScoreModule(TimeMLP(dim=2, hidden=64, n_blocks=2), VP(), DSM(), lr=3e-3, warmup_steps=10)
    x = dm.eval_data()
    before = _held_out_loss(m, x)
    _trainer(tmp_path, max_steps=200).fit(m, dm)
    after = _held_out_loss(m, x)
    # zero-initialised epsilon net: DSM(sigma2) starts at E||eps||^2 = d = 2
    assert abs(before - 2.0) < 0.15
    assert after < 0.6 * before, (before, after)
    assert m.global_step == 200 and m.data_shape == (2,)


def test_digits_unet_fast_dev_run_and_sample_shape(tmp_path):
    dm = DigitsDataModule(batch_size=8)
    m = ScoreModule(UNet("tiny", in_channels=1, sample_size=8), VE(), DSM(dim_reduction="mean"), lr=1e-3)
    _trainer(tmp_path, fast_dev_run=2).fit(m, dm)
    assert m.data_shape == (1, 8, 8)
    x = m.sample(3, steps=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


class _Record(pl.Callback):
    def __init__(self):
        self.params = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # the weights after this optimizer step, the ones the EMA update of this step averaged in
        self.params.append([p.detach().clone() for p in pl_module.net.parameters()])


def test_ema_follows_the_formula_and_differs_from_raw(tmp_path):
    torch.manual_seed(1)
    decay, warmup = 0.9, 5
    m = ScoreModule(TimeMLP(dim=2, hidden=16, n_blocks=1), "VP", "dsm", lr=1e-2, warmup_steps=0,
                    ema_decay=decay, ema_warmup=warmup)
    init = [p.detach().clone() for p in m.net.parameters()]
    rec = _Record()
    _trainer(tmp_path, max_steps=12, callbacks=[rec]).fit(m, SwissRollDataModule(n_samples=2000, batch_size=64))
    ema = [e.clone() for e in init]
    for n, theta in enumerate(rec.params, start=1):
        d = min(decay, (1 + n) / (warmup + n))
        assert d == pytest.approx(ema_decay_at(n, decay, warmup))
        ema = [d * e + (1 - d) * p for e, p in zip(ema, theta)]
    got = list(m.ema.module.parameters())
    assert int(m.ema.num_updates) == 12
    for e, g in zip(ema, got):
        assert torch.allclose(e, g, atol=1e-6)
    diff = max(float((g - p).abs().max()) for g, p in zip(got, m.net.parameters()))
    assert diff > 1e-4  # EMA weights are not the raw weights
    # field(ema=True) samples from the EMA network, field(ema=False) from the raw one
    assert m.field(ema=True).model is m.ema.module and m.field(ema=False).model is m.net


def test_ema_averages_float_buffers_and_copies_integer_ones():
    """BatchNorm's running statistics are averaged like weights; its integer batch counter is copied."""
    net = torch.nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.9, warmup=0)
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(16, 3) * 2 + 5)  # training mode: updates running_mean/var and num_batches_tracked
    mean0 = ema.module.running_mean.clone()
    d = ema.update(net)
    assert d == pytest.approx(0.9)
    assert torch.allclose(ema.module.running_mean, d * mean0 + (1 - d) * net.running_mean)
    assert ema.module.num_batches_tracked.dtype == torch.long
    assert int(ema.module.num_batches_tracked) == int(net.num_batches_tracked) == 4


def test_validation_batches_draw_their_own_noise_the_same_in_every_run(tmp_path):
    """Two identical validation batches get different (t, noise) draws, and a second validation run
    repeats the first exactly: the estimate averages over fresh noise yet is comparable across epochs."""

    class Losses(pl.Callback):
        def __init__(self):
            self.values = []

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.values.append(float(outputs))

    torch.manual_seed(0)
    x = torch.randn(64, 2)
    batches = torch.utils.data.DataLoader(torch.cat([x, x]), batch_size=64)  # the same batch twice
    m = ScoreModule(TimeMLP(dim=2, hidden=16, n_blocks=1), VP(), DSM())
    runs = []
    for _ in range(2):
        rec = Losses()
        _trainer(tmp_path, callbacks=[rec], limit_val_batches=None).validate(m, batches, verbose=False)
        runs.append(rec.values)
    assert len(runs[0]) == 2 and abs(runs[0][0] - runs[0][1]) > 1e-3 * abs(runs[0][0])
    assert runs[0] == runs[1]


def test_ema_validation():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(2, 2), decay=1.0)
    assert ema_decay_at(1, 0.999, 0) == 0.999 and ema_decay_at(1, 0.999, 10) == pytest.approx(2 / 11)


class _Batches(pl.Callback):
    def __init__(self):
        self.sums = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.sums.append((trainer.global_step, float(batch.double().sum())))


@pytest.mark.parametrize("stop", [6, 8])  # mid-epoch and exactly at an epoch end (4 batches per epoch)
def test_resume_replays_the_exact_data_order(tmp_path, stop):
    def run(max_steps, ckdir, ckpt_path=None):
        torch.manual_seed(0)
        m = ScoreModule(TimeMLP(dim=2, hidden=8, n_blocks=1), "VP", "dsm")
        rec = _Batches()
        cb = pl.callbacks.ModelCheckpoint(dirpath=str(ckdir), every_n_train_steps=stop, save_last=True)
        torch.manual_seed(123 if ckpt_path else 7)  # the global RNG differs between the runs
        _trainer(tmp_path, max_steps=max_steps, callbacks=[rec, cb], enable_checkpointing=True).fit(
            m, SwissRollDataModule(n_samples=300, batch_size=64), ckpt_path=ckpt_path, weights_only=True
        )
        return rec.sums, m

    full, m_full = run(14, tmp_path / "full")
    first, _ = run(stop, tmp_path / "ck")
    rest, m_res = run(14, tmp_path / "ck", ckpt_path="last")
    resumed = first + rest
    assert [s for s, _ in resumed] == list(range(14))
    assert resumed == full
    # the loss draws are seeded per step: the resumed training ends on the same weights
    for a, b in zip(m_full.net.parameters(), m_res.net.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    for a, b in zip(m_full.ema.module.parameters(), m_res.ema.module.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_resume_from_last_continues_global_step_and_state(tmp_path):
    torch.manual_seed(2)
    ckdir = tmp_path / "ck"

    def make():
        return ScoreModule(TimeMLP(dim=2, hidden=16, n_blocks=1), "VP", "dsm", lr=1e-2, warmup_steps=3)

    def ckpt_cb():
        return pl.callbacks.ModelCheckpoint(dirpath=str(ckdir), every_n_train_steps=3, save_last=True, save_top_k=1)

    dm = SwissRollDataModule(n_samples=2000, batch_size=64)
    m1 = make()
    _trainer(tmp_path, max_steps=6, callbacks=[ckpt_cb()], enable_checkpointing=True).fit(m1, dm)
    last = ckdir / "last.ckpt"
    assert last.is_file()
    ck = torch.load(last, weights_only=True)  # plain types only
    assert ck["global_step"] == 6 and ck["data_shape"] == [2]
    assert ck["hyper_parameters"]["sde"]["class_path"] == "VP"  # stable registry name

    m2 = make()
    seen = {}

    class _Peek(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["ema_updates"] = int(pl_module.ema.num_updates)
            seen["params"] = [p.detach().clone() for p in pl_module.net.parameters()]
            seen["lr"] = trainer.optimizers[0].param_groups[0]["lr"]

    _trainer(tmp_path, max_steps=10, callbacks=[ckpt_cb(), _Peek()], enable_checkpointing=True).fit(
        m2, dm, ckpt_path="last", weights_only=True
    )
    assert seen["step"] == 6 and seen["ema_updates"] == 6
    for a, b in zip(seen["params"], m1.net.parameters()):
        assert torch.equal(a, b)
    assert seen["lr"] == pytest.approx(m1.trainer.optimizers[0].param_groups[0]["lr"])
    assert m2.global_step == 10 and int(m2.ema.num_updates) == 10

    # rebuild from the checkpoint alone (weights_only=True)
    ck2 = torch.load(ckdir / "last.ckpt", weights_only=True)
    m3 = ScoreModule.load_checkpoint(str(ckdir / "last.ckpt"))
    assert int(m3.ema.num_updates) == ck2["global_step"] == 9  # last periodic checkpoint of the second run
    for name, p in m3.ema.module.named_parameters():
        assert torch.equal(p, ck2["state_dict"]["ema.module." + name])
    assert m3.data_shape == (2,)


def test_bf16_mixed_network_float32_loss(tmp_path):
    seen = {}

    class _Dtype(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = outputs["loss"].dtype

    m = ScoreModule(TimeMLP(dim=2, hidden=16, n_blocks=1, zero_init=False), "VP", "dsm")
    net_dtypes = []
    m.net.register_forward_hook(lambda mod, inp, out: net_dtypes.append(out.dtype))
    _trainer(tmp_path, max_steps=2, precision="bf16-mixed", callbacks=[_Dtype()]).fit(
        m, SwissRollDataModule(n_samples=500, batch_size=32)
    )
    assert seen["loss"] == torch.float32
    assert torch.bfloat16 in net_dtypes  # the network itself ran under autocast


def test_nonfinite_loss_stops_with_clear_message(tmp_path):
    m = ScoreModule(TimeMLP(dim=2, hidden=8, n_blocks=1), "VP", "dsm")
    dm = SwissRollDataModule(n_samples=200, batch_size=32)
    dm.setup()
    dm.train_set.x[:] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite training loss"):
        _trainer(tmp_path, max_steps=2).fit(m, dm)


def test_lr_schedule_warmup_then_cosine():
    m = ScoreModule(TimeMLP(dim=2, hidden=8, n_blocks=1), lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert m.lr_factor(0, 110) == pytest.approx(0.1)
    assert m.lr_factor(9, 110) == pytest.approx(1.0)
    assert m.lr_factor(60, 110) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: cos(pi/2) = 0
    assert m.lr_factor(110, 110) == pytest.approx(0.1)


def test_bad_arguments_name_valid_choices():
    with pytest.raises(ValueError, match="valid choices"):
        ScoreModule(TimeMLP(), optimizer="adamx")
    with pytest.raises(ValueError, match="valid choices"):
        ScoreModule(TimeMLP(), lr_schedule="step")
    with pytest.raises(ValueError, match="valid choices"):
        ScoreModule(TimeMLP(), sde="VPX")
    with pytest.raises(ValueError, match="valid choices"):
        ScoreModule(TimeMLP(), loss="xsm")
    with pytest.raises(ValueError, match="lr"):
        ScoreModule(TimeMLP(), lr=-1)
