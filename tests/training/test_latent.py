"""Latent diffusion: a tiny diffusers AutoencoderKL trained here on the 8x8 digits and saved to a
local folder; the whole path (encode on the fly, train, checkpoint, sample, decode, pretrained folder,
sample.py, train.py --model.autoencoder) runs end to end."""

import numpy as np
import pytest
import torch

from lit_diffusion.training.autoencoder import LatentCodec
from lit_diffusion.training.image_data import DigitsDataModule
from lit_diffusion.training.module import ScoreModule
from lit_diffusion.training.networks import UNet


@pytest.fixture(scope="module")
def vae_folder(tmp_path_factory):
    """A 4-channel, factor-2 AutoencoderKL trained for 150 steps to reconstruct the digits, with its
    scaling_factor set to 1/std of the latents."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, layers_per_block=1, sample_size=8,
    )
    x = DigitsDataModule(labels=False).train_data()
    opt = torch.optim.Adam(vae.parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        b = x[torch.randint(0, len(x), (128,), generator=g)]
        d = vae.encode(b).latent_dist
        loss = ((vae.decode(d.sample()).sample - b) ** 2).mean() + 1e-4 * d.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        std = vae.encode(x[:512]).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    folder = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(str(folder), safe_serialization=True)
    return folder


def test_latent_round_trip_and_scaling(vae_folder):
    from diffusers import AutoencoderKL

    codec = LatentCodec(vae_folder, encode_mode="mode")
    vae = AutoencoderKL.from_pretrained(str(vae_folder))
    x = DigitsDataModule(labels=False).eval_data(256)
    z = codec.encode(x)
    assert z.shape == (len(x), 4, 4, 4) and codec.latent_shape((1, 8, 8)) == (4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(z, vae.encode(x).latent_dist.mode() * codec.scaling, atol=1e-5)
        assert torch.allclose(codec.decode(z), vae.decode(z / codec.scaling).sample, atol=1e-5)
    # scaled latents have unit scale, and the round trip reconstructs the digits
    assert 0.7 < z.std().item() < 1.3
    err = ((codec.decode(z) - x) ** 2).mean().item()
    assert err < 0.25 * x.var().item(), err


def test_latent_module_trains_checkpoints_and_samples_pixels(vae_folder, tmp_path):
    import lightning.pytorch as pl

    torch.manual_seed(0)
    net = UNet("tiny", in_channels=4, sample_size=4)
    module = ScoreModule(net, "VP", autoencoder=str(vae_folder), lr=1e-3, warmup_steps=1)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1, default_root_dir=str(tmp_path))
    trainer.fit(module, DigitsDataModule(batch_size=16))
    assert module.data_shape == (4, 4, 4)  # the network lives in the latent space
    assert not any("vae" in k or "codec" in k for k in module.state_dict())
    assert sum(p.numel() for p in module.net.parameters()) == sum(p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"])
    path = tmp_path / "latent.ckpt"
    trainer.save_checkpoint(str(path))
    loaded = ScoreModule.load_checkpoint(str(path))
    x = loaded.sample(3, steps=3, generator=torch.Generator().manual_seed(0))
    z = loaded.sample(3, steps=3, generator=torch.Generator().manual_seed(0), decode=False)
    assert x.shape == (3, 1, 8, 8) and z.shape == (3, 4, 4, 4)
    assert torch.allclose(x, loaded.codec.decode(z), atol=1e-5)

    # the pretrained folder carries its autoencoder; sample.py decodes
    from lit_diffusion.training.pretrained import save_pretrained
    from lit_diffusion.cli.sample import run

    folder = tmp_path / "pretrained"
    save_pretrained(loaded, folder)
    assert (folder / "autoencoder" / "config.json").is_file()
    again = ScoreModule.from_pretrained(folder)
    assert torch.allclose(again.sample(3, steps=3, generator=torch.Generator().manual_seed(0)), x, atol=1e-5)
    for src in (path, folder):
        out = tmp_path / f"out-{src.name}"
        run(["-c", str(src), "--n", "3", "--steps", "3", "--no-progress", "--out", str(out)])
        s = np.load(out / "samples.npz")["samples"]
        assert s.shape == (3, 1, 8, 8) and np.isfinite(s).all()

    # the diffusers export carries the autoencoder and decodes
    from lit_diffusion.integrations.export import export_pipeline
    from lit_diffusion.integrations.pipelines import LitDiffusionPipeline

    exported = export_pipeline(loaded, str(tmp_path / "pipe"))
    pipe = LitDiffusionPipeline.from_pretrained(exported)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(loaded.codec.scaling)
    z = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="latent").images
    im = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert z.shape == (2, 4, 4, 4) and im.shape == (2, 1, 8, 8)
    assert torch.allclose(im, (loaded.codec.decode(z) / 2 + 0.5).clamp(0, 1), atol=1e-5)


def test_train_cli_takes_an_autoencoder_folder(vae_folder, tmp_path):
    from lit_diffusion.cli.train import main

    main([
        "--model.net", "UNet", "--model.net.preset", "tiny", "--model.net.in_channels", "4",
        "--model.net.sample_size", "4", "--model.autoencoder", str(vae_folder), "--data", "DigitsDataModule",
        "--data.batch_size", "16", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--ckpt_dir", str(tmp_path / "ck"), "--log_dir", str(tmp_path / "logs"), "--progress_bar", "none",
        "--run_name", "latent", "--samples.every_n_steps", "0",
        "--samples.n_samples", "4", "--samples.steps", "2", "--logger", "csv",
    ])
    ckpt = tmp_path / "ck" / "latent" / "last.ckpt"
    assert ScoreModule.load_checkpoint(str(ckpt)).data_shape == (4, 4, 4)


def test_bad_autoencoder_folders_are_refused(tmp_path, vae_folder):
    with pytest.raises(FileNotFoundError, match="not a folder written by AutoencoderKL.save_pretrained"):
        ScoreModule(UNet("tiny", in_channels=4, sample_size=4), autoencoder=str(tmp_path / "nowhere"))
    # pickled weights only: refused (safetensors are required)
    import shutil

    from diffusers import AutoencoderKL

    pickled = tmp_path / "pickled"
    shutil.copytree(vae_folder, pickled)
    AutoencoderKL.from_pretrained(str(vae_folder)).save_pretrained(str(pickled), safe_serialization=False)
    (pickled / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        LatentCodec(pickled)
