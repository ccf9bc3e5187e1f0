"""The Gaussian start (lit_diffusion/sampling/gaussian_start.py, docs/maths.md §5 "Gaussian start"): the
moments of samples, the start state's law, that it lies on the exact probability-flow map of a Gaussian
target (so a run from it lands where the run from T does), the files, ``sample()``'s grid and seeds, and
bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lit_diffusion import GaussianMixture, sample
from lit_diffusion.core.sdes import VE, VP, ContractiveOU, SubVP
from lit_diffusion.sampling.gaussian_start import MOMENTS_FILE, GaussianStart, model_moments

F64 = torch.float64


def _gaussian(d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64)
    S = A @ A.T * 0.3 + 0.05 * torch.eye(d, dtype=F64)
    mu = torch.randn(d, generator=g, dtype=F64)
    return mu, S


def _save(start, path):
    with open(path, "wb") as f:
        f.write(start.to_bytes())


def _exact(mu, S, noise_ratio=5.0):
    lam, U = torch.linalg.eigh(S)
    return GaussianStart(mu, lam, U, noise_ratio=noise_ratio)


def test_moments_of_samples_full_and_low_rank():
    mu, S = _gaussian(6)
    x = torch.distributions.MultivariateNormal(mu, S).sample((100_000,))
    full = GaussianStart.from_samples(x)
    cov = full.eigenvectors @ torch.diag(full.eigenvalues) @ full.eigenvectors.T
    assert torch.allclose(full.mean, mu, atol=0.02) and torch.allclose(cov, S, atol=0.05)
    low = GaussianStart.from_samples(x, rank=2)
    emp = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)
    assert torch.allclose(low.eigenvalues, emp[:2], rtol=1e-6)
    assert low.residual == pytest.approx(float(emp[2:].mean()), rel=1e-6)  # the trace is kept


@pytest.mark.parametrize("sde", [VP(), VE(), SubVP()], ids=["VP", "VE", "SubVP"])
def test_state_has_the_gaussian_marginal(sde):
    mu, S = _gaussian(3)
    gs = _exact(mu, S)
    for rank in (3, 1):  # the full covariance, and one eigenpair + the residual variance on the rest
        g = gs if rank == 3 else GaussianStart(mu, gs.eigenvalues[-1:], gs.eigenvectors[:, -1:], float(gs.eigenvalues[:2].mean()))
        t = 0.3 * float(sde.T)
        z = torch.randn(200_000, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        x = g.state(sde, t, z)
        tt = torch.tensor(t, dtype=F64)
        a, s2, m = float(sde.alpha(tt)), float(sde.sigma2(tt)), float(sde.mean_offset(tt))
        C = g.eigenvectors @ torch.diag(g.eigenvalues) @ g.eigenvectors.T
        P = torch.eye(3, dtype=F64) - g.eigenvectors @ g.eigenvectors.T
        want = a * a * (C + g.residual * P) + s2 * torch.eye(3, dtype=F64)
        assert torch.allclose(x.mean(0), a * mu + m, atol=0.02 * math.sqrt(float(want.diagonal().max())))
        assert torch.allclose(torch.cov(x.T), want, rtol=0.02, atol=0.02 * float(want.diagonal().max()))


@pytest.mark.parametrize("sde", [VP(), VE(), ContractiveOU()], ids=["VP", "VE", "ContractiveOU"])
def test_start_lies_on_the_exact_flow_of_a_gaussian_target(sde):
    """For Gaussian data the start is exact: the ODE run from the Gaussian start (exact field, fine grid)
    ends where the exact probability-flow map sends the same draw, ``α μ + m + C^{1/2} z`` at t_min."""
    mu, S = _gaussian(3, seed=2)
    target = GaussianMixture([1.0], [mu.tolist()], [S.tolist()])
    gs = _exact(mu, S, noise_ratio=4.0)
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    x_T = sde.prior_mean + math.sqrt(sde.prior_var) * z
    t_s = gs.start_time(sde)
    exact = gs.state(sde, float(sde.t_min), z)
    errs = []
    for steps in (50, 200):
        r = sample(target, sde, x_T=x_T, sampler="multistep", steps=steps, schedule="log_snr", ode=True, gaussian_start=gs,
                   dtype=F64, corrector=False)
        assert float(r.times[0]) == pytest.approx(t_s) and t_s <= float(sde.T)
        errs.append(float((r.samples - exact).abs().max()))
    # the error converges to zero at the solver's order (2): 4x the steps, about 16x less; a start off the
    # flow would leave an error that no number of steps removes
    assert errs[1] < 1e-3 and errs[0] / errs[1] > 10, errs
    err = errs[1]
    # started from the plain prior draw at t_s instead, the same run lands elsewhere
    r0 = sample(target, sde, x_T=x_T, sampler="multistep", ode=True, dtype=F64, timesteps=r.times, corrector=False)
    assert float((r0.samples - exact).abs().max()) > 100 * err


def test_noise_ratio_sets_the_start_time_and_the_budget_is_kept():
    sde = VP()
    mu, S = _gaussian(3)
    for v in (2.0, 10.0, 40.0):
        gs = _exact(mu, S, noise_ratio=v)
        t_s = gs.start_time(sde)
        tt = torch.tensor(t_s, dtype=F64)
        assert float(sde.sigma(tt) / sde.alpha(tt)) == pytest.approx(v, rel=1e-9)
        r = sample(GaussianMixture([1.0], [mu.tolist()], [S.tolist()]), sde, shape=(5, 3), sampler="multistep", steps=4,
                   final_denoise=True, gaussian_start=gs, generator=torch.Generator().manual_seed(0))
        assert r.nfe == 5 and float(r.times[0]) == pytest.approx(t_s)
    # a process that never gets as noisy as asked starts at T; one already noisier at t_min is refused
    assert _exact(mu, S, noise_ratio=1e6).start_time(sde) == float(sde.T)
    with pytest.raises(ValueError, match="noise_ratio=1e-05"):
        _exact(mu, S, noise_ratio=1e-5).start_time(sde)


def test_seeds_fix_the_samples_and_per_sample_generators_ignore_the_batch():
    sde = VP()
    mu, S = _gaussian(3)
    target = GaussianMixture([1.0], [mu.tolist()], [S.tolist()])
    gs = _exact(mu, S, noise_ratio=10.0)

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return sample(target, sde, shape=(len(seeds), 3), sampler="multistep", steps=6, gaussian_start=gs, generator=gens).samples

    both = run([5, 6])
    assert torch.equal(both, run([5, 6]))
    assert torch.allclose(run([6])[0], both[1], atol=1e-6)


def test_files_round_trip_and_refuse_other_files(tmp_path):
    mu, S = _gaussian(4)
    x = torch.distributions.MultivariateNormal(mu, S).sample((500,)).reshape(500, 1, 2, 2)
    gs = GaussianStart.from_samples(x, rank=2)
    _save(gs, tmp_path / MOMENTS_FILE)
    back = model_moments(tmp_path, noise_ratio=7.0)
    assert back.shape == (1, 2, 2) and back.noise_ratio == 7.0 and back.residual == pytest.approx(gs.residual)
    assert torch.allclose(back.eigenvalues, gs.eigenvalues) and torch.allclose(back.mean, gs.mean)
    assert model_moments(tmp_path / "nothing") is None
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a moments file"):
        GaussianStart.load(tmp_path / "other.safetensors")
    torch.save({"mean": torch.zeros(2)}, tmp_path / "pickled.safetensors")  # a pickle is never unpickled
    with pytest.raises(Exception):
        GaussianStart.load(tmp_path / "pickled.safetensors")


def test_bad_input_is_refused_before_any_work():
    mu, S = _gaussian(3)
    for bad in (0, -1.0, float("nan"), True, "10"):
        with pytest.raises(ValueError, match="noise_ratio"):
            _exact(mu, S, noise_ratio=bad)
    gs = _exact(mu, S)
    target = GaussianMixture([1.0], [mu.tolist()], [S.tolist()])
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        sample(target, VP(), shape=(2, 4), sampler="multistep", steps=3, gaussian_start=gs)
    with pytest.raises(TypeError, match="gaussian_start"):
        sample(target, VP(), shape=(2, 3), steps=3, gaussian_start=42)
    with pytest.raises(FileNotFoundError, match="gaussian_fit"):
        sample(target, VP(), shape=(2, 3), steps=3, gaussian_start="/nonexistent/moments.safetensors")
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianStart.from_samples(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="eigenvectors"):
        GaussianStart(mu, torch.ones(3), torch.eye(2))


@pytest.mark.parametrize("ode", [True, False], ids=["ODE", "SDE"])
def test_scheduler_runs_the_same_start_as_sample(tmp_path, ode):
    """SDEScheduler(gaussian_start=...) driven like a pipeline maps the prior draw at its first evaluation
    and then follows the same grid and noise as sample(): the same samples to float rounding."""
    from lit_diffusion.integrations.scheduler import SDEScheduler

    sde = VP()
    mu, S = _gaussian(4, seed=4)
    target = GaussianMixture([0.5, 0.5], [mu.tolist(), (-mu).tolist()], [S.tolist(), S.tolist()])
    x = target.sample(4000, generator=torch.Generator().manual_seed(1)).reshape(-1, 1, 2, 2)
    _save(GaussianStart.from_samples(x), tmp_path / MOMENTS_FILE)
    sched = SDEScheduler(sde="VP", prediction_type="denoiser", sampler="multistep", ode=ode, gaussian_start=str(tmp_path),
                         noise_ratio=5.0)
    sched.set_timesteps(6)
    z = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(7)
    xs, first = z.clone(), None
    for t in sched.timesteps:
        xin = sched.scale_model_input(xs, t)
        first = xin if first is None else first
        D = target.denoiser(xin.reshape(8, 4).double(), torch.full((8,), float(t), dtype=F64), sde).reshape(8, 1, 2, 2).float()
        xs = sched.step(D, t, xs, generator=g).prev_sample
    gs = model_moments(tmp_path, noise_ratio=5.0)
    t_s = gs.start_time(sde)
    assert float(sched.timesteps[0]) == pytest.approx(t_s, rel=1e-6)
    assert torch.allclose(first, gs.state(sde, t_s, z), atol=1e-6)
    flat = GaussianStart(gs.mean.reshape(4), gs.eigenvalues, gs.eigenvectors, gs.residual, 5.0)
    r = sample(target, sde, x_T=z.reshape(8, 4), sampler="multistep", steps=6, ode=ode, final_denoise=True, gaussian_start=flat,
               generator=torch.Generator().manual_seed(7))
    assert torch.allclose(xs.reshape(8, 4), r.samples.float(), atol=1e-5), (xs.reshape(8, 4) - r.samples).abs().max()
    # the config keeps the start: a scheduler rebuilt from it lays out the same run
    again = SDEScheduler.from_config(sched.config)
    again.set_timesteps(6)
    assert torch.equal(again.timesteps, sched.timesteps)
    with pytest.raises(ValueError, match="noise_ratio"):
        SDEScheduler(noise_ratio=5.0)
    with pytest.raises(ValueError, match="inverse"):
        SDEScheduler(sampler="multistep", inverse=True, gaussian_start=str(tmp_path))


def test_pipelines_with_a_gaussian_start(tmp_path):
    """A real LDMPipeline (tiny UNet2DModel and VQModel; it calls scale_model_input): the network's first
    input is the Gaussian's state of the pipeline's own prior draw, and the run is reproducible from its
    seed. A real DDPMPipeline, which feeds the network without scale_model_input, is refused at its first
    step with the reason."""
    from diffusers import DDPMPipeline, LDMPipeline, UNet2DModel, VQModel

    from lit_diffusion.integrations.scheduler import SDEScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False).eval()
    vq = VQModel(in_channels=1, out_channels=1, latent_channels=1, block_out_channels=(8,), norm_num_groups=4,
                 num_vq_embeddings=8, layers_per_block=1).eval()
    x = torch.rand(300, 1, 8, 8) * 2 - 1
    _save(GaussianStart.from_samples(x), tmp_path / MOMENTS_FILE)
    sched = SDEScheduler(num_train_timesteps=1000, gaussian_start=str(tmp_path / MOMENTS_FILE))
    pipe = LDMPipeline(vqvae=vq, unet=unet, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    seen = []
    hook = unet.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    out = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    hook.remove()
    assert out.shape == (2, 8, 8, 1) and np.isfinite(out).all() and len(seen) == len(sched.timesteps) == 5
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    gs = GaussianStart.load(tmp_path / MOMENTS_FILE)
    assert torch.allclose(seen[0], gs.state(sched.sde, gs.start_time(sched.sde), z), atol=1e-5)
    assert not torch.allclose(seen[0], z, atol=1e-3)
    again = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.array_equal(out, again)
    ddpm = DDPMPipeline(unet=unet, scheduler=sched)
    ddpm.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="scale_model_input"):
        ddpm(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0))


def test_gaussian_fit_and_sample_py(tmp_path, capsys):
    """``python -m lit_diffusion.cli.gaussian_fit`` writes the moments beside a model (from a data file, or
    from the model's own samples); sample.py then starts from them by default, exactly as sample() does
    with the same file and seeds; ``--gaussian-start off`` starts from the prior; bad input is refused."""
    from lit_diffusion.cli.gaussian_fit import main as fit
    from lit_diffusion.cli.sample import main
    from lit_diffusion.core.utils import make_generators
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.pretrained import save_pretrained

    torch.manual_seed(0)
    folder = save_pretrained(ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], ema_decay=0.0), tmp_path / "m")
    data = tmp_path / "data.npz"
    np.savez(data, samples=np.random.default_rng(0).normal([1.0, -2.0], [0.5, 0.2], size=(500, 2)).astype(np.float32))
    assert fit(["-c", folder, "--data", str(data)]) == 0
    gs = model_moments(folder)
    assert torch.allclose(gs.mean, torch.tensor([1.0, -2.0], dtype=F64), atol=0.06)
    assert fit(["-c", folder, "--from-model", "8", "--steps", "2", "--out", str(tmp_path / "own.safetensors")]) == 0
    assert GaussianStart.load(tmp_path / "own.safetensors").shape == (2,)
    with pytest.raises(ValueError, match="valid names"):
        fit(["-c", folder, "--data", "nosuchdata"])
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        np.savez(tmp_path / "d3.npz", samples=np.zeros((10, 3), dtype=np.float32))
        fit(["-c", folder, "--data", str(tmp_path / "d3.npz")])

    def run(name, *extra):
        assert main(["-c", folder, "--out", str(tmp_path / name), "--n", "4", "--no-progress", "--format", "npz", "--steps", "3",
                     "--final-denoise", *extra]) == 0
        z = np.load(tmp_path / name / "samples.npz")
        return z["samples"], json.loads(str(z["args"]))

    x, meta = run("auto")
    assert meta["start_noise_ratio"] == 10.0 and meta["start_time"] == pytest.approx(gs.start_time(VP()))
    assert "Gaussian start" in capsys.readouterr().err
    model = ScoreModule.from_pretrained(folder)
    ref = sample(model.net, model.sde, shape=(4, 2), steps=3, final_denoise=True, generator=make_generators(range(4)),
                 prediction_type=model.prediction_type, gaussian_start=folder)
    assert np.allclose(x, ref.samples.numpy(), atol=1e-6)
    x_off, meta_off = run("off", "--gaussian-start", "off")
    assert meta_off["start_time"] is None and not np.allclose(x, x_off, atol=1e-3)
    x5, meta5 = run("five", "--noise-ratio", "5")
    assert meta5["start_noise_ratio"] == 5.0 and meta5["start_time"] < meta["start_time"]
    # by default only multistep runs of at most GAUSSIAN_START_RUN steps start from the moments (the measured rule)
    from lit_diffusion.sampling.defaults import GAUSSIAN_START_RUN

    long = str(GAUSSIAN_START_RUN + 1)
    assert run("long", "--steps", long)[1]["start_time"] is None
    assert run("long-asked", "--steps", long, "--noise-ratio", "10")[1]["start_noise_ratio"] == 10.0
    assert run("ddram", "--sampler", "ddram")[1]["start_time"] is None
    x_file, _ = run("file", "--gaussian-start", str(tmp_path / "own.safetensors"))
    assert not np.allclose(x, x_file, atol=1e-4)
    assert main(["-c", folder, "--gaussian-start", "off", "--noise-ratio", "5", "--out", str(tmp_path / "bad")]) == 2
    assert main(["-c", folder, "--gaussian-start", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_sample_py_conditional_runs_start_from_the_prior_unless_asked(tmp_path, capsys):
    """The moments beside a model are the unconditional data's: ``--gaussian-start auto`` leaves runs with
    ``--class-label`` (guided or not) at the prior; the start is still taken when asked for by file or by
    ``--noise-ratio``, and an unconditional run of the same model still takes it."""
    from lit_diffusion.cli.sample import main
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.pretrained import save_pretrained

    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=8, n_blocks=1, num_classes=2)
    folder = save_pretrained(ScoreModule(net=net, data_shape=[2], ema_decay=0.0), tmp_path / "m")
    moments = GaussianStart.from_samples(torch.randn(200, 2, dtype=F64) * 0.5 + 1.0)
    (tmp_path / "m" / "data_moments.safetensors").write_bytes(moments.to_bytes())

    def start_time(name, *extra):
        assert main(["-c", folder, "--out", str(tmp_path / name), "--n", "4", "--no-progress", "--steps", "3", *extra]) == 0
        return json.loads(str(np.load(tmp_path / name / "samples.npz")["args"]))["start_time"]

    assert start_time("uncond") == pytest.approx(moments.start_time(VP()))
    assert start_time("label", "--class-label", "1") is None
    assert start_time("guided", "--class-label", "0", "1", "--guidance-scale", "3") is None
    assert start_time("asked", "--class-label", "1", "--noise-ratio", "10") == pytest.approx(moments.start_time(VP()))
    file = str(tmp_path / "m" / "data_moments.safetensors")
    assert start_time("file", "--class-label", "1", "--gaussian-start", file) == pytest.approx(moments.start_time(VP()))
