"""Prediction types and their exact conversions (docs/maths.md §2), and the Field adapter."""

import itertools

import pytest
import torch

from lit_diffusion.core import parametrizations as P
from lit_diffusion.core.fields import Field, as_field
from lit_diffusion.core.sdes import OU, VE, VP, ContractiveOU, ContractiveVP, SubVP
from lit_diffusion.core.targets import get_target

F64 = torch.float64


SDES = {
    "OU": lambda: OU(theta=0.7, mu=0.5, sigma=1.3, T=2.0),
    "VE": lambda: VE(),
    "VP": lambda: VP(),
    "SubVP": lambda: SubVP(),
    "COU": lambda: ContractiveOU(theta=0.8, mu=-0.4, sigma=0.9),
    "CVP": lambda: ContractiveVP(),
}
KINDS = list(P.PREDICTION_TYPES)


def _state(sde, shape, gen):
    x = 2 * torch.randn(shape, generator=gen, dtype=F64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(shape[0], generator=gen, dtype=F64)
    t[0], t[-1] = sde.t_min, sde.T  # include both ends
    return x, t


@pytest.mark.parametrize("sde_key", list(SDES))
@pytest.mark.parametrize("shape", [(6, 3), (6, 2, 3, 3)])
def test_round_trip_all_pairs(sde_key, shape, gen):
    """src -> dst -> src is the identity.  Tolerance: float64 rounding amplified by the conditioning of
    the denoiser at small sigma (s = (alpha D + m - X)/sigma^2 cancels |X|/sigma^2), i.e.
    1e-9 + 1e-13 (1 + |X|) / sigma^2 per sample; at moderate t this is ~1e-9."""
    sde = SDES[sde_key]()
    x, t = _state(sde, shape, gen)
    pred = torch.randn(shape, generator=gen, dtype=F64)
    s2 = sde.sigma2(t).reshape((-1,) + (1,) * (len(shape) - 1))
    tol = 1e-9 + 1e-13 * (1 + x.abs()) / torch.minimum(s2, torch.ones_like(s2)) ** 1.0

    def close(a, b, msg):
        err = (a - b).abs()
        assert (err <= tol * (1 + b.abs())).all(), (msg, (err / (tol * (1 + b.abs()))).max().item())

    for src, dst in itertools.product(KINDS, KINDS):
        back = P.convert(P.convert(pred, src, dst, x, t, sde), dst, src, x, t, sde)
        close(back, pred, f"{src}->{dst}->{src}")
        # composing through a third type gives the same answer as the direct conversion
        direct = P.convert(pred, src, dst, x, t, sde)
        for mid in KINDS:
            via = P.convert(P.convert(pred, src, mid, x, t, sde), mid, dst, x, t, sde)
            close(via, direct, f"{src}->{mid}->{dst}")
    # at moderate times the round trip is accurate to 1e-10 for every pair
    tm = torch.full((shape[0],), 0.5 * sde.T, dtype=F64)
    for src, dst in itertools.product(KINDS, KINDS):
        back = P.convert(P.convert(pred, src, dst, x, tm, sde), dst, src, x, tm, sde)
        torch.testing.assert_close(back, pred, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_key", list(SDES))
def test_conversions_match_the_formulas_of_section_2(sde_key, gen):
    """Independent formulas: eps = -sigma s, D = (X - m + sigma^2 s)/alpha, v = alpha eps - sigma x0,
    r = s + (X - m)/v_prior, starting from an arbitrary 'score'."""
    sde = SDES[sde_key]()
    x, t = _state(sde, (7, 4), gen)
    s = torch.randn(7, 4, generator=gen, dtype=F64)
    alpha, m, sigma = (c.item() if c.ndim == 0 else c[:, None] for c in (sde.alpha(t), sde.mean_offset(t), sde.sigma(t)))
    eps = -sigma * s
    D = (x - m + sigma**2 * s) / alpha
    v = alpha * eps - sigma * D
    r = s + (x - m) / sde.prior_var
    expected = {"score": s, "epsilon": eps, "denoiser": D, "v": v, "relative_score": r}
    for kind, value in expected.items():
        torch.testing.assert_close(P.convert(s, "score", kind, x, t, sde), value, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(P.convert(value, kind, "score", x, t, sde), s, rtol=1e-8, atol=1e-8)
    # the score from D satisfies s = (alpha D + m - X)/sigma^2
    torch.testing.assert_close((alpha * D + m - x) / sigma**2, s, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("sde_key", ["VP", "VE", "COU"])
def test_analytic_target_predictions_agree_with_conversions(sde_key, gen):
    """The target's exact predictions of every kind are conversions of one another."""
    sde = SDES[sde_key]()
    target = get_target("ring8_2d")
    x, t = _state(sde, (9, 2), gen)
    preds = {k: target.prediction(x, t, sde, k) for k in KINDS}
    for src, dst in itertools.product(KINDS, KINDS):
        torch.testing.assert_close(P.convert(preds[src], src, dst, x, t, sde), preds[dst], rtol=1e-7, atol=1e-7)


def test_low_precision_predictions_are_promoted(gen):
    sde = VP()
    x = torch.randn(4, 3, generator=gen).to(torch.bfloat16)
    pred = torch.randn(4, 3, generator=gen).to(torch.bfloat16)
    t = torch.tensor([sde.t_min, 0.2, 0.7, 1.0])
    for dst in KINDS:
        out = P.convert(pred, "epsilon", dst, x, t, sde)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # float64 wins
    assert P.convert(pred, "epsilon", "score", x.double(), t, sde).dtype == F64


def test_aliases_and_unknown_names():
    assert P.canonical_prediction("eps") == "epsilon"
    assert P.canonical_prediction("sample") == "denoiser"
    assert P.canonical_prediction("v_prediction") == "v"
    assert P.canonical_prediction("X0") == "denoiser"
    with pytest.raises(ValueError) as err:
        P.canonical_prediction("velocity")
    assert "'velocity'" in str(err.value) and "epsilon" in str(err.value)
    with pytest.raises(ValueError, match="'bogus'"):
        P.convert(torch.zeros(1, 1), "bogus", "score", torch.zeros(1, 1), 0.5, VP())


class _Net(torch.nn.Module):
    def __init__(self, prediction_type="denoiser"):
        super().__init__()
        self.prediction_type = prediction_type
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        assert t.shape == (x.shape[0],)
        w = self.lin.weight.dtype
        return self.lin(torch.cat([x.to(w), t[:, None].to(w)], 1))


def test_field_wraps_a_network_and_counts_evaluations(gen):
    sde = VP()
    net = _Net("denoiser")
    field = as_field(net, sde)
    x = torch.randn(5, 2, generator=gen)
    out = field(x, 0.3, "score")  # scalar t is expanded to (B,)
    raw = net(x, torch.full((5,), 0.3))
    torch.testing.assert_close(out, P.convert(raw, "denoiser", "score", x, 0.3, sde))
    field(x, torch.rand(5), "epsilon")
    assert field.nfe == 2
    assert as_field(field, sde) is field
    # declared type can be overridden; a model without one is refused with a clear message
    f2 = Field(net, sde, prediction_type="epsilon")
    torch.testing.assert_close(f2(x, 0.3, "epsilon"), raw)
    bare = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="prediction_type"):
        as_field(bare, sde)
    # bf16 network: arithmetic stays float32
    f3 = Field(_Net("epsilon"), sde, network_dtype=torch.bfloat16)
    f3.model.to(torch.bfloat16)
    assert f3(x, 0.5, "score").dtype == torch.float32


def test_field_wraps_an_analytic_target(gen):
    sde = VE()
    target = get_target("bimodal_1d")
    field = as_field(target, sde)
    x = torch.randn(6, 1, generator=gen, dtype=F64)
    t = torch.linspace(0.1, 1.0, 6, dtype=F64)
    torch.testing.assert_close(field(x, t, "score"), target.score(x, t, sde))
    torch.testing.assert_close(field(x, t, "denoiser"), target.denoiser(x, t, sde))
    assert field.nfe == 2
