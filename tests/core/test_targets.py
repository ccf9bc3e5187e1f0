"""Analytic Gaussian-mixture targets (docs/maths.md §6): exact score, denoiser, posterior
covariance and log-density of the forward marginal; sampling; presets; bad arguments."""

import math

import pytest
import torch
from torch.func import jacrev, vmap

from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP
from lit_diffusion.core.targets import PRESETS, GaussianMixture, get_target
from lit_diffusion.core.utils import make_generators

F64 = torch.float64


SDES = {
    "OU": lambda: OU(theta=0.7, mu=0.5, sigma=1.3, T=2.0),
    "VE": lambda: VE(),
    "VP": lambda: VP(),
    "SubVP": lambda: SubVP(),
    "COU": lambda: ContractiveOU(theta=0.8, mu=-0.4, sigma=0.9),
    "CVP": lambda: ContractiveVP(),
}


def full_cov_mixture():
    """A 3-D mixture with full, isotropic and diagonal-like covariances (exercises all code paths)."""
    A = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, -0.2], [0.0, -0.2, 0.8]], dtype=F64)
    covs = torch.stack([A, 0.2 * torch.eye(3, dtype=F64), torch.diag(torch.tensor([0.05, 1.0, 0.3], dtype=F64))])
    return GaussianMixture([0.5, 0.2, 0.3], [[1.0, -1.0, 0.5], [-2.0, 0.0, 1.0], [0.0, 2.0, -1.0]], covs)


TARGETS = {name: (lambda n=name: get_target(n)) for name in PRESETS}
TARGETS["full3d"] = full_cov_mixture


def _xt(target, sde, n, gen):
    """States from the marginal at random per-sample times (typical points of p_t)."""
    x0 = target.sample(n, generator=gen, dtype=F64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(n, generator=gen, dtype=F64) ** 2
    t[0] = sde.t_min
    return sde.perturb(x0, t, torch.randn(x0.shape, generator=gen, dtype=F64)), t


@pytest.mark.parametrize("sde_key", list(SDES))
@pytest.mark.parametrize("target_key", list(TARGETS))
def test_score_is_gradient_of_log_prob(sde_key, target_key, gen):
    sde, target = SDES[sde_key](), TARGETS[target_key]()
    x, t = _xt(target, sde, 16, gen)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(xg, t, sde).sum(), xg)
    score = target.score(x, t, sde)
    torch.testing.assert_close(score, grad, rtol=1e-7, atol=1e-7 * (1 + grad.abs().max().item()))
    # scalar t as well
    xg = x[:4].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target.log_prob(xg, 0.3, sde).sum(), xg)
    torch.testing.assert_close(target.score(x[:4], 0.3, sde), grad, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("sde_key", list(SDES))
@pytest.mark.parametrize("target_key", ["bimodal_1d", "ring8_2d", "anisotropic_16d", "full3d"])
def test_denoiser_is_tweedie_and_posterior_covariance_is_its_jacobian(sde_key, target_key, gen):
    """D = (x - m + sigma^2 s)/alpha and Cov(X0|Xt) = (sigma^2/alpha) dD/dx (jacrev), §5/§6."""
    sde, target = SDES[sde_key](), TARGETS[target_key]()
    x, t = _xt(target, sde, 8, gen)
    alpha, m, sigma = (c[:, None] for c in (sde.alpha(t), sde.mean_offset(t), sde.sigma(t)))
    D = target.denoiser(x, t, sde)
    torch.testing.assert_close(D, (x - m + sigma**2 * target.score(x, t, sde)) / alpha, rtol=1e-6, atol=1e-6)

    def den(xi, ti):
        return target.denoiser(xi[None], ti[None], sde)[0]

    J = vmap(jacrev(den))(x, t)  # (B, d, d)
    cov = target.posterior_covariance(x, t, sde)
    expected = (sigma**2 / alpha)[..., None] * J
    torch.testing.assert_close(cov, expected, rtol=1e-6, atol=1e-8)
    # a covariance: symmetric positive semi-definite
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert torch.linalg.eigvalsh(cov).min() > -1e-10


@pytest.mark.parametrize("sde_key", ["VP", "VE", "COU"])
def test_marginal_matches_perturbed_samples(sde_key):
    sde, target = SDES[sde_key](), full_cov_mixture()
    t = 0.4
    q = target.marginal(t, sde)
    a, m, s2 = sde.alpha(t).item(), sde.mean_offset(t).item(), sde.sigma2(t).item()
    torch.testing.assert_close(q.mean(), a * target.mean() + m)
    torch.testing.assert_close(q.covariance(), a**2 * target.covariance() + s2 * torch.eye(3, dtype=F64))
    g = torch.Generator().manual_seed(3)
    n = 40000
    x0 = target.sample(n, generator=g, dtype=F64)
    xt = sde.perturb(x0, t, torch.randn(x0.shape, generator=g, dtype=F64))
    cov = q.covariance()
    se = (torch.diag(cov) / n).sqrt()
    assert ((xt.mean(0) - q.mean()).abs() < 5 * se).all()
    emp = torch.cov(xt.T)
    se_cov = ((torch.diag(cov)[:, None] * torch.diag(cov)[None] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 5 * se_cov).all()
    # the marginal's log-density at time 0 of a trivial SDE equals log p_t of the original
    x = xt[:10]
    lp_t = target.log_prob(x, t, sde)
    lp_q = q.log_prob(x, 0.0, VE())  # at t = 0 every SDE is the identity: log q(x) itself
    torch.testing.assert_close(lp_t, lp_q, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("target_key", list(TARGETS))
def test_sample_moments(target_key):
    target = TARGETS[target_key]()
    n = 40000
    x = target.sample(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert x.shape == (n, target.dim)
    cov = target.covariance()
    se = (torch.diag(cov) / n).sqrt()
    assert ((x.mean(0) - target.mean()).abs() < 5 * se).all()
    emp = torch.cov(x.T) if target.dim > 1 else x.var().reshape(1, 1)
    # fourth moments of a mixture are not Gaussian: a loose but still informative 8-SE bound
    se_cov = ((torch.diag(cov)[:, None] * torch.diag(cov)[None] + cov**2) / n).sqrt()
    assert ((emp - cov).abs() < 8 * se_cov).all()


def test_component_frequencies_and_batch_independent_generators():
    target = get_target("bimodal_1d")
    n = 20000
    x = target.sample(n, generator=torch.Generator().manual_seed(1), dtype=F64)
    frac = (x[:, 0] < 0).double().mean().item()  # the two modes (-2 and 1.5) are well separated
    assert abs(frac - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    a = target.sample(8, generator=make_generators(range(8)))
    b = target.sample(3, generator=make_generators(range(3)))
    torch.testing.assert_close(a[:3], b)
    with pytest.raises(ValueError, match="generators"):
        target.sample(4, generator=make_generators(range(3)))


def test_log_prob_normalised_1d():
    target, sde = get_target("bimodal_1d"), VP()
    grid = torch.linspace(-12, 12, 20001, dtype=F64)[:, None]
    for t in [sde.t_min, 0.2, 1.0]:
        p = target.log_prob(grid, t, sde).exp()
        mass = torch.trapezoid(p, grid[:, 0]).item()
        assert mass == pytest.approx(1.0, abs=1e-6)


def test_single_gaussian_closed_form():
    """For N(mu, s^2 I): p_t = N(alpha mu + m, (alpha^2 s^2 + sigma^2) I) -> exact score."""
    sde = OU(theta=0.7, mu=0.5, sigma=1.3, T=2.0)
    target = GaussianMixture.gaussian([1.0, -2.0], 0.3)
    x = torch.randn(5, 2, dtype=F64)
    t = 0.6
    a, m, s2 = sde.alpha(t).item(), sde.mean_offset(t).item(), sde.sigma2(t).item()
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    var = a**2 * 0.3 + s2
    torch.testing.assert_close(target.score(x, t, sde), -(x - a * mu - m) / var)
    lp = -0.5 * ((x - a * mu - m) ** 2).sum(1) / var - math.log(2 * math.pi * var)
    torch.testing.assert_close(target.log_prob(x, t, sde), lp)
    torch.testing.assert_close(
        target.posterior_covariance(x, t, sde), (0.3 * s2 / var) * torch.eye(2, dtype=F64).expand(5, 2, 2)
    )


def test_presets_shapes_and_dtype():
    dims = {"bimodal_1d": 1, "ring8_2d": 2, "swissroll_2d": 2, "anisotropic_16d": 16}
    for name, d in dims.items():
        t = get_target(name)
        assert t.dim == d
        x = t.sample(4)
        assert x.dtype == torch.float32 and x.shape == (4, d)
        assert t.score(x, 0.5, VP()).dtype == torch.float32
    ev = torch.linalg.eigvalsh(get_target("anisotropic_16d").covariances)
    assert ev.min().item() == pytest.approx(0.01, rel=1e-6) and ev.max().item() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize(
    "factory,fragment",
    [
        (lambda: GaussianMixture([0.5, -0.5], [[0.0], [1.0]], 1.0), "weights"),
        (lambda: GaussianMixture([1.0, 1.0], [[0.0, 1.0]], 1.0), "means"),
        (lambda: GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]]), "positive definite"),
        (lambda: GaussianMixture([1.0, 1.0], [[0.0], [1.0]], [1.0, 1.0, 1.0]), "(K,)"),
        (lambda: get_target("moons"), "'moons'"),
    ],
)
def test_bad_arguments(factory, fragment):
    with pytest.raises(ValueError) as err:
        factory()
    assert fragment in str(err.value)


def test_wrong_state_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        get_target("ring8_2d").score(torch.zeros(3, 3), 0.5, VP())
