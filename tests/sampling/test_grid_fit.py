"""Grids fitted to a model (lit_diffusion/sampling/grid_fit.py): the dynamic programme finds the
optimal path (checked by brute force), the fitted grid beats the log-SNR grid on held-out
trajectories, and sample(), sample.py --time-grid and SDEScheduler(fitted_grid=) use it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from lit_diffusion import VP, get_target, sample
from lit_diffusion.sampling.grid_fit import best_path, fit_grid, load_grid


def _cost(E1, E2, path, last_order_one=True):
    c = E1[path[0], path[1]]
    for n in range(2, len(path)):
        k, i, j = path[n - 2], path[n - 1], path[n]
        c += E1[i, j] if n == len(path) - 1 and last_order_one else E2[k, i, j]
    return c


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_dynamic_programme_is_optimal(steps):
    rng = np.random.default_rng(steps)
    F = 9
    E1 = rng.uniform(0.1, 1.0, (F, F))
    E2 = rng.uniform(0.1, 1.0, (F, F, F))
    path, cost = best_path(E1, E2, steps)
    brute = min((_cost(E1, E2, (0, *mid, F - 1)), (0, *mid, F - 1)) for mid in itertools.combinations(range(1, F - 1), steps - 1))
    assert cost == pytest.approx(brute[0]) and tuple(path) == brute[1]
    # with a final denoising evaluation the end point is free, its error counted, and the last grid
    # step keeps order 2 (only the final jump is of order 1)
    final = rng.uniform(0.0, 2.0, F)
    path, cost = best_path(E1, E2, steps, final)
    brute = min((_cost(E1, E2, (0, *m), False) + final[m[-1]], (0, *m)) for m in itertools.combinations(range(1, F), steps))
    assert cost == pytest.approx(brute[0]) and tuple(path) == brute[1]
    with pytest.raises(ValueError, match="steps=9 is invalid"):
        best_path(E1, E2, 9)


def test_fitted_grid_beats_the_log_snr_grid_on_held_out_trajectories(tmp_path):
    tgt, sde = get_target("ring8_2d"), VP()
    x_T = sde.prior_sampling((2000, 2), generator=torch.Generator().manual_seed(9)).double()
    ref = sample(tgt, sde, x_T=x_T, sampler="multistep", ode=True, steps=400, solver_order=3, dtype=torch.float64).samples
    for steps in (5, 8):
        rec = fit_grid(tgt, sde, steps, (2,), n_calib=64, fine=48, method="local")
        assert rec["objective"] <= rec["objective_log_snr_grid"]
        assert rec["timesteps"][0] == pytest.approx(sde.T) and rec["timesteps"][-1] == pytest.approx(sde.t_min)
        errs = {}
        for name, kw in (("fit", dict(timesteps=torch.tensor(rec["timesteps"]))), ("log_snr", dict(steps=steps, schedule="log_snr"))):
            x = sample(tgt, sde, x_T=x_T, sampler="multistep", ode=True, solver_order=2, dtype=torch.float64, **kw).samples
            errs[name] = float((x - ref).pow(2).sum(1).sqrt().mean())
        assert errs["fit"] < 0.8 * errs["log_snr"], errs
    # the saved record is what the consumers read
    path = tmp_path / "g.json"
    path.write_text(json.dumps(rec))
    assert load_grid(path) == rec["timesteps"]
    (tmp_path / "bad.json").write_text(json.dumps({"format": "lit_diffusion-grid", "timesteps": [0.1, 0.5]}))
    with pytest.raises(ValueError, match="not a fitted grid"):
        load_grid(tmp_path / "bad.json")


def test_scheduler_keeps_a_fitted_grid_in_its_config(tmp_path):
    from lit_diffusion.integrations.scheduler import SDEScheduler

    grid = [1.0, 0.6, 0.3, 0.1, 0.001]
    s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, fitted_grid=grid, final_denoise=False)
    s.save_pretrained(tmp_path)
    s2 = SDEScheduler.from_pretrained(tmp_path)
    s2.set_timesteps(4)
    assert torch.allclose(s2._grid, torch.tensor(grid, dtype=torch.float64))
    s2.set_timesteps(6)  # another step count: the configured schedule
    assert s2._grid.numel() == 7


def test_sample_py_takes_a_grid_file(tmp_path):
    from lit_diffusion.cli.sample import main
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.pretrained import save_pretrained

    folder = save_pretrained(ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], ema_decay=0.0), tmp_path / "m")
    g = tmp_path / "g.json"
    g.write_text(json.dumps({"format": "lit_diffusion-grid", "timesteps": [1.0, 0.5, 0.2, 0.001]}))
    out = tmp_path / "o"
    assert main(["-c", folder, "--sampler", "multistep", "--time-grid", str(g), "--out", str(out), "--n", "4", "--no-progress",
                 "--format", "npz"]) == 0
    meta = json.loads(str(np.load(out / "samples.npz")["args"]))
    assert meta["steps"] == 3
    assert main(["-c", folder, "--time-grid", str(g), "--steps", "3", "--out", str(tmp_path / "o2")]) == 2
