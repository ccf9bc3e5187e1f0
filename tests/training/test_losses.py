"""Training losses (docs/maths.md §3): SSM, ISM and DSM equal ESM up to network-independent
constants, ESM/DSM of the exact score, importance sampling of t, training signal, shapes, errors.

Monte-Carlo tolerances: every comparison of two estimates uses common random numbers (the same seeded
generator gives the same t, eps and projections to both) and asserts |mean difference| < 4 standard
errors, the SE being the sample standard deviation of the paired per-sample differences / sqrt(N).
All runs are seeded, so the tests are deterministic; 4 SE is a two-sided 6e-5 level for a correct
implementation, while the "power" assertions check that the quantities compared are far apart
(many SE) when they should be.
"""

import math

import pytest
import torch
from scipy.integrate import quad

from lit_diffusion.training import losses as L
from lit_diffusion.training.losses import DSM, ESM, ISM, SSM, get_loss
from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP
from lit_diffusion.core.targets import GaussianMixture, get_target
from lit_diffusion.core.utils import make_generators

F64 = torch.float64




def G(seed=0):
    return torch.Generator().manual_seed(seed)


class PerturbedExact(torch.nn.Module):
    """eps_hat = eps*(x, t) + scale * MLP(x, t): a 'network' close to the exact one, with its own
    random MLP (seeded), so that two seeds are two genuinely different networks."""

    prediction_type = "epsilon"

    def __init__(self, target, sde, seed, scale=0.3, width=32):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = target.dim
        self.target, self.sde, self.scale = target, sde, scale
        self.w1 = torch.nn.Parameter(torch.randn(d + 1, width, generator=g, dtype=F64) / math.sqrt(d + 1))
        self.b1 = torch.nn.Parameter(torch.randn(width, generator=g, dtype=F64))
        self.w2 = torch.nn.Parameter(torch.randn(width, d, generator=g, dtype=F64) / math.sqrt(width))

    def forward(self, x, t):
        h = torch.tanh(torch.cat([x, t[:, None].to(x.dtype)], 1) @ self.w1 + self.b1) @ self.w2
        return self.target.prediction(x, t, self.sde, "epsilon") + self.scale * h


class Exact(torch.nn.Module):
    """The analytic target seen as a network declaring `kind`."""

    def __init__(self, target, sde, kind):
        super().__init__()
        self.target, self.sde, self.prediction_type = target, sde, kind

    def forward(self, x, t):
        return self.target.prediction(x, t, self.sde, self.prediction_type)


SDES = {"VP": VP, "VE": VE, "COU": ContractiveOU, "SubVP": SubVP}

LOSS_CASES = {
    "DSM": lambda: DSM(),
    "DSM-likelihood-IS": lambda: DSM(weighting="likelihood", importance_sampling=True),
    "SSM-gauss-VR": lambda: SSM(),
    "SSM-rademacher-noVR-2proj": lambda: SSM(projections=2, distribution="rademacher", variance_reduction=False),
    "SSM-gauss-noVR": lambda: SSM(variance_reduction=False),
    "ISM": lambda: ISM(),
}


def _offsets(loss, esm, nets, sde, x0, seed):
    """Per-sample (loss - ESM) for each network, with common random numbers."""
    out = []
    for net in nets:
        a = loss.per_sample(net, sde, x0, generator=G(seed)).detach()
        b = esm.per_sample(net, sde, x0, generator=G(seed)).detach()
        out.append((a - b, b))
    return out


def _z(diff):
    return diff.mean().item() / (diff.std().item() / math.sqrt(diff.numel()))


@pytest.mark.parametrize("loss_key", list(LOSS_CASES))
@pytest.mark.parametrize("sde_key,target_key", [("VP", "ring8_2d"), ("VE", "bimodal_1d"), ("COU", "ring8_2d")])
def test_losses_differ_from_esm_by_a_network_independent_constant(loss_key, sde_key, target_key):
    """§3: SSM, ISM, DSM = ESM + C with C independent of the network.  Two different networks (the
    exact epsilon plus two different random MLPs) give the same offset within 4 SE of the paired
    difference, and the offset equals its theoretical value: C_DSM = E (w/sigma^2)(d - |eps*|^2),
    C_SSM = C_ISM = -E (w/sigma^2) |eps*|^2 (w: the weighting, importance-reweighted)."""
    sde, target = SDES[sde_key](), get_target(target_key)
    loss = LOSS_CASES[loss_key]()
    esm = ESM(target, weighting=loss.weighting, importance_sampling=loss.importance_sampling)
    nets = [PerturbedExact(target, sde, seed=1), PerturbedExact(target, sde, seed=2)]
    n = 8192
    x0 = target.sample(n, generator=G(7), dtype=F64)
    (d1, esm1), (d2, esm2) = _offsets(loss, esm, nets, sde, x0, seed=11)
    # the two networks are genuinely different: their ESM values differ by many SE
    assert abs(_z(esm1 - esm2)) > 10
    # ... but the offsets agree
    z = _z(d1 - d2)
    assert abs(z) < 4, (loss_key, z, d1.mean().item(), d2.mean().item())
    # and equal the theoretical constant (same t, eps, x_t: per-sample constant estimate)
    t, w = loss.sample_time(sde, n, generator=G(11), dtype=F64)
    g = G(11)
    L.rand((n,), generator=g, dtype=F64)  # same stream as the loss: t first, then eps
    eps = L.randn(x0.shape, generator=g, dtype=F64)
    xt = sde.perturb(x0, t, eps)
    eps_star = target.prediction(xt, t, sde, "epsilon")
    c = (w / sde.sigma2(t)) * ((target.dim if isinstance(loss, DSM) else 0.0) - (eps_star**2).sum(1))
    z_theory = _z(d1 - c)
    assert abs(z_theory) < 4, (loss_key, z_theory, d1.mean().item(), c.mean().item())


def test_offset_test_has_power():
    """A wrong ISM (divergence counted once instead of twice) fails the network-independence check:
    the test above can fail."""

    class WrongISM(ISM):
        def _inner(self, field, sde, x0, t, eps, xt, sigma, generator):
            return 0.5 * (super()._inner(field, sde, x0, t, eps, xt, sigma, generator) + self._quad(field, xt, t))

        def _quad(self, field, xt, t):
            return (field(xt, t, "epsilon") ** 2).flatten(1).sum(1)

    sde, target = VP(), get_target("ring8_2d")
    nets = [PerturbedExact(target, sde, seed=1), PerturbedExact(target, sde, seed=2)]
    x0 = target.sample(8192, generator=G(7), dtype=F64)
    (d1, _), (d2, _) = _offsets(WrongISM(), ESM(target), nets, sde, x0, seed=11)
    assert abs(_z(d1 - d2)) > 8


def test_esm_of_exact_score_is_zero_and_positive_otherwise():
    sde, target = VP(), get_target("ring8_2d")
    x0 = target.sample(512, generator=G(0), dtype=F64)
    esm = ESM(target)
    for kind in ["score", "epsilon", "denoiser", "v"]:
        assert esm(Exact(target, sde, kind), sde, x0, generator=G(1)).item() < 1e-18
    assert esm(PerturbedExact(target, sde, 1), sde, x0, generator=G(1)).item() > 1e-3


@pytest.mark.parametrize("sde_key", ["VP", "VE", "COU"])
@pytest.mark.parametrize("weighting,importance", [("sigma2", False), ("likelihood", False), ("likelihood", True)])
def test_dsm_of_exact_score_equals_closed_form_constant(sde_key, weighting, importance):
    """Target N(mu, s0^2 I_d): E||eps*||^2 = d sigma^2/(alpha^2 s0^2 + sigma^2), so the DSM of the exact
    score is J = 1/(T - t_eps) int lambda(t)/sigma^2 * d alpha^2 s0^2/(alpha^2 s0^2 + sigma^2) dt
    (scipy quad); the MC estimate must be within 4 SE of it."""
    sde = SDES[sde_key]()
    d, s0 = 2, 0.5
    target = GaussianMixture.gaussian([1.0, -0.5], s0**2)

    def integrand(t):
        tt = torch.tensor(t, dtype=F64)
        a2, s2 = sde.alpha(tt).item() ** 2, sde.sigma2(tt).item()
        lam = s2 if weighting == "sigma2" else sde.g2(tt).item()
        return lam / s2 * d * a2 * s0**2 / (a2 * s0**2 + s2)

    t_eps, T = sde.t_min, sde.T
    # split at a few points: the integrand varies on the scale of t_eps near 0 for VE
    pts = [t_eps, 10 * t_eps, 0.01 * T, 0.1 * T, T]
    J = sum(quad(integrand, a, b, epsabs=0, epsrel=1e-10, limit=200)[0] for a, b in zip(pts[:-1], pts[1:])) / (T - t_eps)
    n = 20000
    x0 = target.sample(n, generator=G(3), dtype=F64)
    vals = DSM(weighting=weighting, importance_sampling=importance).per_sample(Exact(target, sde, "score"), sde, x0, G(4))
    se = vals.std().item() / math.sqrt(n)
    assert abs(vals.mean().item() - J) < 4 * se, (vals.mean().item(), J, se)
    assert se < 0.1 * J  # the check is informative (likelihood weighting without IS is the noisiest)


# --------------------------------------------------------------------------------------------
# Importance sampling of t
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde_key", ["VP", "VE", "SubVP", "COU", "CVP", "OU"])
def test_importance_inverse_cdf_matches_quadrature(sde_key):
    """t(u) from the exact inverse CDF has CDF value u under the density g^2/sigma^2 integrated
    numerically (float64 trapezoid on a geometric+uniform grid of 2e5 points)."""
    sde = {"VP": VP, "VE": VE, "SubVP": SubVP, "COU": ContractiveOU, "CVP": ContractiveVP, "OU": OU}[sde_key]()
    t_eps, T = sde.t_min, sde.T
    grid = torch.unique(torch.cat([torch.logspace(math.log10(t_eps), math.log10(T), 100000, dtype=F64),
                                   torch.linspace(t_eps, T, 100000, dtype=F64)]))
    dens = sde.g2(grid) / sde.sigma2(grid)
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(dens, grid)])
    Z = cdf[-1].item()
    assert Z == pytest.approx(L.importance_normalizer(sde, t_eps), rel=1e-6)
    u = torch.linspace(0.001, 0.999, 41, dtype=F64)
    t = L.sample_importance_time(sde, u, t_eps)
    assert ((t >= t_eps) & (t <= T)).all()
    # CDF at t by interpolation in the grid
    idx = torch.searchsorted(grid, t).clamp(1, len(grid) - 1)
    frac = (t - grid[idx - 1]) / (grid[idx] - grid[idx - 1])
    F = (cdf[idx - 1] + frac * (cdf[idx] - cdf[idx - 1])) / Z
    torch.testing.assert_close(F, u, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sde_key", ["VP", "VE"])
def test_importance_sampling_is_unbiased_and_reduces_variance(sde_key):
    """Same objective with and without importance sampling (likelihood weighting) for a fixed
    network; independent samples, so the SE combines both; the IS estimator's std is smaller."""
    sde, target = SDES[sde_key](), get_target("ring8_2d")
    net = PerturbedExact(target, sde, seed=3)
    n = 16384
    x0 = target.sample(n, generator=G(0), dtype=F64)
    a = DSM(weighting="likelihood").per_sample(net, sde, x0, G(1)).detach()
    b = DSM(weighting="likelihood", importance_sampling=True).per_sample(net, sde, x0, G(2)).detach()
    se = math.sqrt(a.var().item() / n + b.var().item() / n)
    assert abs(a.mean().item() - b.mean().item()) < 4 * se
    assert b.std().item() < 0.5 * a.std().item()


# --------------------------------------------------------------------------------------------
# Training signal, shapes, parametrizations, dtypes
# --------------------------------------------------------------------------------------------
class SmallMLP(torch.nn.Module):
    prediction_type = "epsilon"

    def __init__(self, d, width=64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(d + 1, width), torch.nn.SiLU(), torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, d)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None].to(x.dtype)], 1))


@pytest.mark.parametrize("loss_key", ["DSM", "SSM-gauss-VR", "ISM"])
def test_training_reduces_esm(loss_key):
    """200 Adam steps on the 1-D bimodal target with VP: the explicit score-matching error
    (against the exact score) drops well below its value at initialisation — the gradients of SSM and
    ISM (create_graph) carry the training signal."""
    sde, target = VP(), get_target("bimodal_1d")
    net = SmallMLP(1)
    esm = ESM(target)
    x_eval = target.sample(4096, generator=G(99))
    before = esm(net, sde, x_eval, generator=G(5)).item()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss = LOSS_CASES[loss_key]()
    g = G(1)
    for _ in range(200):
        x0 = target.sample(256, generator=g)
        opt.zero_grad()
        loss(net, sde, x0, generator=g).backward()
        opt.step()
    after = esm(net, sde, x_eval, generator=G(5)).item()
    assert after < 0.3 * before, (before, after)


class TinyConv(torch.nn.Module):
    prediction_type = "epsilon"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x, t):
        tt = t[:, None, None, None].expand(x.shape[0], 1, *x.shape[2:])
        return torch.tanh(self.conv(torch.cat([x, tt.to(x.dtype)], 1)))


def test_image_shapes_and_dim_reduction():
    sde, net = VP(), TinyConv()
    x0 = torch.randn(6, 1, 5, 5, generator=G(0))
    D = 25
    for loss_sum, loss_mean in [
        (DSM(), DSM(dim_reduction="mean")),
        (SSM(projections=2), SSM(projections=2, dim_reduction="mean")),
        (SSM(variance_reduction=False), SSM(variance_reduction=False, dim_reduction="mean")),
        (ISM(), ISM(dim_reduction="mean")),
    ]:
        a = loss_sum.per_sample(net, sde, x0, G(1))
        b = loss_mean.per_sample(net, sde, x0, G(1))
        assert a.shape == (6,) and torch.isfinite(a).all()
        torch.testing.assert_close(b, a / D)
        loss_sum(net, sde, x0, G(1)).backward()  # differentiable
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError) as err:
        ISM()(net, sde, torch.randn(2, 1, 8, 9), G(0))
    assert "d=72" in str(err.value) and "max_dim=64" in str(err.value)
    ISM(max_dim=100)(net, sde, torch.randn(2, 1, 8, 9), G(0))  # raising the limit works


def test_loss_independent_of_declared_prediction_type():
    """The exact target exposed as score-, eps-, denoiser-, v- or relative-score-network gives the same
    per-sample DSM and SSM values."""
    sde, target = ContractiveOU(theta=0.8, mu=-0.4, sigma=0.9), get_target("ring8_2d")
    x0 = target.sample(256, generator=G(0), dtype=F64)
    for loss in [DSM(), SSM(), ISM()]:
        ref = loss.per_sample(Exact(target, sde, "epsilon"), sde, x0, G(1)).detach()
        for kind in ["score", "denoiser", "v", "relative_score"]:
            val = loss.per_sample(Exact(target, sde, kind), sde, x0, G(1)).detach()
            torch.testing.assert_close(val, ref, rtol=1e-6, atol=1e-6)


def test_per_sample_generators_make_losses_batch_size_independent():
    sde, target = VP(), get_target("ring8_2d")
    net = PerturbedExact(target, sde, 1)
    x0 = target.sample(8, generator=G(0), dtype=F64)
    for loss in [DSM(), SSM(distribution="rademacher"), ISM(), DSM(weighting="likelihood", importance_sampling=True)]:
        a = loss.per_sample(net, sde, x0, make_generators(range(8)))
        b = loss.per_sample(net, sde, x0[:3], make_generators(range(3)))
        torch.testing.assert_close(a[:3], b)


def test_low_precision_network_gives_float32_loss():
    class Bf16(SmallMLP):
        def forward(self, x, t):
            return super().forward(x.to(torch.bfloat16), t.to(torch.bfloat16))

    net = Bf16(2).to(torch.bfloat16)
    sde, x0 = VE(), get_target("ring8_2d").sample(64, generator=G(0))
    for loss in [DSM(), SSM()]:
        v = loss.per_sample(net, sde, x0, G(1))
        assert v.dtype == torch.float32 and torch.isfinite(v).all()


def test_dsm_sigma2_is_epsilon_mse():
    """With the default weighting, DSM is exactly the epsilon-prediction MSE (summed over axes)."""
    sde, target = VP(), get_target("ring8_2d")
    net = PerturbedExact(target, sde, 2)
    x0 = target.sample(64, generator=G(0), dtype=F64)
    vals = DSM().per_sample(net, sde, x0, G(3))
    g = G(3)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(64, generator=g, dtype=F64)
    eps = torch.randn(64, 2, generator=g, dtype=F64)
    xt = sde.perturb(x0, t, eps)
    torch.testing.assert_close(vals, ((net(xt, t) - eps) ** 2).sum(1))


# --------------------------------------------------------------------------------------------
# Registry and bad arguments
# --------------------------------------------------------------------------------------------
def test_registry():
    assert isinstance(get_loss("dsm"), DSM)
    assert isinstance(get_loss("SSM", projections=3), SSM) and get_loss("ssm", projections=3).projections == 3
    assert isinstance(get_loss("ism", max_dim=10), ISM)
    assert isinstance(get_loss("esm", target=get_target("ring8_2d")), ESM)
    d = DSM()
    assert get_loss(d) is d
    assert "likelihood" in repr(DSM(weighting="g2"))


@pytest.mark.parametrize(
    "factory,fragment",
    [
        (lambda: DSM(weighting="snr"), "'snr'"),
        (lambda: SSM(distribution="uniform"), "'uniform'"),
        (lambda: SSM(projections=0), "projections=0"),
        (lambda: ISM(max_dim=0), "max_dim=0"),
        (lambda: DSM(t_eps=-1.0), "t_eps=-1.0"),
        (lambda: DSM(dim_reduction="max"), "'max'"),
        (lambda: DSM(prediction_type="velocity"), "'velocity'"),
        (lambda: get_loss("l2"), "'l2'"),
        (lambda: DSM(t_eps=2.0)(SmallMLP(2), VP(), torch.zeros(3, 2)), "t_eps=2.0"),
    ],
)
def test_bad_arguments_name_the_value(factory, fragment):
    with pytest.raises(ValueError) as err:
        factory()
    assert fragment in str(err.value)
    if "weighting" in str(err.value) or "distribution" in str(err.value):
        assert "valid choices" in str(err.value)


def test_esm_requires_an_analytic_target():
    with pytest.raises(TypeError, match="analytic target"):
        ESM(torch.nn.Linear(2, 2))
