"""Class-conditional training and classifier-free guidance: labels in the data modules, label
embeddings with a "no label" token, label dropout, and guidance in every sampler checked against the
closed-form guided field of a Gaussian mixture whose component is the label."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lit_diffusion.training.data import MixtureDataModule, TensorDataModule

from lit_diffusion.training.image_data import DigitsDataModule, ImageFolderDataModule
from lit_diffusion.core.fields import Field
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import TimeMLP, UNet
from lit_diffusion.sampling.samplers import SAMPLERS, sample
from lit_diffusion.core.sdes import VE, VP
from lit_diffusion.core.targets import GaussianMixture, ring8_2d


class ExactConditionalNet(nn.Module):
    """The exact class-conditional network of a mixture (label = component, -1 or None: the mixture),
    predicting ``prediction_type``; records the batch size of every call."""

    def __init__(self, target, sde, prediction_type="epsilon"):
        super().__init__()
        self.target, self.sde, self.prediction_type = target, sde, prediction_type
        self.num_classes = target.num_components
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append(x.shape[0])
        y = torch.full((x.shape[0],), -1) if class_labels is None else class_labels
        return self.target.prediction(x.double(), t, self.sde, self.prediction_type, class_labels=y).to(x.dtype)


def _closed_form_guided_score(target, x, t, sde, k, w):
    """``(1 - w) grad log p_t(x) + w grad log p_t(x | k)``, the conditional part computed from the
    single Gaussian of component k (an independent code path)."""
    comp = GaussianMixture.gaussian(target.means[k], target.covariances[k])
    return (1 - w) * target.score(x, t, sde) + w * comp.score(x, t, sde)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def test_digits_yield_labels_and_can_drop_them():
    dm = DigitsDataModule(batch_size=32)
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 10 and x.shape == (32, 1, 8, 8) and y.dtype == torch.long
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert dm.data_shape == (1, 8, 8) and dm.eval_labels(5).shape == (5,)
    plain = DigitsDataModule(batch_size=32, labels=False)
    batch = next(iter(plain.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and plain.num_classes is None and plain.eval_labels(3) is None


def test_mixture_labels_are_the_components():
    dm = MixtureDataModule("ring8_2d", n_samples=4000, batch_size=4000, val_fraction=0.0)
    x, y = next(iter(dm.train_dataloader()))
    assert dm.num_classes == 8
    means = dm.target.means.float()
    nearest = torch.cdist(x, means).argmin(1)
    # components 2 apart with std 0.2: a sample is nearest its own mean almost surely
    assert (nearest == y).float().mean() > 0.999
    counts = torch.bincount(y, minlength=8).float() / len(y)
    assert (counts - 1 / 8).abs().max() < 0.03


def test_image_folder_labels_from_class_folders(tmp_path):
    from PIL import Image

    for c, value in (("cats", 30), ("dogs", 220)):
        (tmp_path / "cls" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(tmp_path / "cls" / c / f"{i}.png")
    dm = ImageFolderDataModule(str(tmp_path / "cls"), image_size=8, channels=1, batch_size=8, val_fraction=0.0)
    assert dm.classes() == ["cats", "dogs"] and dm.num_classes == 2
    x, y = next(iter(dm.train_dataloader()))
    # the label is the folder: dark images are class 0, bright ones class 1
    assert torch.equal(y, (x.mean((1, 2, 3)) > 0).long())
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "b.png")
    flat = ImageFolderDataModule(str(tmp_path / "flat"), image_size=8, channels=1, batch_size=2, val_fraction=0.0)
    assert flat.num_classes is None and isinstance(next(iter(flat.train_dataloader())), torch.Tensor)


# ------------------------------------------------------------------------------------------------
# networks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: TimeMLP(dim=2, hidden=16, n_blocks=1, zero_init=False, num_classes=3),
    lambda: UNet("tiny", sample_size=8, num_classes=3),
])
def test_networks_take_labels_with_a_null_token(make):
    torch.manual_seed(0)
    net = make().eval()
    if isinstance(net, UNet):  # diffusers zero-initialises nothing here, but make the embedding matter
        nn.init.normal_(net.unet.class_embedding.weight, std=1.0)
    x = torch.randn(3, 2) if isinstance(net, TimeMLP) else torch.randn(3, 1, 8, 8)
    t = torch.full((3,), 0.5)
    outs = [net(x, t, class_labels=torch.full((3,), k)) for k in range(3)]
    assert all((outs[i] - outs[j]).abs().max() > 1e-4 for i in range(3) for j in range(i))
    # None and -1 select the same learned "no label" token, different from every class
    null = net(x, t)
    assert torch.allclose(null, net(x, t, class_labels=torch.full((3,), -1)))
    assert all((null - o).abs().max() > 1e-4 for o in outs)
    assert net.config["num_classes"] == 3
    with pytest.raises(ValueError, match="out of range; valid labels are 0..2"):
        net(x, t, class_labels=torch.tensor([0, 1, 3]))
    with pytest.raises(TypeError, match="integers"):
        net(x, t, class_labels=torch.tensor([0.0, 1.0, 2.0]))


def test_unconditional_network_refuses_labels():
    net = TimeMLP(dim=2, hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match="unconditional"):
        net(torch.zeros(2, 2), 0.5, class_labels=torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------
# the module: labels through the loss, label dropout, clear errors
# ------------------------------------------------------------------------------------------------
def _cond_module(**kw):
    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=16, n_blocks=1, zero_init=False, num_classes=8)
    return ScoreModule(net=net, sde="VP", **kw)


def test_labels_reach_the_loss_and_errors_are_clear():
    module = _cond_module(p_uncond=0.0)
    x = torch.randn(64, 2)
    y = torch.randint(0, 8, (64,))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    with_labels = module._loss_terms(x, g(), class_labels=y)[0]
    without = module._loss_terms(x, g(), class_labels=None)[0]
    other = module._loss_terms(x, g(), class_labels=(y + 1) % 8)[0]
    assert (with_labels - without).abs().max() > 1e-4 and (with_labels - other).abs().max() > 1e-4
    assert torch.equal(module._labels((x, y), 64), y)
    with pytest.raises(ValueError, match="class-conditional .num_classes=8. but the batch has no labels"):
        module._labels(x, 64)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 8\)"):
        module._labels((x, torch.full((64,), 8)), 64)
    # an unconditional network trains on the images of a labelled batch
    plain = ScoreModule(net=TimeMLP(dim=2, hidden=8, n_blocks=1), sde="VP")
    assert plain._labels((x, y), 64) is None
    with pytest.raises(ValueError, match="p_uncond=1.5 is invalid"):
        _cond_module(p_uncond=1.5)


def test_label_dropout_rate():
    module = _cond_module(p_uncond=0.2)
    y = torch.randint(0, 8, (20000,))
    dropped = module._drop_labels(y, torch.Generator().manual_seed(0))
    frac = (dropped == -1).float().mean().item()
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 20000)
    assert torch.equal(dropped[dropped >= 0], y[dropped >= 0])
    assert torch.equal(_cond_module(p_uncond=0.0)._drop_labels(y, None), y)


def test_num_classes_mismatch_with_the_data_is_refused(tmp_path):
    import lightning.pytorch as pl

    module = _cond_module()
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    with pytest.raises(ValueError, match="num_classes=8 but the data have 10 classes"):
        trainer.fit(module, TensorDataModule(torch.randn(64, 2), targets=torch.arange(64) % 10, batch_size=16))


# ------------------------------------------------------------------------------------------------
# guidance: the closed form on a mixture, every prediction type, every sampler
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sde", [VP(), VE()], ids=["VP", "VE"])
@pytest.mark.parametrize("w", [0.0, 1.0, 3.5])
def test_guided_field_equals_the_closed_form(sde, w):
    target = ring8_2d()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    t = torch.linspace(0.05, 0.9, 16, dtype=torch.float64) * sde.T
    k = torch.arange(16) % 8
    want = torch.cat([_closed_form_guided_score(target, x[b : b + 1], t[b : b + 1], sde, int(k[b]), w) for b in range(16)])
    analytic = Field(target, sde, class_labels=k, guidance_scale=w)
    assert torch.allclose(analytic(x, t, "score"), want, rtol=1e-9, atol=1e-9)
    # a network predicting epsilon, v or the denoiser: guiding its own output gives the same field
    for pred in ("epsilon", "v", "denoiser", "score"):
        net = ExactConditionalNet(target, sde, pred)
        got = Field(net, sde, class_labels=k, guidance_scale=w)(x, t, "score")
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-7), pred
        # one batched call (2B) when guiding, B for the conditional (w = 1) or unconditional (w = 0) model alone
        assert net.calls == [32 if w not in (0.0, 1.0) else 16]


def test_guidance_needs_labels_and_a_finite_scale():
    target = ring8_2d()
    with pytest.raises(ValueError, match="needs class_labels"):
        Field(target, VP(), guidance_scale=2.0)
    with pytest.raises(ValueError, match="must be finite"):
        Field(target, VP(), class_labels=0, guidance_scale=float("nan"))


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_is_guided(sampler):
    """With the exact conditional network, w = 1 samples the requested component and w = 0 the mixture;
    every network call of a guided run (DDRaM's midpoints and the corrector included) is one batched
    call on the conditional and unconditional halves."""
    sde, target = VP(), ring8_2d()
    n, k = 1000, 5
    opts = {"n_corrector": 1} if sampler == "pc" else {}
    kw = dict(shape=(n, 2), sampler=sampler, steps=50, generator=torch.Generator().manual_seed(0), **opts)
    net = ExactConditionalNet(target, sde)
    cond = sample(net, sde, class_labels=k, **kw).samples
    mean_err = (cond.mean(0) - target.means[k].float()).norm()
    assert mean_err < 0.05, (sampler, mean_err)
    assert (cond.std(0) - 0.2).abs().max() < 0.05
    net.calls.clear()
    res = sample(net, sde, class_labels=k, guidance_scale=3.0, **kw)
    assert net.calls and set(net.calls) == {2 * n}
    if sampler != "moment_matching":  # its Jacobian products call the network outside the count
        assert res.nfe == len(net.calls)
    guided = res.samples
    # guidance sharpens the component (pushed away from the others): every sample is on the
    # requested component, with a smaller spread
    assert (torch.cdist(guided, target.means.float()).argmin(1) == k).all()
    assert guided.std(0).max() < cond.std(0).max()
    uncond = sample(net, sde, class_labels=k, guidance_scale=0.0, **kw).samples
    nearest = torch.cdist(uncond, target.means.float()).argmin(1)
    assert (torch.bincount(nearest, minlength=8).float() / n - 1 / 8).abs().max() < 0.04


def test_guided_sampling_matches_the_exact_guided_field_sample_by_sample():
    """The network path and the analytic path give the same guided samples (same noise)."""
    sde, target = VP(), ring8_2d()
    labels = torch.arange(64) % 8
    kw = dict(shape=(64, 2), sampler="ddram", steps=10, class_labels=labels, guidance_scale=2.5, dtype=torch.float64)
    a = sample(target, sde, generator=torch.Generator().manual_seed(3), **kw).samples
    b = sample(ExactConditionalNet(target, sde), sde, generator=torch.Generator().manual_seed(3), **kw).samples
    assert torch.allclose(a, b, atol=1e-8)


# ------------------------------------------------------------------------------------------------
# a real conditional training run
# ------------------------------------------------------------------------------------------------
def test_trained_conditional_mlp_generates_the_requested_component(tmp_path):
    """A class-conditional TimeMLP trained by Lightning on the ring mixture with its components as
    labels: conditional samples land on the requested component, guided ones more often, and the
    same network without a label covers all components (label dropout trained the null token)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=64, n_blocks=2, num_classes=8)
    module = ScoreModule(net=net, sde="VP", lr=3e-3, warmup_steps=20, ema_decay=0.99, p_uncond=0.2)
    dm = MixtureDataModule("ring8_2d", n_samples=8000, batch_size=256, val_fraction=0.0)
    trainer = pl.Trainer(max_steps=500, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    means = dm.target.means.float()
    labels = torch.arange(800) % 8

    def hit_rate(w):
        x = module.sample(800, sampler="ddram", steps=30, class_labels=labels, guidance_scale=w,
                          generator=torch.Generator().manual_seed(1))
        return (torch.cdist(x, means).argmin(1) == labels).float().mean().item(), x

    rate1, _ = hit_rate(1.0)
    rate3, _ = hit_rate(3.0)
    assert rate1 > 0.85 and rate3 >= rate1 - 0.01 and rate3 > 0.95, (rate1, rate3)
    x0 = module.sample(800, sampler="ddram", steps=30, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(torch.cdist(x0, means).argmin(1), minlength=8).float() / 800
    assert counts.min() > 0.06, counts


# ------------------------------------------------------------------------------------------------
# sample.py
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cond_ckpt(tmp_path_factory):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = ScoreModule(net=TimeMLP(dim=2, hidden=16, n_blocks=1, num_classes=8), sde="VP", warmup_steps=1)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, MixtureDataModule("ring8_2d", n_samples=256, batch_size=64, val_fraction=0.0))
    path = tmp_path_factory.mktemp("cond") / "cond.ckpt"
    trainer.save_checkpoint(str(path))
    return path


def test_sample_cli_labels_fill_rows_and_are_batch_independent(cond_ckpt, tmp_path):
    from lit_diffusion.cli.sample import run
    from lit_diffusion.cli.sample_inputs import sample_labels

    assert sample_labels([3, 7], 8, 4).tolist() == [3, 3, 7, 7, 3, 3, 7, 7]  # 2 columns: one label per row
    assert sample_labels([4], 5, 64).tolist() == [4] * 5
    base = ["-c", str(cond_ckpt), "--n", "12", "--steps", "4", "--no-progress", "--no-png",
            "--class-label", "0", "1", "2", "--guidance-scale", "2"]
    run(base + ["--out", str(tmp_path / "a"), "--batch-size", "12"])
    run(base + ["--out", str(tmp_path / "b"), "--batch-size", "5"])
    a, b = np.load(tmp_path / "a" / "samples.npz"), np.load(tmp_path / "b" / "samples.npz")
    assert np.allclose(a["samples"], b["samples"], atol=1e-6)
    meta = json.loads(str(a["args"]))
    assert meta["class_label"] == [0, 1, 2] and meta["guidance_scale"] == 2.0
    assert a["labels"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]  # 12 samples: 4 columns
    # guidance changes the samples; labels change them too
    run(base[:-2] + ["--guidance-scale", "1", "--out", str(tmp_path / "c")])
    assert not np.allclose(np.load(tmp_path / "c" / "samples.npz")["samples"], a["samples"])


def test_sample_cli_label_errors(cond_ckpt, ckpt, tmp_path):
    from lit_diffusion.cli.sample import main

    common = ["--n", "2", "--steps", "2", "--no-progress"]
    assert main(["-c", str(cond_ckpt), "--class-label", "8", "--out", str(tmp_path / "x")] + common) == 2
    assert main(["-c", str(ckpt), "--class-label", "1", "--out", str(tmp_path / "y")] + common) == 2
    assert main(["-c", str(cond_ckpt), "--guidance-scale", "3", "--out", str(tmp_path / "z")] + common) == 2
    assert not any((tmp_path / d).exists() for d in "xyz")


def test_guidance_arithmetic_stays_in_float32_with_a_bf16_network():
    torch.manual_seed(0)
    net = UNet("tiny", sample_size=8, num_classes=3).to(torch.bfloat16).eval()
    nn.init.normal_(net.unet.class_embedding.weight)
    x, t, y = torch.randn(8, 1, 8, 8), torch.full((8,), 0.3), torch.arange(8) % 3
    f = Field(net, VP(), network_dtype=torch.bfloat16, class_labels=y, guidance_scale=7.0)
    got = f.raw(x, t)
    with torch.no_grad():
        c = net(x.bfloat16(), t, class_labels=y).float()
        u = net(x.bfloat16(), t, class_labels=torch.full_like(y, -1)).float()
    assert got.dtype == torch.float32
    assert torch.allclose(got, u + 7.0 * (c - u), atol=1e-6)  # combined in float32, not rounded to bf16
