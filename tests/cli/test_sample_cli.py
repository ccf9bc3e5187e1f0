"""sample.py (lit_diffusion.cli.sample) end to end: a tiny Lightning checkpoint from a real Trainer
run and a tiny diffusers pipeline folder; the samples are checked against the library sampler
(docs/maths.md §4–§5) and the diffusers scheduler loop, per-sample seeds, precision, formats, and
every bad input -> a clear error and no file."""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

import numpy as np
import pytest
import torch

from lit_diffusion.cli.sample import chunk_indices, main
from lit_diffusion.runtime.precision import NetworkRunner
from lit_diffusion.cli.sample_outputs import atomic_output

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# fixtures: a tiny diffusers pipeline (the tiny Lightning checkpoint `ckpt` is in conftest.py)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from diffusers import UNet2DModel

    from lit_diffusion.integrations.scheduler import SDEScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    folder = tmp_path_factory.mktemp("pipe")
    unet.save_pretrained(str(folder / "unet"))
    SDEScheduler(num_train_timesteps=100, sampler="exponential_euler", final_denoise=False).save_pretrained(str(folder / "scheduler"))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["lit_diffusion", "SDEScheduler"]}))
    return folder


@pytest.fixture(scope="module")
def ddpm_pipeline(pipeline, tmp_path_factory):
    """The same UNet saved by diffusers' own DDPMPipeline with a DDPMScheduler (same betas)."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    folder = tmp_path_factory.mktemp("ddpm")
    unet = UNet2DModel.from_pretrained(str(pipeline / "unet"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100)).save_pretrained(str(folder))
    return folder


def _run(args, capsys=None) -> int:
    return main([str(a) for a in args] + ["--no-progress"])


def _load(out: Path):
    d = np.load(out / "samples.npz")
    return d["samples"], d["indices"], json.loads(str(d["args"]))


def _files(p: Path):
    return sorted(str(f.relative_to(p)) for f in p.rglob("*")) if p.exists() else []


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler,options", [("euler", {}), ("ddram", {}), ("ddram", {"evals_per_step": 1}),
                                             ("multistep", {"eta": 0.7})])
def test_lightning_checkpoint_matches_library_sampler(ckpt, tmp_path, sampler, options):
    """sample.py == samplers.sample on the checkpoint's EMA field with generators seeded seed+i,
    although sample.py works in chunks of 4 and the reference in one batch of 6."""
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.core.utils import make_generators

    out = tmp_path / "out"
    flags = [v for k, x in options.items() for v in ("--" + k.replace("_", "-"), x)]
    assert _run(["-c", ckpt, "--n", 6, "--batch-size", 4, "--steps", 5, "--sampler", sampler, "--seed", 10, "--out", out] + flags) == 0
    x, idx, meta = _load(out)
    assert x.shape == (6, 2) and x.dtype == np.float32
    np.testing.assert_array_equal(idx, np.arange(6))
    assert meta["sampler"] == sampler and meta["steps"] == 5 and meta["world_size"] == 1
    final = sampler in ("ddram", "multistep")  # sample.py's default: these two end with a denoising evaluation
    assert meta["final_denoise"] is final
    assert meta["nfe_per_sample"] == 5 * (2 if sampler == "ddram" and not options else 1) + final
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _files(out) == ["samples.npz", "samples.png"]  # no temporary file left behind

    module = ScoreModule.load_checkpoint(str(ckpt)).eval()
    ref = sample(module.field(ema=True), module.sde, shape=(6, 2), sampler=sampler, steps=5, generator=make_generators(range(10, 16)),
                 final_denoise=final, **options)
    np.testing.assert_allclose(x, ref.samples.numpy(), rtol=1e-5, atol=1e-6)
    assert np.isfinite(x).all()


def test_per_sample_seeds_and_batch_size_invariance(ckpt, tmp_path):
    """Sample i depends only on seed+i: seed 0 / index 3 == seed 3 / index 0, any batch size."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    common = ["-c", ckpt, "--steps", 4, "--sampler", "ddram", "--no-png"]
    assert _run(common + ["--n", 5, "--batch-size", 5, "--seed", 0, "--out", a]) == 0
    assert _run(common + ["--n", 5, "--batch-size", 1, "--seed", 0, "--out", b]) == 0
    assert _run(common + ["--n", 2, "--batch-size", 2, "--seed", 3, "--out", c]) == 0
    xa, xb, xc = _load(a)[0], _load(b)[0], _load(c)[0]
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xa[3:5], xc, rtol=1e-5, atol=1e-6)
    assert np.abs(xa[0] - xa[1]).max() > 1e-3  # different seeds, different samples
    assert not (a / "samples.png").exists()


def test_chunks_do_not_depend_on_the_number_of_processes():
    one = chunk_indices(11, 3, 0, 1)
    two = chunk_indices(11, 3, 0, 2) + chunk_indices(11, 3, 1, 2)
    three = sum((chunk_indices(11, 3, r, 3) for r in range(3)), [])
    assert sorted(map(tuple, two)) == sorted(map(tuple, one)) == sorted(map(tuple, three))
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10]]


def test_precision_runs_network_in_low_precision_and_arithmetic_in_fp32(ckpt, tmp_path):
    """bf16/fp16 change only the network's rounding: deterministic ODE samples move by a small
    relative amount (not zero: the network really ran in low precision), stored as float32."""
    outs = {}
    for prec in ("fp32", "bf16", "fp16"):
        out = tmp_path / prec
        assert _run(["-c", ckpt, "--n", 8, "--steps", 8, "--sampler", "exponential_euler", "--ode", "--precision", prec, "--out", out, "--no-png"]) == 0
        x, _, meta = _load(out)
        assert meta["precision"] == prec and x.dtype == np.float32 and np.isfinite(x).all()
        outs[prec] = x
    scale = np.abs(outs["fp32"]).max()
    for prec, tol in (("bf16", 0.1), ("fp16", 0.02)):
        rel = np.abs(outs[prec] - outs["fp32"]).max() / scale
        assert 0 < rel < tol, (prec, rel)


def test_autocast_net_returns_float32_with_low_precision_rounding():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)

    class Net(torch.nn.Module):
        prediction_type = "epsilon"

        def forward(self, x, t):
            return lin(x)

    x = torch.randn(4, 64)
    exact = Net()(x, None)
    for dtype, eps in ((torch.bfloat16, 2.0**-8), (torch.float16, 2.0**-11)):
        y = NetworkRunner(Net(), dtype)(x, None)
        assert y.dtype == torch.float32
        err = (y - exact).abs().max() / exact.abs().max()
        assert 0 < err < 20 * eps  # low-precision rounding, not fp32 and not garbage
    assert torch.equal(NetworkRunner(Net(), torch.float32)(x, None), exact)


def test_safetensors_output_equals_npz(ckpt, tmp_path):
    from safetensors import safe_open

    a, b = tmp_path / "a", tmp_path / "b"
    common = ["-c", ckpt, "--n", 4, "--steps", 3, "--sampler", "euler", "--no-png"]
    assert _run(common + ["--out", a]) == 0
    assert _run(common + ["--out", b, "--format", "safetensors"]) == 0
    with safe_open(str(b / "samples.safetensors"), "pt") as f:
        x = f.get_tensor("samples").numpy()
        idx = f.get_tensor("indices").numpy()
        meta = json.loads(f.metadata()["args"])
    np.testing.assert_array_equal(x, _load(a)[0])
    np.testing.assert_array_equal(idx, np.arange(4))
    assert meta["format"] == "safetensors"


def test_diffusers_pipeline_matches_scheduler_loop(pipeline, tmp_path):
    """A pipeline folder (UNet2DModel + SDEScheduler config -> DiscreteVP in timestep units) gives
    the same samples as the diffusers-style loop over SDEScheduler.step with the same generators."""
    from diffusers import UNet2DModel

    from lit_diffusion.integrations.scheduler import SDEScheduler
    from lit_diffusion.core.utils import make_generators

    out = tmp_path / "out"
    assert _run(["-c", pipeline, "--n", 3, "--steps", 4, "--sampler", "exponential_euler", "--seed", 5, "--out", out]) == 0
    x, idx, meta = _load(out)
    assert x.shape == (3, 1, 8, 8) and meta["model_kind"] == "diffusers"
    assert (out / "samples.png").stat().st_size > 100

    unet = UNet2DModel.from_pretrained(str(pipeline / "unet")).eval()
    sched = SDEScheduler.from_pretrained(str(pipeline / "scheduler"))
    sched.set_timesteps(4)
    gens = make_generators([5, 6, 7])
    y = sched.sde.prior_sampling((3, 1, 8, 8), generator=gens)
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(y, t.expand(3)).sample
            y = sched.step(eps, t, y, generator=gens).prev_sample
    np.testing.assert_allclose(x, y.numpy(), rtol=1e-4, atol=1e-5)


def test_ddpm_pipeline_folder_equals_sde_scheduler_folder(pipeline, ddpm_pipeline, tmp_path):
    """A folder written by diffusers' DDPMPipeline (DDPMScheduler config) is read as the same
    DiscreteVP as our SDEScheduler config with the same betas: identical samples."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--n", 2, "--steps", 3, "--sampler", "ddram", "--no-png"]
    assert _run(["-c", pipeline, "--out", a] + common) == 0
    assert _run(["-c", ddpm_pipeline, "--out", b] + common) == 0
    xa, _, ma = _load(a)
    xb, _, mb = _load(b)
    assert mb["model_scheduler_class"] == "DDPMScheduler" and ma["model_sde"] == mb["model_sde"]
    assert mb["parametrization"] == "denoiser"  # closed-form coefficients for the DDPM table
    np.testing.assert_allclose(xa, xb, rtol=1e-5, atol=1e-6)
    assert np.isfinite(xa).all()


def test_diffusers_pipeline_other_sampler_and_shape_check(pipeline, tmp_path):
    out = tmp_path / "out"
    assert _run(["-c", pipeline, "--n", 2, "--steps", 2, "--sampler", "ddram", "--precision", "bf16", "--shape", 1, 8, 8, "--out", out]) == 0
    x = _load(out)[0]
    assert x.shape == (2, 1, 8, 8) and np.isfinite(x).all()
    bad = tmp_path / "bad"
    assert _run(["-c", pipeline, "--n", 2, "--steps", 2, "--shape", 3, 8, 8, "--out", bad]) == 2
    assert not bad.exists()


# ------------------------------------------------------------------------------------------------
# errors: clear message, raised before any work, nothing written
# ------------------------------------------------------------------------------------------------
def _expect_error(args, capsys, out: Path, *needles):
    rc = _run(list(args) + ["--out", out])
    err = capsys.readouterr().err
    assert rc == 2, err
    for s in needles:
        assert s in err, (s, err)
    assert "weights_only=False" not in err and "`weights_only` set to `False`" not in err
    assert not out.exists(), _files(out)
    return err


def test_unknown_sampler(ckpt, tmp_path, capsys):
    _expect_error(["-c", ckpt, "--sampler", "heun"], capsys, tmp_path / "o", "unknown sampler 'heun'", "valid choices", "ddram")


def test_unknown_sampler_is_reported_before_the_checkpoint_is_read(tmp_path, capsys):
    _expect_error(["-c", tmp_path / "nope.ckpt", "--sampler", "heun"], capsys, tmp_path / "o", "unknown sampler 'heun'")


@pytest.mark.parametrize("steps", [0, -3])
def test_steps_not_positive(ckpt, tmp_path, capsys, steps):
    _expect_error(["-c", ckpt, "--steps", steps], capsys, tmp_path / "o", f"--steps {steps}", "[1, 100000]")


def test_other_bad_options(ckpt, tmp_path, capsys):
    _expect_error(["-c", ckpt, "--schedule", "cosine"], capsys, tmp_path / "o", "unknown schedule 'cosine'", "uniform")
    _expect_error(["-c", ckpt, "--precision", "fp8"], capsys, tmp_path / "o", "unknown precision 'fp8'", "bf16")
    _expect_error(["-c", ckpt, "--n", 0], capsys, tmp_path / "o", "--n=0")
    _expect_error(["-c", ckpt, "--sampler", "euler", "--parametrization", "denoiser"], capsys, tmp_path / "o", "denoiser", "valid choices")
    _expect_error(["-c", ckpt, "--sampler", "euler", "--n-corrector", 2], capsys, tmp_path / "o", "--n-corrector", "pc")
    _expect_error(["-c", ckpt, "--sampler", "multistep", "--evals-per-step", 1], capsys, tmp_path / "o", "--evals-per-step",
                  "only apply to --sampler ddram")
    _expect_error(["-c", ckpt, "--sampler", "ddram", "--midpoint", "middle"], capsys, tmp_path / "o", "'middle'", "log_snr")
    _expect_error(["-c", ckpt, "--sampler", "ddram", "--eta", 0.5], capsys, tmp_path / "o", "--eta", "only apply to --sampler multistep")
    _expect_error(["-c", ckpt, "--sampler", "multistep", "--eta", 0], capsys, tmp_path / "o", "eta=0.0 is invalid", "0 < eta <= 4")


def test_missing_checkpoint(tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    _expect_error(["-c", missing], capsys, tmp_path / "o", str(missing), "does not exist")


def test_corrupt_checkpoints(ckpt, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(2048))
    _expect_error(["-c", garbage], capsys, tmp_path / "o", str(garbage), "is not a valid checkpoint", "corrupt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(Path(ckpt).read_bytes()[:3000])
    _expect_error(["-c", truncated], capsys, tmp_path / "o", str(truncated), "is not a valid checkpoint")
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    _expect_error(["-c", empty], capsys, tmp_path / "o", str(empty), "is not a valid checkpoint: it is empty")
    other = tmp_path / "tensor.ckpt"
    torch.save({"weights": torch.zeros(3)}, str(other))
    _expect_error(["-c", other], capsys, tmp_path / "o", "not a valid checkpoint of this package", "state_dict")
    folder = tmp_path / "not_a_pipeline"
    folder.mkdir()
    _expect_error(["-c", folder], capsys, tmp_path / "o", "not a diffusers pipeline folder", "scheduler_config.json")


def test_data_shape_mismatch(ckpt, tmp_path, capsys):
    _expect_error(["-c", ckpt, "--shape", 3], capsys, tmp_path / "o", "data shape mismatch", "(2,)", "--shape 3")
    _expect_error(["-c", ckpt, "--shape", 1, 28, 28], capsys, tmp_path / "o", "data shape mismatch", "--shape 1 28 28")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "d" / "x.npz"

    def failing(tmp):
        Path(tmp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_output(target, failing)
    assert not target.exists() and _files(tmp_path / "d") == []
    atomic_output(target, lambda tmp: Path(tmp).write_bytes(b"ok"))
    assert target.read_bytes() == b"ok" and _files(tmp_path / "d") == ["x.npz"]


def test_sample_py_script_runs(ckpt, tmp_path):
    """The top-level script itself (a subprocess): exit code 0 and files; exit code 2 on errors."""
    import subprocess
    import sys

    out = tmp_path / "o"
    r = subprocess.run(
        [sys.executable, str(REPO / "sample.py"), "-c", str(ckpt), "--n", "3", "--steps", "2", "--out", str(out), "--sampler", "euler", "--steps", "-1"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 2 and "--steps -1" in r.stderr and not out.exists()


def test_progress_bar_counts_network_evaluations(ckpt, tmp_path, capsys):
    """The progress bar runs over network evaluations: 2 chunks x (3 ddram steps x 2 + the final denoising
    evaluation) = 14."""
    assert main(["-c", str(ckpt), "--n", "3", "--batch-size", "2", "--steps", "3", "--sampler", "ddram", "--no-png", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "14/14" in err and "eval" in err, err[-500:]


def test_sampling_path_imports_no_lightning_and_help_is_fast():
    """sample.py --help and the sampling modules import neither Lightning nor diffusers (the start-up
    time is then that of torch)."""
    import subprocess
    import sys

    code = ("import sys, runpy; sys.argv = ['sample.py', '--help']\n"
            "try:\n    runpy.run_path('sample.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import lit_diffusion.cli.sample, lit_diffusion.sampling.samplers, lit_diffusion.runtime.checkpoint_io\n"
            "print('MODULES', sorted(m for m in ('lightning', 'pytorch_lightning', 'diffusers') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "MODULES []" in r.stdout and "--sampler" in r.stdout


def test_a_file_of_a_model_folder_names_the_folder(tmp_path, capsys):
    from lit_diffusion.cli.sample import main

    code = main(["-c", str(ROOT / "checkpoints" / "mnist" / "model.safetensors"), "--n", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pass the folder itself" in err and "checkpoints/mnist'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
