"""Forward SDEs (docs/maths.md §1): closed forms against float64 numerical integration, derived
identities, Euler–Maruyama marginals, numerical safety, broadcasting, dtypes, prior mismatch, bad
arguments."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from lit_diffusion.core import sdes
from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP, get_sde
from lit_diffusion.core.utils import make_generators

F64 = torch.float64




# --------------------------------------------------------------------------------------------
# The table of §1, written independently of lit_diffusion.core.sdes: (a(t), b(t), g(t)^2) as numpy
# functions of t.  The package's closed forms of alpha, m, sigma^2 are checked against the
# numerical solution of alpha' = a alpha, m' = a m + b, (sigma^2)' = 2 a sigma^2 + g^2.
# --------------------------------------------------------------------------------------------
def _beta_fns(beta_min, beta_max, T):
    beta = lambda t: beta_min + (t / T) * (beta_max - beta_min)  # noqa: E731
    B = lambda t: beta_min * t + (beta_max - beta_min) * t**2 / (2 * T)  # noqa: E731
    return beta, B


def table_coefficients(sde):
    name = type(sde).__name__
    if name == "OU":
        th, mu, s = sde.theta, sde.mu, sde.s
        return (lambda t: -th, lambda t: th * mu, lambda t: s**2)
    if name == "ContractiveOU":
        th, mu, s = sde.theta, sde.mu, sde.s
        return (lambda t: th, lambda t: -th * mu, lambda t: s**2)
    if name == "VE":
        smin, r, T = sde.sigma_min, sde.sigma_max / sde.sigma_min, sde.T
        return (lambda t: 0.0, lambda t: 0.0, lambda t: smin**2 * r ** (2 * t / T) * 2 * math.log(r) / T)
    beta, B = _beta_fns(sde.beta_min, sde.beta_max, sde.T)
    if name == "VP":
        return (lambda t: -0.5 * beta(t), lambda t: 0.0, beta)
    if name == "SubVP":
        return (lambda t: -0.5 * beta(t), lambda t: 0.0, lambda t: beta(t) * (1 - math.exp(-2 * B(t))))
    if name == "ContractiveVP":
        return (lambda t: 0.5 * beta(t), lambda t: 0.0, beta)
    raise AssertionError(name)


SDE_FACTORIES = {
    "OU-default": lambda: OU(),
    "OU-custom": lambda: OU(theta=0.7, mu=0.5, sigma=1.3, T=2.0, t_min=1e-3),
    "VE-default": lambda: VE(),
    "VE-custom": lambda: VE(sigma_min=0.02, sigma_max=10.0, T=2.0, t_min=1e-4),
    "VP-default": lambda: VP(),
    "VP-custom": lambda: VP(beta_min=0.2, beta_max=15.0, T=1.5, t_min=1e-3),
    "SubVP-default": lambda: SubVP(),
    "SubVP-custom": lambda: SubVP(beta_min=0.3, beta_max=8.0, T=2.0, t_min=1e-3),
    "COU-default": lambda: ContractiveOU(),
    "COU-custom": lambda: ContractiveOU(theta=0.8, mu=-0.4, sigma=0.9, T=1.5, t_min=1e-3),
    "CVP-default": lambda: ContractiveVP(),
    "CVP-custom": lambda: ContractiveVP(beta_min=0.05, beta_max=3.0, T=1.2, t_min=1e-3),
}
ALL = list(SDE_FACTORIES)
DEFAULTS = [k for k in ALL if k.endswith("default")]


def _times(sde):
    return np.array([sde.t_min, 2 * sde.t_min, 0.01 * sde.T, 0.1 * sde.T, 0.37 * sde.T, 0.5 * sde.T, 0.81 * sde.T, sde.T])


def _f64(v):
    return torch.as_tensor(v, dtype=F64)


@pytest.mark.parametrize("key", ALL)
def test_drift_and_diffusion_match_table(key):
    sde = SDE_FACTORIES[key]()
    a_fn, b_fn, g2_fn = table_coefficients(sde)
    t = _times(sde)
    a, b = sde.drift_coefficients(_f64(t))
    np.testing.assert_allclose(a.numpy(), [a_fn(s) for s in t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b.numpy(), [b_fn(s) for s in t], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sde.g2(_f64(t)).numpy(), [g2_fn(s) for s in t], rtol=1e-10)
    np.testing.assert_allclose(sde.diffusion(_f64(t)).numpy() ** 2, [g2_fn(s) for s in t], rtol=1e-10)
    # score_sde_pytorch-style sde(x, t): drift a x + b, diffusion g
    x = torch.linspace(-2, 3, 8, dtype=F64)[:, None].expand(8, 3)
    drift, g = sde.sde(x, _f64(t))
    expected = torch.tensor([a_fn(s) for s in t], dtype=F64)[:, None] * x + torch.tensor([b_fn(s) for s in t], dtype=F64)[:, None]
    torch.testing.assert_close(drift, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, torch.tensor([math.sqrt(g2_fn(s)) for s in t], dtype=F64), rtol=1e-10, atol=0)


@pytest.mark.parametrize("key", ALL)
def test_closed_forms_match_numerical_integration(key):
    """alpha, m, sigma^2 (and sigma, snr) against solve_ivp (DOP853, rtol 1e-12) of the ODEs of §1,
    driven by the independent table coefficients."""
    sde = SDE_FACTORIES[key]()
    a_fn, b_fn, g2_fn = table_coefficients(sde)

    def rhs(t, y):
        alpha, m, s2 = y
        a = a_fn(t)
        return [a * alpha, a * m + b_fn(t), 2 * a * s2 + g2_fn(t)]

    t = _times(sde)
    sol = solve_ivp(rhs, (0.0, sde.T), [1.0, 0.0, 0.0], method="DOP853", t_eval=t, rtol=1e-12, atol=1e-16)
    assert sol.success
    alpha_num, m_num, s2_num = sol.y
    tt = _f64(t)
    np.testing.assert_allclose(sde.alpha(tt).numpy(), alpha_num, rtol=1e-9)
    np.testing.assert_allclose(torch.exp(sde.log_alpha(tt)).numpy(), alpha_num, rtol=1e-9)
    np.testing.assert_allclose(sde.mean_offset(tt).numpy(), m_num, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sde.sigma2(tt).numpy(), s2_num, rtol=1e-7)
    np.testing.assert_allclose(sde.sigma(tt).numpy(), np.sqrt(s2_num), rtol=1e-7)
    np.testing.assert_allclose(sde.snr(tt).numpy(), alpha_num**2 / s2_num, rtol=1e-7)
    np.testing.assert_allclose(sde.log_snr(tt).numpy(), np.log(alpha_num**2 / s2_num), rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("key", ALL)
def test_t_from_snr_inverts_snr(key):
    sde = SDE_FACTORIES[key]()
    t = torch.linspace(sde.t_min, sde.T, 201, dtype=F64)
    torch.testing.assert_close(sde.t_from_snr(sde.snr(t)), t, rtol=1e-9, atol=1e-12)
    # float32: still accurate (relative) from t_min to T
    t32 = t.float()
    torch.testing.assert_close(sde.t_from_snr(sde.snr(t32)), t32, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("key", ALL)
def test_snr_derivative_identity(key):
    """d lambda/dt = -g^2 alpha^2 / sigma^4 (§1), by central finite differences in float64; the SNR
    is strictly decreasing for every SDE (also the contractive ones, whose SNR tends to a constant)."""
    sde = SDE_FACTORIES[key]()
    t = _f64(_times(sde)[1:-1])
    h = 1e-5 * t
    fd = (sde.snr(t + h) - sde.snr(t - h)) / (2 * h)
    exact = -sde.g2(t) * sde.alpha(t) ** 2 / sde.sigma2(t) ** 2
    torch.testing.assert_close(fd, exact, rtol=1e-6, atol=0)
    grid = torch.linspace(sde.t_min, sde.T, 1000, dtype=F64)
    assert (torch.diff(sde.snr(grid)) < 0).all()


@pytest.mark.parametrize("key", DEFAULTS + ["OU-custom", "COU-custom", "VE-custom"])
def test_marginals_match_euler_maruyama(key, gen):
    """Fine Euler–Maruyama simulation (2000 steps, 20000 paths, float64) of the forward SDE from a fixed
    x0: mean alpha x0 + m and variance sigma^2 at T/2 and T within Monte-Carlo error (5 standard
    errors) plus the O(h) discretisation bias (2e-3 relative)."""
    sde = SDE_FACTORIES[key]()
    n_paths, n_steps, x0 = 20000, 2000, 0.7
    h = sde.T / n_steps
    x = torch.full((n_paths,), x0, dtype=F64)
    checks = {n_steps // 2: None, n_steps: None}
    grid = torch.arange(n_steps, dtype=F64) * h  # left end points: plain Euler–Maruyama
    a_all, b_all = (c.tolist() for c in sde.drift_coefficients(grid))
    gs_all = (sde.diffusion(grid) * math.sqrt(h)).tolist()
    for k in range(n_steps):
        noise = torch.randn(n_paths, generator=gen, dtype=F64)
        x = x + (a_all[k] * x + b_all[k]) * h + gs_all[k] * noise
        if k + 1 in checks:
            checks[k + 1] = x.clone()
    for k, xs in checks.items():
        t = torch.tensor(k * h, dtype=F64)
        mean = (sde.alpha(t) * x0 + sde.mean_offset(t)).item()
        var = sde.sigma2(t).item()
        se_mean = math.sqrt(var / n_paths)
        se_var = var * math.sqrt(2 / n_paths)
        assert abs(xs.mean().item() - mean) < 5 * se_mean + 2e-3 * (abs(mean) + math.sqrt(var)), (key, k)
        assert abs(xs.var().item() - var) < 5 * se_var + 2e-3 * var, (key, k)


PUBLIC_COEFS = ["alpha", "log_alpha", "mean_offset", "sigma", "sigma2", "snr", "log_snr", "diffusion", "g2"]


@pytest.mark.parametrize("key", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_nan_or_inf_at_t_min_and_T(key, dtype):
    sde = SDE_FACTORIES[key]()
    t = torch.tensor([sde.t_min, sde.T], dtype=dtype)
    for name in PUBLIC_COEFS:
        v = getattr(sde, name)(t)
        assert v.dtype == dtype, name
        assert torch.isfinite(v).all(), (name, v)
    assert (sde.sigma(t) > 0).all() and (sde.snr(t) > 0).all()
    a, b = sde.drift_coefficients(t)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert torch.isfinite(sde.t_from_snr(sde.snr(t))).all()
    x = torch.randn(2, 3, dtype=dtype)
    for out in [sde.perturb(x, t, torch.randn_like(x)), *sde.marginal_prob(x, t), *sde.sde(x, t)]:
        assert torch.isfinite(out).all() and out.dtype == dtype
    z = sde.prior_sampling((4, 3), dtype=dtype)
    assert torch.isfinite(sde.prior_logp(z)).all()


@pytest.mark.parametrize("key", DEFAULTS)
@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 4, 4)])
def test_broadcasting_scalar_and_per_sample_t(key, shape, gen):
    sde = SDE_FACTORIES[key]()
    x0 = torch.randn(shape, generator=gen)
    noise = torch.randn(shape, generator=gen)
    t = torch.linspace(sde.t_min, sde.T, shape[0])
    xt = sde.perturb(x0, t, noise)
    assert xt.shape == x0.shape
    for i in range(shape[0]):
        ti = float(t[i])
        torch.testing.assert_close(xt[i], sde.perturb(x0[i : i + 1], ti, noise[i : i + 1])[0])
        alpha, m, sigma = (c.item() for c in (sde.alpha(ti), sde.mean_offset(ti), sde.sigma(ti)))
        torch.testing.assert_close(xt[i], alpha * x0[i] + m + sigma * noise[i], rtol=1e-5, atol=1e-5)
    # scalar t: python float and 0-d tensor agree
    torch.testing.assert_close(sde.perturb(x0, 0.3, noise), sde.perturb(x0, torch.tensor(0.3), noise))
    alpha, m, sigma = sde.marginal_coefficients(t, x0)
    assert alpha.shape == (shape[0],) + (1,) * (len(shape) - 1)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == x0.shape and std.shape == (shape[0],)
    drift, g = sde.sde(x0, t)
    assert drift.shape == x0.shape and g.shape == (shape[0],)
    with pytest.raises(ValueError):
        sdes.broadcast_to(torch.zeros(5, 1, 1, 1, 1), torch.zeros(5, 3))


@pytest.mark.parametrize("key", DEFAULTS)
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_input_gives_float32_coefficients(key, low):
    sde = SDE_FACTORIES[key]()
    x = torch.randn(4, 3).to(low)
    t = torch.tensor([sde.t_min, 0.1, 0.5, sde.T]).to(low)
    alpha, m, sigma = sde.marginal_coefficients(t.float(), x)
    assert alpha.dtype == m.dtype == sigma.dtype == torch.float32
    xt = sde.perturb(x, sde.t_min, torch.randn(4, 3).to(low))
    assert xt.dtype == torch.float32 and torch.isfinite(xt).all()
    drift, g = sde.sde(x, 0.5)
    assert drift.dtype == torch.float32
    # coefficients at t_min computed from a low-precision x do not underflow to 0 (sigma > 0)
    assert sde.marginal_coefficients(sde.t_min, x)[2].item() > 0
    for name in ["alpha", "sigma", "snr", "g2"]:
        assert getattr(sde, name)(t).dtype == torch.float32


@pytest.mark.parametrize("key", DEFAULTS)
def test_prior_sampling_and_logp(key):
    sde = SDE_FACTORIES[key]()
    gens = make_generators(range(8))
    z8 = sde.prior_sampling((8, 3), generator=gens, dtype=F64)
    z3 = sde.prior_sampling((3, 3), generator=make_generators(range(3)), dtype=F64)
    torch.testing.assert_close(z8[:3], z3)  # batch-size independent
    z = sde.prior_sampling((40000, 1), generator=torch.Generator().manual_seed(0), dtype=F64)
    v = sde.prior_var
    assert abs(z.mean().item() - sde.prior_mean) < 5 * math.sqrt(v / 40000)
    assert abs(z.var().item() - v) < 5 * v * math.sqrt(2 / 40000)
    logp = sde.prior_logp(z[:5])
    exact = -0.5 * math.log(2 * math.pi * v) - 0.5 * (z[:5, 0] - sde.prior_mean) ** 2 / v
    torch.testing.assert_close(logp, exact)


@pytest.mark.parametrize("key", ALL)
def test_prior_is_consistent_with_marginal_at_T(key):
    """VE and the contractive SDEs use N(m(T), sigma(T)^2) as prior; OU, VP and subVP a fixed
    stationary-type prior whose distance to the marginal is measured in test_prior_mismatch_*."""
    sde = SDE_FACTORIES[key]()
    T = torch.tensor(sde.T, dtype=F64)
    if isinstance(sde, (VE, ContractiveOU, ContractiveVP)):
        assert sde.prior_var == pytest.approx(sde.sigma2(T).item(), rel=1e-12)
        assert sde.prior_mean == pytest.approx(sde.mean_offset(T).item(), rel=1e-12, abs=1e-12)
    elif isinstance(sde, OU):
        assert sde.prior_mean == sde.mu
        assert sde.prior_var == pytest.approx(sde.s**2 / (2 * sde.theta))
    else:
        assert sde.prior_var == 1.0 and sde.prior_mean == 0.0


def test_reverse_sde_drift():
    sde = VP()
    score = lambda x, t: -x  # noqa: E731
    x = torch.randn(4, 2, dtype=F64)
    t = torch.full((4,), 0.4, dtype=F64)
    drift, g = sde.reverse(score).sde(x, t)
    a, b = sde.drift_coefficients(0.4)
    torch.testing.assert_close(drift, a * x + b + sde.g2(0.4) * x)
    drift_ode, g_ode = sde.reverse(score, probability_flow=True).sde(x, t)
    torch.testing.assert_close(drift_ode, a * x + b + 0.5 * sde.g2(0.4) * x)
    assert (g_ode == 0).all() and torch.allclose(g, sde.diffusion(t))


# --------------------------------------------------------------------------------------------
# Prior mismatch at T (exact KL between the marginal of a Gaussian target and the prior)
# --------------------------------------------------------------------------------------------
def kl_gauss_iso(mean_q, var_q, mean_p, var_p, d=1):
    """KL(N(mean_q, var_q I) || N(mean_p, var_p I)) in dimension d (scalar means per axis)."""
    return 0.5 * d * (var_q / var_p - 1 - math.log(var_q / var_p)) + 0.5 * d * (mean_q - mean_p) ** 2 / var_p


def marginal_at_T(sde, mu0, var0):
    T = torch.tensor(sde.T, dtype=F64)
    a, m, s2 = sde.alpha(T).item(), sde.mean_offset(T).item(), sde.sigma2(T).item()
    return a * mu0 + m, a**2 * var0 + s2


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("mu0,var0", [(0.0, 0.25), (1.5, 1.0), (-2.0, 4.0), (0.3, 0.01)])
def test_prior_mismatch_ou_exponential_bound(T, mu0, var0):
    """Standard OU: KL(q_T || N(0,1)) <= e^{-2T} KL(q_0 || N(0,1)) (§6), on exact Gaussian KLs."""
    sde = OU(T=T)
    kl0 = kl_gauss_iso(mu0, var0, 0.0, 1.0)
    klT = kl_gauss_iso(*marginal_at_T(sde, mu0, var0), sde.prior_mean, sde.prior_var)
    assert klT <= math.exp(-2 * T) * kl0 * (1 + 1e-12)
    assert klT > 0


def test_prior_mismatch_defaults_numbers():
    """Exact KL(q_T || prior) per dimension for the target N(1, 0.5^2) with the default SDEs; the
    numbers are the ones of docs/prior_mismatch.md (bench/prior_mismatch.py).  The forgetting SDEs
    are essentially unbiased, the contractive ones keep part of the signal by design."""
    mu0, var0 = 1.0, 0.25
    kl = {}
    for name in ["OU", "VE", "VP", "SubVP", "ContractiveOU", "ContractiveVP"]:
        sde = get_sde(name)
        kl[name] = kl_gauss_iso(*marginal_at_T(sde, mu0, var0), sde.prior_mean, sde.prior_var)
    assert kl["OU"] < 1e-4  # T = 5: e^{-10} scale
    assert kl["VP"] < 1e-4 and kl["SubVP"] < 1e-4
    assert kl["VE"] < 1e-3  # mean 1 vs prior mean 0 with prior std 50: 1/(2*2500) = 2e-4
    # COU(theta=1, s=sqrt2, T=1): q_T = N(e, e^2/4 + e^2 - 1) vs prior N(0, e^2 - 1)
    assert kl["ContractiveOU"] == pytest.approx(0.59584, rel=1e-4)
    # CVP(0.1, 2, T=1): B(T) = 1.05, q_T = N(e^{0.525}, e^{1.05}/4 + e^{1.05} - 1) vs N(0, e^{1.05} - 1)
    assert kl["ContractiveVP"] == pytest.approx(0.79875, rel=1e-4)
    # contractive: the SNR at T stays bounded away from 0 (lambda -> 2 theta/s^2 for COU)
    assert ContractiveOU().snr(1.0).item() > 1.0
    assert ContractiveVP().snr(1.0).item() > 1.0
    assert VP().snr(1.0).item() < 1e-4


# --------------------------------------------------------------------------------------------
# Bad arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "factory,fragment",
    [
        (lambda: VP(beta_min=-0.1), "beta_min=-0.1"),
        (lambda: VP(beta_max=-3.0), "beta_max=-3.0"),
        (lambda: VP(beta_min=5.0, beta_max=1.0), "beta_max=1.0"),
        (lambda: SubVP(beta_min=float("nan")), "beta_min=nan"),
        (lambda: ContractiveVP(beta_min=-1.0), "beta_min=-1.0"),
        (lambda: VE(sigma_min=2.0, sigma_max=1.0), "sigma_min=2.0"),
        (lambda: VE(sigma_min=1.0, sigma_max=1.0), "sigma_min=1.0"),
        (lambda: VE(sigma_min=-0.1), "sigma_min=-0.1"),
        (lambda: OU(theta=-1.0), "theta=-1.0"),
        (lambda: OU(sigma=0.0), "sigma=0.0"),
        (lambda: ContractiveOU(theta=0.0), "theta=0.0"),
        (lambda: VP(T=1.0, t_min=1.0), "t_min=1.0"),
        (lambda: VP(T=1.0, t_min=2.0), "t_min=2.0"),
        (lambda: OU(t_min=0.0), "t_min=0.0"),
        (lambda: VE(T=-1.0), "T=-1.0"),
        (lambda: get_sde("VPP"), "'VPP'"),
    ],
)
def test_bad_arguments_name_the_value(factory, fragment):
    with pytest.raises(ValueError) as err:
        factory()
    assert fragment in str(err.value)


def test_get_sde_names_and_aliases():
    assert isinstance(get_sde("vp"), VP)
    assert isinstance(get_sde("subvp"), SubVP)
    assert isinstance(get_sde("cou", theta=2.0), ContractiveOU)
    assert isinstance(get_sde("CVP"), ContractiveVP)
    sde = VE()
    assert get_sde(sde) is sde
    with pytest.raises(ValueError, match="valid choices"):
        get_sde("nope")
    # hparams rebuild the same SDE (configs/checkpoints)
    for key in ALL:
        s = SDE_FACTORIES[key]()
        s2 = type(s)(**s.hparams())
        t = torch.linspace(s.t_min, s.T, 7, dtype=F64)
        torch.testing.assert_close(s.sigma2(t), s2.sigma2(t))


# --------------------------------------------------------------------------------------------
# Reverse SDE with the exact score (lit_diffusion.cli.demo): samples the target
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_key", ["VP-default", "OU-default", "VE-default"])
def test_reverse_euler_maruyama_with_exact_score_recovers_target(sde_key):
    """Reverse-time EM (§1, §5) from the prior with the exact score of the 1-D bimodal mixture: mean,
    variance and the mass of the left mode match the target within 5 SE + 0.03 (discretisation with
    200 steps, early stopping and prior mismatch are all small)."""
    from lit_diffusion.cli.demo import euler_maruyama_exact
    from lit_diffusion.core.targets import get_target

    target, sde = get_target("bimodal_1d"), SDE_FACTORIES[sde_key]()
    n = 4000
    x = euler_maruyama_exact(target, sde, n, steps=200, generator=torch.Generator().manual_seed(0))[:, 0]
    mean, var = target.mean().item(), target.covariance().item()
    assert abs(x.mean().item() - mean) < 5 * math.sqrt(var / n) + 0.03
    assert abs(x.var().item() - var) < 5 * var * math.sqrt(2 / n) + 0.03 * var
    assert abs((x < 0).double().mean().item() - 0.3) < 5 * math.sqrt(0.21 / n) + 0.01


def test_demo_writes_png(tmp_path):
    from lit_diffusion.cli.demo import main

    out = main(["--out", str(tmp_path / "sub" / "demo.png"), "--n", "200", "--steps", "50"])
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="steps=0"):
        main(["--out", str(tmp_path / "x.png"), "--steps", "0"])
