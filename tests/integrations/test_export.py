"""Export to a diffusers pipeline folder: round trip through DiffusionPipeline.from_pretrained, and
the exported pipeline equals our own loop on the same scheduler with the continuous-time network."""

import json
import math
import os

import lightning.pytorch as pl
import pytest
import torch

from lit_diffusion.training.image_data import DigitsDataModule
from lit_diffusion.integrations.export import export_pipeline, rescale_time
from lit_diffusion.training.losses import DSM
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import TimeMLP, UNet
from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP, get_sde




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

    from lit_diffusion.integrations.scheduler import SDEScheduler

    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline

    path, module = trained_ckpt
    out = export_pipeline(path, str(tmp_path / "pipe"), sampler="euler")
    index = json.load(open(os.path.join(out, "model_index.json")))
    assert index["scheduler"][1] == "SDEScheduler" and index["unet"][1] == "UNet2DModel"
    assert index["_class_name"] == ["pipeline", "LitDiffusionPipeline"]
    assert os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"))

    pipe = LitDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    # diffusers runs a folder's own code only when told to
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(out)
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


# ------------------------------------------------------------------------------------------------
# exports that load anywhere: a fresh interpreter, stock schedulers, the right prior
# ------------------------------------------------------------------------------------------------
_FRESH = r"""
import json, sys, torch
from diffusers import DiffusionPipeline
out = {}
for folder, trust, extra in json.loads(sys.argv[1]):
    pipe = DiffusionPipeline.from_pretrained(folder, **({"trust_remote_code": True} if trust else {}))
    pipe.set_progress_bar_config(disable=True)
    im = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np", **extra).images
    out[folder] = [type(pipe).__name__, type(pipe.scheduler).__name__, list(im.shape), bool(torch.isfinite(torch.as_tensor(im)).all()),
                   float(pipe.scheduler.init_noise_sigma)]
out["imported"] = "lit_diffusion" in sys.modules
print(json.dumps(out))
"""


def _export_tiny(tmp_path, sde, **kw):
    torch.manual_seed(0)
    m = ScoreModule(UNet("tiny", in_channels=1, sample_size=8, **kw), sde, DSM(dim_reduction="mean"), ema_decay=0.0)
    m.data_shape = (1, 8, 8)
    return m


def test_exports_load_and_generate_in_a_fresh_interpreter(tmp_path):
    """A VP export is a stock DDPMPipeline that diffusers alone loads (lit_diffusion never imported);
    a VE export and a class-conditional export are LitDiffusionPipelines that a fresh interpreter
    loads with trust_remote_code=True, the VE one starting from its N(0, sigma_max^2 I) prior."""
    import subprocess
    import sys

    vp = export_pipeline(_export_tiny(tmp_path, VP()), str(tmp_path / "vp"))
    ve = export_pipeline(_export_tiny(tmp_path, VE(sigma_max=50.0)), str(tmp_path / "ve"))
    cond = export_pipeline(_export_tiny(tmp_path, VP(), num_classes=3), str(tmp_path / "cond"))
    jobs = [[vp, False, {}], [ve, True, {}], [cond, True, {"class_labels": [0, 2], "guidance_scale": 2.0}]]
    res = subprocess.run([sys.executable, "-c", _FRESH, json.dumps(jobs)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got[vp] == ["DDPMPipeline", "DDPMScheduler", [2, 8, 8, 1], True, 1.0]
    assert got[ve][:4] == ["LitDiffusionPipeline", "SDEScheduler", [2, 8, 8, 1], True]
    assert got[ve][4] == pytest.approx(50.0, rel=1e-3)
    assert got[cond][:4] == ["LitDiffusionPipeline", "DDPMScheduler", [2, 8, 8, 1], True]
    # nothing imported lit_diffusion for the stock folder; the LitDiffusionPipeline folders did
    assert got["imported"] is True
    for folder in (vp, ve, cond):
        assert "Scheduler swaps" in open(os.path.join(folder, "README.md")).read()


def test_vp_export_table_is_the_trained_process(tmp_path):
    """alphas_cumprod[k] of the exported DDPMScheduler is alpha(k / s)^2 at the U-Net's integer
    timesteps, and stock scheduler swaps run on it."""
    from diffusers import DDPMPipeline, DPMSolverMultistepScheduler

    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde = VP(beta_max=15.0)
    out = export_pipeline(_export_tiny(tmp_path, sde), str(tmp_path / "vp"))
    pipe = DDPMPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    abar = pipe.scheduler.alphas_cumprod.double()
    k = torch.arange(1, 1000, dtype=torch.float64)
    assert torch.allclose(abar[1:], sde.alpha(k / 1000.0) ** 2, rtol=2e-5)
    for swap in (DPMSolverMultistepScheduler.from_config(pipe.scheduler.config),
                 SDEScheduler.from_config(pipe.scheduler.config, sampler="ddram")):
        pipe.scheduler = swap
        im = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
        assert im.shape == (2, 8, 8, 1) and torch.isfinite(torch.as_tensor(im)).all()
    # the SDEScheduler built from that table runs the same marginals as the trained VP
    sched = SDEScheduler.from_config(pipe.scheduler.config)
    u = torch.tensor([50.0, 500.0, 999.0], dtype=torch.float64)
    assert torch.allclose(sched.sde.alpha(u), sde.alpha(u / 1000.0), rtol=1e-4)


def test_conditional_pipeline_guidance(tmp_path):
    """The conditional pipeline equals the package's own guided sampler on the same scheduler run."""
    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline

    m = _export_tiny(tmp_path, VP(), num_classes=3)
    torch.nn.init.normal_(m.net.unet.class_embedding.weight)
    out = export_pipeline(m, str(tmp_path / "cond"), sampler="euler", final_denoise=False)
    pipe = LitDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.num_classes == 3
    run = lambda **kw: pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),  # noqa: E731
                            output_type="pt", **kw).images
    guided, plain, uncond = run(class_labels=[0, 2], guidance_scale=3.0), run(class_labels=[0, 2]), run()
    assert (guided - plain).abs().max() > 1e-3 and (plain - uncond).abs().max() > 1e-3
    # by hand: the guided network output u + w (c - u) through the same scheduler
    sched = pipe.scheduler
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 8, 8), generator=g) * sched.init_noise_sigma
    y = torch.tensor([0, 2])
    with torch.no_grad():
        for u in sched.timesteps:
            c = pipe.unet(x, u, class_labels=y).sample
            n = pipe.unet(x, u, class_labels=torch.full((2,), 3)).sample
            x = sched.step(n + 3.0 * (c - n), u, x, generator=g).prev_sample
    raw = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="latent",
               class_labels=[0, 2], guidance_scale=3.0).images
    assert torch.allclose(raw, x, rtol=1e-4, atol=1e-4)
    assert torch.allclose(guided, (raw / 2 + 0.5).clamp(0, 1))
    with pytest.raises(ValueError, match="out of range"):
        run(class_labels=[0, 3])
    with pytest.raises(ValueError, match="needs class_labels"):
        run(guidance_scale=2.0)


def test_pipeline_starts_from_the_prior_with_its_mean():
    """LitDiffusionPipeline draws x_T from the SDE's prior N(m, v I), its mean included (an OU process
    with mu = 3): a pipeline that ignored a non-zero prior mean would start 3 away from it."""
    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sched = SDEScheduler(sde="OU", sde_kwargs={"mu": 3.0, "theta": 1.0, "T": 5.0}, sampler="multistep", ode=True)
    pipe = LitDiffusionPipeline(unet=_export_tiny(None, VP()).net.unet, scheduler=sched)
    x = pipe._prior((4000, 1, 2, 2), torch.Generator().manual_seed(0), "cpu", torch.float32)
    assert abs(float(x.mean()) - 3.0) < 0.05
    assert abs(float(x.std()) - math.sqrt(sched.sde.prior_var)) < 0.05
