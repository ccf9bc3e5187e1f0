"""Tests that pin formulas down exactly, so that small deliberate bugs cannot survive: the Langevin
corrector step against its formula, Euler-Maruyama's convergence *rate* (not only a trend), the
scheduler's sample clipping against diffusers' DDPMScheduler, the prior scale of every SDE in
``init_noise_sigma``, the time values a low-precision network receives, and the EMA of float buffers."""

from __future__ import annotations

import math

import numpy as np
import torch

from lit_diffusion.core import sdes
from lit_diffusion.sampling.samplers import get_stepper, langevin_corrector_step
from lit_diffusion.integrations.scheduler import SDEScheduler

F64 = torch.float64


def test_langevin_corrector_step_is_its_formula():
    g = torch.Generator().manual_seed(0)
    x, s, z = (torch.randn(5, 3, generator=g, dtype=F64) for _ in range(3))
    kappa = torch.tensor([0.3, 0.5, 0.7, 1.0, 2.0], dtype=F64)
    snr = 0.2
    out = langevin_corrector_step(x, s, snr, kappa, z, snr_norm="sample")
    eps = 2 * kappa * (snr * z.norm(dim=1) / s.norm(dim=1)) ** 2  # the factor 2 and kappa both matter
    expected = x + eps[:, None] * s + torch.sqrt(2 * eps)[:, None] * z
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    # the capped rule: ratio^2 <= 4 sigma^2
    sigma = torch.full((5,), 0.1, dtype=F64)
    capped = langevin_corrector_step(x, s, snr, kappa, z, snr_norm="capped", sigma=sigma)
    r2 = torch.minimum((z.norm(dim=1) / s.norm(dim=1)) ** 2, 4 * sigma**2)
    eps = 2 * kappa * snr**2 * r2
    assert torch.allclose(capped, x + eps[:, None] * s + torch.sqrt(2 * eps)[:, None] * z, rtol=1e-12)


def _em_output_variance(sde, v0: float, steps: int) -> float:
    """Exact variance of Euler-Maruyama's output for 1-D Gaussian data N(0, v0) (exact score), by
    propagating the variance through the real step function: the step is x' = a x + b z."""
    stepper = get_stepper("euler", sde)
    grid = torch.linspace(sde.T, sde.t_min, steps + 1, dtype=F64)
    var = float(sde.prior_var)
    for k in range(steps):
        t, s = grid[k], grid[k + 1]

        def step(x, noise):
            st = stepper.start(torch.tensor([[x]], dtype=F64), t, s)
            a2, _, sig2 = sde.alpha(t) ** 2, None, sde.sigma2(t)
            score = -st.x_eval / (a2 * v0 + sig2)
            st.advance(score, noise=torch.tensor([[noise]], dtype=F64))
            return float(st.x)

        a = step(1.0, 0.0) - step(0.0, 0.0)
        b = step(0.0, 1.0) - step(0.0, 0.0)
        var = a * a * var + b * b
    return var


def test_euler_maruyama_converges_at_rate_one():
    """KL(N(0, v_N) || N(0, v_exact)) for N and 2N steps: Euler-Maruyama is a first-order method for
    the law, so the error halves (rate log2 ratio ~ 1); a score off by 10 % would stall the error."""
    sde = sdes.VP()
    v0 = 0.5
    v_true = float(sde.alpha(torch.tensor(sde.t_min, dtype=F64)) ** 2 * v0 + sde.sigma2(torch.tensor(sde.t_min, dtype=F64)))

    def kl(v):
        return 0.5 * (v / v_true - 1 - math.log(v / v_true))

    errs = [kl(_em_output_variance(sde, v0, n)) for n in (200, 400, 800)]
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    # KL is quadratic in the variance error, so a first-order variance error gives rate 2 in KL
    assert all(1.7 < r < 2.3 for r in rates), (errs, rates)


def test_clip_sample_matches_ddpm_scheduler():
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small")
    ours = SDEScheduler.from_config(ddpm.config, sampler="exponential_euler", clip_sample=True, final_denoise=False)
    ours.set_timesteps(10)
    x = 3 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    eps = 3 * torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))  # x0 predictions far outside [-1, 1]
    t = ours.timesteps[0]
    d = ours._field(eps, x, ours._eval_times[0], "denoiser")
    alpha = ddpm.alphas_cumprod[int(round(float(t)))]
    x0_ddpm = ((x - (1 - alpha).sqrt() * eps) / alpha.sqrt()).clamp(-1, 1)
    assert float(d.abs().max()) <= 1.0 + 1e-6
    assert torch.allclose(d.float(), x0_ddpm, atol=2e-3)


def test_init_noise_sigma_is_the_prior_scale_of_every_sde():
    for name in ("VP", "VE", "OU", "SubVP"):
        sched = SDEScheduler(sde=name)
        assert math.isclose(sched.init_noise_sigma, math.sqrt(float(sched.sde.prior_var)), rel_tol=1e-9), name
    assert math.isclose(SDEScheduler(sde="VE").init_noise_sigma, 50.0, rel_tol=1e-3)
    assert math.isclose(SDEScheduler(sde="OU").init_noise_sigma, 1.0, rel_tol=1e-3)


def test_low_precision_network_receives_exact_times():
    from lit_diffusion.core.fields import Field

    seen = []

    class Net(torch.nn.Module):
        prediction_type = "epsilon"

        def forward(self, x, t):
            seen.append(t.clone())
            return torch.zeros_like(x)

    t = torch.tensor([0.123456789, 0.987654321, 0.5000001], dtype=F64)
    Field(Net(), sdes.VP(), network_dtype=torch.bfloat16)(torch.randn(3, 2), t, "score")
    assert seen[0].dtype == torch.float32
    assert torch.equal(seen[0], t.float())  # not rounded to bf16 (0.123456789 -> 0.1235 in bf16)


def test_ema_averages_float_buffers():
    from lit_diffusion.training.ema import EMA

    net = torch.nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.5, warmup=0)
    net.running_mean.fill_(2.0)
    ema.update(net)
    assert torch.allclose(ema.module.running_mean, torch.full((3,), 1.0))  # 0.5*0 + 0.5*2, not a copy
    net.running_mean.fill_(4.0)
    ema.update(net)
    assert torch.allclose(ema.module.running_mean, torch.full((3,), 2.5))
    assert int(ema.module.num_batches_tracked) == int(net.num_batches_tracked)  # integers are copied
    np.testing.assert_allclose(ema.module.running_var.numpy(), np.ones(3))


def test_every_rank_draws_different_training_noise():
    """The loss's generator at step k on rank r depends on (seed, k, r): two ranks never share noise,
    and the same (k, r) repeats exactly (resume)."""
    from types import SimpleNamespace

    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP

    def draws(rank, micro):
        m = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], seed=3)
        progress = SimpleNamespace(total=SimpleNamespace(ready=micro))
        fake = SimpleNamespace(global_rank=rank, fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))
        m._trainer = fake
        type(m).global_rank = property(lambda self: self._trainer.global_rank)
        try:
            return torch.randn(4, generator=m._step_generator(torch.device("cpu")))
        finally:
            del type(m).global_rank

    a0, a1 = draws(0, 5), draws(1, 5)
    assert not torch.allclose(a0, a1)
    assert torch.equal(a0, draws(0, 5)) and not torch.equal(a0, draws(0, 6))


def test_get_velocity_and_add_noise_match_ddpm_scheduler():
    """v = alpha eps - sigma x0 (and x_t = alpha x0 + sigma eps) at the table's own timesteps, the same
    numbers as diffusers' DDPMScheduler: a flipped sign of the sigma x0 term is caught."""
    from diffusers import DDPMScheduler

    from lit_diffusion.integrations.scheduler import SDEScheduler

    ddpm = DDPMScheduler()
    ours = SDEScheduler.from_config(ddpm.config)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    t = torch.tensor([10, 250, 600, 999])
    assert torch.allclose(ours.get_velocity(x0, eps, t), ddpm.get_velocity(x0, eps, t), atol=1e-5)
    assert torch.allclose(ours.add_noise(x0, eps, t), ddpm.add_noise(x0, eps, t), atol=1e-5)
