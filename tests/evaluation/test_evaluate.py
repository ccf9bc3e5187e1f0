"""The ``evaluate`` entry point end to end on small files in tmp_path, with numbers checked against
closed forms (translation => W1 = shift; Gaussian target => exact KL, docs/maths.md §6), and clear
errors for bad inputs (nothing written on failure)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from lit_diffusion.evaluation import metrics as M
from lit_diffusion.cli.evaluate import main
from lit_diffusion.evaluation.evaluate import evaluate, load_array
from lit_diffusion.evaluation.feature_net import mnist_split
from lit_diffusion.core.targets import GaussianMixture, get_target


def _target_samples(name, n, seed):
    return get_target(name).sample(n, torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()


def test_cli_lowdim_against_target_preset(tmp_path, capsys):
    # exact 1-D samples vs the same target, and shifted by +1: a translation has W1 = 1 exactly
    x = _target_samples("bimodal_1d", 4000, 1)
    np.savez(tmp_path / "good.npz", samples=x)
    np.savez(tmp_path / "shift.npz", samples=x + 1.0)
    out = tmp_path / "res" / "good.json"
    assert main(["--samples", str(tmp_path / "good.npz"), "--reference", "bimodal_1d", "--output", str(out),
                 "--n-reference", "6000", "--seed", "3"]) == 0
    good = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == good
    assert good["kind"] == "lowdim" and good["n_samples"] == 4000 and good["n_reference"] == 6000 and good["dim"] == 1
    assert good["w1"]["method"] == "exact-1d" and good["w1"]["n_x"] == 4000 and good["w1"]["n_y"] == 6000
    assert good["w1"]["value"] < 0.06
    assert abs(good["mmd2"]["value"]) < 2e-3
    assert good["kl_gaussian_fit"]["target_is_gaussian"] is False  # a mixture: moment comparison only

    shifted = evaluate(tmp_path / "shift.npz", "bimodal_1d", n_reference=6000, seed=3)
    assert abs(shifted["w1"]["value"] - 1.0) < 0.06
    # in 1-D the sliced W2 is W2, and W2 >= W1
    assert shifted["sliced_w2"]["value"] >= shifted["w1"]["value"] - 1e-9
    assert shifted["mmd2"]["value"] > 50 * abs(good["mmd2"]["value"])
    assert shifted["kl_gaussian_fit"]["value"] > 10 * good["kl_gaussian_fit"]["value"]


def test_gaussian_target_gives_exact_kl_and_2d_metrics():
    mean, cov = np.array([0.5, -1.0]), np.array([[1.0, 0.3], [0.3, 0.5]])
    target = GaussianMixture.gaussian(mean, cov)
    g = np.random.default_rng(4)
    wrong_mean = mean + np.array([0.4, 0.0])
    x = g.multivariate_normal(wrong_mean, 1.2 * cov, 20000)
    res = evaluate(x, target, n_max=400, mmd_n_max=800, n_projections=64, seed=0)
    kl = res["kl_gaussian_fit"]
    exact = M.kl_gaussian(wrong_mean, 1.2 * cov, mean, cov)
    assert kl["target_is_gaussian"] is True and kl["n"] == 20000
    assert abs(kl["value"] - exact) < 0.03 * exact + 3 * kl["floor"]
    assert res["w1"]["method"] == "emd" and res["w1"]["n_x"] == 400 and res["mmd2"]["n_x"] == 800
    assert res["sliced_w2"]["n_projections"] == 64
    # W1 >= |mean gap| (Jensen), up to subsampling noise
    assert res["w1"]["value"] > 0.3


def test_lowdim_file_reference_keys_and_formats(tmp_path):
    x = _target_samples("ring8_2d", 500, 1)
    y = _target_samples("ring8_2d", 700, 2)
    np.savez(tmp_path / "many.npz", a=x, b=y)
    np.save(tmp_path / "ref.npy", y)
    from safetensors.numpy import save_file

    save_file({"samples": x.astype(np.float32)}, str(tmp_path / "s.safetensors"))
    with pytest.raises(ValueError, match=r"several arrays \['a', 'b'\]"):
        load_array(tmp_path / "many.npz")
    with pytest.raises(ValueError, match=r"no array 'c'; available keys: \['a', 'b'\]"):
        load_array(tmp_path / "many.npz", key="c")
    r1 = evaluate(tmp_path / "many.npz", tmp_path / "many.npz", key="a", reference_key="b")
    r2 = evaluate(tmp_path / "s.safetensors", tmp_path / "ref.npy")
    assert r1["n_samples"] == r2["n_samples"] == 500 and r1["n_reference"] == r2["n_reference"] == 700
    assert r1["w1"]["value"] == pytest.approx(r2["w1"]["value"], rel=1e-5)  # float32 storage only
    assert r1["w1"]["value"] < 0.25 and "kl_gaussian_fit" not in r1


def test_images_end_to_end(tmp_path):
    Xtr, _, _, _ = mnist_split()
    real = np.round(Xtr[:300] * 255).astype(np.uint8)  # uint8 [0, 255], (N, 28, 28)
    noisy = np.random.default_rng(0).random((300, 28, 28)).astype(np.float32) * 2 - 1  # [-1, 1]
    np.savez(tmp_path / "real.npz", samples=real.reshape(300, 28, 28))
    np.savez(tmp_path / "noise.npz", samples=noisy)
    out = tmp_path / "fid.json"
    assert main(["--samples", str(tmp_path / "real.npz"), "--reference", "mnist-test", "--output", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["kind"] == "image" and res["n_samples"] == 300 and res["n_reference"] == 1000
    assert res["fid"]["metric"] == "FID-MNIST" and res["fid"]["feature_dim"] == 64
    noise = evaluate(tmp_path / "noise.npz", tmp_path / "real.npz")
    assert noise["fid"]["n_samples"] == 300
    assert res["fid"]["value"] < 0.05 * noise["fid"]["value"]
    # KID and IS with the same offline feature net
    assert res["kid"]["metric"] == "KID-MNIST" and abs(res["kid"]["value"]) < 0.01 * noise["kid"]["value"]
    assert res["inception_score"]["value"] > 6 > noise["inception_score"]["value"]


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(50, 2))
    np.savez(tmp_path / "s.npz", samples=x)
    np.savez(tmp_path / "r3.npz", samples=np.zeros((50, 3)))
    out = tmp_path / "never.json"
    # missing file
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        evaluate(tmp_path / "missing.npz", "ring8_2d")
    assert main(["--samples", str(tmp_path / "missing.npz"), "--reference", "ring8_2d", "--output", str(out)]) == 2
    assert "missing.npz" in capsys.readouterr().err and not out.exists()
    # unknown reference name / missing reference file
    with pytest.raises(FileNotFoundError, match=r"'ring9'.*swissroll_2d"):
        evaluate(tmp_path / "s.npz", "ring9")
    # shape mismatch against a file and against a target
    with pytest.raises(ValueError, match=r"shape mismatch: samples \(50, 2\) vs reference \(50, 3\)"):
        evaluate(tmp_path / "s.npz", tmp_path / "r3.npz")
    assert main(["--samples", str(tmp_path / "s.npz"), "--reference", str(tmp_path / "r3.npz"), "--output", str(out)]) == 2
    assert "shape mismatch" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="dimension 2.*anisotropic_16d.*dimension 16"):
        evaluate(x, "anisotropic_16d")
    # images of the wrong size against MNIST, low-dim data against MNIST
    with pytest.raises(ValueError, match="1x28x28"):
        evaluate(np.zeros((8, 1, 32, 32), np.float32), "mnist", fid_backend="mnist")
    with pytest.raises(ValueError, match="holds images"):
        evaluate(x, "mnist")
    # corrupt file, bad options
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="could not read"):
        evaluate(tmp_path / "bad.npz", "ring8_2d")
    with pytest.raises(ValueError, match=r"kind='video'.*\['auto', 'lowdim', 'image'\]"):
        evaluate(x, "ring8_2d", kind="video")
    with pytest.raises(ValueError, match="n_reference=1"):
        evaluate(x, "ring8_2d", n_reference=1)
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        (tmp_path / "s.txt").write_text("1 2")
        evaluate(tmp_path / "s.txt", "ring8_2d")
    assert not math.isnan(evaluate(x, "ring8_2d", n_max=50)["w1"]["value"])


@pytest.mark.slow
def test_module_entry_point_in_a_fresh_process(tmp_path):
    """``python -m lit_diffusion.evaluate`` as a user runs it (slow: a fresh interpreter imports torchmetrics)."""
    x = _target_samples("ring8_2d", 300, 0)
    np.savez(tmp_path / "s.npz", samples=x)
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "lit_diffusion.evaluation.evaluate", "--samples", str(tmp_path / "s.npz"),
         "--reference", "ring8_2d", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res == json.loads(proc.stdout)
    assert res["n_samples"] == 300 and res["w1"]["value"] < 0.5
    bad = subprocess.run(
        [sys.executable, "-m", "lit_diffusion.evaluation.evaluate", "--samples", str(tmp_path / "nope.npz"), "--reference", "ring8_2d"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "nope.npz" in bad.stderr and bad.stdout == ""


def test_swissroll_reference_scores_swiss_roll_data_far_better_than_noise():
    """``reference='swissroll'`` is the data train.py's default learns: fresh swiss-roll points score
    near the finite-sample floor, Gaussian noise of the same scale far above it."""
    import numpy as np

    from lit_diffusion.core.targets import swiss_roll
    from lit_diffusion.evaluation.evaluate import evaluate

    good = swiss_roll(1000, seed=7).numpy()
    noise = np.random.default_rng(0).normal(size=(1000, 2)) * good.std(0)
    r_good = evaluate(good, "swissroll", n_reference=1000)
    r_bad = evaluate(noise, "swissroll", n_reference=1000)
    assert r_good["reference"].startswith("data:swissroll")
    assert r_good["n_reference"] == 1000
    assert r_good["w1"]["value"] < 0.15 < r_bad["w1"]["value"]
    assert r_bad["w1"]["value"] > 3 * r_good["w1"]["value"]
    # the reference is an independent draw, never the samples' own: swiss-roll points drawn with the
    # evaluation's seed itself score like any other independent draw, not zero
    same = swiss_roll(1000, seed=0).numpy()
    r_same = evaluate(same, "swissroll", n_reference=1000, seed=0)
    assert r_same["w1"]["value"] > 0.3 * r_good["w1"]["value"] > 0


def test_bpd_mode_prints_one_json_line(capsys):
    """python -m lit_diffusion.evaluate -c checkpoints/mnist --metric bpd: one JSON line with the bits
    per dimension of held-out digits and its standard error (2 digits, loose tolerance: seconds)."""
    import json as _json
    from pathlib import Path as _Path

    from lit_diffusion.cli.evaluate import main as eval_main

    root = _Path(__file__).resolve().parents[2]
    assert eval_main(["-c", str(root / "checkpoints" / "mnist"), "--metric", "bpd", "--n", "2", "--rtol", "1e-2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    res = _json.loads(lines[-1])
    assert len(lines) == 1 and 0 < res["bpd"] < 8 and res["bpd_se"] > 0 and res["n"] == 2
    assert eval_main(["--metric", "bpd"]) == 2
