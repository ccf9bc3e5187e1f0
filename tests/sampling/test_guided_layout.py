"""The guided multistep layout (``lit_diffusion.sampling.defaults.guided_layout``): under classifier-free
guidance with a final denoising evaluation, multistep runs of any length take the uniform grid and let
that evaluation replace the last step, in ``sample()``, ``sample.py`` and ``SDEScheduler(guidance_scale=)``."""

import json

import numpy as np
import pytest
import torch

from lit_diffusion.core.fields import as_field
from lit_diffusion.core.schedules import get_timesteps
from lit_diffusion.core.sdes import VP
from lit_diffusion.core.targets import GaussianMixture
from lit_diffusion.sampling.defaults import MULTISTEP_SHORT_RUN, default_schedule, ends_with_denoising, guided_layout
from lit_diffusion.sampling.samplers import sample

F64 = torch.float64
# three classes, each a narrow Gaussian: at guidance 3 the guided field is stiff at high noise
TARGET = GaussianMixture([1 / 3] * 3, [[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]],
                         [[[0.2, 0.0], [0.0, 0.05]], [[0.1, 0.0], [0.0, 0.1]], [[0.05, 0.0], [0.0, 0.2]]])


def test_which_runs_take_the_guided_layout():
    assert guided_layout(3.0, True) and guided_layout(0.0, True)
    assert not guided_layout(3.0, False) and not guided_layout(1.0, True) and not guided_layout(None, True)
    long = MULTISTEP_SHORT_RUN + 5
    assert default_schedule("multistep", True, long) == "edm" and default_schedule("multistep", True, long, guided=True) == "uniform"
    assert default_schedule("auto", False, long, guided=True) == "uniform" and default_schedule("ddram", False, long, guided=True) == "uniform"
    assert not ends_with_denoising("multistep", long) and ends_with_denoising("multistep", long, guided=True)
    assert not ends_with_denoising("pc", long, guided=True)
    with pytest.raises(TypeError, match="guidance_scale='x'"):
        guided_layout("x", True)
    with pytest.raises(ValueError, match="finite"):
        guided_layout(float("nan"), True)


@pytest.mark.parametrize("steps", [9, 14])
def test_guided_runs_land_nearer_the_exact_solution(steps):
    """On a guided analytic mixture (exact guided field, probability-flow ODE) the guided layout ends
    nearer each sample's exact solution than the trailing layout (the uniform grid of one more step
    without t_min), itself 2-5x nearer than the EDM grid run to t_min, the unguided default for runs
    of this length, at the same number of evaluations."""
    sde, n = VP(), 1000
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    labels = torch.arange(n) % 3

    def run(k, **kw):
        return sample(TARGET, sde, x_T=z.clone(), sampler="multistep", ode=True, steps=k, final_denoise=True,
                      class_labels=labels, guidance_scale=3.0, dtype=F64, **kw)

    exact = run(2000, timesteps=get_timesteps(sde, 2000, "uniform")).samples
    trailing = get_timesteps(sde, steps + 1, "uniform")[:-1]  # the uniform grid of steps + 1 steps without t_min
    new, old, trail = run(steps), run(steps, timesteps=get_timesteps(sde, steps, "edm")), run(steps, timesteps=trailing)
    assert new.nfe == old.nfe == trail.nfe == steps + 1
    # the layout: the uniform grid from T down to halfway between t_min and the trailing grid's last
    # point, then the final evaluation
    t_end = float(trailing[-1] + sde.t_min) / 2
    assert torch.allclose(new.times, get_timesteps(sde, steps, "uniform", t_min=t_end).to(new.times))
    err_new, err_old, err_trail = ((r.samples - exact).norm(dim=1).mean().item() for r in (new, old, trail))
    assert err_new < 0.7 * err_trail and err_trail < 0.6 * err_old, (err_new, err_trail, err_old)
    # without guidance the unguided default stays
    plain = sample(TARGET, sde, x_T=z.clone(), sampler="multistep", ode=True, steps=steps, final_denoise=True, dtype=F64)
    assert torch.allclose(plain.times, get_timesteps(sde, steps, "edm").to(plain.times))


@pytest.mark.parametrize("ode", [True, False], ids=["ODE", "SDE"])
def test_scheduler_told_the_guidance_runs_the_same_layout_as_sample(ode):
    """``SDEScheduler(guidance_scale=3)`` driven like a guided pipeline lays out and steps exactly as
    ``sample(..., guidance_scale=3, final_denoise=True)``; the key is saved in its config."""
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde, n, steps = VP(), 6, 11
    labels = torch.arange(n) % 3
    field = as_field(TARGET, sde, class_labels=labels, guidance_scale=3.0)
    sched = SDEScheduler(sde="VP", prediction_type="denoiser", sampler="multistep", ode=ode, guidance_scale=3.0)
    sched.set_timesteps(steps)
    assert len(sched.timesteps) == steps + 1
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(3))
    x, g = z.clone(), torch.Generator().manual_seed(7)
    for t in sched.timesteps:
        D = field(sched.scale_model_input(x, t).double(), torch.full((n,), float(t), dtype=F64), "denoiser").float()
        x = sched.step(D, t, x, generator=g).prev_sample
    r = sample(TARGET, sde, x_T=z, sampler="multistep", steps=steps, ode=ode, final_denoise=True, class_labels=labels,
               guidance_scale=3.0, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(x, r.samples.float(), atol=1e-5), (x - r.samples).abs().max()
    again = SDEScheduler.from_config(sched.config)
    again.set_timesteps(steps)
    assert torch.equal(again.timesteps, sched.timesteps)
    plain = SDEScheduler(sde="VP", prediction_type="denoiser", sampler="multistep", ode=ode)
    plain.set_timesteps(steps)
    assert not torch.allclose(plain.timesteps, sched.timesteps)


def test_sample_py_guided_runs_take_the_layout(tmp_path):
    """sample.py with --class-label and --guidance-scale 3 and --final-denoise runs the guided layout
    (recorded in its metadata), and leaves unguided runs of the same model on their default."""
    from lit_diffusion.cli.sample import main
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.pretrained import save_pretrained

    torch.manual_seed(0)
    folder = save_pretrained(ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1, num_classes=3), data_shape=[2], ema_decay=0.0),
                             tmp_path / "m")

    def meta(name, *extra):
        assert main(["-c", folder, "--out", str(tmp_path / name), "--n", "3", "--no-progress", "--steps", "12",
                     "--final-denoise", *extra]) == 0
        return json.loads(str(np.load(tmp_path / name / "samples.npz")["args"]))

    assert meta("guided", "--class-label", "0", "--guidance-scale", "3")["schedule"] == "uniform"
    assert meta("conditional", "--class-label", "0")["schedule"] == "edm"
    assert meta("plain")["schedule"] == "edm"


def test_guided_runs_of_five_steps_or_more_end_halfway_down():
    """Guided multistep runs of 5 steps or more end their grid halfway from t_min to the trailing layout's
    last point (measured nearer the guided law on checkpoints/mnist-cond at 6-15 evaluations); runs of 4
    steps keep the trailing layout."""
    from lit_diffusion.sampling.defaults import step_grid

    sde = VP()
    for steps, f in {3: 1.0, 4: 1.0, 5: 0.5, 6: 0.5, 7: 0.5, 9: 0.5, 14: 0.5, 49: 0.5}.items():
        grid = step_grid(sde, "multistep", steps, "uniform", True, guided=True)
        full = get_timesteps(sde, steps + 1, "uniform")
        assert len(grid) == steps + 1 and float(grid[0]) == pytest.approx(float(full[0]))
        assert float(grid[-1]) == pytest.approx(float(full[-1]) + f * float(full[-2] - full[-1])), steps
