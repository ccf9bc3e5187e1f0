"""The diffusers keys users set on a scheduler and the keywords pipelines pass to step(): each is
mapped to its meaning or refused with a message, never dropped."""

import numpy as np
import pytest
import torch

from lit_diffusion.integrations.scheduler import SDEScheduler, dynamic_threshold
from lit_diffusion.core.schedules import get_timesteps


def _tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2).eval()


def test_ddim_pipeline_passes_eta_and_it_is_honoured():
    from diffusers import DDIMPipeline

    unet = _tiny_unet()

    def run(sched, **kw):
        pipe = DDIMPipeline(unet=unet, scheduler=sched)  # DDIMPipeline converts it to a DDIMScheduler...
        pipe.scheduler = sched  # ...so swap ours in, as users do
        pipe.set_progress_bar_config(disable=True)
        return pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np", **kw).images

    # eta=0: the probability-flow ODE, identical to a scheduler configured with ode=True
    ode = run(SDEScheduler(sampler="ddram", ode=True, seed=0))
    assert np.allclose(run(SDEScheduler(sampler="ddram", seed=0), eta=0.0), ode, atol=1e-6)
    # eta=1: the reverse SDE, identical to the default stochastic configuration (DDIMPipeline's
    # use_clipped_model_output is accepted)
    sde = run(SDEScheduler(sampler="ddram", seed=0), eta=1.0, use_clipped_model_output=True)
    assert not np.allclose(sde, ode, atol=1e-3)
    with pytest.raises(ValueError, match="eta=0.5 is not supported by sampler 'ddram'"):
        run(SDEScheduler(sampler="ddram", seed=0), eta=0.5)
    # multistep runs any level (docs/maths.md §5, "Stochasticity"); the pipeline's eta wins over the config's
    # (DDIMPipeline passes eta=0.0 unless told)
    half = run(SDEScheduler(sampler="multistep"), eta=0.5)
    assert np.allclose(run(SDEScheduler(sampler="multistep", eta=0.5), eta=0.5), half, atol=1e-6)
    assert np.allclose(run(SDEScheduler(sampler="multistep", eta=0.5)), run(SDEScheduler(sampler="multistep", ode=True)), atol=1e-6)
    full = run(SDEScheduler(sampler="multistep"), eta=1.0)
    assert np.allclose(run(SDEScheduler(sampler="multistep", eta=0.5), eta=1.0), full, atol=1e-6)
    assert not np.allclose(half, full, atol=1e-3)
    with pytest.raises(ValueError, match=r"eta=0.5 \(the stochasticity of the SDE form\) applies to sampler 'multistep'"):
        SDEScheduler(sampler="ddram", eta=0.5)
    with pytest.raises(ValueError, match="eta=0.5 applies to the SDE form only"):
        SDEScheduler(sampler="multistep", ode=True, eta=0.5)
    with pytest.raises(ValueError, match="variance_noise"):
        s = SDEScheduler()
        s.set_timesteps(2)
        s.step(torch.zeros(1, 1, 2, 2), s.timesteps[0], torch.zeros(1, 1, 2, 2), variance_noise=torch.zeros(1, 1, 2, 2))


def test_karras_sigmas_and_final_sigmas_type():
    s = SDEScheduler(use_karras_sigmas=True, sampler="euler", final_denoise=False)
    s.set_timesteps(6)
    want = get_timesteps(s.sde, 6, "edm", rho=7.0)
    assert torch.allclose(s._grid, want)
    with pytest.raises(ValueError, match="use_karras_sigmas=True"):
        SDEScheduler(use_karras_sigmas=True, schedule="uniform")
    zero, smin = SDEScheduler(final_sigmas_type="zero", final_denoise=False), SDEScheduler(final_sigmas_type="sigma_min")
    zero.set_timesteps(5)
    smin.set_timesteps(5)
    assert len(zero.timesteps) == len(smin.timesteps) + 1  # one final denoising evaluation
    assert float(zero.sigmas[-1]) == 0.0 and float(smin.sigmas[-1]) > 0
    with pytest.raises(ValueError, match="final_sigmas_type='last'"):
        SDEScheduler(final_sigmas_type="last")


def test_timestep_spacing_selects_diffusers_spacing():
    from diffusers import DDIMScheduler

    cfg = dict(timestep_spacing="leading", steps_offset=1, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ours = SDEScheduler(sampler="euler", **cfg)
    ddim = DDIMScheduler(**cfg)
    ours.set_timesteps(10)
    ddim.set_timesteps(10)
    assert ours.config.schedule == "diffusers" and ours._schedule == "diffusers"  # the effective grid is shown
    assert np.allclose(ours.timesteps[: len(ddim.timesteps)].numpy(), ddim.timesteps.numpy().astype(np.float32))
    with pytest.raises(ValueError, match="only apply to schedule='diffusers'"):
        SDEScheduler(schedule="uniform", timestep_spacing="trailing")


def test_dynamic_thresholding_matches_diffusers():
    from diffusers import DDPMScheduler

    x0 = torch.randn(4, 3, 8, 8) * torch.tensor([0.5, 2.0, 4.0, 9.0])[:, None, None, None]
    ref = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=3.0)._threshold_sample(x0)
    assert torch.allclose(dynamic_threshold(x0, 0.9, 3.0), ref, atol=1e-6)
    # in a run: the thresholded field differs from the plain one where the estimate leaves [-1, 1]
    s = SDEScheduler(thresholding=True, sampler="euler", prediction_type="sample")
    s.set_timesteps(3)
    x = torch.randn(2, 1, 4, 4)
    out = s.step(x0[:2, :1, :4, :4], s.timesteps[0], x).prev_sample
    plain = SDEScheduler(sampler="euler", prediction_type="sample")
    plain.set_timesteps(3)
    assert not torch.allclose(out, plain.step(x0[:2, :1, :4, :4], plain.timesteps[0], x).prev_sample)
    with pytest.raises(ValueError, match="sample_max_value"):
        SDEScheduler(sample_max_value=0.5)


def test_retrieve_timesteps_with_sigmas_and_timesteps():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    s = SDEScheduler(sampler="euler", final_denoise=False)
    sig = np.array([14.0, 5.0, 1.5, 0.4, 0.1, 0.0])
    ts, n = retrieve_timesteps(s, sigmas=sig)
    assert n == len(ts) == 5
    # the grid's noise levels are the given sigmas (the final 0 is the data end, t_min)
    assert np.allclose(s.sigmas[:5].numpy(), sig[:5], rtol=1e-4)
    ts2, _ = retrieve_timesteps(s, timesteps=[900, 600, 300, 100])
    assert ts2.tolist()[0] == 900.0 and len(s.sigmas) == len(ts2) + 1
    with pytest.raises(ValueError, match="strictly decreasing"):
        s.set_timesteps(sigmas=[1.0, 2.0])
    with pytest.raises(ValueError, match="either timesteps or sigmas"):
        s.set_timesteps(sigmas=[2.0, 1.0], timesteps=[900, 100])


def test_stable_diffusion_style_loop_with_guidance():
    """The loop of Stable-Diffusion pipelines: retrieve_timesteps, a doubled batch for the
    unconditional and conditional halves, guidance on the noise prediction, scheduler.step."""
    from diffusers import UNet2DModel
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                       num_class_embeds=3).eval()
    torch.nn.init.normal_(unet.class_embedding.weight)
    sd_config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                     timestep_spacing="leading", clip_sample=False)

    def run(w):
        sched = SDEScheduler(sampler="ddram", seed=0, **sd_config)
        timesteps, _ = retrieve_timesteps(sched, 6)
        g = torch.Generator().manual_seed(0)
        latents = torch.randn(2, 4, 8, 8, generator=g) * sched.init_noise_sigma
        cond, uncond = torch.tensor([1, 2]), torch.tensor([0, 0])
        with torch.no_grad():
            for t in timesteps:
                inp = sched.scale_model_input(torch.cat([latents] * 2), t)
                noise_uncond, noise_cond = unet(inp, t, class_labels=torch.cat([uncond, cond])).sample.chunk(2)
                noise = noise_uncond + w * (noise_cond - noise_uncond)
                latents = sched.step(noise, t, latents, generator=g).prev_sample
        return latents

    a, b = run(7.5), run(1.0)
    assert torch.isfinite(a).all() and a.shape == (2, 4, 8, 8)
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [dict(snr=float("inf")), dict(snr=0.0), dict(n_corrector=-1), dict(n_corrector=1.5),
                                 dict(snr_norm="nope")])
def test_one_sampler_specification_sample_and_scheduler_agree(bad):
    """The stepper validates the sampler options once: sample() and SDEScheduler refuse the same values
    with the same message."""
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.core.targets import ring8_2d
    from lit_diffusion.core.sdes import VP

    with pytest.raises(ValueError) as a:
        sample(ring8_2d(), VP(), shape=(2, 2), sampler="pc", steps=2, **bad)
    with pytest.raises(ValueError) as b:
        SDEScheduler(sampler="pc", **bad)
    assert str(a.value) == str(b.value)


def test_a_source_spacing_that_sets_the_grid_is_said_and_shown():
    """from_config of a config with timestep_spacing='trailing' (or Karras sigmas) warns once and
    records the effective grid in the config, so that a saved scheduler shows what it runs."""
    import warnings

    from diffusers import DDIMScheduler

    from lit_diffusion.integrations.scheduler import SDEScheduler

    with pytest.warns(UserWarning, match="timestep_spacing='trailing' selects schedule='diffusers'"):
        s = SDEScheduler.from_config(DDIMScheduler(timestep_spacing="trailing").config)
    assert s.config.schedule == "diffusers"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s2 = SDEScheduler.from_config(s.config)  # said once: the reloaded config names its grid
    assert s2.config.schedule == "diffusers"
    with pytest.warns(UserWarning, match="use_karras_sigmas=True selects schedule='edm'"):
        assert SDEScheduler(use_karras_sigmas=True).config.schedule == "edm"


def test_ddram_options_are_refused_for_other_samplers_and_checked_for_ddram():
    with pytest.raises(ValueError, match="are DDRaM options; sampler 'multistep' takes neither"):
        SDEScheduler(sampler="multistep", evals_per_step=1)
    with pytest.raises(ValueError, match=r"evals_per_step=3 is invalid; valid choices: \[1, 2\]"):
        SDEScheduler(sampler="ddram", evals_per_step=3)
    with pytest.raises(ValueError, match="unknown DDRaM midpoint 'middle'"):
        SDEScheduler(sampler="ddram", midpoint="middle")
    sched = SDEScheduler(sampler="ddram", evals_per_step=1)
    sched.set_timesteps(5)
    assert sched.order == 1 and len(sched.timesteps) == 6  # five steps and the final denoising evaluation
