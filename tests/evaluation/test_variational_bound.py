"""The variational bound of Ho et al. (lit_diffusion/evaluation/variational_bound.py): its terms are
assembled exactly (a point mass, where every term has a closed form), it bounds the entropy of quantized
Gaussian data from above and closes on it as the grid is refined, under VP and VE; the CLI prints it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from lit_diffusion import VE, VP
from lit_diffusion.core.targets import GaussianMixture
from lit_diffusion.evaluation.variational_bound import discretized_gaussian_log_prob, variational_bpd


def test_a_point_mass_has_the_closed_form_bound():
    """Data at one pixel pair: the exact denoiser returns it, so the diffusion terms vanish; the prior
    term is the Gaussian KL at T and the decoder the mass of the pixel's bin under N(x0, (σ/α)²)."""
    sde = VP()
    px = torch.tensor([[127.0, 200.0]])
    x0 = (2 * px / 255 - 1).double()
    r = variational_bpd(GaussianMixture([1.0], x0, 1e-14), px.repeat(3, 1), steps=40, sde=sde, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    T = torch.tensor(sde.T, dtype=torch.float64)
    a, s2 = float(sde.alpha(T)), float(sde.sigma2(T))
    kl = sum(0.5 * (s2 + (a * float(v)) ** 2 - 1 - math.log(s2)) for v in x0[0])
    t0 = torch.tensor(sde.t_min, dtype=torch.float64)
    std = float(sde.sigma(t0) / sde.alpha(t0))
    dec = -2 * math.log(math.erf((1 / 255) / (std * math.sqrt(2))))
    expected = (kl + dec) / (2 * math.log(2))
    assert r["terms"]["diffusion"] < 1e-9
    assert abs(r["bpd"] - expected) < 1e-9 and r["bpd_se"] < 1e-12, (r, expected)


def test_outer_bins_reach_to_infinity_and_tails_do_not_underflow():
    x = torch.tensor([-1.0, 1.0, 0.0])
    lp = discretized_gaussian_log_prob(x, torch.tensor([-3.0, 3.0, 0.5]), torch.tensor(0.01))
    assert abs(float(lp[0])) < 1e-12 and abs(float(lp[1])) < 1e-12  # all mass below -1 / above 1 is the edge bin
    assert torch.isfinite(lp[2]) and float(lp[2]) < -1000  # 50 standard deviations away: finite, very small


@pytest.mark.parametrize("sde", [VP(), VE()], ids=["VP", "VE"])
def test_the_bound_lies_above_the_data_entropy_and_closes_on_it(sde):
    """Quantized N(0, 0.2²) data under its exact (continuous) denoiser: the bound in bits per dimension
    falls as the log-SNR grid is refined and ends within 0.1 bit above the entropy of the 256-bin law."""
    x = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.2
    px = ((x + 1) * 127.5).round().clamp(0, 255)
    c = 2 * torch.arange(256, dtype=torch.float64) / 255 - 1
    normal = torch.distributions.Normal(0.0, 0.2)
    P = normal.cdf(c + 1 / 255) - normal.cdf(c - 1 / 255)
    P = P / P.sum()
    H = float(-(P[P > 0] * torch.log2(P[P > 0])).sum())  # 6.72 bits
    tgt = GaussianMixture([1.0], torch.zeros(1, 1, dtype=torch.float64), 0.04)
    bounds = [variational_bpd(tgt, px, steps=n, sde=sde, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
              for n in (16, 128, 1000)]
    values = [b["bpd"] for b in bounds]
    assert values[0] > values[1] > values[2], values
    assert H - 3 * bounds[2]["bpd_se"] < values[2] < H + 0.1, (values, H)


def test_bad_input_and_the_cli(capsys, tmp_path):
    tgt = GaussianMixture([1.0], torch.zeros(1, 2, dtype=torch.float64), 0.1)
    with pytest.raises(ValueError, match="8-bit integer values"):
        variational_bpd(tgt, torch.rand(2, 2), sde=VP())
    with pytest.raises(ValueError, match="in \\[0, 255\\]"):
        variational_bpd(tgt, torch.full((2, 2), 300.0), sde=VP())
    with pytest.raises(ValueError, match="data shape"):
        variational_bpd(tgt, torch.zeros(2, 3), sde=VP())
    with pytest.raises(ValueError, match="steps=0"):
        variational_bpd(tgt, torch.zeros(2, 2), sde=VP(), steps=0)
    from lit_diffusion.cli.evaluate import main as eval_main

    root = Path(__file__).resolve().parents[2]
    assert eval_main(["-c", str(root / "checkpoints" / "mnist"), "--metric", "bpd", "--bound", "vlb", "--n", "2",
                      "--steps", "5", "--output", str(tmp_path / "bpd.json")]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((tmp_path / "bpd.json").read_text()) == res  # --output holds the printed line
    assert res["bound"] == "vlb" and res["steps"] == 5 and 0.5 < res["bpd"] < 30 and set(res["terms"]) == {
        "prior", "diffusion", "decoder"}
