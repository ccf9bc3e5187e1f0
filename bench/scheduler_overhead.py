"""Overhead of one SDEScheduler.step relative to one UNet2DModel forward and to diffusers'
DPMSolverMultistepScheduler.step (the reference: target <= 1.5x), and of set_timesteps(50) (target <= 10 ms).

For each sampler configuration and batch size, the scheduler is driven like a pipeline (one
``step`` per entry of ``scheduler.timesteps``) with a fixed stand-in network output, so that only
the scheduler's own work is timed; the time per ``step`` call is the run's total divided by the
number of calls (DDRaM and PC make several calls per sampler step).  ``set_timesteps`` is timed
separately (it lays out every evaluation once per run).  The UNet forward is timed on the same
batch, side by side, with the same number of threads.

    python bench/scheduler_overhead.py                # CPU, batch 1 and 16, set_timesteps(50)
    python bench/scheduler_overhead.py --threads 2 --image 32 --steps 20

Prints a markdown table (copy it into docs/scheduler.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from lit_diffusion.integrations.scheduler import SDEScheduler

CONFIGS = [
    ("DPMSolverMultistepScheduler 2M (diffusers)", "dpm"),
    ("SDE-DPMSolverMultistepScheduler 2M (diffusers)", "sde-dpm"),
    ("DDPMScheduler (diffusers)", "ddpm"),
    ("euler", dict(sampler="euler")),
    ("euler ode", dict(sampler="euler", ode=True)),
    ("exponential_euler (denoiser)", dict(sampler="exponential_euler")),
    ("exponential_euler (relative_score, table)", dict(sampler="exponential_euler", parametrization="relative_score")),
    ("ddram (denoiser)", dict(sampler="ddram")),
    ("ddram ode (denoiser)", dict(sampler="ddram", ode=True)),
    ("ddram (relative_score, table)", dict(sampler="ddram", parametrization="relative_score")),
    ("pc (euler + 1 corrector)", dict(sampler="pc", n_corrector=1)),
    ("localization", dict(sampler="localization")),
    ("multistep order 2 (SDE)", dict(sampler="multistep", solver_order=2)),
    ("multistep order 2 ode", dict(sampler="multistep", ode=True, solver_order=2)),
    ("multistep order 3 ode", dict(sampler="multistep", ode=True, solver_order=3)),
    ("multistep order 3 ode + corrector", dict(sampler="multistep", ode=True, solver_order=3, corrector=True)),
]


def make_unet(image: int) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=image,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_unet(unet, B, image, reps, device):
    x = torch.randn(B, 3, image, image, device=device)
    t = torch.full((B,), 500.0, device=device)
    with torch.no_grad():
        unet(x, t)
        times = []
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            unet(x, t)
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_scheduler(sched, B, image, steps, reps, device):
    x0 = torch.randn(B, 3, image, image, generator=torch.Generator().manual_seed(0)).to(device)
    out = 0.1 * torch.randn(B, 3, image, image, generator=torch.Generator().manual_seed(1)).to(device)
    per_call, setup = [], []
    for r in range(reps + 1):
        t0 = time.perf_counter()
        sched.set_timesteps(steps, device=device)
        t1 = time.perf_counter()
        x = x0
        g = torch.Generator().manual_seed(r)
        total = 0.0
        for t in sched.timesteps:
            _sync(device)
            s0 = time.perf_counter()
            x = sched.step(out, t, x, generator=g).prev_sample
            _sync(device)
            total += time.perf_counter() - s0
        if r > 0:  # first run: warm-up (integral tables, caches)
            per_call.append(total / len(sched.timesteps))
            setup.append(t1 - t0)
    return statistics.median(per_call), statistics.median(setup), len(sched.timesteps)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--image", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the step noise comes from a CPU generator)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    unet = make_unet(args.image).to(args.device)
    n_params = sum(q.numel() for q in unet.parameters())
    print(
        f"UNet2DModel {args.image}x{args.image}x3, block_out_channels (32, 64, 64), {n_params / 1e6:.2f} M parameters; "
        f"{args.steps} sampler steps; torch threads {args.threads}; device {args.device}"
    )
    rows = []
    for B in args.batches:
        t_unet = time_unet(unet, B, args.image, max(3, args.reps), args.device)
        ref_call = None
        for name, cfg in CONFIGS:
            if cfg == "dpm":
                sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)
            elif cfg == "sde-dpm":
                sched = DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2)
            elif cfg == "ddpm":
                sched = DDPMScheduler()
            else:
                sched = SDEScheduler(**cfg)
            call, setup, n_calls = time_scheduler(sched, B, args.image, args.steps, args.reps, args.device)
            if cfg == "dpm":
                ref_call = call
            rows.append((B, name, n_calls, call * 1e3, 100 * call / t_unet, call / ref_call, setup * 1e3, t_unet * 1e3))
    print()
    print("| batch | scheduler | step calls | ms / step call | % of one UNet forward | × DPM-Solver++ 2M step | set_timesteps ms | UNet forward ms |")
    print("|---|---|---|---|---|---|---|---|")
    for B, name, n, ms, pct, rel, setup, tu in rows:
        print(f"| {B} | {name} | {n} | {ms:.3f} | {pct:.1f} | {rel:.1f} | {setup:.1f} | {tu:.1f} |")


if __name__ == "__main__":
    main()
