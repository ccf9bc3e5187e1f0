"""SDEScheduler inside real diffusers pipelines, and its accuracy (docs/maths.md §5, §6).

* a tiny random ``UNet2DModel`` in a real ``DDPMPipeline`` gives finite images of the right shape
  for every sampler; a pipeline folder with our scheduler saves and loads;
* with an analytic epsilon "model" (exact for a Gaussian target under the scheduler's own
  :class:`DiscreteVP` process, conditioned on the fractional timestep) the scheduler driven like a
  pipeline reproduces :func:`lit_diffusion.sampling.samplers.sample` with the same noise (same code path) and
  converges to the target, with the exact Gaussian KL decreasing in the number of steps;
* Stable-Diffusion-style loops (init_noise_sigma, scale_model_input, tuple outputs, img2img slicing
  with set_begin_index and add_noise);
* clear errors for bad names, steps <= 0 and timesteps outside the grid.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from lit_diffusion.core.discrete_vp import DiscreteVP
from lit_diffusion.sampling.samplers import sample
from lit_diffusion.integrations.scheduler import SCHEDULER_SAMPLERS, SDEScheduler
from lit_diffusion.core.targets import GaussianMixture

SAMPLER_VARIANTS = {
    "euler": dict(sampler="euler"),
    "euler_ode": dict(sampler="euler", ode=True),
    "exponential_euler": dict(sampler="exponential_euler"),
    "ddim": dict(sampler="exponential_euler", parametrization="denoiser", ode=True),
    "ddram": dict(sampler="ddram"),
    "ddram_ode": dict(sampler="ddram", ode=True),
    "ddram_one_eval": dict(sampler="ddram", evals_per_step=1),  # its step starts one step() call early
    "ddram_one_eval_ode": dict(sampler="ddram", evals_per_step=1, ode=True),
    "ddram_log_snr": dict(sampler="ddram", midpoint="log_snr"),
    # the signal-to-noise step rule uses per-sample norms ||z||/||score||: in 2-D they fluctuate
    # a lot and snr = 0.1 over-steps (KL grows with the number of steps); 0.01 is stable here
    "pc": dict(sampler="pc", n_corrector=1, snr=0.01),
    "pc_ddram": dict(sampler="pc", predictor="ddram", n_corrector=1, snr=0.1),
    "localization": dict(sampler="localization"),
    "multistep": dict(sampler="multistep"),
    "multistep_ode": dict(sampler="multistep", ode=True),
    "multistep_corrector": dict(sampler="multistep", ode=True, corrector=True, solver_order=2),
}
assert {v["sampler"] for v in SAMPLER_VARIANTS.values()} == set(SCHEDULER_SAMPLERS)




# --------------------------------------------------------------------------------------------
# DDPMPipeline with a tiny random UNet
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        add_attention=False,
    ).eval()


@pytest.mark.parametrize("name", list(SAMPLER_VARIANTS))
def test_ddpm_pipeline_every_sampler(tiny_unet, name):
    pipe = DDPMPipeline(unet=tiny_unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config, **SAMPLER_VARIANTS[name])
    assert isinstance(pipe.scheduler.sde, DiscreteVP)
    out = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert out.shape == (2, 3, 8, 8)
    assert torch.isfinite(out).all()
    sched = pipe.scheduler
    assert len(sched.timesteps) == 3 * sched.order + 1  # every evaluation, plus the final denoising one
    assert sched.step_index == len(sched.timesteps)
    if name == "ddram":
        # a second call with the same generator gives the same images (midpoints from the seed config)
        again = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
        assert torch.equal(out, again)


def test_ddpm_pipeline_with_continuous_sde_and_fp64(tiny_unet):
    # our own SDE: the network is conditioned on its continuous time in [t_min, T]
    sched = SDEScheduler(sampler="ddram", sde="VP", sde_kwargs={"beta_min": 0.1, "beta_max": 20.0})
    pipe = DDPMPipeline(unet=tiny_unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert out.shape == (1, 8, 8, 3) and np.isfinite(out).all()
    assert float(sched.timesteps.max()) <= 1.0 and float(sched.timesteps.min()) >= 1e-3


def test_pipeline_save_load_round_trip(tiny_unet, tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet, scheduler=SDEScheduler(sampler="ddram", schedule="log_snr"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path)
    loaded = DDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is SDEScheduler
    assert dict(loaded.scheduler.config) == {k: v for k, v in pipe.scheduler.config.items() if k != "_use_default_values"}
    a = pipe(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(2), output_type="pt").images
    b = loaded(batch_size=1, num_inference_steps=3, generator=torch.Generator().manual_seed(2), output_type="pt").images
    # the reloaded UNet differs from the original by ~1e-7 (float rounding), amplified by the random net
    assert torch.allclose(a, b, atol=1e-3)
    # DiffusionPipeline.from_pretrained(..., scheduler=obj) takes our SchedulerMixin instance
    swapped = DDPMPipeline.from_pretrained(tmp_path, scheduler=SDEScheduler(sampler="localization"))
    assert type(swapped.scheduler) is SDEScheduler and swapped.scheduler.config.sampler == "localization"



def test_saved_pipeline_loads_in_a_fresh_interpreter(tiny_unet, tmp_path):
    """A stock pipeline saved with SDEScheduler loads in a new process with ``DiffusionPipeline.
    from_pretrained`` once the module recorded in model_index.json is imported; diffusers (>= 0.42)
    never imports a module a folder names, and without that import its error names the module."""
    import json
    import subprocess
    import sys

    DDPMPipeline(unet=tiny_unet, scheduler=SDEScheduler(sampler="euler", ode=True)).save_pretrained(tmp_path)
    module = json.loads((tmp_path / "model_index.json").read_text())["scheduler"][0]
    assert module == "lit_diffusion.integrations.scheduler"
    load = ("from diffusers import DiffusionPipeline\n"
            f"p = DiffusionPipeline.from_pretrained({str(tmp_path)!r})\n"
            "print(type(p).__name__, type(p.scheduler).__name__, p.scheduler.config.sampler, p.scheduler.config.ode)\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PYTEST")}
    ok = subprocess.run([sys.executable, "-c", f"import {module}\n" + load], capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.split() == ["DDPMPipeline", "SDEScheduler", "euler", "True"]
    bare = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, timeout=300)
    assert bare.returncode != 0 and f"import {module} before calling `from_pretrained`" in bare.stderr

# --------------------------------------------------------------------------------------------
# Analytic "model": the exact epsilon of a Gaussian target under the scheduler's process
# --------------------------------------------------------------------------------------------
class AnalyticEps(nn.Module):
    """``forward(x, t)`` = exact prediction of ``kind`` for ``target`` under ``sde`` at the
    (fractional) network timestep ``t`` (a float or a ``(B,)`` tensor), like a perfectly trained net."""

    def __init__(self, target: GaussianMixture, sde, kind: str = "epsilon"):
        super().__init__()
        self.target, self.sde, self.kind = target, sde, kind
        self.prediction_type = kind
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.target.prediction(x, t, self.sde, self.kind).to(x.dtype)


TARGET = GaussianMixture.gaussian([0.6, -0.4], 0.5**2)


def run_like_pipeline(sched, model, x_T, steps, generator=None, sd_style=False, midpoint_generator=None):
    sched.set_timesteps(steps, generator=midpoint_generator)
    x = x_T * (sched.init_noise_sigma if sd_style else 1.0)
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t) if sd_style else x
        out = model(inp, t)
        if sd_style:
            x = sched.step(out, t, x, generator=generator, return_dict=False)[0]
        else:
            x = sched.step(out, t, x, generator=generator).prev_sample
    return x


# sample() draws a DDRaM midpoint per sample and step from the same generator as the noise, the
# scheduler draws them in set_timesteps (shared by the batch): sample() is given the scheduler's
# uniforms (midpoint_u) so that both consume the same noise stream.
EQUIVALENCE = list(SAMPLER_VARIANTS)


@pytest.mark.parametrize("name", EQUIVALENCE)
def test_scheduler_reproduces_sample_with_same_noise(name):
    """Same stepper, same grid, same noise stream: the pipeline-driven scheduler and the sample()
    loop agree to float rounding (the scheduler is an adapter, not a second implementation)."""
    kw = dict(SAMPLER_VARIANTS[name])
    sched = SDEScheduler(schedule="log_snr", **kw)
    model = AnalyticEps(TARGET, sched.sde)
    B = 6
    x_T = torch.randn(B, 2, generator=torch.Generator().manual_seed(5))
    steps, seed = 6, 11
    x_sched = run_like_pipeline(
        sched, model, x_T, steps,
        generator=torch.Generator().manual_seed(seed),
        midpoint_generator=torch.Generator().manual_seed(seed),
    )
    calls = model.calls
    opts = {k: v for k, v in kw.items() if k in ("predictor", "n_corrector", "snr", "corrector", "solver_order", "evals_per_step", "midpoint")}
    ref = sample(
        model,
        sched.sde,
        x_T=x_T,
        sampler=kw["sampler"],
        steps=steps,
        schedule="log_snr",
        parametrization=sched.stepper.parametrization,
        ode=kw.get("ode", False),
        generator=torch.Generator().manual_seed(seed),
        final_denoise=True,
        prediction_type="epsilon",
        midpoint_u=sched._u if sched.stepper.needs_midpoint else None,
        **opts,
    )
    assert ref.nfe == len(sched.timesteps) == calls
    assert torch.allclose(x_sched, ref.samples, atol=1e-5, rtol=1e-5), (x_sched - ref.samples).abs().max()


def gaussian_kl_to_target(x: torch.Tensor) -> float:
    """KL( N(mean(x), cov(x)) || target ) — the outputs of these samplers on a Gaussian target are
    Gaussian, so this is the exact KL up to Monte-Carlo error of the moments."""
    x = x.double()
    m = x.mean(0)
    C = torch.cov(x.T)
    mu, S = TARGET.mean().flatten(), TARGET.covariance()
    Si = torch.linalg.inv(S)
    d = x.shape[1]
    return 0.5 * float(torch.trace(Si @ C) + (mu - m) @ Si @ (mu - m) - d + torch.logdet(S) - torch.logdet(C))


@pytest.mark.parametrize("name", ["euler", "exponential_euler", "ddram", "pc", "localization", "ddram_ode"])
def test_converges_to_gaussian_target(name):
    kw = SAMPLER_VARIANTS[name]
    n = 3000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(7))
    kls = []
    for steps in (4, 40):
        sched = SDEScheduler(schedule="log_snr", **kw)
        model = AnalyticEps(TARGET, sched.sde)
        x = run_like_pipeline(sched, model, x_T, steps, generator=torch.Generator().manual_seed(8))
        assert torch.isfinite(x).all()
        kls.append(gaussian_kl_to_target(x))
    # Monte-Carlo floor of the moment-fitted KL with n = 3000 in 2-D is ~ d(d+3)/(4n) ~ 1e-3;
    # measured at 40 steps: euler 0.007, exponential_euler / localization 0.022, pc 0.021,
    # ddram 0.0018, ddram_ode 0.0014 (at 4 steps: 44, 0.97, 0.97, 44, 0.46, 0.11)
    assert kls[1] < 0.03, kls
    assert kls[1] < kls[0] / 3, kls


def test_prediction_types_agree():
    """epsilon, v_prediction and sample (x0) networks give the same trajectory (§2 conversions)."""
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    outs = []
    for ptype, kind in (("epsilon", "epsilon"), ("v_prediction", "v"), ("sample", "denoiser")):
        sched = SDEScheduler(sampler="ddram", prediction_type=ptype)
        model = AnalyticEps(TARGET, sched.sde, kind=kind)
        outs.append(run_like_pipeline(sched, model, x_T, 5, generator=torch.Generator().manual_seed(4)))
    assert torch.allclose(outs[0], outs[1], atol=1e-4)
    assert torch.allclose(outs[0], outs[2], atol=1e-4)


def test_ddram_midpoints_in_timesteps_follow_the_stepper_law():
    sched = SDEScheduler(sampler="ddram")
    sched.set_timesteps(8, generator=torch.Generator().manual_seed(0))
    ts = sched._eval_times
    grid = sched._grid
    starts, mids = ts[0:-1:2], ts[1:-1:2]
    assert torch.allclose(starts, grid[:-1])
    # each midpoint lies in its step and is the stepper's inverse-CDF midpoint of the drawn u
    assert bool(((mids < grid[:-1]) & (mids > grid[1:])).all())
    tau = sched.stepper.midpoint(grid[:-1], grid[1:], sched._u)
    assert torch.allclose(mids, tau, rtol=1e-12)
    # denoiser parametrization: the midpoint is uniform in SNR between the step's end points, u counted
    # from the start of the step (docs/maths.md §5)
    lam = sched.sde.snr(mids)
    lt, ls = sched.sde.snr(grid[:-1]), sched.sde.snr(grid[1:])
    assert torch.allclose((lam - lt) / (ls - lt), sched._u, atol=1e-8)
    # the same seed config gives the same midpoints; another generator gives others
    again = SDEScheduler(sampler="ddram")
    again.set_timesteps(8)
    other = SDEScheduler(sampler="ddram", seed=1)
    other.set_timesteps(8)
    sched.set_timesteps(8)
    assert torch.equal(again.timesteps, sched.timesteps)
    assert not torch.equal(other.timesteps, sched.timesteps)


def test_pc_repeats_times_for_correctors():
    sched = SDEScheduler(sampler="pc", n_corrector=2)
    assert sched.order == 3
    sched.set_timesteps(3)
    ts = sched._eval_times
    g = sched._grid
    # per step: the predictor at t_k, then the corrector twice at t_{k+1}; then the final denoising
    expected = torch.stack([g[:-1], g[1:], g[1:]], 1).flatten()
    assert torch.allclose(ts[:-1], expected)
    assert ts[-1] == g[-1]


# --------------------------------------------------------------------------------------------
# Stable-Diffusion-style loops
# --------------------------------------------------------------------------------------------
def test_sd_style_loop_and_img2img():
    sched = SDEScheduler(sampler="ddram", schedule="edm")
    model = AnalyticEps(TARGET, sched.sde)
    x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(9))
    x = run_like_pipeline(sched, model, x_T, 20, generator=torch.Generator().manual_seed(1), sd_style=True)
    assert gaussian_kl_to_target(x) < 0.02

    # img2img: start at step t_start of 20 from noised target samples
    steps, strength = 20, 0.4
    sched.set_timesteps(steps)
    t_start = int(steps - steps * strength)
    timesteps = sched.timesteps[t_start * sched.order :]
    sched.set_begin_index(t_start * sched.order)
    init = TARGET.sample(2000, generator=torch.Generator().manual_seed(3)).float()
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(4))
    latents = sched.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))
    gen = torch.Generator().manual_seed(5)
    for t in timesteps:
        latents = sched.step(model(sched.scale_model_input(latents, t), t), t, latents, generator=gen, return_dict=False)[0]
    assert torch.isfinite(latents).all()
    assert gaussian_kl_to_target(latents) < 0.02
    with pytest.raises(ValueError, match="does not start a step"):
        sched.set_begin_index(t_start * sched.order + 1)


def test_custom_timesteps():
    sched = SDEScheduler(sampler="euler")
    sched.set_timesteps(timesteps=[999, 700, 400, 100, 0])
    assert sched.num_inference_steps == 4
    assert torch.allclose(sched._grid, torch.tensor([999, 700, 400, 100, 1e-3], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        sched.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match="either num_inference_steps or timesteps"):
        sched.set_timesteps(3, timesteps=[10, 5])
    with pytest.raises(ValueError, match=r"lie in \[0, 999\]"):
        sched.set_timesteps(timesteps=[1200, 5])


def test_diffusers_spacing_schedule_matches_ddpm_grid():
    """schedule="diffusers": the evaluation times of a one-evaluation sampler are DDPM's timesteps
    (timestep 0 is t_min, where the final denoising evaluation happens, as DDPM's last step)."""
    for spacing, offset in (("linspace", 0), ("leading", 1), ("trailing", 0)):
        ddpm = DDPMScheduler(timestep_spacing=spacing, steps_offset=offset)
        ddpm.set_timesteps(10)
        ours = SDEScheduler(sampler="euler", schedule="diffusers", timestep_spacing=spacing, steps_offset=offset)
        ours.set_timesteps(10)
        expected = ddpm.timesteps.double().clamp(min=1e-3)
        if float(expected[-1]) > 1e-3:  # trailing never reaches 0: one more step to t_min
            expected = torch.cat([expected, torch.tensor([1e-3], dtype=torch.float64)])
        assert torch.allclose(ours._eval_times, expected), (spacing, ours._eval_times)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def test_errors_name_the_bad_value():
    with pytest.raises(ValueError, match=r"unknown sampler 'heun'.*valid choices"):
        SDEScheduler(sampler="heun")
    with pytest.raises(ValueError, match="moment_matching.*Jacobian"):
        SDEScheduler(sampler="moment_matching")
    with pytest.raises(ValueError, match=r"unknown schedule 'cosine'.*valid choices"):
        SDEScheduler(schedule="cosine")
    with pytest.raises(ValueError, match=r"unknown prediction type 'noise_pred'"):
        SDEScheduler(prediction_type="noise_pred")
    with pytest.raises(ValueError, match=r"unknown beta_schedule 'quadratic'"):
        SDEScheduler(beta_schedule="quadratic")
    with pytest.raises(ValueError, match=r"does not support parametrization 'score'"):
        SDEScheduler(sampler="localization", parametrization="score")
    with pytest.raises(ValueError, match="n_corrector=-1"):
        SDEScheduler(sampler="pc", n_corrector=-1)
    with pytest.raises(ValueError, match="unknown SDE 'VX'"):
        SDEScheduler(sde="VX")
    sched = SDEScheduler(sampler="ddram")
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(x, 999, x)
    for bad in (0, -3, 2.5, None):
        with pytest.raises(ValueError, match=f"num_inference_steps={bad!r} is invalid"):
            sched.set_timesteps(bad)
    sched.set_timesteps(4)
    with pytest.raises(ValueError, match=r"timestep 123\.4 is not a step start"):
        sched.step(x, 123.4, x)
    sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match=r"timestep 999\.0 is not the expected evaluation time"):
        sched.step(x, sched.timesteps[0], x)  # out of order
    with pytest.raises(ValueError, match="outside the process' time range"):
        sched.add_noise(x, x, torch.tensor([1000.5, 3.0]))


# --------------------------------------------------------------------------------------------
# DiscreteVP: the DDPM table as a VP SDE in timestep units (docs/maths.md §1)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"])
def test_discrete_vp_matches_the_ddpm_table(beta_schedule):
    ddpm = DDPMScheduler(beta_schedule=beta_schedule)
    sched = SDEScheduler(beta_schedule=beta_schedule, sampler="euler")
    sde = sched.sde
    assert torch.equal(sched.betas, ddpm.betas)
    k = torch.arange(1000, dtype=torch.float64)
    ac = ddpm.alphas_cumprod.double().clamp_min(2.0**-24)
    assert torch.allclose(sde.alpha(k) ** 2, ac, rtol=1e-12, atol=0)
    assert torch.allclose(sde.sigma2(k) + sde.alpha(k) ** 2, torch.ones_like(k), atol=1e-14)
    # exact DDPM transitions between integer timesteps: alpha_k / alpha_{k-1} = sqrt(1 - beta_k)
    r = (sde.alpha(k[1:]) / sde.alpha(k[:-1])) ** 2
    assert torch.allclose(r[:-1], 1 - ddpm.betas[1:-1].double(), rtol=1e-6)
    # a(t) and g^2 from the derivative: (sigma^2)' = 2 a sigma^2 + g^2, alpha' = a alpha (finite
    # differences inside the segments, where log alpha is linear)
    t = torch.tensor([0.3, 10.5, 499.25, 998.7], dtype=torch.float64)
    h = 1e-6
    ds2 = (sde.sigma2(t + h) - sde.sigma2(t - h)) / (2 * h)
    a, _ = sde.drift_coefficients(t)
    assert torch.allclose(ds2, 2 * a * sde.sigma2(t) + sde.g2(t), rtol=1e-5)
    dla = (sde.log_alpha(t + h) - sde.log_alpha(t - h)) / (2 * h)
    assert torch.allclose(dla, a, rtol=1e-5)
    assert torch.allclose(sde.g2(t), -2 * a)
    # at a knot the slope is the one of the segment below: g^2(k) = log(abar_{k-1} / abar_k), i.e.
    # -log(1 - beta_k) ~ beta_k up to the float32 rounding of diffusers' cumulative product
    kk = torch.tensor([1.0, 500.0, 998.0], dtype=torch.float64)
    idx = kk.long()
    assert torch.allclose(sde.g2(kk), torch.log(ac[idx - 1] / ac[idx]), rtol=1e-9)
    assert torch.allclose(sde.g2(kk), -torch.log1p(-ddpm.betas[idx].double()), rtol=2e-2)
    # t_from_snr inverts snr exactly, SNR strictly decreasing
    tt = torch.linspace(1e-3, 999, 2001, dtype=torch.float64)
    lam = sde.snr(tt)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(sde.t_from_snr(lam), tt, atol=1e-7)
    assert sde.prior_var == 1.0 and sched.init_noise_sigma == 1.0
    # G(t) = int_0^t g^2 in closed form equals the sum of the per-segment slopes
    G = sde.int_g2(torch.tensor([0.0, 3.0, 2.5], dtype=torch.float64))
    g2_int = [sde.g2(torch.tensor(float(j), dtype=torch.float64)) for j in (1, 2, 3)]
    assert torch.allclose(G[:2], torch.stack([torch.zeros((), dtype=torch.float64), sum(g2_int)]))
    assert torch.allclose(G[2], g2_int[0] + g2_int[1] + 0.5 * g2_int[2])


def test_discrete_vp_errors_and_tables_on_any_dtype():
    with pytest.raises(ValueError, match="non-increasing"):
        DiscreteVP([0.9, 0.95, 0.5])
    with pytest.raises(ValueError, match="at least 2"):
        DiscreteVP([0.9])
    with pytest.raises(ValueError, match=r"trained_betas=.*at least 2"):
        SDEScheduler(trained_betas=[0.1])
    with pytest.raises(ValueError, match="betas must lie in"):
        SDEScheduler(trained_betas=[0.1, 1.5])
    sde = DiscreteVP.from_betas(torch.linspace(1e-4, 0.02, 1000))
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([0.0, 0.5, 999.0], dtype=dtype)
        assert sde.alpha(t).dtype == dtype and torch.isfinite(sde.log_snr(t)).all()
    # zero terminal SNR (alphas_cumprod[-1] = 0) is floored, not NaN
    sde0 = DiscreteVP(torch.linspace(0.999, 0.0, 100))
    assert torch.isfinite(sde0.log_snr(torch.tensor([99.0]))).all()


def test_per_sample_generators_make_samples_batch_size_invariant():
    """A list of generators (as pipelines accept): sample i depends only on generator i."""
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    outs = {}
    for seeds in ([3, 4, 5], [4]):
        sched = SDEScheduler(sampler="ddram")
        model = AnalyticEps(TARGET, sched.sde)
        g = gens(seeds)
        x_T = torch.stack([torch.randn(2, generator=gi) for gi in g])
        outs[len(seeds)] = run_like_pipeline(sched, model, x_T, 5, generator=g)
    assert torch.allclose(outs[3][1:2], outs[1], atol=1e-6)


def test_half_precision_state_keeps_float32_arithmetic():
    sched = SDEScheduler(sampler="ddram")
    model = AnalyticEps(TARGET, sched.sde)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    x16 = run_like_pipeline(sched, model, x_T.half(), 20, generator=torch.Generator().manual_seed(1))
    x32 = run_like_pipeline(sched, model, x_T, 20, generator=torch.Generator().manual_seed(1))
    assert x16.dtype == torch.float16 and torch.isfinite(x16).all()
    assert (x16.float() - x32).abs().max() < 0.05


def test_zero_terminal_snr_and_learned_variance_outputs():
    ddpm = DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    sched = SDEScheduler.from_config(ddpm.config, sampler="euler", schedule="diffusers")
    assert sched.config.rescale_betas_zero_snr is True
    # same table up to float32 rounding of the rescaling arithmetic
    assert torch.allclose(sched.alphas_cumprod, ddpm.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert torch.allclose(sched.betas, ddpm.betas, rtol=2e-3)
    assert ddpm.alphas_cumprod[-1] < 1e-8 and sched.sde.snr(999.0) < 1e-6
    # the whole run stays finite at (numerically) zero terminal SNR with a v-prediction model
    model = AnalyticEps(TARGET, sched.sde, kind="v")
    x = run_like_pipeline(sched, model, torch.randn(400, 2, generator=torch.Generator().manual_seed(0)), 25,
                          generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(x).all() and gaussian_kl_to_target(x) < 0.1
    # a learned-variance network (2x channels, DDPM variance_type="learned_range"): the variance half
    # is ignored, the epsilon half drives the step
    s1, s2 = SDEScheduler(sampler="euler"), SDEScheduler(sampler="euler")
    s1.set_timesteps(3)
    s2.set_timesteps(3)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    eps = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    t = s1.timesteps[0]
    a = s1.step(eps, t, x, generator=torch.Generator().manual_seed(4)).prev_sample
    b = s2.step(torch.cat([eps, torch.ones_like(eps)], 1), t, x, generator=torch.Generator().manual_seed(4)).prev_sample
    assert torch.equal(a, b)


@pytest.mark.parametrize("which", ["ddpm", "ddim"])
def test_denoiser_exponential_euler_is_ddpm_ancestral_sampling(which):
    """§5: the denoiser exponential-Euler step is the exact Gaussian posterior q(x_s | x_t, x0 = D),
    i.e. DDPM ancestral sampling with the posterior ("fixed_small") variance.  On DDPM's own grid
    (leading spacing), with the same network and the same generator, SDEScheduler reproduces
    DDPMScheduler; the only difference is that DDPM's last evaluation is at timestep 0 and ours at
    t_min = 1e-6.  Its probability-flow form (ode=True) is DDIM with eta = 0."""
    if which == "ddpm":
        ddpm = DDPMScheduler(clip_sample=False, timestep_spacing="leading")
    else:
        ddpm = DDIMScheduler(clip_sample=False, timestep_spacing="leading", set_alpha_to_one=True)
    ours = SDEScheduler.from_config(
        ddpm.config, sampler="exponential_euler", schedule="diffusers", t_min=1e-6, ode=which == "ddim"
    )
    assert ours.stepper.parametrization == "denoiser"
    model = AnalyticEps(TARGET, ours.sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    outs = []
    for sched in (ddpm, ours):
        sched.set_timesteps(10)
        x, g = x_T, torch.Generator().manual_seed(1)
        for t in sched.timesteps:
            x = sched.step(model(x, t), t, x, generator=g).prev_sample
        outs.append(x)
    assert len(ours.timesteps) == len(ddpm.timesteps) == 10
    assert torch.allclose(outs[0], outs[1], atol=1e-4), (outs[0] - outs[1]).abs().max()
