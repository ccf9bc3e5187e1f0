"""log_likelihood / bits_per_dim (lit_diffusion/evaluation/likelihood.py, docs/maths.md §8): exact
against the analytic log-density, an unbiased Hutchinson estimate, the fixed-step solver's order, the
dequantization arithmetic, and bad input refused before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_diffusion import VE, VP, get_target
from lit_diffusion.core.sdes import ContractiveOU
from lit_diffusion.evaluation.likelihood import bits_per_dim, log_likelihood

T0 = torch.tensor(0.0, dtype=torch.float64)


def _case(name, sde, n=6):
    tgt = get_target(name)
    x = tgt.marginal(sde.t_min, sde).sample(n, generator=torch.Generator().manual_seed(0)).double()
    exact = tgt.log_prob(x, torch.tensor(sde.t_min, dtype=torch.float64), sde)
    mT = tgt.marginal(sde.T, sde)
    return tgt, x, exact, (lambda z: mT.log_prob(z, T0, sde))


@pytest.mark.parametrize("name", ["bimodal_1d", "ring8_2d", "anisotropic_16d"])
@pytest.mark.parametrize("sde", [VP(), VE(), ContractiveOU()], ids=["VP", "VE", "ContractiveOU"])
def test_exact_divergence_matches_the_analytic_log_density(name, sde):
    """With the exact score and the exact marginal at T as the prior, the ODE gives log p_{t_min}(x)
    to <= 1e-3 nats per dimension (measured: ~3e-8)."""
    tgt, x, exact, prior = _case(name, sde)
    ll = log_likelihood(tgt, x, sde, divergence="exact", rtol=1e-8, atol=1e-8, dtype=torch.float64, prior=prior)
    assert float((ll - exact).abs().max()) / tgt.dim < 1e-3


def test_the_sdes_own_prior_differs_by_the_prior_mismatch_alone():
    sde = VP()
    tgt, x, exact, prior = _case("ring8_2d", sde)
    own, det = log_likelihood(tgt, x, sde, divergence="exact", rtol=1e-8, atol=1e-8, dtype=torch.float64,
                              return_details=True)
    ode = log_likelihood(tgt, x, sde, divergence="exact", rtol=1e-8, atol=1e-8, dtype=torch.float64, prior=prior)
    # same path: the difference is log pi(X_T) - log p_T(X_T), small for VP (alpha(T) = 0.0066)
    assert float((own - ode).abs().max()) < 1e-3


def test_hutchinson_is_unbiased():
    sde = VP()
    tgt, x, exact, prior = _case("ring8_2d", sde, n=4)
    for probe in ("rademacher", "gaussian"):
        ll, det = log_likelihood(tgt, x, sde, divergence="hutchinson", n_probes=64, probe=probe, rtol=1e-6, atol=1e-6,
                                 dtype=torch.float64, prior=prior, generator=torch.Generator().manual_seed(1),
                                 return_details=True)
        per = det["per_probe"]
        se = per.std(1) / math.sqrt(per.shape[1])
        assert bool(((ll - exact).abs() <= 3 * se + 1e-6).all()), (probe, ll - exact, se)
        assert float(per.std(1).min()) > 0  # the probes do differ


def test_fixed_step_error_falls_at_the_solvers_order():
    sde = VP()
    tgt, x, exact, prior = _case("ring8_2d", sde)
    ns = [25, 50, 100, 200]
    errs = [float((log_likelihood(tgt, x, sde, divergence="exact", solver="heun", steps=n, schedule="log_snr",
                                  dtype=torch.float64, prior=prior) - exact).abs().mean()) for n in ns]
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert abs(slope - 2) < 0.3, errs


class _ImageNet(torch.nn.Module):
    """The exact denoiser of an analytic 4-D mixture, seen as 1x2x2 'images'."""

    prediction_type = "denoiser"

    def __init__(self, tgt, sde):
        super().__init__()
        self.tgt, self.sde = tgt, sde

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64).expand(x.shape[0])
        return self.tgt.prediction(x.reshape(x.shape[0], -1).double(), t, self.sde, "denoiser").reshape(x.shape).to(x.dtype)


def test_bits_per_dim_dequantizes_and_counts_the_bins():
    from lit_diffusion import GaussianMixture

    sde = VP()
    tgt = GaussianMixture([0.5, 0.5], [[0.3, -0.2, 0.1, 0.0], [-0.3, 0.2, -0.1, 0.2]], [0.05, 0.08])
    images = torch.randint(60, 200, (5, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    net = _ImageNet(tgt, sde)
    mT = tgt.marginal(sde.T, sde)
    prior = lambda z: mT.log_prob(z.reshape(z.shape[0], -1).double(), T0, sde)  # noqa: E731
    res = bits_per_dim(net, images, sde=sde, divergence="exact", rtol=1e-8, atol=1e-8, dtype=torch.float64, prior=prior,
                       generator=torch.Generator().manual_seed(3))
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = (2 * (images.double() + u) / 256 - 1).reshape(5, -1)
    exact = tgt.log_prob(y, torch.tensor(sde.t_min, dtype=torch.float64), sde)
    expect = -exact / (4 * math.log(2)) + 7
    assert torch.allclose(res["per_image"], expect, atol=1e-5)
    assert res["bpd"] == pytest.approx(float(expect.mean()), abs=1e-5) and res["bpd_se"] > 0


def test_bad_input_is_refused_before_any_work():
    sde = VP()
    tgt = get_target("ring8_2d")
    x = torch.zeros(3, 2)
    with pytest.raises(TypeError, match="not a diffusion model"):
        log_likelihood(torch.nn.Linear(2, 2), x, sde)
    with pytest.raises(ValueError, match="shape"):
        log_likelihood(tgt, torch.zeros(3, 5), sde)
    with pytest.raises(ValueError, match="NaN"):
        log_likelihood(tgt, torch.full((3, 2), float("nan")), sde)
    with pytest.raises(ValueError, match="divergence='trace' is invalid; valid choices"):
        log_likelihood(tgt, x, sde, divergence="trace")
    with pytest.raises(ValueError, match="outside the model's data range"):
        log_likelihood(_ImageNet(tgt, sde), torch.full((2, 1, 2, 2), 3.0), sde)
    with pytest.raises(ValueError, match="8-bit"):
        bits_per_dim(_ImageNet(tgt, sde), torch.full((2, 1, 2, 2), 0.5), sde=sde)


def test_the_package_level_functions_take_a_model_on_disk():
    """lit_diffusion.log_likelihood / encode / ... accept a pretrained folder (loaded by ScoreModule.load)
    and give what the layer functions give on the loaded module."""
    from pathlib import Path

    import lit_diffusion
    from lit_diffusion import ScoreModule
    from lit_diffusion.sampling.inversion import encode

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist"
    x = torch.linspace(-1, 1, 784).reshape(1, 1, 28, 28)
    kw = dict(solver="heun", steps=2, generator=None, n_probes=1)
    a = lit_diffusion.log_likelihood(str(folder), x, **{**kw, "generator": torch.Generator().manual_seed(0)})
    b = log_likelihood(ScoreModule.load(folder), x, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert torch.equal(lit_diffusion.encode(folder, x, steps=2), encode(ScoreModule.load(folder), x, steps=2))
    assert lit_diffusion.log_likelihood.__doc__ == log_likelihood.__doc__


def test_per_sample_generators_make_the_estimate_independent_of_the_batch_size():
    sde, tgt = VP(), get_target("ring8_2d")
    x = tgt.marginal(sde.t_min, sde).sample(6, generator=torch.Generator().manual_seed(0)).double()

    def run(bs):
        gens = [torch.Generator().manual_seed(100 + i) for i in range(6)]
        return log_likelihood(tgt, x, sde, solver="heun", steps=4, n_probes=2, generator=gens, batch_size=bs,
                              dtype=torch.float64)

    whole, pieces = run(None), run(4)
    assert torch.allclose(whole, pieces, atol=1e-12) and not torch.allclose(whole, whole.mean().expand(6))
    with pytest.raises(ValueError, match="3 generators for 6 samples"):
        log_likelihood(tgt, x, sde, generator=[torch.Generator()] * 3)
