"""Networks: shapes, time conditioning, prediction types, presets, bad arguments."""

import pytest
import torch

from lit_diffusion.training.networks import UNET_PRESETS, TimeMLP, UNet


def test_timemlp_shapes_scalar_and_per_sample_t(gen):
    net = TimeMLP(dim=3, hidden=32, n_blocks=2, zero_init=False)
    x = torch.randn(5, 3, generator=gen)
    a = net(x, 0.3)
    b = net(x, torch.full((5,), 0.3))
    assert a.shape == x.shape and torch.allclose(a, b)
    # the time input matters: a different t gives a different output
    assert (net(x, 0.9) - a).abs().max() > 1e-4
    # per-sample outputs do not depend on the rest of the batch
    assert torch.allclose(net(x[:2], torch.full((2,), 0.3)), a[:2], atol=1e-6)


def test_timemlp_zero_init_and_prediction_type():
    net = TimeMLP(dim=2, prediction_type="eps")
    assert net.prediction_type == "epsilon"
    assert net(torch.randn(4, 2), 0.5).abs().max() == 0  # zero-initialised output layer
    with pytest.raises(ValueError, match="valid choices"):
        TimeMLP(prediction_type="banana")
    with pytest.raises(ValueError, match="dim"):
        TimeMLP(dim=0)
    with pytest.raises(ValueError, match="3 features"):
        TimeMLP(dim=2)(torch.randn(4, 3), 0.5)


def test_timemlp_bf16_autocast_output_shape():
    net = TimeMLP(dim=2, hidden=16, n_blocks=1, zero_init=False)
    x = torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x, torch.rand(4))
    assert y.shape == x.shape and torch.isfinite(y.float()).all()


@pytest.mark.parametrize("preset,channels,size", [("tiny", 1, 8), ("8x8", 1, 8), ("28x28", 1, 28)])
def test_unet_presets_shape(preset, channels, size, gen):
    net = UNet(preset, in_channels=channels, sample_size=size)
    x = torch.randn(2, channels, size, size, generator=gen)
    with torch.no_grad():
        y = net(x, torch.tensor([0.1, 0.9]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert net.prediction_type == "epsilon"


def test_unet_time_mapping_matches_diffusers_timestep():
    net = UNet("tiny", in_channels=1, sample_size=8, T=2.0).eval()
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([0.5, 1.5])
    with torch.no_grad():
        ours = net(x, t)
        ref = net.unet(x, t * 1000.0 / 2.0).sample  # t * time_scale / T
    assert torch.allclose(ours, ref, atol=1e-6)


def test_unet_bad_arguments():
    with pytest.raises(ValueError, match="valid choices"):
        UNet("64x64")
    with pytest.raises(ValueError, match="divisible"):
        UNet("28x28", sample_size=30)
    with pytest.raises(ValueError, match="entries"):
        UNet("tiny", block_out_channels=[16])
    assert set(UNET_PRESETS) >= {"8x8", "28x28", "32x32"}
