"""Samples and weights from fixed seeds through every user path: sample() and sample.py on the shipped
MNIST model, a tiny train.py run, a stock pipeline with SDEScheduler swapped in, and an export.

    python tests/scripts/behaviour_reference.py OUT.safetensors

Written from the code before the package's layout was reorganised (tests/data/
behaviour_reference.safetensors); tests/test_house.py recomputes it with the current code and compares.
Only import paths that existed before and after the reorganisation are used. A deliberate change of the
samples rewrites the file in the same commit, saying why: the multistep sampler's short runs (only the
final denoising jump of order 1; the uniform grid with that jump up to 7 steps, docs/samplers.md
"Multistep") changed ``sample_api``, ``sample_cli`` and ``pipeline_swap``, and so did the corrector,
on by default for multistep runs of at most 9 steps (docs/samplers.md "The corrector and the fitted
grids"), and so did the Gaussian start from the moments shipped beside the MNIST model, which sample.py
uses by default on multistep runs of at most 9 steps (``sample_cli``; docs/samplers.md "The Gaussian
start"), and so did the SDE form's stochasticity 0.5 on multistep runs of at most 5 steps (``pipeline_swap``;
docs/samplers.md "Stochasticity"), and so did the end of short multistep runs, halfway down to ``t_min``
(``pipeline_swap``; docs/samplers.md "The end of short runs"), and so did sample.py's final denoising
evaluation, on by default for multistep and DDRaM runs (``sample_cli``, which then runs the 6-step grid
that ends halfway down; docs/samplers.md "The final denoising evaluation in sample.py");
``train_weights`` and ``export`` are still those of the first reference."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "checkpoints" / "mnist"


def _sample_api() -> torch.Tensor:
    from lit_diffusion.sampling.samplers import sample
    from lit_diffusion.training.module import ScoreModule

    m = ScoreModule.from_pretrained(MNIST)
    out = sample(m.field(ema=True), m.sde, shape=(3, 1, 28, 28), steps=6, generator=torch.Generator().manual_seed(0))
    return out.samples.float()


def _sample_cli(tmp: Path) -> torch.Tensor:
    from lit_diffusion.cli.sample import main

    out = tmp / "cli"
    assert main(["-c", str(MNIST), "--n", "3", "--steps", "6", "--seed", "1", "--out", str(out)]) == 0
    return torch.from_numpy(np.load(next(out.glob("*.npz")))["samples"]).float()


def _train(tmp: Path) -> torch.Tensor:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "train.py"), "--model.net.init_args.hidden", "16", "--model.net.init_args.n_blocks", "1",
           "--model.net.init_args.time_dim", "8", "--data.init_args.n_samples", "256", "--data.init_args.batch_size", "32",
           "--logger", "none", "--progress_bar", "none", "--samples.every_n_steps", "0", "--trainer.max_steps", "6",
           "--trainer.limit_val_batches", "0", "--trainer.enable_model_summary", "false", "--ckpt_dir", str(tmp / "ck"),
           "--run_name", "r"]
    r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp / "ck" / "r" / "last.ckpt", map_location="cpu", weights_only=True)
    return torch.cat([v.reshape(-1).float() for k, v in sorted(ck["state_dict"].items()) if v.dtype.is_floating_point])


def _pipeline_swap() -> torch.Tensor:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from lit_diffusion.integrations.scheduler import SDEScheduler

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler())
    pipe.scheduler = SDEScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(3), output_type="pt").images.float()


def _export(tmp: Path) -> torch.Tensor:
    from diffusers import DiffusionPipeline

    from lit_diffusion.integrations.export import export_pipeline

    export_pipeline(str(MNIST), str(tmp / "pipe"))
    pipe = DiffusionPipeline.from_pretrained(str(tmp / "pipe"))
    pipe.set_progress_bar_config(disable=True)
    return pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(4), output_type="pt").images.float()


def compute() -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        return {"sample_api": _sample_api(), "sample_cli": _sample_cli(tmp), "train_weights": _train(tmp),
                "pipeline_swap": _pipeline_swap(), "export": _export(tmp)}


if __name__ == "__main__":
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in compute().items()}, sys.argv[1])
