"""Export to a diffusers pipeline folder: round trip through DiffusionPipeline.from_pretrained, and
the exported pipeline equals our own loop on the same scheduler with the continuous-time network."""

import json
import os

import lightning.pytorch as pl
import pytest
import torch

from lit_diffusion.data import DigitsDataModule
from lit_diffusion.export import export_pipeline, rescale_time
from lit_diffusion.losses import DSM
from lit_diffusion.module import ScoreModule
from lit_diffusion.networks import TimeMLP, UNet
from lit_diffusion.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP, get_sde




@pytest.mark.parametrize("sde", [VP(), SubVP(), VE(), OU(), ContractiveVP(), ContractiveOU(theta=0.5)])
def test_time_change_is_exact(sde):
    s = 1000.0 / sde.T
    name, kw = rescale_time(sde, s)
    new = get_sde(name, **kw)
    t = torch.linspace(sde.t_min, sde.T, 7, dtype=torch.float64)
    for f in ("alpha", "sigma", "mean_offset"):
        assert torch.allclose(getattr(new, f)(t * s), getattr(sde, f)(t), rtol=1e-10, atol=1e-12), f
    # the reverse-time drift scales by 1/s: d/du = (1/s) d/dt
    a, b = sde.drift_coefficients(t)
    a2, b2 = new.drift_coefficients(t * s)
    assert torch.allclose(a2 * s, a, rtol=1e-10) and torch.allclose(new.g2(t * s) * s, sde.g2(t), rtol=1e-10)
    assert new.t_min == pytest.approx(sde.t_min * s) and new.T == pytest.approx(sde.T * s)


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = ScoreModule(UNet("tiny", in_channels=1, sample_size=8), VP(beta_max=15.0), DSM(dim_reduction="mean"), lr=1e-3,
                    warmup_steps=0, ema_decay=0.5, ema_warmup=0)
    ck = pl.callbacks.ModelCheckpoint(dirpath=str(tmp / "ck"), save_last=True)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[ck], limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(m, DigitsDataModule(batch_size=8))
    trainer.save_checkpoint(str(tmp / "ck" / "final.ckpt"))
    torch.set_num_threads(n_threads)
    return str(tmp / "ck" / "final.ckpt"), m


def test_export_round_trip_matches_our_loop(trained_ckpt, tmp_path):
    from diffusers import DiffusionPipeline, UNet2DModel

    from lit_diffusion.scheduler import SDEScheduler

    path, module = trained_ckpt
    out = export_pipeline(path, str(tmp_path / "pipe"), sampler="euler")
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["scheduler"][1] == "SDEScheduler" and index["unet"][1] == "UNet2DModel"
    assert os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))

    pipe = DiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.unet, UNet2DModel) and isinstance(pipe.scheduler, SDEScheduler)
    # the exported weights are the EMA weights
    ema = dict(module.ema.module.unet.named_parameters())
    for name, p in pipe.unet.named_parameters():
        assert torch.equal(p, ema[name])
    images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()

    # the same run by hand: our continuous-time network at t = u / s on the scheduler's timesteps u
    s = 1000.0 / module.sde.T
    sched = SDEScheduler.from_pretrained(os.path.join(out, "scheduler"))
    sched.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=g)
    net = module.ema.module.eval()
    with torch.no_grad():
        for u in sched.timesteps:
            eps = net(x, torch.full((2,), float(u) / s))
            x = sched.step(eps, u, x, generator=g).prev_sample
    ours = (x / 2 + 0.5).clamp(0, 1)
    assert torch.allclose(images, ours, atol=1e-5)
    # the scheduler's process is our VP(beta_max=15) in timestep units
    t = torch.tensor([0.01, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(sched.sde.alpha(t * s), module.sde.alpha(t), rtol=1e-9)


def test_export_refuses_non_image_networks(tmp_path):
    m = ScoreModule(TimeMLP(dim=2), "VP", "dsm")
    with pytest.raises(TypeError, match="UNet"):
        export_pipeline(m, str(tmp_path / "x"))
    with pytest.raises(TypeError, match="ScoreModule or a checkpoint path"):
        export_pipeline(42, str(tmp_path / "x"))
