"""Exponential-integrator coefficients (docs/maths.md §5): closed forms vs the float64 table
fallback vs scipy quadrature, semigroup/composition identities and the standard-OU formulas."""

import math

import pytest
import torch
from scipy import integrate

from lit_diffusion.core import sdes
from lit_diffusion.sampling.integrators import ExpIntegrator, get_integrator, canonical_parametrization



SDES = {
    "OU": lambda: sdes.OU(),
    "OU2": lambda: sdes.OU(theta=0.7, mu=0.5, sigma=1.3, T=3.0),
    "COU": lambda: sdes.ContractiveOU(),
    "VE": lambda: sdes.VE(),
    "VP": lambda: sdes.VP(),
    "SubVP": lambda: sdes.SubVP(),
    "CVP": lambda: sdes.ContractiveVP(),
}
PARAMS = ["score", "relative_score", "denoiser"]


def _pairs(sde, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    s = sde.t_min + (t - sde.t_min) * torch.rand(n, generator=g, dtype=torch.float64) ** 2
    return s, t


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("param", PARAMS)
@pytest.mark.parametrize("ode", [False, True])
def test_closed_forms_match_table(name, param, ode):
    sde = SDES[name]()
    auto = ExpIntegrator(sde, param, ode, "auto")
    table = ExpIntegrator(sde, param, ode, "table")
    s, t = _pairs(sde)
    Wa, Wt = auto.W(s, t), table.W(s, t)
    assert torch.all(Wa > 0)
    assert torch.allclose(Wa, Wt, rtol=1e-6, atol=0)
    if not ode:
        assert torch.allclose(auto.V(s, t), table.V(s, t), rtol=1e-6, atol=0)
    else:
        assert torch.all(auto.V(s, t) == 0)
    u = torch.rand(s.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ma, mt = auto.midpoint(s, t, u), table.midpoint(s, t, u)
    assert torch.all((ma >= s) & (ma <= t))
    assert torch.allclose((ma - s) / (t - s), (mt - s) / (t - s), atol=1e-6)


def _integrands(sde, param, ode):
    """Scalar python functions c(u), |e(u)|, g^2(u) straight from §5 (for scipy quad)."""
    k = 0.5 if ode else 1.0
    f = lambda fn, u: float(fn(torch.tensor(u, dtype=torch.float64)))
    a = lambda u: float(sde.drift_coefficients(torch.tensor(u, dtype=torch.float64))[0])
    g2 = lambda u: f(sde.g2, u)
    al = lambda u: f(sde.alpha, u)
    s2 = lambda u: f(sde.sigma2, u)
    v = sde.prior_var
    if param == "score":
        return (lambda u: a(u)), (lambda u: k * g2(u)), g2
    if param == "relative_score":
        return (lambda u: a(u) + k * g2(u) / v), (lambda u: k * g2(u)), g2
    return (lambda u: a(u) + k * g2(u) / s2(u)), (lambda u: k * g2(u) * al(u) / s2(u)), g2


def _check_against_quad(name, param, pairs):
    sde = SDES[name]()
    c, e, g2 = _integrands(sde, param, False)
    integ = get_integrator(sde, param)
    for fs, ft in pairs:
        s, t = fs * sde.T if fs > 0 else sde.t_min, ft * sde.T
        Phi = lambda s_, u_: math.exp(integrate.quad(c, u_, s_, epsabs=0, epsrel=1e-12, limit=200)[0])
        W = integrate.quad(lambda u: Phi(s, u) * e(u), s, t, epsabs=0, epsrel=1e-10, limit=200)[0]
        V = integrate.quad(lambda u: Phi(s, u) ** 2 * g2(u), s, t, epsabs=0, epsrel=1e-10, limit=200)[0]
        assert float(integ.phi(s, t)) == pytest.approx(Phi(s, t), rel=1e-8)
        assert float(integ.W(s, t)) == pytest.approx(W, rel=1e-7)
        assert float(integ.V(s, t)) == pytest.approx(V, rel=1e-7)


@pytest.mark.parametrize("name", ["OU2", "COU", "VE", "VP", "SubVP", "CVP"])
@pytest.mark.parametrize("param", PARAMS)
def test_coefficients_against_scipy_quad(name, param):
    _check_against_quad(name, param, [(0.3, 0.45)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["OU2", "COU", "VE", "VP", "SubVP", "CVP"])
@pytest.mark.parametrize("param", PARAMS)
def test_coefficients_against_scipy_quad_full(name, param):
    _check_against_quad(name, param, [(0, 0.05), (0.3, 0.5), (0.8, 1.0)])


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("param", PARAMS)
def test_composition_identities(name, param):
    """Phi(s,t) = Phi(s,tau) Phi(tau,t); W(s,t) = Phi(s,tau) W(tau,t) + W(s,tau);
    V(s,t) = Phi(s,tau)^2 V(tau,t) + V(s,tau) (the Brownian path is additive)."""
    sde = SDES[name]()
    integ = get_integrator(sde, param)
    s, t = _pairs(sde, 200, seed=3)
    tau = s + (t - s) * 0.37
    assert torch.allclose(integ.phi(s, t), integ.phi(s, tau) * integ.phi(tau, t), rtol=1e-9)
    assert torch.allclose(integ.W(s, t), integ.phi(s, tau) * integ.W(tau, t) + integ.W(s, tau), rtol=1e-6)
    assert torch.allclose(integ.V(s, t), integ.phi(s, tau) ** 2 * integ.V(tau, t) + integ.V(s, tau), rtol=1e-6)


def test_standard_ou_formulas():
    """§5: score step e^h, 2(e^h-1), e^{2h}-1; relative-score step e^{-h}, 2(1-e^{-h}), 1-e^{-2h}."""
    sde = sdes.OU()
    s, t = torch.tensor([0.1, 1.0, 2.0], dtype=torch.float64), torch.tensor([0.3, 1.5, 4.0], dtype=torch.float64)
    h = t - s
    sc = get_integrator(sde, "score")
    assert torch.allclose(sc.phi(s, t), torch.exp(h))
    assert torch.allclose(sc.W(s, t), 2 * torch.expm1(h))
    assert torch.allclose(sc.V(s, t), torch.expm1(2 * h))
    rel = get_integrator(sde, "relative_score")
    assert torch.allclose(rel.phi(s, t), torch.exp(-h))
    assert torch.allclose(rel.W(s, t), 2 * (1 - torch.exp(-h)))
    assert torch.allclose(rel.V(s, t), 1 - torch.exp(-2 * h))
    # DDRaM midpoint: rho = t - tau = log(1 + u (e^h - 1)), u counted from the start t of the step
    # (docs/maths.md §5, the paper's reference implementation)
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    rho = t - rel.midpoint(s, t, u)
    assert torch.allclose(rho, torch.log1p(u * torch.expm1(h)))


@pytest.mark.parametrize("name", ["VP", "VE", "SubVP", "CVP"])
def test_denoiser_closed_form_and_ddim(name):
    sde = SDES[name]()
    s, t = _pairs(sde, 50, seed=5)
    a_s, a_t = sde.alpha(s), sde.alpha(t)
    l_s, l_t = sde.snr(s), sde.snr(t)
    d = get_integrator(sde, "denoiser")
    assert torch.allclose(d.phi(s, t), sde.sigma2(s) * a_t / (sde.sigma2(t) * a_s), rtol=1e-9)
    assert torch.allclose(d.W(s, t), a_s * (1 - l_t / l_s), rtol=1e-9)
    assert torch.allclose(d.V(s, t), sde.sigma2(s) * (1 - l_t / l_s), rtol=1e-9)
    o = get_integrator(sde, "denoiser", ode=True)  # DDIM
    assert torch.allclose(o.phi(s, t), sde.sigma(s) / sde.sigma(t), rtol=1e-9)
    assert torch.allclose(o.W(s, t), sde.sigma(s) * (a_s / sde.sigma(s) - a_t / sde.sigma(t)), rtol=1e-8)


@pytest.mark.parametrize("name", ["SubVP", "VP", "COU"])
@pytest.mark.parametrize("param", PARAMS)
def test_midpoint_cdf_against_quad(name, param):
    """The mass of Phi(s,.)|e(.)| on (tau(u), t) is u W(s,t): u counts from the start t of the step."""
    sde = SDES[name]()
    c, e, _ = _integrands(sde, param, False)
    integ = get_integrator(sde, param)
    s, t = 0.2 * sde.T, 0.6 * sde.T
    for u in (0.1, 0.5, 0.93):
        tau = float(integ.midpoint(s, t, u))
        Phi = lambda u_: math.exp(integrate.quad(c, u_, s, epsabs=0, epsrel=1e-12)[0])
        mass = integrate.quad(lambda w: Phi(w) * e(w), tau, t, epsabs=0, epsrel=1e-10)[0]
        assert mass == pytest.approx(u * float(integ.W(s, t)), rel=1e-6)


def test_table_built_once_and_vectorised_on_device():
    sde = sdes.SubVP(beta_max=15.0)
    a = get_integrator(sde, "relative_score")
    b = get_integrator(sdes.SubVP(beta_max=15.0), "relative_score")
    assert a is b and a._table is not None and not a.closed_W
    s = torch.full((5, 3), 0.2, dtype=torch.float64)
    assert a.W(s, s + 0.1).shape == (5, 3)


def test_bad_names():
    with pytest.raises(ValueError, match="valid choices"):
        canonical_parametrization("epsilon")
    with pytest.raises(ValueError, match="valid choices"):
        ExpIntegrator(sdes.VP(), "denoiser", method="quad")
    with pytest.raises(ValueError, match="no closed form"):
        ExpIntegrator(sdes.SubVP(), "relative_score", method="closed")


def test_discrete_vp_closed_forms():
    """DiscreteVP (diffusers' betas as a VP process, piecewise-constant g^2) uses the VP closed
    forms with G = int_g2: exact composition identities, agreement with the staircase table."""
    from lit_diffusion.core.discrete_vp import DiscreteVP, make_betas

    sde = DiscreteVP.from_betas(make_betas(1000, 1e-4, 0.02, "linear"))
    s, t = _pairs(sde, 300, seed=7)
    tau = s + 0.3 * (t - s)
    u = torch.rand(s.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    for param in PARAMS:
        a, tb = ExpIntegrator(sde, param, False, "auto"), ExpIntegrator(sde, param, False, "table")
        assert a.closed_W and a.closed_mid
        assert torch.allclose(a.W(s, t), a.phi(s, tau) * a.W(tau, t) + a.W(s, tau), rtol=1e-10)
        assert torch.allclose(a.V(s, t), a.phi(s, tau) ** 2 * a.V(tau, t) + a.V(s, tau), rtol=1e-10)
        assert torch.allclose(a.W(s, t), tb.W(s, t), rtol=1e-3)
        assert torch.allclose(a.V(s, t), tb.V(s, t), rtol=1e-3)
        assert torch.allclose((a.midpoint(s, t, u) - s) / (t - s), (tb.midpoint(s, t, u) - s) / (t - s), atol=1e-3)


def test_midpoint_stays_inside_its_step_at_the_ends_of_the_law():
    """The DDRaM midpoint for u = 0 and u = 1 is an end of the step; rounding in the inverse CDFs
    (≈1e-16) must never put it outside [s, t], for every process, parametrization and form."""
    from lit_diffusion.sampling.integrators import get_integrator
    from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP

    for sde in (VP(), VE(), SubVP(), OU(), ContractiveVP(), ContractiveOU()):
        T = float(sde.T)
        nodes = torch.linspace(1e-3 * T, T, 40, dtype=torch.float64)
        s, t = nodes[:-1].repeat_interleave(3), nodes[1:].repeat_interleave(3)
        u = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64).repeat(nodes.numel() - 1)
        for param in ("denoiser", "score"):
            for ode in (False, True):
                try:
                    integ = get_integrator(sde, param, ode)
                except ValueError:
                    continue  # (score parametrization: VP-type processes only)
                tau = integ.midpoint(s, t, u)
                assert torch.isfinite(tau).all() and bool(((tau >= s) & (tau <= t)).all()), (type(sde).__name__, param, ode)
