"""Grids fitted to a model (lit_diffusion/sampling/grid_fit.py): the dynamic programme finds the
optimal path (checked by brute force), its grid beats the log-SNR grid on held-out trajectories, the
terminal-error search beats the default grid on held-out draws, and sample(), sample.py --time-grid and SDEScheduler(fitted_grid=) use it."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from lit_diffusion import VP, get_target, sample
from lit_diffusion.sampling.grid_fit import best_path, fit_grid, load_grid, start_grid


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


@pytest.mark.parametrize("final_denoise", [True, False])
def test_terminal_fit_beats_the_default_grid_on_held_out_draws(final_denoise):
    """The pattern search on the terminal error starts from the sampler's default grid, so it can only
    improve it on the calibration draws; on 512 held-out draws of the ring it must cut the error of the
    4-step ODE (independently recomputed here) at least in half against the grid that ends where the
    uniform grid of one more step does, and not lose to the default grid."""
    from lit_diffusion.sampling.defaults import step_grid

    tgt, sde = get_target("ring8_2d"), VP()
    rec = fit_grid(tgt, sde, 4, (2,), n_calib=64, final_denoise=final_denoise, max_evals=40, n_holdout=64)
    assert rec["method"] == "terminal" and rec["objective"] <= rec["objective_start_grid"]
    assert rec["holdout"]["fitted_grid"] < rec["holdout"]["start_grid"]
    ts = rec["timesteps"]
    assert len(ts) == 5 and ts[0] == pytest.approx(sde.T) and all(a > b for a, b in zip(ts, ts[1:]))
    assert (ts[-1] == pytest.approx(sde.t_min)) != final_denoise
    assert rec["start_timesteps"] == pytest.approx(start_grid(sde, 4, True, final_denoise).tolist())
    x_T = sde.prior_sampling((512, 2), generator=torch.Generator().manual_seed(5)).double()
    run = lambda **kw: sample(tgt, sde, x_T=x_T, sampler="multistep", ode=True, final_denoise=final_denoise,  # noqa: E731
                              dtype=torch.float64, **kw).samples
    ref = run(steps=200, schedule="edm")
    err = lambda x: float((x - ref).pow(2).sum(1).sqrt().mean())  # noqa: E731
    fitted, default = err(run(timesteps=torch.tensor(ts))), err(run(steps=4))
    # the default short run already ends halfway down (MULTISTEP_SHORT_RUN_END), which on this target
    # does most of what the fit can: the fit halves the error of the grid that ends where the uniform
    # grid of one more step does (end fraction 1), and does not lose to the default
    plain = err(run(timesteps=step_grid(sde, "multistep", 4, "uniform", final_denoise,
                                         end_fraction=1.0 if final_denoise else None)))
    assert fitted < 0.5 * plain and fitted <= 1.01 * default, (fitted, default, plain)
    with pytest.raises(ValueError, match="unknown grid-fitting method 'dp'.*terminal"):
        fit_grid(tgt, sde, 4, (2,), method="dp")
    with pytest.raises(ValueError, match="corrector=True applies to method='terminal' only"):
        fit_grid(tgt, sde, 4, (2,), method="local", corrector=True)
    assert rec["corrector"] is False


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


def test_scheduler_keeps_one_fitted_grid_per_step_count(tmp_path):
    from lit_diffusion.integrations.scheduler import SDEScheduler

    grids = [[1.0, 0.6, 0.3, 0.1], [1.0, 0.7, 0.5, 0.3, 0.2, 0.05]]
    s = SDEScheduler(sampler="multistep", sde="VP", num_train_timesteps=1, fitted_grid=grids)
    s.save_pretrained(tmp_path)
    s2 = SDEScheduler.from_pretrained(tmp_path)
    for g in grids:
        s2.set_timesteps(len(g) - 1)
        assert torch.allclose(s2._grid, torch.tensor(g, dtype=torch.float64))
    s2.set_timesteps(4)  # no grid of 4 steps: the schedule (the final evaluation replaces a 5th step)
    assert s2._grid.numel() == 5 and not torch.allclose(s2._grid[:3], torch.tensor([1.0, 0.7, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"give num_inference_steps; fitted grids exist for \[3, 5\] steps"):
        s2.set_timesteps()
    with pytest.raises(ValueError, match="two grids of 3 steps"):
        SDEScheduler(sampler="multistep", fitted_grid=[grids[0], grids[0]])
    with pytest.raises(ValueError, match=r"\[1.0, 1.0\] is not a decreasing list"):
        SDEScheduler(sampler="multistep", fitted_grid=[1.0, 1.0])


def _tiny_model(tmp_path):
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.networks import TimeMLP
    from lit_diffusion.training.pretrained import save_pretrained

    return save_pretrained(ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), data_shape=[2], ema_decay=0.0), tmp_path / "m")


def test_sample_py_uses_the_grid_fitted_to_the_model(tmp_path):
    """A grid saved beside the model (grids/multistep-<steps>.json) is used when the step count, the
    ending and the form match and no --schedule is given; the samples then equal an explicit
    --time-grid run's."""
    from lit_diffusion.cli.sample import main
    from lit_diffusion.sampling.grid_fit import model_grid

    folder = tmp_path / "m"
    _tiny_model(tmp_path)
    (folder / "grids").mkdir()
    grid = [1.0, 0.5, 0.2, 0.05]
    rec = {"format": "lit_diffusion-grid", "timesteps": grid, "final_denoise": True, "forms": ["sde"]}
    (folder / "grids" / "multistep-3.json").write_text(json.dumps(rec))

    def run(name, *extra):
        assert main(["-c", str(folder), "--sampler", "multistep", "--out", str(tmp_path / name), "--n", "4", "--no-progress",
                     "--format", "npz", *extra]) == 0
        z = np.load(tmp_path / name / "samples.npz")
        return z["samples"], json.loads(str(z["args"]))

    x, meta = run("auto", "--steps", "3", "--final-denoise")
    assert meta["timesteps"] == grid and meta["time_grid"].endswith("multistep-3.json")
    x_explicit, _ = run("explicit", "--time-grid", str(folder / "grids" / "multistep-3.json"), "--final-denoise")
    assert np.array_equal(x, x_explicit)
    x_default, meta = run("default", "--steps", "3")  # multistep ends with the final evaluation by default
    assert meta["final_denoise"] is True and meta["timesteps"] == grid and np.array_equal(x, x_default)
    x_file, meta = run("file", "--time-grid", str(folder / "grids" / "multistep-3.json"))  # the file's ending
    assert meta["final_denoise"] is True and np.array_equal(x, x_file)
    for extra in (["--steps", "3", "--no-final-denoise"], ["--steps", "3", "--final-denoise", "--ode"], ["--steps", "4", "--final-denoise"],
                  ["--steps", "3", "--final-denoise", "--schedule", "uniform"]):
        _, meta = run("other" + "".join(extra), *extra)
        assert meta.get("timesteps") is None, extra
    rec["final_denoise"] = False
    (folder / "grids" / "multistep-3.json").write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="final_denoise=False; its name says 3 steps with final_denoise=True"):
        model_grid(folder, 3, True, False)


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
    assert meta["steps"] == 3 and meta["final_denoise"] is True  # a file without the key: the sampler's default
    assert main(["-c", folder, "--time-grid", str(g), "--steps", "3", "--out", str(tmp_path / "o2")]) == 2
    # a grid fitted for runs down to t_min runs so unless told otherwise
    g.write_text(json.dumps({"format": "lit_diffusion-grid", "timesteps": [1.0, 0.5, 0.2, 0.001], "final_denoise": False}))
    for name, extra, final in (("o3", [], False), ("o4", ["--final-denoise"], True)):
        assert main(["-c", folder, "--time-grid", str(g), "--out", str(tmp_path / name), "--n", "2", "--no-progress", *extra]) == 0
        meta = json.loads(str(np.load(tmp_path / name / "samples.npz")["args"]))
        assert meta["final_denoise"] is final and meta["nfe_per_sample"] == 3 + final


def test_terminal_fit_from_a_gaussian_start(tmp_path):
    """Grids for runs from a Gaussian start: fitted from its start time (kept as the first point), better
    than the default grid from there on held-out draws, saved under their own name, and taken by
    sample.py only for runs from the same start time."""
    from lit_diffusion.sampling.gaussian_start import GaussianStart
    from lit_diffusion.sampling.grid_fit import grid_file_name, model_grid

    tgt, sde = get_target("ring8_2d"), VP()
    gs = GaussianStart.from_samples(tgt.sample(20_000, generator=torch.Generator().manual_seed(0)), noise_ratio=10.0)
    t_s = gs.start_time(sde)
    rec = fit_grid(tgt, sde, 4, (2,), n_calib=64, final_denoise=True, max_evals=40, n_holdout=64, gaussian_start=gs)
    ts = rec["timesteps"]
    assert ts[0] == pytest.approx(t_s) and rec["gaussian_start"] == {"noise_ratio": 10.0, "start_time": pytest.approx(t_s)}
    assert rec["holdout"]["fitted_grid"] < 0.8 * rec["holdout"]["start_grid"], rec["holdout"]
    assert grid_file_name(4, True, True) == "multistep-4-gaussian.json"
    (tmp_path / "grids").mkdir()
    (tmp_path / "grids" / "multistep-4-gaussian.json").write_text(json.dumps(rec))
    assert model_grid(tmp_path, 4, True, True, start_time=t_s)[1] == ts
    assert model_grid(tmp_path, 4, True, True) is None  # runs from the prior do not take it
    assert model_grid(tmp_path, 4, True, True, start_time=0.5 * t_s) is None  # nor runs from another start
    with pytest.raises(ValueError, match="gaussian_start applies to method='terminal' only"):
        fit_grid(tgt, sde, 4, (2,), method="local", gaussian_start=gs)


def test_a_grid_of_one_form_comes_before_the_shared_one(tmp_path):
    """``multistep-<steps>[-gaussian]-<form>.json`` (a grid fitted for the ODE or the SDE form alone, as the
    FID fits are) is what model_grid gives that form; the other form still takes the shared file; a bad
    form is named."""
    from lit_diffusion.sampling.grid_fit import grid_file_name, model_grid

    assert grid_file_name(4, True, True, "sde") == "multistep-4-gaussian-sde.json"
    assert grid_file_name(4, False, False, "ode") == "multistep-4-to-t-min-ode.json"
    with pytest.raises(ValueError, match=r"form='both' is invalid; valid choices: \[None, 'ode', 'sde'\]"):
        grid_file_name(4, True, form="both")
    (tmp_path / "grids").mkdir()
    shared, sde_only = [1.0, 0.6, 0.3, 0.1], [1.0, 0.7, 0.4, 0.05]
    rec = {"format": "lit_diffusion-grid", "timesteps": shared, "final_denoise": True}
    (tmp_path / "grids" / "multistep-3.json").write_text(json.dumps(rec))
    (tmp_path / "grids" / "multistep-3-sde.json").write_text(json.dumps({**rec, "timesteps": sde_only, "forms": ["sde"]}))
    assert model_grid(tmp_path, 3, True, ode=False) == (str(tmp_path / "grids" / "multistep-3-sde.json"), sde_only)
    assert model_grid(tmp_path, 3, True, ode=True) == (str(tmp_path / "grids" / "multistep-3.json"), shared)


@pytest.mark.parametrize("move_end", [True, False])
def test_pattern_search_reaches_a_known_optimum(move_end):
    """The pattern search under every grid fit finds the grid that minimises a smooth objective with a
    known minimiser (a log-SNR grid), keeps the first point (and the last one unless ``move_end``), and
    never returns a grid worse than its start."""
    from lit_diffusion.sampling.grid_fit import pattern_search

    sde = VP()
    start = torch.linspace(1.0, 0.05, 6, dtype=torch.float64)
    target = sde.log_snr(torch.tensor([1.0, 0.7, 0.45, 0.3, 0.2, 0.05 if not move_end else 0.12], dtype=torch.float64))
    calls = []

    def objective(grid):
        calls.append(grid)
        return float(((sde.log_snr(grid) - target) ** 2).sum())

    grid, best, first, evals = pattern_search(sde, start, objective, max_evals=400, move_end=move_end)
    assert evals == len(calls) <= 400 and best <= first
    assert best < 1e-3 * first  # from ~20 down to the optimum
    assert float(grid[0]) == 1.0 and (move_end or float(grid[-1]) == pytest.approx(0.05, rel=1e-12))
    assert torch.all(grid[1:] < grid[:-1])
    assert torch.allclose(sde.log_snr(grid), target, atol=0.05)


def test_fid_fit_study_writes_a_grid_the_bench_reads(tmp_path, monkeypatch):
    """bench/study_grid_fid_fit.py (dry run: tiny untrained network) writes one grid file per budget that
    load_grid accepts, starting at the Gaussian start's time, no worse on its calibration samples than the
    default grid it started from."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench"))
    import study_grid_fid_fit

    recs = study_grid_fid_fit.main(["--steps", "2", "--n-calib", "8", "--max-evals", "3", "--dry-run", "--gaussian-start",
                                    "--out", str(tmp_path)])
    (rec,) = recs
    grid = load_grid(tmp_path / "multistep-2-gaussian-sde.json")
    assert len(grid) == 3 and grid[0] == pytest.approx(rec["gaussian_start"]["start_time"])
    assert np.isfinite(rec["objective"]) and rec["objective"] <= rec["objective_start_grid"] and rec["objective_evaluations"] == 3
    # --eta: the SDE form's stochasticity of every scored run (the same samples' seeds, other noise: another score)
    (low,) = study_grid_fid_fit.main(["--steps", "2", "--n-calib", "8", "--max-evals", "1", "--dry-run", "--gaussian-start",
                                      "--eta", "0.5", "--out", str(tmp_path / "eta")])
    assert low["eta"] == 0.5 and rec["eta"] is None and low["objective_start_grid"] != pytest.approx(rec["objective_start_grid"])
    with pytest.raises(SystemExit):
        study_grid_fid_fit.main(["--steps", "2", "--dry-run", "--form", "ode", "--eta", "0.5", "--out", str(tmp_path / "x")])
    # --reference-samples: scored against the model's own samples (sample.py's samples.npz) instead of the digits
    ref = tmp_path / "ref.npz"
    np.savez(ref, samples=np.random.default_rng(0).uniform(-1, 1, (64, 1, 28, 28)).astype(np.float32))
    (own,) = study_grid_fid_fit.main(["--steps", "2", "--n-calib", "8", "--max-evals", "1", "--dry-run", "--gaussian-start",
                                      "--reference-samples", str(ref), "--out", str(tmp_path / "own")])
    assert own["reference"] == [str(ref)] and own["objective_start_grid"] != pytest.approx(rec["objective_start_grid"])
    np.savez(tmp_path / "bad.npz", images=np.zeros((4, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match="no 'samples' array"):
        study_grid_fid_fit.main(["--steps", "2", "--dry-run", "--reference-samples", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "y")])


def test_fid_fit_study_family_holds_the_default_grid_and_never_loses_to_it(tmp_path, monkeypatch):
    """The two-parameter family of ``--family`` (end point x spacing) holds the default grid of short runs
    from the Gaussian start (end fraction 0.5, power 1: uniform in t) to 1e-12, crowds its points towards the
    end above power 1, and the dry run scores every member once and writes the best, no worse than the
    default grid."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "bench"))
    import study_grid_fid_fit as study

    sde = VP()
    default = start_grid(sde, 4, ode=False, T=0.7)
    same = study.family_grid(float(default[0]), float(default[-1]), 4, 1.0)
    assert torch.allclose(same, default.double(), rtol=0, atol=1e-12)
    crowded = study.family_grid(float(default[0]), float(default[-1]), 4, 1.6)
    assert torch.equal(crowded[[0, -1]], same[[0, -1]]) and torch.all(crowded[1:] < crowded[:-1])
    assert torch.all(crowded[1:-1] < same[1:-1] - 1e-3)  # nearer the data end than uniform
    recs = study.main(["--steps", "2", "--n-calib", "8", "--dry-run", "--gaussian-start", "--family", "--out", str(tmp_path)])
    (rec,) = recs
    n_family = len(study.FAMILY_END_FRACTIONS) * len(study.FAMILY_POWERS)
    assert len(rec["family_table"]) == n_family and rec["objective_evaluations"] == n_family  # default once, shared
    assert rec["objective"] == min([rec["objective_start_grid"]] + [v for _, _, v in rec["family_table"]])
    (quick,) = study.main(["--steps", "2", "--n-calib", "8", "--dry-run", "--gaussian-start", "--family", "--quick", "--out",
                           str(tmp_path / "quick")])
    assert [(f, p) for f, p, _ in quick["family_table"]] == [(0.5, 0.5), (0.5, 0.7), (0.7, 0.5), (0.7, 0.7)]
    assert quick["objective_evaluations"] == 5 and "quick" in quick["method"]  # and the default grid
    assert rec["calib_seed"] == study.CALIBRATION_SEED
    (other,) = study.main(["--steps", "2", "--n-calib", "8", "--dry-run", "--gaussian-start", "--family", "--quick",
                           "--calib-seed", "21000", "--out", str(tmp_path / "other")])
    assert other["calib_seed"] == 21000 and other["objective_start_grid"] != quick["objective_start_grid"]  # other samples
    with pytest.raises(SystemExit):
        study.main(["--steps", "2", "--quick", "--out", str(tmp_path / "q2")])
    grid = load_grid(tmp_path / "multistep-2-gaussian-sde.json")
    assert len(grid) == 3 and grid[0] == pytest.approx(rec["gaussian_start"]["start_time"])


def test_the_shipped_model_takes_the_grids_that_measured_better():
    """checkpoints/mnist ships grids of one form fitted by FID for runs from its Gaussian start where they
    beat the default grid (docs/samplers.md, "Targets and misses"): the ODE form at 4 / 5 / 7 steps, the SDE
    form at 4 and 7; at 5 steps the SDE form (a tie) keeps the default grid."""
    from pathlib import Path

    from lit_diffusion.sampling.gaussian_start import GaussianStart
    from lit_diffusion.sampling.grid_fit import model_grid

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist"
    t_s = GaussianStart.load(str(folder / "data_moments.safetensors")).start_time(VP())
    for steps, ode in [(4, True), (5, True), (7, True), (4, False), (7, False)]:
        path, ts = model_grid(folder, steps, True, ode, start_time=t_s)
        assert path.endswith(f"multistep-{steps}-gaussian-{'ode' if ode else 'sde'}.json")
        assert len(ts) == steps + 1 and ts[0] == pytest.approx(t_s)
    assert model_grid(folder, 5, True, False, start_time=t_s) is None


def test_sample_py_default_runs_what_was_measured_on_the_shipped_model(tmp_path, capsys):
    """``sample.py -c checkpoints/mnist --nfe 5`` with no other option runs what the benchmark measured
    through SDEScheduler: the Gaussian start, 4 steps ending with the final denoising evaluation, on the
    grid fitted to the model (the run down to t_min scored FID 6.86 / 6.55, SDE / ODE, against 5.70 / 5.31
    with the final evaluation: docs/samplers.md "The final denoising evaluation in sample.py")."""
    from pathlib import Path

    from lit_diffusion.cli.sample import main

    folder = Path(__file__).resolve().parents[2] / "checkpoints" / "mnist"
    for name, extra in (("sde", []), ("ode", ["--ode"])):
        assert main(["-c", str(folder), "--nfe", "5", "--n", "2", "--no-progress", "--no-png", "--out", str(tmp_path / name),
                     *extra]) == 0
        meta = json.loads(str(np.load(tmp_path / name / "samples.npz")["args"]))
        assert meta["final_denoise"] is True and meta["steps"] == 4 and meta["nfe_per_sample"] == 5
        assert meta["time_grid"].endswith(f"multistep-4-gaussian-{name}.json")
        assert "a Gaussian start" in capsys.readouterr().err
