"""``sampler="multistep"`` (lit_diffusion/sampling/multistep.py, docs/maths.md §5 "Multistep"): the
order of convergence measured against exact flows, the corrector's extra order, the SDE form against
the exact target distribution, identities with DDIM / the DDPM posterior step at order 1, the
diffusers scheduler against ``sample()``, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_diffusion import GaussianMixture, get_target, sample
from lit_diffusion.core.discrete_vp import DiscreteVP, make_betas
from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP
from lit_diffusion.sampling.multistep import kernel_moments, lagrange_weights

MU = torch.tensor([0.7, -0.3], dtype=torch.float64)
VAR = torch.tensor([0.25, 0.04], dtype=torch.float64)
GAUSS = GaussianMixture([1.0], [MU.tolist()], [VAR.tolist()])


def _sdes():
    return {"VP": VP(), "SubVP": SubVP(), "VE": VE(), "OU": OU(), "ContractiveOU": ContractiveOU(),
            "ContractiveVP": ContractiveVP(),
            "DiscreteVP": DiscreteVP(torch.cumprod(1 - make_betas(1000).double(), 0))}


def _exact_flow(sde, x_T):
    """The probability-flow ODE of a Gaussian target is affine: X_tmin = m_0 + s_0 (X_T - m_T) / s_T."""
    def ms(t):
        t = torch.tensor(float(t), dtype=torch.float64)
        a, s, m = sde.alpha(t), sde.sigma(t), sde.mean_offset(t)
        return a * MU + m, torch.sqrt(a * a * VAR + s * s)

    mT, sT = ms(sde.T)
    m0, s0 = ms(sde.t_min)
    return m0 + s0 * (x_T - mT) / sT


def _slope(ns, errs) -> float:
    return -float(np.polyfit(np.log(ns), np.log(errs), 1)[0])


def test_kernel_moments_and_weights_are_exact_integrals():
    h = torch.tensor([1e-4, 0.3, 0.999, 1.001, 4.0], dtype=torch.float64)
    taus = torch.linspace(0, 1, 20001, dtype=torch.float64)
    for stochastic, eta in ((False, 1.0), (True, 1.0), (True, 0.4), (True, 1.7)):
        M = kernel_moments(h, 4, stochastic, eta)
        c = 1 + eta**2 if stochastic else 1.0
        for i, hi in enumerate(h.tolist()):
            tau = taus * hi
            K = c * torch.exp(c * (tau - hi))
            for k in range(4):
                quad = torch.trapezoid(K * tau**k, tau)
                assert float(M[k][i]) == pytest.approx(float(quad), rel=1e-7, abs=1e-16)
    # the weights integrate every polynomial of degree < n through the nodes exactly
    nodes = [torch.tensor([0.0]), torch.tensor([-0.4]), torch.tensor([-1.1])]
    h = torch.tensor([0.5], dtype=torch.float64)
    M = kernel_moments(h, 3, False)
    w = lagrange_weights([n.double() for n in nodes], M)
    for k in range(3):
        assert float(sum(wi * float(n) ** k for wi, n in zip(w, nodes))) == pytest.approx(float(M[k]), rel=1e-12)


@pytest.mark.parametrize("name", list(_sdes()))
@pytest.mark.parametrize("order", [1, 2])
def test_ode_form_converges_at_its_order_on_every_sde(name, order):
    """Terminal error against the exact flow of a Gaussian target: log-log slope within 0.3 of the order."""
    sde = _sdes()[name]
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0)).double()
    exact = _exact_flow(sde, x_T)
    ns = [10, 20, 40, 80]
    errs = []
    for n in ns:
        x = sample(GAUSS, sde, x_T=x_T, sampler="multistep", ode=True, steps=n, schedule="log_snr",
                   solver_order=order, lower_order_final=False, corrector=False, dtype=torch.float64).samples
        errs.append(float((x - exact).abs().max()))
    assert abs(_slope(ns, errs) - order) < 0.3, (name, order, errs)


@pytest.mark.parametrize("name", ["VP", "VE", "OU"])
def test_third_order_on_a_mixture(name):
    """Order 3 against a fine reference on the 16-D anisotropic mixture (no closed-form flow)."""
    sde = _sdes()[name]
    tgt = get_target("anisotropic_16d")
    x_T = sde.prior_sampling((128, tgt.dim), generator=torch.Generator().manual_seed(1)).double()
    kw = dict(sampler="multistep", ode=True, schedule="log_snr", lower_order_final=False, corrector=False, dtype=torch.float64)
    ref = sample(tgt, sde, x_T=x_T, steps=2000, solver_order=3, **kw).samples
    ns = [20, 40, 80, 160]
    errs = [float((sample(tgt, sde, x_T=x_T, steps=n, solver_order=3, **kw).samples - ref).abs().mean()) for n in ns]
    assert abs(_slope(ns, errs) - 3) < 0.3, (name, errs)


@pytest.mark.parametrize("name", ["ContractiveOU", "VP"])
def test_the_corrector_adds_one_order_at_no_extra_evaluation(name):
    sde = _sdes()[name]
    x_T = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0)).double()
    exact = _exact_flow(sde, x_T)
    ns = [10, 20, 40, 80]
    for order in (1, 2):
        errs, nfes = [], []
        for n in ns:
            res = sample(GAUSS, sde, x_T=x_T, sampler="multistep", ode=True, steps=n, schedule="log_snr",
                         solver_order=order, lower_order_final=False, corrector=True, dtype=torch.float64)
            errs.append(float((res.samples - exact).abs().max()))
            nfes.append(res.nfe)
        assert nfes == ns
        assert abs(_slope(ns, errs) - (order + 1)) < 0.3, (name, order, errs)


def test_order_one_is_ddim_and_the_ddpm_posterior_step():
    """Order 1: the ODE form is DDIM and the SDE form the denoiser exponential-Euler (DDPM ancestral)
    step, to float64 rounding, noise for noise."""
    tgt = get_target("ring8_2d")
    for sde in (VP(), VE(), ContractiveOU()):
        x_T = sde.prior_sampling((32, 2), generator=torch.Generator().manual_seed(0)).double()
        for ode in (True, False):
            common = dict(x_T=x_T, steps=12, ode=ode, schedule="uniform", dtype=torch.float64)
            a = sample(tgt, sde, sampler="multistep", solver_order=1, corrector=False, generator=torch.Generator().manual_seed(5), **common)
            b = sample(tgt, sde, sampler="exponential_euler", parametrization="denoiser",
                       generator=torch.Generator().manual_seed(5), **common)
            assert torch.allclose(a.samples, b.samples, rtol=1e-9, atol=1e-9)


def test_sde_form_samples_the_target_and_order_helps():
    """The SDE form reaches the Gaussian target's exact mean and variance (20,000 samples, 60 steps of
    the log-SNR grid); order 1 (the DDPM posterior step, whose variance collapses at few steps with
    an exact posterior *mean*) is further off than orders 2 and 3."""
    sde = VP()
    n = 20000
    var_err = {}
    for order in (1, 2, 3):
        x = sample(GAUSS, sde, shape=(n, 2), sampler="multistep", steps=60, schedule="log_snr", solver_order=order,
                   corrector=False, generator=torch.Generator().manual_seed(order), dtype=torch.float64).samples
        assert torch.allclose(x.mean(0), MU, atol=4 * (VAR.sqrt() / math.sqrt(n)).max().item() + 0.01)
        var_err[order] = float(((x.var(0) - VAR) / VAR).abs().max())
    assert var_err[2] < 0.05 and var_err[3] < 0.05, var_err
    assert var_err[1] > 2 * max(var_err[2], var_err[3]), var_err


@pytest.mark.parametrize("name", ["VP", "VE", "ContractiveOU", "DiscreteVP"])
@pytest.mark.parametrize("eta", [0.3, 1.0, 2.0])
def test_every_stochasticity_keeps_a_point_mass_marginal_exactly(name, eta):
    """docs/maths.md §5 "Stochasticity": one step with a constant denoiser ``D = x_0`` maps the forward
    marginal ``x_t = α_t x_0 + m_t + σ_t ε`` to ``α_s x_0 + m_s + σ_s (e^{−η²h} ε + √(1 − e^{−2η²h}) z)``,
    the same marginal at ``s``, for every ``η``."""
    from lit_diffusion.sampling.multistep import MultistepStepper

    sde = _sdes()[name]
    t, s = 0.6 * sde.T, 0.25 * sde.T
    tt = torch.full((3,), t, dtype=torch.float64)
    ss = torch.full((3,), s, dtype=torch.float64)
    x0 = torch.tensor([[0.7], [-1.2], [2.0]], dtype=torch.float64)
    eps = torch.tensor([[0.3], [1.1], [-0.8]], dtype=torch.float64)
    z = torch.tensor([[-0.5], [0.2], [1.4]], dtype=torch.float64)
    a_t, s_t, m_t = sde.alpha(tt)[:, None], sde.sigma(tt)[:, None], sde.mean_offset(tt)[:, None]
    a_s, s_s, m_s = sde.alpha(ss)[:, None], sde.sigma(ss)[:, None], sde.mean_offset(ss)[:, None]
    h = 0.5 * (sde.log_snr(ss) - sde.log_snr(tt))[:, None]
    stepper = MultistepStepper(sde, eta=eta, solver_order=1, corrector=False)
    for shared in (True, False):  # the float fast path (grid known) and the per-sample tensor path
        stepper.reset(torch.tensor([t, s], dtype=torch.float64) if shared else None)
        st = stepper.start(a_t * x0 + m_t + s_t * eps, tt, ss)
        st.advance(x0, noise=z)
        kept = torch.exp(-eta**2 * h)
        want = a_s * x0 + m_s + s_s * (kept * eps + torch.sqrt(1 - kept**2) * z)
        assert torch.allclose(st.x, want, rtol=1e-10, atol=1e-12), (shared, st.x, want)


def test_sde_form_samples_the_target_at_any_stochasticity():
    """``eta=0.5`` (half the SDE's noise level) reaches the Gaussian target's mean and variance too."""
    n = 20000
    x = sample(GAUSS, VP(), shape=(n, 2), sampler="multistep", steps=60, schedule="log_snr", eta=0.5, corrector=False,
               generator=torch.Generator().manual_seed(3), dtype=torch.float64).samples
    assert torch.allclose(x.mean(0), MU, atol=4 * (VAR.sqrt() / math.sqrt(n)).max().item() + 0.01)
    assert float(((x.var(0) - VAR) / VAR).abs().max()) < 0.05


def test_the_default_stochasticity_is_lower_on_short_runs_from_T_only():
    """``eta=None``: 0.5 on runs of at most MULTISTEP_LOW_NOISE_RUN steps from ``T`` (docs/samplers.md
    "Stochasticity"), 1 on longer runs, on runs that begin below ``T`` (a Gaussian start) and with the
    grid unknown; a given ``eta`` always wins."""
    from lit_diffusion.core.schedules import get_timesteps
    from lit_diffusion.sampling.defaults import MULTISTEP_LOW_NOISE_RUN, MULTISTEP_SHORT_RUN_ETA
    from lit_diffusion.sampling.multistep import MultistepStepper

    sde = VP()
    st = MultistepStepper(sde)
    for steps, T, want in ((MULTISTEP_LOW_NOISE_RUN, None, MULTISTEP_SHORT_RUN_ETA), (MULTISTEP_LOW_NOISE_RUN + 1, None, 1.0),
                           (3, 0.5 * sde.T, 1.0)):
        st.reset(get_timesteps(sde, steps, "uniform", T=T))
        assert st.eta == want, (steps, T)
    st.reset(None)
    assert st.eta == 1.0
    given = MultistepStepper(sde, eta=0.8)
    given.reset(get_timesteps(sde, 3, "uniform"))
    assert given.eta == 0.8 and MULTISTEP_SHORT_RUN_ETA == 0.5
    # sample() with no eta runs 0.5 on a 4-step run from T
    a = sample(GAUSS, sde, shape=(4, 2), sampler="multistep", steps=4, generator=torch.Generator().manual_seed(1)).samples
    b = sample(GAUSS, sde, shape=(4, 2), sampler="multistep", steps=4, eta=0.5, generator=torch.Generator().manual_seed(1)).samples
    assert torch.equal(a, b)


def test_noise_band_runs_the_ode_outside_it():
    tgt = get_target("ring8_2d")
    sde = VP()
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0)).double()
    ode = sample(tgt, sde, x_T=x_T, sampler="multistep", steps=10, schedule="log_snr", ode=True, solver_order=2, dtype=torch.float64).samples
    empty = sample(tgt, sde, x_T=x_T, sampler="multistep", steps=10, schedule="log_snr", solver_order=2, noise_band=(1e6, 2e6),
                   generator=torch.Generator().manual_seed(0), dtype=torch.float64).samples
    full = sample(tgt, sde, x_T=x_T, sampler="multistep", steps=10, schedule="log_snr", solver_order=2, noise_band=(0.0, 1e6),
                  generator=torch.Generator().manual_seed(0), dtype=torch.float64).samples
    plain = sample(tgt, sde, x_T=x_T, sampler="multistep", steps=10, schedule="log_snr", solver_order=2,
                   generator=torch.Generator().manual_seed(0), dtype=torch.float64).samples
    assert torch.allclose(empty, ode, atol=1e-12) and torch.allclose(full, plain, atol=1e-12)


@pytest.mark.parametrize("ode,eta", [(True, None), (False, None), (False, 0.4)])
def test_scheduler_runs_the_same_solver_one_evaluation_per_step(ode, eta):
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde = VP()
    tgt = get_target("ring8_2d")
    s = SDEScheduler(sampler="multistep", sde="VP", ode=ode, num_train_timesteps=1, prediction_type="epsilon",
                     final_denoise=False, eta=eta)
    s.set_timesteps(8)
    assert s.order == 1 and len(s.timesteps) == 8
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in s.timesteps:
        tt = torch.full((16,), float(t), dtype=torch.float64)
        eps = tgt.prediction(x.double(), tt, sde, "epsilon").float()
        x = s.step(eps, t, x, generator=g).prev_sample
    ref = sample(tgt, sde, x_T=x_T, sampler="multistep", ode=ode, steps=8, timesteps=s._grid,
                 generator=torch.Generator().manual_seed(3), eta=eta)
    assert torch.allclose(x, ref.samples, atol=2e-4), (x - ref.samples).abs().max()
    # a second run after set_timesteps starts afresh (no history carried over)
    s.set_timesteps(8)
    x2 = x_T.clone()
    g = torch.Generator().manual_seed(3)
    for t in s.timesteps:
        tt = torch.full((16,), float(t), dtype=torch.float64)
        eps = tgt.prediction(x2.double(), tt, sde, "epsilon").float()
        x2 = s.step(eps, t, x2, generator=g).prev_sample
    assert torch.equal(x, x2)


@pytest.mark.parametrize("options", [dict(ode=True, solver_order=3, corrector=True), dict(corrector=True),
                                     dict(noise_band=[0.05, 50.0]), dict(ode=True, inverse=True)],
                         ids=["ode3+corrector", "sde2+corrector", "noise_band", "inverse"])
def test_scheduler_plan_is_the_stepper(options):
    """SDEScheduler applies multistep from a precomputed affine plan (the coefficients probed on the
    stepper); the stepper path (forced here by a clip range that never clips) gives the same run, and a
    run entered mid-way (img2img) falls back to the stepper, which lowers the order."""
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde, tgt = VP(), get_target("ring8_2d")

    def run(begin=0, **extra):
        s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon",
                         final_denoise=False, **options, **extra)
        s.set_timesteps(10)
        if begin:
            s.set_begin_index(begin)
        assert (s._plan is not None) == ("clip_sample" not in extra)
        g = torch.Generator().manual_seed(3)
        x = sde.prior_sampling((64, 2), generator=torch.Generator().manual_seed(0))
        for t in s.timesteps[begin:]:
            tt = torch.full((64,), float(t), dtype=torch.float64)
            x = s.step(tgt.prediction(x.double(), tt, sde, "epsilon").float(), t, x, generator=g).prev_sample
        return x, s

    planned, _ = run()
    stepped, _ = run(clip_sample=True, clip_sample_range=1e9)
    assert torch.allclose(planned, stepped, atol=5e-5), (planned - stepped).abs().max()
    late, s = run(begin=4)
    assert s._plan is None and torch.allclose(late, run(begin=4, clip_sample=True, clip_sample_range=1e9)[0], atol=1e-6)


def test_default_grids_are_the_measured_best():
    from lit_diffusion.sampling.samplers import default_schedule

    assert default_schedule("multistep", ode=True) == "edm" and default_schedule("multistep") == "edm"
    assert default_schedule("multistep", True, steps=7) == "uniform" and default_schedule("multistep", True, steps=8) == "edm"
    assert default_schedule("ddram", ode=True) == "uniform"


def test_bad_options_are_named():
    sde = VP()
    with pytest.raises(ValueError, match=r"solver_order=4 is invalid; valid choices: \[1, 2, 3\]"):
        sample(GAUSS, sde, shape=(2, 2), sampler="multistep", solver_order=4)
    with pytest.raises(ValueError, match="noise_band applies to the SDE form only"):
        sample(GAUSS, sde, shape=(2, 2), sampler="multistep", ode=True, noise_band=(0.1, 1.0))
    with pytest.raises(ValueError, match=r"eta=0.5 applies to the SDE form only"):
        sample(GAUSS, sde, shape=(2, 2), sampler="multistep", ode=True, eta=0.5)
    for bad in (0.0, -1.0, float("nan"), 5.0):
        with pytest.raises(ValueError, match=r"eta=.* is invalid; give 0 < eta <= 4"):
            sample(GAUSS, sde, shape=(2, 2), sampler="multistep", eta=bad)
    with pytest.raises(ValueError, match="does not support parametrization 'score'"):
        sample(GAUSS, sde, shape=(2, 2), sampler="multistep", parametrization="score")


def test_any_shape_and_a_half_precision_network_stay_finite():
    sde = VP()
    net = torch.nn.Conv2d(3, 3, 1).half()

    def field(x, t):
        return net(x.half())

    x = sample(field, sde, shape=(2, 3, 4, 5), sampler="multistep", steps=6, prediction_type="epsilon",
               generator=torch.Generator().manual_seed(0)).samples
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_ending_short_runs_halfway_down_cuts_the_terminal_error_on_the_ring():
    """The end of short runs (MULTISTEP_SHORT_RUN_END = 0.5) with the exact field of the ring of eight
    Gaussians: the 4-step ODE run with a final denoising evaluation, against its 200-step solution from
    the same 512 prior draws. Ending halfway from t_min to the last point of the uniform grid of one
    more step is the best of the fractions 1 / 0.75 / 0.5 / 0.25 and at least halves the error of
    ending at that point (measured 0.287 / 0.173 / 0.084 / 0.260), as FID-MNIST found on the shipped
    model (docs/samplers.md "The end of short runs")."""
    from lit_diffusion.core.targets import get_target
    from lit_diffusion.sampling.defaults import step_grid

    tgt, sde = get_target("ring8_2d"), VP()
    x_T = sde.prior_sampling((512, 2), generator=torch.Generator().manual_seed(5)).double()
    run = lambda **kw: sample(tgt, sde, x_T=x_T, sampler="multistep", ode=True, final_denoise=True,  # noqa: E731
                              dtype=torch.float64, **kw).samples
    ref = run(steps=200, schedule="edm")
    err = {f: float((run(timesteps=step_grid(sde, "multistep", 4, "uniform", True, end_fraction=f)) - ref).norm(dim=1).mean())
           for f in (1.0, 0.75, 0.5, 0.25)}
    assert min(err, key=err.get) == 0.5 and err[0.5] < 0.5 * err[1.0], err
    assert float((run(steps=4) - ref).norm(dim=1).mean()) == pytest.approx(err[0.5])  # the default


def test_the_final_denoising_evaluation_replaces_the_last_step():
    """On a short run with a final denoising evaluation, the grid of n steps runs from T to a point
    halfway from t_min to the last point of the schedule's grid of n + 1 steps (MULTISTEP_SHORT_RUN_END),
    and the run ends with D(x) there (the jump to the data), in sample() and in SDEScheduler alike: the
    evaluation is not spent at t_min, where D(x) = x."""
    from lit_diffusion.core.schedules import get_timesteps
    from lit_diffusion.integrations.scheduler import SDEScheduler
    from lit_diffusion.sampling.defaults import MULTISTEP_SHORT_RUN_END

    sde = VP()
    res = sample(GAUSS, sde, shape=(4, 2), sampler="multistep", steps=4, final_denoise=True, dtype=torch.float64)
    t_end = sde.t_min + MULTISTEP_SHORT_RUN_END * (float(get_timesteps(sde, 5, "uniform")[-2]) - sde.t_min)
    expect = torch.linspace(sde.T, t_end, 5, dtype=torch.float64)  # a short run: uniform steps from T to t_end
    assert MULTISTEP_SHORT_RUN_END == 0.5 and t_end == pytest.approx(0.1009)
    assert res.nfe == 5 and torch.allclose(res.times, expect) and float(res.times[-1]) > 10 * sde.t_min
    s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon")
    s.set_timesteps(4)
    assert len(s.timesteps) == 5 and torch.allclose(s._grid, expect)
    s.set_timesteps(9)  # longer runs: the EDM grid down to t_min, then the final evaluation there
    assert torch.allclose(s._grid, get_timesteps(sde, 9, "edm").to(torch.float64))
    # other samplers keep their grid down to t_min
    assert float(sample(GAUSS, sde, shape=(4, 2), sampler="ddram", steps=6, final_denoise=True).times[-1]) == pytest.approx(sde.t_min)


def test_only_the_final_jump_is_lowered_to_order_one():
    """lower_order_final (runs under 15 steps) counts the final denoising evaluation of a run whose grid
    stops short of t_min as a step (the jump to the data): the last grid step keeps order 2 (it reads two
    denoiser values), as the step before DPM-Solver++'s jump to sigma = 0 does. A last step that ends at
    t_min stays of order 1, and so does a short grid's without a final evaluation; SDEScheduler (final
    denoising by default) and sample(final_denoise=True) run the same orders."""
    from lit_diffusion.core.schedules import get_timesteps
    from lit_diffusion.integrations.scheduler import SDEScheduler
    from lit_diffusion.sampling.affine_plan import _multistep_rows
    from lit_diffusion.sampling.steppers import get_stepper

    sde = VP()
    full = get_timesteps(sde, 5, "uniform").to(torch.float64)

    def orders(cD):
        return [int((torch.as_tensor(row) != 0).sum()) for row in cD]

    for grid, jump, last_order in ((full[:-1], True, 2), (full[:-1], False, 1), (full, True, 1)):
        _, cD, _ = _multistep_rows(get_stepper("multistep", sde, ode=True, corrector=False), grid, jump)
        assert orders(cD) == [1, 2, 2, 2][: len(cD) - 1] + [last_order], (orders(cD), jump)
    s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon", ode=True,
                     corrector=False)
    s.set_timesteps(4)
    assert [len(w) for w in s._plan.multistep["weights"]] == [1, 2, 2, 2]
    ref = sample(GAUSS, sde, x_T=torch.ones(3, 2, dtype=torch.float64), sampler="multistep", ode=True, steps=4,
                 final_denoise=True, dtype=torch.float64)
    low = sample(GAUSS, sde, x_T=torch.ones(3, 2, dtype=torch.float64), sampler="multistep", ode=True, steps=4,
                 final_denoise=True, dtype=torch.float64, lower_order_final=False)
    assert torch.equal(ref.samples, low.samples)  # four steps before the jump: no step is lowered either way


def test_the_corrector_is_on_by_default_on_short_runs_only():
    """corrector=None (the default): on for runs of at most MULTISTEP_CORRECTOR_RUN steps (the measured
    best, docs/samplers.md "The corrector and the fitted grids"), off on longer ones; an explicit value
    wins. sample() and SDEScheduler run the same rule."""
    from lit_diffusion.core.schedules import get_timesteps
    from lit_diffusion.integrations.scheduler import SDEScheduler
    from lit_diffusion.sampling.defaults import MULTISTEP_CORRECTOR_RUN
    from lit_diffusion.sampling.steppers import get_stepper

    sde = VP()
    n = MULTISTEP_CORRECTOR_RUN
    for option, short, long in ((None, True, False), (True, True, True), (False, False, False)):
        st = get_stepper("multistep", sde, ode=True, corrector=option)
        st.reset(get_timesteps(sde, n, "edm"))
        assert st.corrector is short, option
        st.reset(get_timesteps(sde, n + 1, "edm"))
        assert st.corrector is long, option
    x_T = sde.prior_sampling((16, 2), generator=torch.Generator().manual_seed(3)).double()
    run = lambda steps, **kw: sample(GAUSS, sde, x_T=x_T, sampler="multistep", ode=True, steps=steps,  # noqa: E731
                                     dtype=torch.float64, **kw).samples
    assert torch.equal(run(n), run(n, corrector=True)) and not torch.allclose(run(n), run(n, corrector=False))
    assert torch.equal(run(n + 1), run(n + 1, corrector=False))
    # the scheduler (final denoising evaluation: n steps + 1) gives sample()'s result
    s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon", ode=True)
    s.set_timesteps(n)
    x = x_T.float().clone()
    for t in s.timesteps:
        tt = torch.full((16,), float(t), dtype=torch.float64)
        x = s.step(GAUSS.prediction(x.double(), tt, sde, "epsilon").float(), t, x).prev_sample
    common = dict(x_T=x_T, sampler="multistep", ode=True, steps=n, final_denoise=True, dtype=torch.float64)
    ref, off = sample(GAUSS, sde, **common).samples, sample(GAUSS, sde, corrector=False, **common).samples
    assert torch.allclose(x.double(), ref, atol=1e-4) and (x.double() - off).abs().max() > 1e-3
