"""diffusers' scheduler conformance (``SchedulerCommonTest`` of diffusers' tests/schedulers/
test_schedulers.py, which is not shipped with the installed package) re-implemented for
:class:`lit_diffusion.integrations.scheduler.SDEScheduler`, for several samplers and processes.

Each test below names the diffusers test whose assertions it reproduces.  Two deliberate
differences: (1) diffusers' ``test_step_shape`` / ``test_from_save_pretrained`` step at the literal
timesteps 0 and 1, which DDPM accepts for any grid; our scheduler refuses a timestep that is not on
its grid (a documented error), so these tests step at ``timesteps[0]`` and ``timesteps[1]``
(DIFFUSERS_NOTES.md) and a separate test checks the error; (2) every assertion is run for several
samplers (one or two evaluations per step, PC's repeated times) and for one continuous SDE.
"""

from __future__ import annotations

import inspect
import json
import tempfile

import numpy as np
import pytest
import torch

import diffusers
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils import logging as dlogging

from lit_diffusion.integrations.scheduler import SDEScheduler

FORWARD_DEFAULT_KWARGS = dict(num_inference_steps=10)

VARIANTS = {
    "euler": dict(sampler="euler"),
    "ddram": dict(sampler="ddram"),
    # relative_score on the discrete table goes through the integrators' numerical table (slow to
    # evaluate today); on the continuous VP it has closed forms
    "ddram_relative_vp": dict(sampler="ddram", parametrization="relative_score", sde="VP"),
    "pc": dict(sampler="pc", n_corrector=1),
    "exp_euler_score": dict(sampler="exponential_euler", parametrization="score"),
    "localization": dict(sampler="localization"),
    "euler_ode": dict(sampler="euler", ode=True),
    "vp_sde_ddram": dict(sampler="ddram", sde="VP", sde_kwargs={"beta_min": 0.1, "beta_max": 20.0}),
}




def get_scheduler_config(**kw):
    # the same partial config as diffusers' DDPMSchedulerTest
    config = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    config.update(kw)
    return config


def dummy_sample(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((4, 3, 8, 8), generator=g)


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request):
    return VARIANTS[request.param]


def _run(s, residual, timestep, sample, **kw):
    return s.step(residual, timestep, sample, generator=torch.manual_seed(0), **kw)


# ---- SchedulerCommonTest.test_from_save_pretrained (+ check_over_configs / check_over_forward) --
def test_from_save_pretrained_identical_seeded_steps(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    sample = dummy_sample()
    residual = 0.1 * sample
    with tempfile.TemporaryDirectory() as d:
        sched.save_config(d)
        new = SDEScheduler.from_pretrained(d)
    assert type(new) is SDEScheduler
    n = FORWARD_DEFAULT_KWARGS["num_inference_steps"]
    sched.set_timesteps(n)
    new.set_timesteps(n)
    assert torch.equal(sched.timesteps, new.timesteps)
    # scale_model_input is invoked first, as in check_over_configs
    sched.scale_model_input(sample, sched.timesteps[0])
    new.scale_model_input(sample, new.timesteps[0])
    # every evaluation of the run, not only the first one
    x_a = x_b = sample
    for t in sched.timesteps:
        x_a = _run(sched, residual, t, x_a).prev_sample
        x_b = _run(new, residual, t, x_b).prev_sample
        assert torch.sum(torch.abs(x_a - x_b)) < 1e-5, "Scheduler outputs are not identical"
    assert torch.isfinite(x_a).all()


# ---- SchedulerCommonTest.test_from_pretrained -------------------------------------------------------
def test_from_pretrained_config_round_trip(variant, tmp_path):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    sched.save_pretrained(tmp_path)
    assert (tmp_path / "scheduler_config.json").exists()
    saved = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "SDEScheduler"
    new = SDEScheduler.from_pretrained(tmp_path)
    config = dict(sched.config)
    del config["_use_default_values"]
    assert config == new.config


# ---- SchedulerCommonTest.test_compatibles -------------------------------------------------------
def test_compatibles_round_trip(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    comps = sched.compatibles
    assert all(c is not None for c in comps)
    names = {c.__name__ for c in comps}
    if sched.config.sde is not None:
        # a continuous SDE is not a DDPM table: no stock scheduler can run it from this config
        assert comps == [SDEScheduler]
        assert SDEScheduler.from_config(sched.config).config == sched.config
        return
    assert {"DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "KDPM2DiscreteScheduler"} <= names
    assert SDEScheduler._compatibles == [e.name for e in diffusers.schedulers.KarrasDiffusionSchedulers]
    comp, built = None, 0
    for comp_cls in comps:
        try:
            comp = comp_cls.from_config(sched.config)
        except ImportError:  # e.g. DPMSolverSDEScheduler without the optional torchsde backend
            continue
        assert comp is not None
        built += 1
    assert built >= len(comps) - 1
    new = SDEScheduler.from_config(comp.config)
    new_config = {k: v for k, v in new.config.items() if k in sched.config}
    diff = {k: v for k, v in new.config.items() if k not in sched.config}
    assert new_config == dict(sched.config)
    init_keys = inspect.signature(SDEScheduler.__init__).parameters.keys()
    assert set(diff).intersection(init_keys) == set()


def test_from_ddpm_and_ddim_configs_keep_the_process():
    for base in (DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction"),
                 DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample")):
        s = SDEScheduler.from_config(base.config, sampler="pc")
        assert s.config.sampler == "pc"
        assert s.config.prediction_type == base.config.prediction_type
        assert torch.equal(s.betas, base.betas)
        assert torch.equal(s.alphas_cumprod, base.alphas_cumprod)


# ---- SchedulerCommonTest.test_step_shape -------------------------------------------------------------
def test_step_shape(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    sample = dummy_sample()
    residual = 0.1 * sample
    sched.set_timesteps(FORWARD_DEFAULT_KWARGS["num_inference_steps"])
    out0 = sched.step(residual, sched.timesteps[0], sample).prev_sample
    out1 = sched.step(residual, sched.timesteps[1], sample).prev_sample
    assert out0.shape == sample.shape
    assert out0.shape == out1.shape


def test_literal_timestep_outside_grid_is_refused():
    """diffusers' literal ``step(..., timestep=1, ...)`` on a 10-step grid: a clear error, not a guess."""
    sched = SDEScheduler(**get_scheduler_config(sampler="euler"))
    sched.set_timesteps(10)
    sample = dummy_sample()
    with pytest.raises(ValueError, match=r"timestep 1\.0 is not a step start"):
        sched.step(0.1 * sample, 1, sample)


# ---- SchedulerCommonTest.test_scheduler_outputs_equivalence ----------------------------------------
def test_outputs_dict_vs_tuple(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    sample = dummy_sample()
    residual = 0.1 * sample
    n = FORWARD_DEFAULT_KWARGS["num_inference_steps"]
    sched.set_timesteps(n)
    out_dict = _run(sched, residual, sched.timesteps[0], sample)
    sched.set_timesteps(n)
    out_tuple = _run(sched, residual, sched.timesteps[0], sample, return_dict=False)
    assert isinstance(out_tuple, tuple)
    assert isinstance(out_dict, diffusers.schedulers.scheduling_utils.SchedulerOutput)
    for a, b in zip(out_tuple, out_dict.values()):
        assert torch.allclose(a, b, atol=1e-5)


# ---- SchedulerCommonTest.test_scheduler_public_api ------------------------------------------------
def test_public_api(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    assert hasattr(sched, "init_noise_sigma")
    assert hasattr(sched, "scale_model_input")
    assert hasattr(sched, "step")
    sample = dummy_sample()
    assert sched.scale_model_input(sample, 0.0).shape == sample.shape
    assert sched.init_noise_sigma == 1.0  # VP-type processes: the prior is N(0, I)
    assert len(sched) == 1000
    assert "generator" in inspect.signature(sched.step).parameters
    assert "timesteps" in inspect.signature(sched.set_timesteps).parameters


# ---- SchedulerCommonTest.test_add_noise_device ---------------------------------------------------------
def test_add_noise_at_timesteps_5(variant):
    sched = SDEScheduler(**get_scheduler_config(**variant))
    sched.set_timesteps(100)
    sample = dummy_sample()
    scaled = sched.scale_model_input(sample, 0.0)
    assert scaled.shape == sample.shape
    noise = torch.randn_like(scaled)
    t = sched.timesteps[5][None]
    noised = sched.add_noise(scaled, noise, t)
    assert noised.shape == scaled.shape
    # and it is the forward marginal at that (possibly fractional) time
    a, _, s = sched.sde.marginal_coefficients(t.double(), scaled)
    assert torch.allclose(noised, (a * scaled + s * noise).float(), atol=1e-6)


def test_add_noise_matches_ddpm_at_integer_timesteps():
    ddpm = DDPMScheduler(**get_scheduler_config())
    ours = SDEScheduler(**get_scheduler_config())
    x0, noise = dummy_sample(1), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 17, 500, 999])
    assert torch.allclose(ours.add_noise(x0, noise, t), ddpm.add_noise(x0, noise, t), atol=2e-6)
    # float timesteps between two integers lie between the two DDPM noise levels
    y = ours.add_noise(torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([499.5]))
    lo = (1 - ddpm.alphas_cumprod[499]).sqrt()
    hi = (1 - ddpm.alphas_cumprod[500]).sqrt()
    assert lo < y.item() < hi


# ---- SchedulerCommonTest.test_deprecated_kwargs ------------------------------------------------------
def test_deprecated_kwargs():
    has_kwargs = "kwargs" in inspect.signature(SDEScheduler.__init__).parameters
    has_deprecated = len(SDEScheduler._deprecated_kwargs) > 0
    assert has_kwargs == has_deprecated  # neither (**kwargs without deprecations is an error there)
    assert not has_kwargs


# ---- SchedulerCommonTest.test_trained_betas -------------------------------------------------------------
def test_trained_betas(tmp_path):
    sched = SDEScheduler(**get_scheduler_config(), trained_betas=np.array([0.1, 0.3]))
    sched.save_pretrained(tmp_path)
    new = SDEScheduler.from_pretrained(tmp_path)
    assert sched.betas.tolist() == new.betas.tolist()
    assert torch.allclose(sched.betas, torch.tensor([0.1, 0.3]))
    # the process: T = 1 (two trained timesteps), alpha^2 = cumprod(1 - beta) at 0 and 1
    assert new.sde.T == 1.0
    assert torch.allclose(new.sde.alpha(torch.tensor([0.0, 1.0], dtype=torch.float64)) ** 2,
                          torch.tensor([0.9, 0.9 * 0.7], dtype=torch.float64), atol=1e-7)


# ---- SchedulerCommonTest.test_getattr_is_correct ---------------------------------------------------
def test_getattr_is_correct():
    sched = SDEScheduler(**get_scheduler_config())
    sched.dummy_attribute = 5
    sched.register_to_config(test_attribute=5)
    logger = dlogging.get_logger("diffusers.configuration_utils")
    logger.setLevel(30)
    assert hasattr(sched, "dummy_attribute")
    assert getattr(sched, "dummy_attribute") == 5
    assert sched.dummy_attribute == 5
    assert hasattr(sched, "save_pretrained")
    assert sched.save_pretrained == getattr(sched, "save_pretrained")
    with pytest.warns(FutureWarning):
        assert sched.test_attribute == 5
    with pytest.warns(FutureWarning):
        assert getattr(sched, "test_attribute") == 5
    with pytest.raises(AttributeError) as err:
        sched.does_not_exist
    assert str(err.value) == f"'{type(sched).__name__}' object has no attribute 'does_not_exist'"
    # config keys are readable from .config without warnings
    assert sched.config.sampler == "auto"
