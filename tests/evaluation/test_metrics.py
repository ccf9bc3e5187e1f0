"""lit_diffusion.evaluation.metrics and the MNIST feature net: closed forms for Gaussians (W1, W2, sliced W2,
MMD², KL — docs/maths.md §6 uses exact Gaussian KLs as ground truth), cross-checks against POT, and
FID-MNIST behaviour on real / held-out / noisy digits."""

import importlib.util
import math
import os

import numpy as np
import ot
import pytest
import torch
from scipy.stats import multivariate_normal

from lit_diffusion.evaluation import metrics as M
from lit_diffusion.evaluation import image_metrics as IM
from lit_diffusion.evaluation.feature_net import DEFAULT_WEIGHTS, MNISTFeatureNet, load_feature_net, mnist_split, to_unit_images


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------
# W1
# ------------------------------------------------------------------------------------------------
def test_w1_1d_equal_sigma_is_mean_gap():
    # W1(N(m1, s²), N(m2, s²)) = |m1 - m2|
    x = rng(1).normal(0.0, 0.7, 40000)
    y = rng(2).normal(1.5, 0.7, 30000)
    res = M.wasserstein1(x, y)
    assert res["method"] == "exact-1d" and res["n_x"] == 40000 and res["n_y"] == 30000
    assert abs(res["value"] - 1.5) < 0.02


def test_w1_1d_unequal_sigma_closed_form():
    # quantile coupling: W1(N(0,s1²), N(0,s2²)) = |s1 - s2| E|Z| = |s1 - s2| sqrt(2/pi)
    x = rng(3).normal(0.0, 1.0, 40000)
    y = rng(4).normal(0.0, 2.0, 40000)
    assert abs(M.wasserstein1(x, y)["value"] - math.sqrt(2 / math.pi)) < 0.02


def test_w1_1d_matches_pot_exactly_for_unequal_sizes():
    x, y = rng(5).normal(size=777), rng(6).standard_t(3, size=501)
    for p in (1, 2):
        ref = ot.wasserstein_1d(x, y, p=p) ** (1 / p)
        assert M.wasserstein_1d(x, y, p=p) == pytest.approx(ref, rel=1e-10)


def test_w1_emd_translation_in_2d():
    # a translation by a is W1-optimal: W1 = |a|; empirical W1 >= |mean gap| always.
    a = np.array([1.2, -1.6])  # |a| = 2
    x = rng(7).normal(size=(3000, 2))
    y = rng(8).normal(size=(3000, 2)) + a
    res = M.wasserstein1(x, y, n_max=600, seed=0)
    assert res["method"] == "emd" and res["n_x"] == 600 and res["n_y"] == 600
    assert abs(res["value"] - 2.0) < 0.12
    # same seed -> same subsets -> same value; the lower bound holds on the used subsets
    assert M.wasserstein1(x, y, n_max=600, seed=0)["value"] == res["value"]
    xs = x[np.random.default_rng(0).choice(3000, 600, replace=False)]
    assert res["value"] >= 0.0
    # identical sets: exactly 0
    assert M.wasserstein1(xs, xs, n_max=None)["value"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# sliced W2 and the Gaussian W2 closed form
# ------------------------------------------------------------------------------------------------
def test_w2_gaussian_closed_forms():
    # 1-D: W2² = (m1-m2)² + (s1-s2)²
    assert M.w2_gaussian([0.0], [[1.0]], [1.0], [[4.0]]) == pytest.approx(math.sqrt(2.0), rel=1e-12)
    # commuting covariances: sum over eigen-directions
    C1, C2 = np.diag([1.0, 9.0]), np.diag([4.0, 1.0])
    expect = math.sqrt(1.0 + (1 - 2) ** 2 + (3 - 1) ** 2)
    assert M.w2_gaussian([0, 0], C1, [1, 0], C2) == pytest.approx(expect, rel=1e-12)
    # the 1-D closed form agrees with the exact empirical W2 of large samples
    x, y = rng(9).normal(0, 1, 50000), rng(10).normal(1, 2, 50000)
    assert M.wasserstein_1d(x, y, p=2) == pytest.approx(math.sqrt(2.0), abs=0.02)


@pytest.mark.parametrize("d", [2, 8])
def test_sliced_w2_vs_w2_for_shifted_gaussians(d):
    # N(0, I) vs N(mu, I): W2 = |mu| but SW2 = |mu| / sqrt(d)
    mu = np.zeros(d)
    mu[0] = 2.0
    x = rng(11).normal(size=(4000, d))
    y = rng(12).normal(size=(4000, d)) + mu
    res = M.sliced_wasserstein2(x, y, n_projections=400, seed=3)
    assert res["n_x"] == 4000 and res["n_projections"] == 400
    w2 = M.w2_gaussian(np.zeros(d), np.eye(d), mu, np.eye(d))
    assert w2 == pytest.approx(2.0, rel=1e-12)
    expect = w2 / math.sqrt(d)
    assert abs(res["value"] - expect) < 4 * res["std_err"] + 0.03


def test_sliced_w2_standard_error_is_the_spread_over_projection_seeds():
    """``std_err`` (Monte-Carlo error over the projections, propagated to SW2) equals the standard
    deviation of SW2 across independent projection draws on fixed samples."""
    x, y = rng(40).normal(size=(500, 6)), rng(41).normal(size=(500, 6)) * np.linspace(0.5, 2.0, 6)
    runs = [M.sliced_wasserstein2(x, y, n_projections=64, seed=s) for s in range(80)]
    spread = np.std([r["value"] for r in runs], ddof=1)
    reported = np.mean([r["std_err"] for r in runs])
    assert 0.75 < spread / reported < 1.3  # the 80-seed spread is known to about 8 %


def test_sliced_w2_scaled_gaussians_is_dimension_free():
    # N(0, I) vs N(0, 4I): every projection has W2 = |2 - 1| = 1 -> SW2 = 1 while W2 = sqrt(d)
    d = 6
    x = rng(13).normal(size=(5000, d))
    y = 2.0 * rng(14).normal(size=(5000, d))
    assert M.sliced_wasserstein2(x, y, n_projections=100)["value"] == pytest.approx(1.0, abs=0.04)
    assert M.w2_gaussian(np.zeros(d), np.eye(d), np.zeros(d), 4 * np.eye(d)) == pytest.approx(math.sqrt(d))


def test_sliced_w2_matches_pot_with_same_projections_and_is_seeded():
    x, y = rng(15).normal(size=(300, 3)), rng(16).uniform(size=(170, 3))
    res = M.sliced_wasserstein2(x, y, n_projections=64, seed=7)
    theta = M._projections(3, 64, 7)
    ref = ot.sliced_wasserstein_distance(x, y, projections=theta.T, p=2)
    assert res["value"] == pytest.approx(float(ref), rel=1e-9)
    assert M.sliced_wasserstein2(x, y, n_projections=64, seed=7)["value"] == res["value"]
    assert M.sliced_wasserstein2(x, y, n_projections=64, seed=8)["value"] != res["value"]


# ------------------------------------------------------------------------------------------------
# MMD²
# ------------------------------------------------------------------------------------------------
def _mmd2_gaussians(delta2, s2, h, d):
    """Closed form for N(m1, s²I) vs N(m2, s²I), kernel exp(-|x-y|²/(2h²)), |m1-m2|² = delta2."""
    c = (h * h / (h * h + 2 * s2)) ** (d / 2)
    return 2 * c * (1 - math.exp(-delta2 / (2 * (h * h + 2 * s2))))


def test_mmd2_unbiased_zero_for_identical_and_closed_form_for_shifted():
    d, n, h, reps = 2, 150, 1.0, 30
    shift = np.array([0.6, 0.0])
    same, shifted = [], []
    for r in range(reps):
        g = rng(100 + r)
        x, y, z = g.normal(size=(n, d)), g.normal(size=(n, d)), g.normal(size=(n, d)) + shift
        same.append(M.mmd2(x, y, bandwidth=h)["value"])
        shifted.append(M.mmd2(x, z, bandwidth=h)["value"])
    same, shifted = np.array(same), np.array(shifted)
    se_same = same.std(ddof=1) / math.sqrt(reps)
    se_shift = shifted.std(ddof=1) / math.sqrt(reps)
    assert abs(same.mean()) < 3.5 * se_same  # unbiased: mean 0 within MC error
    expect = _mmd2_gaussians(0.36, 1.0, h, d)
    assert abs(shifted.mean() - expect) < 3.5 * se_shift
    assert shifted.mean() > 10 * se_same and (shifted > 0).all()


def test_mmd2_median_heuristic_and_counts():
    x, y = rng(20).normal(size=(3000, 3)), rng(21).normal(size=(500, 3))
    res = M.mmd2(x, y, n_max=1000, seed=1)
    assert res["n_x"] == 1000 and res["n_y"] == 500 and res["bandwidth_rule"] == "median"
    # median distance between two N(0, I_3) points: sqrt(2) * sqrt(chi2_3 median) ≈ 2.19
    assert res["bandwidth"] == pytest.approx(math.sqrt(2 * 2.366), rel=0.05)
    with pytest.raises(ValueError, match="bandwidth=-1"):
        M.mmd2(x, y, bandwidth=-1.0)


# ------------------------------------------------------------------------------------------------
# KL
# ------------------------------------------------------------------------------------------------
def test_kl_gaussian_closed_form_vs_monte_carlo():
    g = rng(30)
    A, B = g.normal(size=(3, 3)), g.normal(size=(3, 3))
    C1, C2 = A @ A.T + 0.5 * np.eye(3), B @ B.T + 0.5 * np.eye(3)
    m1, m2 = g.normal(size=3), g.normal(size=3)
    kl = M.kl_gaussian(m1, C1, m2, C2)
    x = multivariate_normal(m1, C1).rvs(200000, random_state=31)
    lr = multivariate_normal(m1, C1).logpdf(x) - multivariate_normal(m2, C2).logpdf(x)
    assert abs(kl - lr.mean()) < 4 * lr.std() / math.sqrt(len(lr))
    assert M.kl_gaussian(m1, C1, m1, C1) == pytest.approx(0.0, abs=1e-12)
    # scalar / diagonal covariances; 1-D: log(s2/s1) + (s1² + dm²)/(2 s2²) - 1/2
    assert M.kl_gaussian([0.0], 1.0, [1.0], 4.0) == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-12)
    assert M.kl_gaussian(np.zeros(2), np.array([1.0, 2.0]), np.zeros(2), np.diag([1.0, 2.0])) == pytest.approx(0, abs=1e-12)


def test_kl_gaussian_fit_floor_is_exact_expectation():
    # exact samples: E[KL(fit || truth)] equals the Wishart/digamma formula
    n, d, reps = 40, 3, 400
    mean, cov = np.array([1.0, -1.0, 0.5]), np.diag([0.5, 1.0, 2.0])
    vals = [M.kl_gaussian_fit(rng(200 + r).multivariate_normal(mean, cov, n), mean, cov)["value"] for r in range(reps)]
    vals = np.array(vals)
    floor = M.expected_kl_gaussian_fit(n, d)
    assert abs(vals.mean() - floor) < 4 * vals.std(ddof=1) / math.sqrt(reps)
    assert floor == pytest.approx(d * (d + 3) / (4 * n), rel=0.3)  # large-n approximation


@pytest.mark.parametrize("n,d", [(3, 1), (5, 2)])
def test_kl_gaussian_fit_floor_at_the_fewest_samples(n, d):
    """At n = d + 2 every term of the floor matters: n - 1 for n in its d/n or log((n-1)/2) term moves it
    by 0.05-0.2, more than 10 standard errors of this 12,000-draw Monte-Carlo mean."""
    r, mean, cov = rng(5), np.zeros(d), 2.0 * np.eye(d)
    vals = np.array([M.kl_gaussian_fit(r.multivariate_normal(mean, cov, n), mean, cov)["value"] for _ in range(12000)])
    assert abs(vals.mean() - M.expected_kl_gaussian_fit(n, d)) < 4 * vals.std(ddof=1) / math.sqrt(len(vals))


def test_kl_gaussian_fit_of_wrong_samples_recovers_exact_kl():
    # samples from N(0.5·1, 1.5 I) scored against N(0, I) in d = 2
    d, n = 2, 40000
    x = rng(40).normal(0.5, math.sqrt(1.5), size=(n, d))
    res = M.kl_gaussian_fit(x, np.zeros(d), np.eye(d))
    exact = M.kl_gaussian(np.full(d, 0.5), 1.5 * np.eye(d), np.zeros(d), np.eye(d))
    assert res["n"] == n
    assert abs(res["value"] - exact) < 0.02 * exact + 3 * res["floor"]
    assert res["reverse"] == pytest.approx(M.kl_gaussian(np.zeros(d), np.eye(d), np.full(d, 0.5), 1.5 * np.eye(d)), rel=0.05)


def test_low_dimensional_bad_inputs():
    x = rng(50).normal(size=(10, 2))
    with pytest.raises(ValueError, match=r"same dimension.*\(10, 2\).*\(10, 3\)"):
        M.wasserstein1(x, rng(51).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        M.mmd2(np.where(np.arange(20).reshape(10, 2) == 3, np.nan, x), x)
    with pytest.raises(ValueError, match="n_max=1"):
        M.wasserstein1(x, x, n_max=1)
    with pytest.raises(ValueError, match="n_projections=0"):
        M.sliced_wasserstein2(x, x, n_projections=0)
    with pytest.raises(ValueError, match="not positive definite"):
        M.kl_gaussian(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="different dimensions"):
        M.kl_gaussian(np.zeros(2), 1.0, np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        M.mmd2(x[:1], x)


# ------------------------------------------------------------------------------------------------
# feature net and FID
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def split():
    return mnist_split()


@pytest.fixture(scope="module")
def net():
    return load_feature_net()


def test_feature_net_weights_small_safetensors_and_accurate(net, split):
    assert DEFAULT_WEIGHTS.is_file() and DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert isinstance(net, MNISTFeatureNet) and not net.training and net.num_features == 64
    _, _, Xte, yte = split
    assert len(Xte) == 1000
    with torch.no_grad():
        acc = (net.classify(torch.from_numpy(Xte)).argmax(-1).numpy() == yte).mean()
    assert acc >= 0.97
    assert acc == pytest.approx(float(net.metadata["test_accuracy"]), abs=1e-3)
    # uint8 input and flat (B, 784) input give the same features as float [0, 1] images
    u8 = np.round(Xte[:16] * 255).astype(np.uint8)
    f = net.features(Xte[:16])
    assert torch.allclose(net.features(u8), f, atol=1e-4)
    assert torch.allclose(net.features(Xte[:16].reshape(16, 784)), f, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\).*\(4, 1, 32, 32\)"):
        net(torch.zeros(4, 1, 32, 32))


def test_missing_feature_net_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_feature_net.py"):
        load_feature_net(tmp_path / "nope.safetensors")


def test_frechet_identical_is_zero_and_matches_torchmetrics(net, split):
    Xtr, _, Xte, _ = split
    Xte = Xte[:700]
    f_tr, f_te = net.features(Xtr[:900]), net.features(Xte)
    assert M.frechet_distance(f_te, f_te)["value"] == pytest.approx(0.0, abs=1e-8)
    own = M.frechet_distance(f_tr, f_te)
    res = IM.fid(Xtr[:900], Xte, backend="mnist")
    assert res["metric"] == "FID-MNIST" and res["n_samples"] == 900 and res["n_reference"] == 700
    assert res["value"] == pytest.approx(own["value"], rel=1e-4)
    assert abs(IM.fid(Xte, Xte, backend="mnist")["value"]) < 1e-2


def test_fid_grows_with_noise_and_separates_real_from_noise(split):
    Xtr, _, Xte, _ = split
    x, Xte = Xtr[:400], Xte[:400]
    g = rng(60)
    vals = [IM.fid(np.clip(x + s * g.standard_normal(x.shape), 0, 1), Xte)["value"] for s in (0.0, 0.1, 0.2, 0.4)]
    assert all(b > a for a, b in zip(vals, vals[1:])), vals
    noise = IM.fid(g.random(x.shape), Xte)["value"]
    assert vals[0] < 0.02 * noise, (vals[0], noise)
    # value range: the same digits stored in [-1, 1] or uint8 give the same score
    assert IM.fid(2 * x - 1, Xte)["value"] == pytest.approx(vals[0], rel=1e-4)
    assert IM.fid(np.round(x * 255).astype(np.uint8), Xte)["value"] == pytest.approx(vals[0], rel=1e-2)


def test_fid_bad_inputs(split):
    with pytest.raises(ValueError, match="1x28x28"):
        IM.fid(np.zeros((4, 1, 32, 32), np.float32), np.zeros((4, 1, 32, 32), np.float32), backend="mnist")
    with pytest.raises(ValueError, match="different image shapes"):
        IM.fid(np.zeros((4, 1, 28, 28), np.float32), np.zeros((4, 3, 28, 28), np.float32))
    with pytest.raises(ValueError, match="backend='jpeg'"):
        IM.fid(split[2][:4], "mnist", backend="jpeg")
    with pytest.raises(ValueError, match="'mnist-train'"):
        IM.fid(split[2][:4], "mnist-train")
    with pytest.raises(ValueError, match="value_range='0,2'"):
        to_unit_images(np.zeros(3), "0,2")


# ------------------------------------------------------------------------------------------------
# Inception detection (never touches the network)
# ------------------------------------------------------------------------------------------------
def test_inception_missing_env_path_falls_back_to_mnist(monkeypatch, tmp_path, split):
    missing = tmp_path / "no-inception.pth"
    monkeypatch.setenv(M.INCEPTION_ENV, str(missing))
    st = IM.inception_status()
    assert not st["available"] and str(missing) in st["reason"]
    assert IM.select_fid_backend("auto")[0] == "mnist"
    with pytest.raises(RuntimeError, match="no-inception.pth"):
        IM.select_fid_backend("inception")
    res = IM.fid(split[2][:50], split[2][50:100])
    assert res["backend"] == "mnist" and str(missing) in res["inception_unavailable"]


def test_inception_chosen_only_when_weights_and_package_exist(monkeypatch, tmp_path):
    has_fidelity = importlib.util.find_spec("torch_fidelity") is not None
    # 1) env var naming an existing file
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"\0")
    monkeypatch.setenv(M.INCEPTION_ENV, str(weights))
    st = IM.inception_status()
    assert st["path"] == str(weights) and st["available"] == has_fidelity
    assert IM.select_fid_backend("auto")[0] == ("inception" if has_fidelity else "mnist")
    if not has_fidelity:
        assert "torch-fidelity" in st["reason"]
    # 2) no env var: torch-fidelity's hub cache location under $TORCH_HOME
    monkeypatch.delenv(M.INCEPTION_ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    st = IM.inception_status()
    assert not st["available"] and M.INCEPTION_FILENAME in st["path"] and str(tmp_path) in st["path"]
    cached = tmp_path / "th" / "hub" / "checkpoints" / M.INCEPTION_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"\0")
    st = IM.inception_status()
    assert st["path"] == str(cached) and st["available"] == has_fidelity
    assert os.environ.get(M.INCEPTION_ENV) is None


@pytest.mark.slow
def test_training_script_writes_loadable_safetensors(tmp_path):
    """scripts/train_feature_net.py end to end (2 epochs): safetensors with metadata, loadable, accurate."""
    import importlib.util as iu
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "train_feature_net.py"
    spec = iu.spec_from_file_location("train_feature_net", path)
    mod = iu.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "f.safetensors"
    meta = mod.main(["--epochs", "2", "--out", str(out)])
    net2 = load_feature_net(out)
    assert net2.metadata["test_accuracy"] == meta["test_accuracy"] and float(meta["test_accuracy"]) > 0.85
    _, _, Xte, yte = mnist_split()
    with torch.no_grad():
        acc = (net2.classify(torch.from_numpy(Xte)).argmax(-1).numpy() == yte).mean()
    assert acc == pytest.approx(float(meta["test_accuracy"]), abs=1e-3)


def test_kid_and_inception_score_mnist():
    """KID-MNIST is near 0 for two halves of the data and large for noise; IS-MNIST is 1 for a single
    repeated digit and close to 10 classes' worth for real digits."""
    import numpy as np

    from lit_diffusion.evaluation.feature_net import mnist_split

    X, _, Xt, _ = mnist_split()
    same = IM.kid_mnist(Xt[:300], X[:600], subsets=20)
    noise = IM.kid_mnist(np.random.default_rng(0).random((300, 784)) * 255, X[:600], subsets=20)
    assert abs(same["value"]) < 0.01 * noise["value"] and same["metric"] == "KID-MNIST" and same["subset_size"] == 300
    one = IM.inception_score_mnist(np.repeat(Xt[:1], 200, 0), splits=2)
    real = IM.inception_score_mnist(Xt[:600], splits=2)
    assert abs(one["value"] - 1.0) < 1e-3 and 6.0 < real["value"] <= 10.0
    with pytest.raises(ValueError, match="1x28x28"):
        IM.kid_mnist(np.zeros((10, 1, 8, 8)), X[:100])
