"""Measured defaults, PC stability, equal-cost options, pretrained folders and the benchmark scripts
(docs/samplers.md, "Defaults")."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lit_diffusion.core import sdes  # noqa: E402
from lit_diffusion.evaluation.metrics import kl_gaussian_fit, sliced_wasserstein2  # noqa: E402
from lit_diffusion.sampling.samplers import default_schedule, get_stepper, sample  # noqa: E402
from lit_diffusion.integrations.scheduler import SDEScheduler  # noqa: E402
from lit_diffusion.core.targets import get_target  # noqa: E402

F64 = torch.float64
SHIPPED = ROOT / "checkpoints" / "mnist"


def test_ddram_defaults_are_the_same_everywhere():
    assert default_schedule("ddram") == "uniform" and default_schedule("euler") == "uniform"
    vp = sdes.VP()
    auto = get_stepper("ddram", vp)
    assert auto.parametrization == "auto" and get_stepper("ddram", vp, ode=True).parametrization == "auto"
    # short steps in log-SNR freeze the relative score, long ones the denoiser
    assert auto.for_step(0.5, 0.45).parametrization == "relative_score"
    assert auto.for_step(0.5, 0.01).parametrization == "denoiser"
    assert get_stepper("pc", vp, predictor="ddram").parametrization == "denoiser"
    sched = SDEScheduler.from_config(SDEScheduler().config, sampler="ddram")
    sched.set_timesteps(8)
    assert sched.stepper.parametrization == "denoiser"  # a DDPM table: the closed-form parametrization
    assert SDEScheduler(sde="VP", sampler="ddram").stepper.parametrization == "auto"
    from lit_diffusion.core.schedules import get_timesteps

    assert torch.allclose(sched._grid, get_timesteps(sched.sde, 8, "uniform"))
    from lit_diffusion.cli.sample import build_parser

    args = build_parser().parse_args(["-c", "x"])
    assert args.sampler == "auto" and args.schedule is None  # resolved by prepare() to default_schedule


def _gkl(x, law):
    return kl_gaussian_fit(x.numpy(), law.mean().numpy(), law.covariance().numpy())["value"]


@pytest.mark.parametrize("sde_name", ["VP", "OU"])
def test_ddram_default_against_exponential_euler_on_the_16d_preset(sde_name):
    """At equal evaluations on the default grid: never 1.5x worse than exponential Euler at 8 and 16
    evaluations (it was 7-1200x worse with the old defaults), and >= 5x better at 32."""
    target, sde = get_target("anisotropic_16d"), getattr(sdes, sde_name)()
    law = target.marginal(sde.t_min, sde)
    for nfe, bound in ((8, 1.5), (16, 1.5), (32, 1 / 5)):
        kls = {}
        for name, steps in (("ddram", nfe // 2), ("exponential_euler", nfe)):
            x = sample(target, sde, shape=(2000, 16), sampler=name, steps=steps, schedule="log_snr",
                       generator=torch.Generator().manual_seed(0), dtype=F64).samples
            kls[name] = _gkl(x, law)
        assert kls["ddram"] <= bound * kls["exponential_euler"], (nfe, kls)


@pytest.mark.parametrize("preset", ["bimodal_1d", "ring8_2d", "anisotropic_16d"])
def test_pc_default_never_diverges(preset):
    """The default corrector rule (per sample, ratio capped at 4 sigma^2) stays bounded on every preset,
    SDE, grid and step count, where the per-sample rule of the reference diverged in 1-D/2-D."""
    target = get_target(preset)
    scale = float(target.covariance().diagonal().max().sqrt() + target.mean().abs().max())
    for sde in (sdes.VP(), sdes.OU()):
        for schedule in ("uniform", "log_snr"):
            for steps in (4, 32):
                x = sample(target, sde, shape=(1000, target.dim), sampler="pc", steps=steps, schedule=schedule,
                           generator=torch.Generator().manual_seed(1), dtype=F64).samples
                assert torch.isfinite(x).all() and float(x.abs().max()) < 10 * scale + 10, (sde, schedule, steps)
    ring = get_target("ring8_2d")
    sde = sdes.VP()
    ref = ring.marginal(sde.t_min, sde).sample(2000, torch.Generator().manual_seed(2), dtype=F64).numpy()

    def sw(snr_norm):
        x = sample(ring, sde, shape=(2000, 2), sampler="pc", steps=64, schedule="uniform", snr_norm=snr_norm,
                   generator=torch.Generator().manual_seed(1), dtype=F64).samples.numpy()
        return sliced_wasserstein2(x, ref)["value"]

    assert sw("capped") < 0.5 * sw("sample")  # the uncapped per-sample rule is what diverged


def test_sample_py_nfe_budget(ckpt, tmp_path):
    from lit_diffusion.cli.sample import main, run

    out = run(["-c", str(ckpt), "--nfe", "11", "--sampler", "ddram", "--n", "4", "--out", str(tmp_path / "a"),
               "--no-progress", "--no-png"])
    assert out["nfe_per_sample"] == 11  # ddram: 5 steps of 2 evaluations and the final denoising one (its default)
    meta = json.loads(str(np.load(tmp_path / "a" / "samples.npz")["args"]))
    assert meta["steps"] == 5 and meta["final_denoise"] is True
    out = run(["-c", str(ckpt), "--nfe", "11", "--sampler", "ddram", "--no-final-denoise", "--n", "4", "--out",
               str(tmp_path / "a2"), "--no-progress", "--no-png"])
    assert out["nfe_per_sample"] == 10  # 5 steps of 2 evaluations, the grid run down to t_min
    out = run(["-c", str(ckpt), "--nfe", "7", "--sampler", "euler", "--n", "4", "--out", str(tmp_path / "b"),
               "--no-progress", "--no-png"])
    assert out["nfe_per_sample"] == 7  # euler ends at t_min by default: 7 steps
    assert main(["-c", str(ckpt), "--nfe", "7", "--steps", "3", "--out", str(tmp_path / "c")]) == 2
    assert main(["-c", str(ckpt), "--nfe", "1", "--sampler", "ddram", "--out", str(tmp_path / "c")]) == 2
    out = run(["-c", str(ckpt), "--nfe", "11", "--n", "4", "--out", str(tmp_path / "d"), "--no-progress", "--no-png"])
    assert out["nfe_per_sample"] == 11  # the default (auto = multistep): 10 steps of one evaluation and the final one
    assert json.loads(str(np.load(tmp_path / "d" / "samples.npz")["args"]))["steps"] == 10
    assert not (tmp_path / "c").exists()


def test_pretrained_folder_round_trip_and_refusal(ckpt, tmp_path, capsys):
    from lit_diffusion.runtime.checkpoint_io import CheckpointError
    from lit_diffusion.training.module import ScoreModule
    from lit_diffusion.training.pretrained import save_pretrained
    from lit_diffusion.cli.sample import main

    m = ScoreModule.load_checkpoint(str(ckpt))
    folder = tmp_path / "pre"
    save_pretrained(m, folder)
    back = ScoreModule.from_pretrained(folder)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(back.net(x, t), m.sampling_net(True)(x, t))
    assert main(["-c", str(folder), "--n", "4", "--steps", "2", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hyper_parameters"]["net"]["class_path"] = "lit_diffusion.runtime.checkpoint_io.atomic_write_bytes"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a registered net class"):
        ScoreModule.from_pretrained(folder)
    assert main(["-c", str(folder), "--n", "4", "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("script", ["real_model", "gpu"])
def test_benchmark_scripts_dry_run(script, capsys, monkeypatch):
    """bench/real_model.py and bench/gpu.py run every row end to end on the CPU (``--dry-run``: tiny
    sizes), through their ``main`` in this process as the studies below do (a fresh interpreter would add
    Lightning's import, a third to a half of the test's time, and check nothing more)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import importlib

    bench = importlib.import_module(script)
    if script == "real_model":
        for name in ("FITTED_DIR", "MOMENTS", "GUIDANCE"):  # the run sets them: restored for later tests
            monkeypatch.setattr(bench, name, getattr(bench, name))
    out = bench.main(["--dry-run"])
    printed = capsys.readouterr().out
    if script == "gpu":
        assert "| training bf16 | Lightning / plain |" in printed and "| sampling ddram NFE 20 | bf16 |" in printed
        assert {r["part"] for r in out} >= {"training bf16", "sampling ddram NFE 20"}
    else:
        for name in ("lit ddram (default)", "DDPM ancestral", "SDE-DPM-Solver++ 2M", "DDIM", "Heun", "UniPC"):
            assert name in printed
        assert {r["sampler"] for r in out["results"]} >= {"DDIM", "UniPC", "Heun"}


def test_study_scripts_dry_run(capsys, monkeypatch):
    """The two studies built on real_model.py run end to end (in this process: the tiny untrained UNet):
    the noise-ratio sweep with rows scored against reference samples, and the per-sample trajectory error
    of every default row at every budget with the gap between the two references, unguided and guided."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import real_model
    import study_noise_ratio
    import study_trajectory_error

    for name in ("FITTED_DIR", "MOMENTS", "GUIDANCE"):  # the runs below set them: restored for later tests
        monkeypatch.setattr(real_model, name, getattr(real_model, name))
    out = study_noise_ratio.main(["--dry-run", "--ratios", "10", "--reference", "UniPC@4", "--reference-n", "16"])["results"]
    assert [r["sampler"] for r in out] == ["lit multistep 2, Gaussian start, noise ratio 10", "lit multistep 2 ODE, Gaussian start, noise ratio 10"]
    assert all(np.isfinite(r["fid_reference"]) and r["fid_reference"] >= 0 for r in out)
    rows = study_trajectory_error.main(["--dry-run"])
    assert rows[0]["sampler"] == "floor" and len(rows) == 1 + 9 and all(r["rms"] > 0 for r in rows)
    assert "RMS to its reference" in capsys.readouterr().out
    # guided (the tiny network is then class-conditional), with the rows that end the guided layout's
    # grid at two fractions: two different runs, not one run under two labels
    rows = study_trajectory_error.main(["--dry-run", "--guidance", "3", "--only", "UniPC", "--end-fractions", "1", "0.5"])
    by = {r["sampler"]: r["rms"] for r in rows}
    assert set(by) == {"floor", "UniPC", "lit multistep 2 ODE, end fraction 1", "lit multistep 2 ODE, end fraction 0.5"}
    assert by["lit multistep 2 ODE, end fraction 1"] != by["lit multistep 2 ODE, end fraction 0.5"]


def test_fid_reference_study_scores_the_benchmarks_own_samples(tmp_path, monkeypatch):
    """bench/study_fid_reference.py draws the samples of bench/real_model.py's rows (same loop, seeds and
    batches: the dry run's mean |x| is the benchmark's to the bit) and writes one line per row and seed with
    a score per reference; a row that is not the benchmark's is refused before any work."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import real_model
    import study_fid_reference

    for name in ("FITTED_DIR", "MOMENTS", "GUIDANCE"):
        monkeypatch.setattr(real_model, name, getattr(real_model, name))
    out = tmp_path / "ref.jsonl"
    torch.manual_seed(0)  # the dry run's untrained network: the same one below
    recs = study_fid_reference.main(["--dry-run", "--seeds", "0", "1", "--n", "8", "--out", str(out)])
    assert [json.loads(line) for line in out.read_text().splitlines()] == recs and len(recs) == 4
    assert all(set(study_fid_reference.REFERENCES) <= set(r) for r in recs)
    from types import SimpleNamespace

    torch.manual_seed(0)
    module, time_scale, lit_model, _ = real_model.prepare_model(str(ROOT / "checkpoints" / "mnist"), None, True, "cpu",
                                                                str(ROOT / "docs" / "study" / "grids_fid_fit_family"))
    a = SimpleNamespace(seeds=[0, 1], n=8, batch=500, dry_run=True, reference_samples=None, guidance=None)
    for label, kind, opts in real_model.SDE_SAMPLERS:
        if label in study_fid_reference.DEFAULT_ROWS:  # the benchmark's own scoring of its rows
            sched = real_model.make_scheduler(kind, opts, module.sde, time_scale, 6)
            fids = real_model._over_seeds(a, sched, lit_model, tuple(module.data_shape), 6, "cpu")[0]
            assert fids == [r["held_out_1000"] for r in recs if r["sampler"] == label]
    assert len({r["held_out_1000"] for r in recs if r["seed"] == 0}) == 2  # the fitted grid draws other samples
    with pytest.raises(SystemExit):
        study_fid_reference.main(["--dry-run", "--rows", "no such row", "--out", str(tmp_path / "x.jsonl")])
    assert not (tmp_path / "x.jsonl").exists()


def test_short_run_end_study_matches_the_default_at_its_fraction(monkeypatch):
    """bench/study_short_run_end.py at the default fraction draws the default row's samples (the same
    grid through the same loop), at fraction 1 other ones (the grid of one more step without t_min);
    a fraction outside (0, 1] is refused by step_grid."""
    from lit_diffusion.core.sdes import VP
    from lit_diffusion.sampling.defaults import MULTISTEP_SHORT_RUN_END, step_grid

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import study_short_run_end

    out = study_short_run_end.main(["--dry-run", "--fractions", str(MULTISTEP_SHORT_RUN_END), "1", "--forms", "ode",
                                    "--only-default"])["results"]
    by = {r["sampler"]: r["fid"] for r in out}
    assert set(by) == {"lit multistep 2 ODE", "lit multistep 2 ODE, end fraction 0.5", "lit multistep 2 ODE, end fraction 1"}
    assert by["lit multistep 2 ODE, end fraction 0.5"] == by["lit multistep 2 ODE"] != by["lit multistep 2 ODE, end fraction 1"]
    with pytest.raises(ValueError, match="end_fraction=1.5"):
        step_grid(VP(), "multistep", 4, "uniform", True, end_fraction=1.5)
    # a run that goes down to t_min (9 unguided steps; or no final evaluation) has no end to move: refused,
    # not ignored (a study once printed the fraction-1 figure under the fraction-0.5 label at 10 evaluations)
    with pytest.raises(ValueError, match=r"end_fraction=0.5 applies only.*9 steps.*guided=False"):
        step_grid(VP(), "multistep", 9, "uniform", True, end_fraction=0.5)
    with pytest.raises(ValueError, match=r"end_fraction=0.5 applies only.*final_denoise=False"):
        step_grid(VP(), "multistep", 4, "uniform", False, end_fraction=0.5)
    guided = step_grid(VP(), "multistep", 9, "uniform", True, guided=True, end_fraction=0.5)
    trailing = step_grid(VP(), "multistep", 9, "uniform", True, guided=True, end_fraction=1.0)
    assert len(guided) == len(trailing) == 10 and VP().t_min < guided[-1] < trailing[-1]


def test_benchmark_only_takes_one_label_with_a_comma_and_refuses_unknown_ones(monkeypatch):
    """``--only "lit multistep 2, eta 0.5"`` once ran the default row (the label was split at its comma);
    an unknown label is refused with the valid ones, before the model or any reference is built."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import real_model

    assert real_model.wanted_rows("lit multistep 2, eta 0.5") == {"lit multistep 2, eta 0.5"}
    assert real_model.wanted_rows("UniPC,DDIM ") == {"UniPC", "DDIM"}
    assert real_model.wanted_rows("lit multistep 2, eta 0.5;UniPC") == {"lit multistep 2, eta 0.5", "UniPC"}
    with pytest.raises(ValueError, match=r"unknown labels \['eta 0.5x'\]"):
        real_model.wanted_rows("lit multistep 2, eta 0.5x")
    monkeypatch.setattr(real_model, "prepare_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    with pytest.raises(ValueError, match="valid labels"):
        real_model.main(["--only", "no such row", "--reference", "UniPC@50"])


def test_benchmark_reference_cache_is_read_back_and_refused_for_another_reference(tmp_path, monkeypatch):
    """``--reference-cache``: the first run writes the reference samples, a second run scores against the
    file without sampling them again (same distances), and a file of another reference is refused."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import real_model

    cache = str(tmp_path / "ref.npz")
    args = ["--dry-run", "--only", "UniPC", "--reference", "UniPC@4", "--reference-n", "16", "--reference-cache", cache]
    torch.manual_seed(0)  # (the dry run's untrained network: the same one in both runs)
    first = real_model.main(args)["results"][0]["fid_reference"]
    assert os.path.exists(cache) and not os.path.exists(cache + ".tmp.npz")
    calls = []
    loop = real_model.run_loop
    monkeypatch.setattr(real_model, "run_loop", lambda sched, model, n, *a: calls.append(n) or loop(sched, model, n, *a))
    torch.manual_seed(0)
    assert real_model.main(args)["results"][0]["fid_reference"] == first
    assert 16 not in calls  # only the row's 8 samples were drawn
    with pytest.raises(ValueError, match="holds other reference samples"):
        real_model.main(args[:-3] + ["32", "--reference-cache", cache])


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").is_file(), reason="shipped model not present")
def test_shipped_mnist_model_loads_and_samples_digits():
    from lit_diffusion.evaluation.feature_net import load_feature_net
    from lit_diffusion.training.module import ScoreModule

    m = ScoreModule.from_pretrained(SHIPPED)
    assert m.data_shape == (1, 28, 28) and m.prediction_type == "epsilon"
    x = m.sample(32, sampler="ddram", steps=10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(x).all() and x.shape == (32, 1, 28, 28)
    net = load_feature_net()
    with torch.no_grad():
        p = torch.softmax(net.classify((x.clamp(-1, 1) + 1) / 2), -1)
    # samples look like digits to the held-out classifier: confident predictions on most of them
    assert float((p.max(-1).values > 0.5).float().mean()) > 0.6


def test_full_matrix_is_compiled_from_the_recorded_runs(tmp_path, monkeypatch):
    """bench/full_matrix.py: every cell of the shipped matrix (docs/study/full_matrix_mnist.jsonl) is the
    named row of a recorded benchmark run cut to seeds 0 and 1, the matrix has no gap (every row at every
    budget), and a source without both seeds is refused rather than filled."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import full_matrix

    rows = full_matrix.main(["--out", str(tmp_path / "m.jsonl")])
    shipped = [json.loads(line) for line in (ROOT / "docs" / "study" / "full_matrix_mnist.jsonl").read_text().splitlines()]
    assert shipped == rows == [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    labels = {(r["form"], r["sampler"]) for r in rows}
    assert labels == set(full_matrix.OURS) | set(full_matrix.STOCK) and len(labels) == 12
    assert len(rows) == 7 * len(labels) and all(r["seeds"] == [0, 1] and r["n"] == 1000 for r in rows)
    for r in rows:  # each cell is its source row's seeds 0 and 1
        path, line = r["source"].split(" ")[0].rsplit(":", 1)
        src = json.loads((ROOT / path).read_text().splitlines()[int(line) - 1])
        seeds = list(src.get("seeds") or range(len(src["fids"])))
        assert r["fids"] == [src["fids"][seeds.index(s)] for s in (0, 1)] and r["fid"] == pytest.approx(np.mean(r["fids"]))
    with pytest.raises(SystemExit, match="seeds"):  # a row of the stochasticity study holds one seed
        full_matrix.cell("ODE", "x", 5, ("stochasticity.jsonl", "lit multistep 2 ODE"))
