"""encode / decode and SDEScheduler(inverse=True) (lit_diffusion/sampling/inversion.py): the round trip
with the exact field converges at (at least) the solver's order, the inverse scheduler driven like
diffusers' DDIMInverseScheduler equals encode(), and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_diffusion import VE, VP, get_target
from lit_diffusion.sampling.inversion import decode, encode


def _rel(a, b):
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).mean())


@pytest.mark.parametrize("sde", [VP(), VE()], ids=["VP", "VE"])
@pytest.mark.parametrize("order", [1, 2])
def test_round_trip_error_falls_at_the_solvers_order(sde, order):
    tgt = get_target("ring8_2d")
    x = tgt.marginal(sde.t_min, sde).sample(128, generator=torch.Generator().manual_seed(0)).double()
    ns, errs = [10, 20, 40, 80], []
    for n in ns:
        kw = dict(steps=n, solver_order=order, lower_order_final=False, schedule="log_snr")
        errs.append(_rel(decode(tgt, encode(tgt, x, sde, **kw), sde, **kw), x))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert slope > order - 0.3, errs
    assert errs[-1] < (0.05 if order == 1 else 0.002)


@pytest.mark.parametrize("sampler,order", [("exponential_euler", 1), ("ddram", 1.5)])
def test_every_ode_sampler_encodes_and_its_round_trip_converges(sampler, order):
    """exponential Euler (order 1) and DDRaM-ODE (its midpoints drawn per sample; order 1.5 on average)
    run upwards in time too: encode -> decode with the same sampler converges at the solver's order."""
    sde, tgt = VP(), get_target("ring8_2d")
    x = tgt.marginal(sde.t_min, sde).sample(128, generator=torch.Generator().manual_seed(0)).double()
    ns, errs = [10, 20, 40, 80], []
    for n in ns:
        gens = [[torch.Generator().manual_seed(i) for i in range(128)] for _ in range(2)]
        kw = dict(steps=n, sampler=sampler, schedule="log_snr")
        z = encode(tgt, x, sde, generator=gens[0], **kw)
        assert z.std() > 0.5  # noise, not the data
        errs.append(_rel(decode(tgt, z, sde, generator=gens[1], **kw), x))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    assert slope > order - 0.3, errs
    assert errs[-1] < 0.03


def test_inverse_scheduler_is_encode_and_the_forward_scheduler_decodes():
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde, tgt = VP(), get_target("ring8_2d")
    x = tgt.marginal(sde.t_min, sde).sample(64, generator=torch.Generator().manual_seed(1))
    inv = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon", inverse=True,
                       solver_order=2)
    inv.set_timesteps(30)
    assert bool((inv.timesteps[1:] > inv.timesteps[:-1]).all()) and len(inv.timesteps) == 30
    z = x.clone()
    for t in inv.timesteps:  # a diffusers inversion loop
        tt = torch.full((64,), float(t), dtype=torch.float64)
        z = inv.step(tgt.prediction(z.double(), tt, sde, "epsilon").float(), t, z).prev_sample
    ref = encode(tgt, x.double(), sde, steps=30, solver_order=2)
    assert torch.allclose(z.double(), ref, atol=5e-4)
    fwd = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, prediction_type="epsilon", ode=True,
                       solver_order=2, final_denoise=False)
    fwd.set_timesteps(30)
    y = z.clone()
    for t in fwd.timesteps:
        tt = torch.full((64,), float(t), dtype=torch.float64)
        y = fwd.step(tgt.prediction(y.double(), tt, sde, "epsilon").float(), t, y).prev_sample
    assert _rel(y.double(), x.double()) < 0.01


def test_bad_input_is_refused():
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde, tgt = VP(), get_target("ring8_2d")
    x = torch.zeros(2, 2)
    for bad in ("pc", "euler", "localization"):
        with pytest.raises(ValueError, match="ODE-form sampler"):
            encode(tgt, x, sde, sampler=bad)
    with pytest.raises(ValueError, match="shape"):
        encode(tgt, torch.zeros(2, 3), sde)
    with pytest.raises(TypeError, match="not a diffusion model"):
        encode(torch.nn.Linear(2, 2), x, sde)
    with pytest.raises(ValueError, match="inverse=True runs the multistep ODE"):
        SDEScheduler(sampler="ddram", inverse=True)
