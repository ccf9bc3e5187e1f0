"""An export carries what sample.py takes from the model folder: the Gaussian start's moments (copied into
the scheduler folder, found again after the folder moves) and the grids fitted to the model, per form."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from lit_diffusion.integrations.export import export_pipeline
from lit_diffusion.integrations.scheduler import SDEScheduler
from lit_diffusion.sampling.gaussian_start import GaussianStart

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST = os.path.join(ROOT, "checkpoints", "mnist")

# in a fresh interpreter, from the moved folder: the exported pipeline against the scheduler the benchmark
# builds by hand (bench/real_model.py, row "lit multistep 2, Gaussian start, fitted grid"), same U-Net and seed
_FRESH = r"""
import json, sys, torch
from lit_diffusion import LitDiffusionPipeline
from lit_diffusion.integrations.export import rescale_time
from lit_diffusion.integrations.scheduler import SDEScheduler
from lit_diffusion.training.module import ScoreModule

folder, mnist = sys.argv[1], sys.argv[2]
pipe = LitDiffusionPipeline.from_pretrained(folder)
pipe.set_progress_bar_config(disable=True)
out = {"moments": pipe.scheduler.config.gaussian_start}
def run(steps):
    return pipe(batch_size=3, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt").images
exported = {n: run(n) for n in (4, 6)}
grid = json.load(open(mnist + "/grids/multistep-4-gaussian-sde.json"))["timesteps"]
name, kw = rescale_time(ScoreModule.load(mnist).sde, 1000.0)
by_hand = dict(num_train_timesteps=1000, prediction_type="epsilon", sde=name, sde_kwargs=kw, sampler="multistep",
               gaussian_start=mnist + "/data_moments.safetensors")
pipe.scheduler = SDEScheduler(**by_hand, fitted_grid=[t * 1000.0 for t in grid])
out["4"] = float((run(4) - exported[4]).abs().max())
pipe.scheduler = SDEScheduler(**by_hand)
out["6"] = float((run(6) - exported[6]).abs().max())
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """The shipped MNIST model exported with our multistep sampler, then moved to another folder."""
    base = tmp_path_factory.mktemp("export")
    export_pipeline(MNIST, str(base / "a"), sampler="multistep")
    shutil.move(str(base / "a"), str(base / "b"))
    return str(base / "b")


def _grid(name):
    with open(os.path.join(MNIST, "grids", name)) as fh:
        return [t * 1000.0 for t in json.load(fh)["timesteps"]]


def test_export_carries_the_moments_and_the_fitted_grids(moved):
    cfg = json.load(open(os.path.join(moved, "scheduler", "scheduler_config.json")))
    assert cfg["gaussian_start"] == "data_moments.safetensors"  # a bare name: the folder is self-contained
    assert cfg["gaussian_start_steps"] == 9
    assert {k: [len(g) - 1 for g in v] for k, v in cfg["fitted_grid"].items()} == {"ode": [4, 5, 7], "sde": [4, 7]}
    sched = SDEScheduler.from_pretrained(moved, subfolder="scheduler")
    shipped = GaussianStart.load(os.path.join(MNIST, "data_moments.safetensors"))
    got = sched._gstart_loaded
    assert torch.equal(got.mean, shipped.mean) and torch.equal(got.eigenvectors, shipped.eigenvectors)
    assert sched.config.gaussian_start == os.path.abspath(os.path.join(moved, "scheduler", "data_moments.safetensors"))
    start = sched._gstart_loaded.start_time(sched.sde)
    for steps, form, name in [(4, "sde", "multistep-4-gaussian-sde.json"), (7, "sde", "multistep-7-gaussian-sde.json")]:
        sched.set_timesteps(steps)
        assert sched._gstart is not None
        assert sched._grid.tolist() == pytest.approx(_grid(name), rel=1e-12)
    sched.set_timesteps(6)  # no fitted grid of 6 steps: the default grid from the Gaussian start
    assert sched._gstart is not None and float(sched._grid[0]) == pytest.approx(start, rel=1e-12)
    sched.set_timesteps(20)  # past gaussian_start_steps: from the prior at T
    assert sched._gstart is None and float(sched._grid[0]) == pytest.approx(1000.0)
    ode = SDEScheduler.from_config(sched.config, ode=True)  # a swap to the ODE form takes the ODE form's grids
    for steps in (4, 5, 7):
        ode.set_timesteps(steps)
        assert ode._grid.tolist() == pytest.approx(_grid(f"multistep-{steps}-gaussian-ode.json"), rel=1e-12)
    dropped = SDEScheduler.from_config(sched.config, gaussian_start=None, fitted_grid=None)  # as the folder's README says
    dropped.set_timesteps(4)
    assert dropped._gstart is None and float(dropped._grid[0]) == pytest.approx(1000.0)
    sched.set_timesteps(5)  # the SDE form has no 5-step grid from the Gaussian start (the ODE form's is not taken)
    assert sched._grid.tolist() != pytest.approx(_grid("multistep-5-gaussian-ode.json"), rel=1e-6)


def test_moved_export_runs_what_the_benchmark_measured_in_a_fresh_interpreter(moved):
    res = subprocess.run([sys.executable, "-c", _FRESH, moved, MNIST], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["moments"].startswith(os.path.realpath(moved)) or got["moments"].startswith(moved)
    assert got["4"] == 0.0 and got["6"] == 0.0


def test_saving_a_loaded_scheduler_keeps_the_folder_self_contained(moved, tmp_path):
    sched = SDEScheduler.from_pretrained(moved, subfolder="scheduler")
    sched.save_pretrained(str(tmp_path / "again"))
    cfg = json.load(open(tmp_path / "again" / "scheduler_config.json"))
    assert cfg["gaussian_start"] == "data_moments.safetensors"
    back = SDEScheduler.from_pretrained(str(tmp_path / "again"))
    a, b = sched._gstart_loaded, back._gstart_loaded
    assert torch.equal(a.mean, b.mean) and torch.equal(a.eigenvalues, b.eigenvalues) and a.residual == b.residual
    with pytest.raises(ValueError, match="upload it as a whole"):
        sched.save_pretrained(str(tmp_path / "hub"), push_to_hub=True)
    os.remove(tmp_path / "again" / "data_moments.safetensors")
    with pytest.raises(ValueError, match="names the moments file 'data_moments.safetensors'"):
        SDEScheduler.from_pretrained(str(tmp_path / "again"))


def test_what_is_not_carried(tmp_path):
    """model_files=False, a user's own schedule, and a conditional model carry nothing (or only the grids'
    complement); the stock DDPM export of a VP model stays stock."""
    plain = export_pipeline(MNIST, str(tmp_path / "plain"), sampler="multistep", model_files=False)
    cfg = json.load(open(os.path.join(plain, "scheduler", "scheduler_config.json")))
    assert cfg["gaussian_start"] is None and cfg["fitted_grid"] is None
    assert not os.path.exists(os.path.join(plain, "scheduler", "data_moments.safetensors"))
    own = export_pipeline(MNIST, str(tmp_path / "own"), sampler="multistep", schedule="edm")
    cfg = json.load(open(os.path.join(own, "scheduler", "scheduler_config.json")))
    assert cfg["fitted_grid"] is None and cfg["gaussian_start"] == "data_moments.safetensors"
    cond = export_pipeline(os.path.join(ROOT, "checkpoints", "mnist-cond"), str(tmp_path / "cond"), sampler="multistep")
    cfg = json.load(open(os.path.join(cond, "scheduler", "scheduler_config.json")))
    assert cfg["gaussian_start"] is None  # guided runs start from the prior (docs/samplers.md)
    stock = export_pipeline(MNIST, str(tmp_path / "stock"))
    assert json.load(open(os.path.join(stock, "scheduler", "scheduler_config.json")))["_class_name"] == "DDPMScheduler"


def test_bad_keys_are_refused_before_any_work():
    with pytest.raises(ValueError, match="gaussian_start_steps=0 is invalid"):
        SDEScheduler(gaussian_start=os.path.join(MNIST, "data_moments.safetensors"), gaussian_start_steps=0)
    with pytest.raises(ValueError, match=r"keys \['odee'\] are invalid; valid keys: \['ode', 'sde'\]"):
        SDEScheduler(fitted_grid={"odee": [[900.0, 10.0]]})
    with pytest.raises(ValueError, match="is not a decreasing list"):
        SDEScheduler(fitted_grid={"ode": [[10.0, 900.0]]})


def test_sample_py_on_the_exported_folder_runs_what_it_runs_on_the_model_folder(moved, tmp_path, capsys):
    """``sample.py -c EXPORT`` reads the moments and the grids the export carries (the scheduler config's
    ``fitted_grid``, in the U-Net's time) and draws the same samples as ``sample.py -c checkpoints/mnist``, up to
    float32 rounding of the exact time change; past 9 steps both start from T."""
    import numpy as np

    from lit_diffusion.cli.sample import main

    for name, extra in (("sde", []), ("ode", ["--ode"])):
        runs = {}
        for where, folder in (("model", MNIST), ("export", moved)):
            out = tmp_path / f"{name}-{where}"
            assert main(["-c", folder, "--nfe", "5", "--n", "4", "--seed", "0", "--no-progress", "--no-png", "--out", str(out),
                         *extra]) == 0
            data = np.load(out / "samples.npz")
            runs[where] = (data["samples"], json.loads(str(data["args"])))
        err = capsys.readouterr().err
        assert err.count("a Gaussian start") == 2
        assert runs["export"][1]["time_grid"].endswith(f"scheduler_config.json (fitted_grid, {name.upper()} form)")
        assert runs["model"][1]["time_grid"].endswith(f"multistep-4-gaussian-{name}.json")
        assert np.abs(runs["export"][0] - runs["model"][0]).max() < 1e-4
        assert np.abs(runs["model"][0]).max() > 0.5
    out = tmp_path / "long"
    assert main(["-c", moved, "--nfe", "20", "--n", "2", "--no-progress", "--no-png", "--out", str(out)]) == 0
    assert "Gaussian start" not in capsys.readouterr().err
    assert json.loads(str(np.load(out / "samples.npz")["args"])).get("time_grid") is None


def test_grid_fit_takes_a_diffusers_pipeline_folder(moved, tmp_path, capsys):
    """``python -m lit_diffusion.cli.grid_fit -c PIPELINE`` fits from the moments beside the scheduler config, in
    the scheduler's time units (the U-Net's: the grid starts at 1000 t_s), and writes grids/ in the folder, which
    sample.py then takes before the config's grid."""
    import numpy as np

    from lit_diffusion.cli.grid_fit import main as fit
    from lit_diffusion.cli.sample import main as sample_py

    folder = str(tmp_path / "pipe")
    shutil.copytree(moved, folder)
    assert fit(["-c", folder, "--steps", "4", "--n-calib", "4", "--n-holdout", "4", "--max-evals", "4", "--gaussian-start"]) == 0
    path = os.path.join(folder, "grids", "multistep-4-gaussian.json")
    rec = json.load(open(path))
    t_s = GaussianStart.load(os.path.join(MNIST, "data_moments.safetensors")).start_time(
        SDEScheduler.from_pretrained(folder, subfolder="scheduler").sde)
    assert rec["timesteps"][0] == pytest.approx(t_s, rel=1e-9) and 600 < t_s < 700  # (0.676 in the model's time)
    capsys.readouterr()
    assert sample_py(["-c", folder, "--nfe", "5", "--n", "2", "--no-progress", "--no-png", "--out", str(tmp_path / "s")]) == 0
    meta = json.loads(str(np.load(tmp_path / "s" / "samples.npz")["args"]))
    assert meta["time_grid"] == path


def test_a_stock_ddpm_pipeline_folder_gets_moments_grids_and_sample_py(tmp_path, capsys):
    """A third-party-style folder (stock DDPMPipeline + DDPMScheduler table): gaussian_fit writes the moments of its own
    samples, grid_fit
    fits from them in the table's timestep units, and sample.py runs the Gaussian start on that grid."""
    import numpy as np

    from lit_diffusion.cli.gaussian_fit import main as moments
    from lit_diffusion.cli.grid_fit import main as fit
    from lit_diffusion.cli.sample import main as sample_py
    folder = export_pipeline(MNIST, str(tmp_path / "ddpm"))  # sampler=None: the stock DDPM folder
    assert json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))["_class_name"] == "DDPMScheduler"
    # (the moments of the folder's own samples: gaussian_fit samples through sample.py's loader of the folder)
    assert moments(["-c", folder, "--from-model", "4", "--steps", "2", "--rank", "2"]) == 0
    assert os.path.isfile(os.path.join(folder, "data_moments.safetensors"))
    assert fit(["-c", folder, "--steps", "4", "--n-calib", "4", "--n-holdout", "4", "--max-evals", "4", "--gaussian-start"]) == 0
    grid = json.load(open(os.path.join(folder, "grids", "multistep-4-gaussian.json")))["timesteps"]
    assert 100 < grid[0] < 999  # the table's timestep units (999 is its last timestep)
    capsys.readouterr()
    assert sample_py(["-c", folder, "--nfe", "5", "--n", "2", "--no-progress", "--no-png", "--out", str(tmp_path / "s")]) == 0
    assert "a Gaussian start" in capsys.readouterr().err
    meta = json.loads(str(np.load(tmp_path / "s" / "samples.npz")["args"]))
    assert meta["time_grid"].endswith("multistep-4-gaussian.json")


# in a fresh interpreter with the Hub offline: a repository id whose files are in the Hub's cache (the way a
# pipeline pushed to the Hub is seen after one download); the working folder holds a decoy moments file
_HUB = r"""
import json, sys, torch
from lit_diffusion import LitDiffusionPipeline
from lit_diffusion.integrations.scheduler import SDEScheduler

sched = SDEScheduler.from_pretrained("someone/digits", subfolder="scheduler")
pipe, here = LitDiffusionPipeline.from_pretrained("someone/digits"), LitDiffusionPipeline.from_pretrained(sys.argv[1])
def run(p):
    p.set_progress_bar_config(disable=True)
    return p(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
out = {"path": sched.config.gaussian_start, "mean": float(sched._gstart_loaded.mean.sum()),
       "pipe_mean": float(pipe.scheduler._gstart_loaded.mean.sum()), "diff": float((run(pipe) - run(here)).abs().max())}
try:
    SDEScheduler.from_pretrained("someone/no-moments", subfolder="scheduler")
except ValueError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""


def _hub_snapshot(cache, repo, folder):
    """``folder`` as the cached snapshot of the Hub repository ``repo`` (huggingface_hub's cache layout)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(root, "refs"))
    with open(os.path.join(root, "refs", "main"), "w") as fh:
        fh.write(commit)
    shutil.copytree(folder, os.path.join(root, "snapshots", commit))
    return os.path.join(root, "snapshots", commit)


def test_scheduler_from_the_hub_fetches_its_moments_beside_the_config(moved, tmp_path):
    cache = str(tmp_path / "hub")
    _hub_snapshot(cache, "someone/digits", moved)
    bare = _hub_snapshot(cache, "someone/no-moments", moved)
    os.remove(os.path.join(bare, "scheduler", "data_moments.safetensors"))
    real = GaussianStart.load(os.path.join(moved, "scheduler", "data_moments.safetensors"))
    decoy = GaussianStart(real.mean + 1.0, real.eigenvalues, real.eigenvectors, real.residual)
    (tmp_path / "data_moments.safetensors").write_bytes(decoy.to_bytes())  # must not be read: it is the working folder's
    res = subprocess.run([sys.executable, "-c", _HUB, moved], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_HOME": str(tmp_path / "hf"),
                              "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["path"].startswith(cache) and got["path"].endswith(os.path.join("scheduler", "data_moments.safetensors"))
    assert got["mean"] == pytest.approx(float(real.mean.sum()), abs=1e-9) == got["pipe_mean"]
    assert got["diff"] == 0.0  # the pipeline from the Hub runs what the folder runs
    assert "someone/no-moments" in got["error"] and "'data_moments.safetensors'" in got["error"]


def test_pipeline_hub_options_and_a_missing_repository_are_clear_errors(moved):
    from lit_diffusion import LitDiffusionPipeline

    with pytest.raises(TypeError, match=r"\['revision'\] only apply to a Hub repository id"):
        LitDiffusionPipeline.from_pretrained(moved, revision="main")
    with pytest.raises(TypeError, match="unsupported arguments \\['safety_checker'\\]"):
        LitDiffusionPipeline.from_pretrained("someone/digits", safety_checker=None)
    with pytest.raises(ValueError, match="'someone/absent' is neither an exported pipeline folder here nor a Hub repository"):
        LitDiffusionPipeline.from_pretrained("someone/absent")  # the suite runs with the Hub offline (tests/conftest.py)
