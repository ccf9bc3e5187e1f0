"""Time grids of docs/maths.md §4: end points, monotonicity and each schedule's defining property."""

import pytest
import torch

from lit_diffusion.core import sdes
from lit_diffusion.core.schedules import SCHEDULES, get_timesteps



ALL_SDES = [sdes.OU(), sdes.VP(), sdes.VE(), sdes.SubVP(), sdes.ContractiveOU(), sdes.ContractiveVP()]


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_endpoints_and_monotone(sde, schedule, n):
    t = get_timesteps(sde, n, schedule)
    assert t.dtype == torch.float64 and t.shape == (n + 1,)
    assert t[0].item() == sde.T and t[-1].item() == sde.t_min
    assert bool((t[1:] < t[:-1]).all())


def test_uniform_and_geometric():
    sde = sdes.VP()
    t = get_timesteps(sde, 10, "uniform")
    assert torch.allclose(t[:-1] - t[1:], torch.full((10,), (1 - 1e-3) / 10, dtype=torch.float64))
    g = get_timesteps(sde, 10, "geometric")
    r = g[1:] / g[:-1]
    assert torch.allclose(r, torch.full_like(r, (1e-3) ** 0.1))


@pytest.mark.parametrize("sde", [sdes.VP(), sdes.VE(), sdes.SubVP(), sdes.OU()], ids=lambda s: type(s).__name__)
def test_log_snr_and_edm(sde):
    t = get_timesteps(sde, 12, "log_snr")
    d = torch.diff(sde.log_snr(t))
    assert torch.allclose(d, d.mean().expand_as(d), rtol=1e-8)
    e = get_timesteps(sde, 12, "edm")
    r = (sde.sigma(e) / sde.alpha(e)) ** (1 / 7)
    dr = torch.diff(r)
    assert torch.allclose(dr, dr.mean().expand_as(dr), rtol=1e-7)


def test_bbdd_standard_ou():
    """tau(t) = t for the standard OU: first half uniform on [T, 1], second half geometric to t_min."""
    sde = sdes.OU(T=5.0, t_min=1e-3)
    t = get_timesteps(sde, 8, "bbdd")
    assert torch.allclose(t[:5], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64), atol=1e-9)
    ratio = t[5:] / t[4:-1]
    assert torch.allclose(ratio, torch.full_like(ratio, (1e-3) ** 0.25), rtol=1e-7)


def test_bbdd_vp_in_ou_time():
    sde = sdes.VP()
    t = get_timesteps(sde, 10, "bbdd")
    tau = 0.5 * torch.log1p(1 / sde.snr(t))
    assert tau[0] > 1
    assert torch.allclose(torch.diff(tau[:6]), torch.diff(tau[:6]).mean().expand(5), rtol=1e-7)
    assert tau[5].item() == pytest.approx(1.0, rel=1e-9)
    r = tau[6:] / tau[5:-1]
    assert torch.allclose(r, r.mean().expand_as(r), rtol=1e-6)


def test_bad_input():
    sde = sdes.VP()
    with pytest.raises(ValueError, match="valid choices"):
        get_timesteps(sde, 10, "cosine")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="steps"):
            get_timesteps(sde, bad, "uniform")
