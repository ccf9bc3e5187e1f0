"""Samplers on a real learned network, side by side with diffusers' schedulers, at equal network
evaluations (NFE).

    python bench/real_model.py                                  # shipped MNIST model, full table
    python bench/real_model.py --n 500 --seeds 0 --nfe 10 20    # smaller run
    python bench/real_model.py --dry-run                        # tiny untrained UNet, seconds (tests)
    python bench/real_model.py --model checkpoints/mnist-cond --guidance 3   # class-conditional, guided

With ``--guidance W`` (a class-conditional model) sample ``i`` of every batch asks for digit ``i mod 10``
and each network evaluation is classifier-free guided, ``eps_u + W (eps_c - eps_u)``, the conditional
and unconditional passes in one batch (counted as one evaluation, as diffusers' pipelines count).

Every sampler -- ours through :class:`lit_diffusion.integrations.scheduler.SDEScheduler`, and diffusers'
``DDPMScheduler`` (ancestral), ``DDIMScheduler``, ``DPMSolverMultistepScheduler`` (dpmsolver++ 2M and
sde-dpmsolver++ 2M), ``EulerDiscreteScheduler``, ``EulerAncestralDiscreteScheduler``,
``HeunDiscreteScheduler`` and ``UniPCMultistepScheduler`` -- is driven by the *same* pipeline loop
(``set_timesteps``, ``scale_model_input``, network, ``step``), with the largest number of steps whose
evaluations fit the budget (counted by the loop itself).

The model is a ScoreModule trained on the continuous VP SDE (time ``t`` in ``[t_min, 1]``, UNet
timestep ``1000 t``).  diffusers' schedulers get the *equivalent* 1,000-entry DDPM table:
``alphas_cumprod[k] = alpha(t_k)^2`` with ``t_k = max(k, 0.5) / 1000``, and the network is evaluated at
``t_k`` -- the same process, written in their discrete time.  All use "trailing" timestep spacing (the
best diffusers setting at few steps; it starts at the last timestep).  Quality is FID-MNIST (the
package's offline feature network) of ``--n`` samples against the 1,000 held-out digits, per seed; the
table shows the mean and the spread (min-max) over seeds.

With ``--guidance`` our scheduler is told the guidance (``SDEScheduler(guidance_scale=)``, as a pipeline
would; rows "unguided layout" are not), and every row also reports the fraction of samples that the
feature network's classifier reads as the digit asked for. FID against the data is a poor judge there
(guidance narrows the samples, and an error that undoes it lowers that FID): ``--reference LABEL@NFE``
also scores every row by FID-MNIST to ``--reference-n`` samples of that sampler at that budget, the
guided process's own converged law (docs/samplers.md "Guidance 3 on a GPU").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lit_diffusion.integrations.scheduler import SDEScheduler  # noqa: E402

N_TRAIN = 1000

# (label, kind, options): kind "lit" -> SDEScheduler options; else a diffusers class name + config
SDE_SAMPLERS = [
    ("lit ddram (default)", "lit", {"sampler": "ddram"}),
    ("lit ddram log-SNR grid", "lit", {"sampler": "ddram", "schedule": "log_snr"}),
    ("lit ddram relative_score", "lit", {"sampler": "ddram", "parametrization": "relative_score"}),
    ("lit ddram 1-eval", "lit", {"sampler": "ddram", "evals_per_step": 1}),
    ("lit ddram 1-eval, last step denoising", "lit-end", {"sampler": "ddram", "evals_per_step": 1}),
    ("lit ddram, last step denoising", "lit-end", {"sampler": "ddram"}),
    ("lit ddram, grid to t_min", "lit-tmin", {"sampler": "ddram"}),
    # sample.py's DDRaM without the final evaluation (--no-final-denoise): every evaluation in a step, down to t_min
    ("lit ddram, no final denoising", "lit", {"sampler": "ddram", "final_denoise": False}),
    ("lit ddram 1-eval, grid to t_min", "lit-tmin", {"sampler": "ddram", "evals_per_step": 1}),
    ("lit ddram 1-eval EDM grid", "lit", {"sampler": "ddram", "evals_per_step": 1, "schedule": "edm"}),
    ("lit ddram log-SNR midpoint", "lit", {"sampler": "ddram", "midpoint": "log_snr"}),
    ("lit exponential_euler", "lit", {"sampler": "exponential_euler"}),
    ("lit euler (EM)", "lit", {"sampler": "euler"}),
    ("lit pc (default)", "lit", {"sampler": "pc"}),
    ("lit pc Euler-Maruyama predictor", "lit", {"sampler": "pc", "predictor": "euler"}),
    ("lit multistep 2", "lit", {"sampler": "multistep"}),
    ("lit multistep 2, corrector off", "lit", {"sampler": "multistep", "corrector": False}),
    ("lit multistep 2, eta 0.25", "lit", {"sampler": "multistep", "eta": 0.25}),
    ("lit multistep 2, eta 0.5", "lit", {"sampler": "multistep", "eta": 0.5}),
    ("lit multistep 2, eta 0.75", "lit", {"sampler": "multistep", "eta": 0.75}),
    ("lit multistep 2, eta 1", "lit", {"sampler": "multistep", "eta": 1.0}),
    ("lit multistep 2 + corrector", "lit", {"sampler": "multistep", "corrector": True}),
    ("lit multistep 3", "lit", {"sampler": "multistep", "solver_order": 3}),
    ("lit multistep 2, fitted grid", "lit-fitted", {"sampler": "multistep"}),
    ("lit multistep 2 + corrector, fitted grid", "lit-fitted", {"sampler": "multistep", "corrector": True}),
    ("lit multistep 2 uniform grid", "lit", {"sampler": "multistep", "schedule": "uniform"}),
    ("lit multistep 2, last steps at full order", "lit", {"sampler": "multistep", "lower_order_final": False}),
    ("lit multistep 2, last step denoising", "lit-end", {"sampler": "multistep"}),
    ("lit multistep 2 + corrector, last step denoising", "lit-end", {"sampler": "multistep", "corrector": True}),
    ("lit multistep 2, unguided layout", "lit", {"sampler": "multistep", "guidance_scale": None}),
    ("lit multistep 2 EDM grid", "lit", {"sampler": "multistep", "schedule": "edm"}),
    ("lit multistep 2, Gaussian start", "lit-gauss", {"sampler": "multistep"}),
    ("lit multistep 2, Gaussian start, fitted grid", "lit-gauss-fitted", {"sampler": "multistep"}),
    # sample.py's path without --final-denoise: every evaluation a step, the grid run down to t_min
    ("lit multistep 2, Gaussian start, to t_min", "lit-gauss", {"sampler": "multistep", "final_denoise": False}),
    # the scheduler of export_pipeline(model, folder, sampler="multistep"), read back with from_pretrained
    ("lit exported pipeline", "lit-export", {}),
    ("DDPM ancestral", "DDPMScheduler", {}),
    ("Euler ancestral", "EulerAncestralDiscreteScheduler", {}),
    ("SDE-DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
]
ODE_SAMPLERS = [
    ("lit ddram ODE (default)", "lit", {"sampler": "ddram", "ode": True}),
    ("lit ddram ODE log-SNR grid", "lit", {"sampler": "ddram", "ode": True, "schedule": "log_snr"}),
    ("lit ddram 1-eval ODE", "lit", {"sampler": "ddram", "evals_per_step": 1, "ode": True}),
    ("lit ddram 1-eval ODE, last step denoising", "lit-end", {"sampler": "ddram", "evals_per_step": 1, "ode": True}),
    ("lit ddram ODE, last step denoising", "lit-end", {"sampler": "ddram", "ode": True}),
    ("lit ddram ODE, grid to t_min", "lit-tmin", {"sampler": "ddram", "ode": True}),
    ("lit ddram 1-eval ODE EDM grid", "lit", {"sampler": "ddram", "evals_per_step": 1, "ode": True, "schedule": "edm"}),
    ("lit exponential_euler ODE (DDIM)", "lit", {"sampler": "exponential_euler", "ode": True}),
    ("lit multistep 3 ODE", "lit", {"sampler": "multistep", "ode": True, "solver_order": 3}),
    ("lit multistep 2 ODE", "lit", {"sampler": "multistep", "ode": True, "solver_order": 2}),
    ("lit multistep 2 ODE, corrector off", "lit", {"sampler": "multistep", "ode": True, "solver_order": 2, "corrector": False}),
    ("lit multistep 2 ODE, last steps at full order", "lit", {"sampler": "multistep", "ode": True, "solver_order": 2,
                                                            "lower_order_final": False}),
    ("lit multistep 2 ODE, last step denoising", "lit-end", {"sampler": "multistep", "ode": True}),
    ("lit multistep 2 ODE + corrector, last step denoising", "lit-end", {"sampler": "multistep", "ode": True, "corrector": True}),
    # with --guidance: the scheduler not told of it (the unguided layout: EDM grid from 8 steps, run to t_min)
    ("lit multistep 2 ODE, unguided layout", "lit", {"sampler": "multistep", "ode": True, "guidance_scale": None}),
    ("lit multistep 2 ODE + corrector", "lit", {"sampler": "multistep", "ode": True, "solver_order": 2, "corrector": True}),
    ("lit multistep 3 ODE + corrector", "lit", {"sampler": "multistep", "ode": True, "corrector": True, "solver_order": 3}),
    ("lit multistep 3 ODE uniform grid", "lit", {"sampler": "multistep", "ode": True, "schedule": "uniform", "solver_order": 3}),
    ("lit multistep 2 ODE uniform grid", "lit", {"sampler": "multistep", "ode": True, "schedule": "uniform", "solver_order": 2}),
    ("lit multistep 2 ODE, fitted grid", "lit-fitted", {"sampler": "multistep", "ode": True, "solver_order": 2}),
    ("lit multistep 2 ODE + corrector, fitted grid", "lit-fitted", {"sampler": "multistep", "ode": True, "solver_order": 2,
                                                                   "corrector": True}),
    ("lit multistep 3 ODE + corrector, fitted grid", "lit-fitted", {"sampler": "multistep", "ode": True, "corrector": True, "solver_order": 3}),
    ("lit multistep 3 ODE EDM grid", "lit", {"sampler": "multistep", "ode": True, "schedule": "edm", "solver_order": 3}),
    ("lit multistep 2 ODE, Gaussian start", "lit-gauss", {"sampler": "multistep", "ode": True}),
    ("lit multistep 2 ODE, Gaussian start, fitted grid", "lit-gauss-fitted", {"sampler": "multistep", "ode": True}),
    ("lit multistep 2 ODE, Gaussian start, to t_min", "lit-gauss", {"sampler": "multistep", "ode": True, "final_denoise": False}),
    ("lit exported pipeline ODE", "lit-export", {"ode": True}),
    ("DDIM", "DDIMScheduler", {}),
    ("Euler", "EulerDiscreteScheduler", {}),
    ("Heun", "HeunDiscreteScheduler", {}),
    ("DPM-Solver++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("DPM-Solver++ 3M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3}),
    ("UniPC", "UniPCMultistepScheduler", {}),
    ("DPM-Solver++ 2M, lit grid", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                                "on_lit_grid": True}),
    ("UniPC, Karras sigmas", "UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    ("UniPC, exponential sigmas", "UniPCMultistepScheduler", {"use_exponential_sigmas": True}),
    ("UniPC, beta sigmas", "UniPCMultistepScheduler", {"use_beta_sigmas": True}),
    ("DPM-Solver++ 2M, log-SNR spacing", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                                       "use_lu_lambdas": True}),
    ("DPM-Solver++ 2M, Karras sigmas", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                                     "use_karras_sigmas": True}),
]


def vp_table(sde, n_train: int = N_TRAIN):
    """The DDPM betas whose cumulative product is ``alpha(t_k)^2``, ``t_k = max(k, 0.5) T / n_train``."""
    k = torch.arange(n_train, dtype=torch.float64)
    t = torch.clamp(k, min=0.5) * (float(sde.T) / n_train)
    abar = torch.exp(2 * sde.log_alpha(t)).to(torch.float64)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1 - abar / prev).clamp(min=0.0, max=0.999).tolist(), t


FITTED_DIR = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist", "grids")
#: --guidance, told to SDEScheduler (guidance_scale) as a pipeline would
GUIDANCE = None
#: the model folder's moments for the Gaussian start (lit_diffusion.sampling.gaussian_start)
MOMENTS = os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist", "data_moments.safetensors")


#: the model (--model), which the "lit exported pipeline" rows export once into EXPORTED
MODEL = None
EXPORTED = None


def exported_scheduler(opts: dict):
    """The scheduler of ``export_pipeline(MODEL, folder, sampler="multistep")`` (written once into a temporary
    folder), loaded back with ``SDEScheduler.from_pretrained`` as a pipeline would, with ``opts`` over its config."""
    global EXPORTED
    if EXPORTED is None:
        import tempfile

        from lit_diffusion.integrations.export import export_pipeline

        EXPORTED = export_pipeline(MODEL, os.path.join(tempfile.mkdtemp(prefix="bench_export_"), "pipeline"), sampler="multistep")
    if GUIDANCE is not None:  # told the pipeline's guidance, as the other rows of ours
        opts = {"guidance_scale": GUIDANCE, **opts}
    return SDEScheduler.from_pretrained(EXPORTED, subfolder="scheduler", **opts)


def make_scheduler(kind: str, opts: dict, sde, time_scale: float, nfe: int = 0):
    if kind == "lit-export":
        return exported_scheduler(opts)
    if kind == "lit-gauss-fitted":  # the Gaussian start on the grid fitted from it for nfe - 1 steps
        return _make_scheduler("lit-fitted", {**opts, "gaussian_start": MOMENTS}, sde, time_scale, nfe, gaussian=True)
    return _make_scheduler(kind, opts, sde, time_scale, nfe)


def _make_scheduler(kind: str, opts: dict, sde, time_scale: float, nfe: int = 0, gaussian: bool = False):
    if kind == "lit-fitted":  # the grid fitted for nfe - 1 steps (+ the final denoising evaluation)
        # a grid of the row's form alone (multistep-<steps>[-gaussian]-<form>.json) comes before the shared one
        from lit_diffusion.sampling.grid_fit import grid_file_name

        form = "ode" if opts.get("ode") else "sde"
        paths = [os.path.join(FITTED_DIR, grid_file_name(nfe - 1, True, gaussian, f)) for f in (form, None)]
        path = next((p for p in paths if os.path.exists(p)), paths[-1])
        if not os.path.exists(path):
            raise ValueError(f"no fitted grid {path} (python -m lit_diffusion.cli.grid_fit)")
        grid = json.load(open(path))["timesteps"]
        return make_scheduler("lit", {**opts, "fitted_grid": [t * time_scale for t in grid]}, sde, time_scale)
    if kind == "lit-end-fraction":  # the short run's grid ending at opts' end_fraction (bench/study_short_run_end.py)
        from lit_diffusion.sampling.defaults import guided_layout, step_grid
        from lit_diffusion.sampling.gaussian_start import GaussianStart

        opts = dict(opts)
        frac = opts.pop("end_fraction")
        t_s = GaussianStart.load(opts["gaussian_start"]).start_time(sde) if opts.get("gaussian_start") else None
        guided = guided_layout(GUIDANCE, True)  # the guided layout ends with the final evaluation at every length
        grid = step_grid(sde, "multistep", nfe - 1, "uniform", True, T=t_s, guided=guided, end_fraction=frac)
        return make_scheduler("lit", {**opts, "fitted_grid": [t * time_scale for t in grid.tolist()]}, sde, time_scale)
    if kind == "lit-gauss":  # the Gaussian start from the moments saved beside the model (default noise ratio)
        if not os.path.exists(MOMENTS):
            raise ValueError(f"no moments file {MOMENTS} (python -m lit_diffusion.cli.gaussian_fit)")
        return make_scheduler("lit", {**opts, "gaussian_start": MOMENTS}, sde, time_scale)
    if kind in ("lit-end", "lit-tmin"):  # lit-end: the last step replaced by the final denoising evaluation
        # (the uniform grid of one more step, without t_min); lit-tmin: the uniform grid run down to t_min,
        # then the final evaluation there. The budget's steps: (nfe - 1) / evaluations per step
        from lit_diffusion.core.schedules import get_timesteps

        per = 1 if opts["sampler"] == "multistep" else opts.get("evals_per_step", 2)
        steps = (nfe - 1) // per
        grid = get_timesteps(sde, steps + 1, "uniform")[:-1] if kind == "lit-end" else get_timesteps(sde, steps, "uniform")
        return make_scheduler("lit", {**opts, "fitted_grid": [t * time_scale for t in grid.tolist()]}, sde, time_scale)
    if kind == "lit":
        from lit_diffusion.integrations.export import rescale_time

        name, kwargs = rescale_time(sde, time_scale)
        if GUIDANCE is not None:  # the scheduler is told the pipeline's guidance (its guided multistep layout)
            opts = {"guidance_scale": GUIDANCE, **opts}
        return SDEScheduler(num_train_timesteps=N_TRAIN, prediction_type="epsilon", sde=name, sde_kwargs=kwargs, **opts)
    import diffusers

    betas, _ = vp_table(sde)
    cls = getattr(diffusers, kind)
    cfg = dict(num_train_timesteps=N_TRAIN, trained_betas=betas, prediction_type="epsilon", timestep_spacing="trailing")
    if kind in ("DDPMScheduler", "DDIMScheduler"):
        cfg["clip_sample"] = False
    if kind == "DDIMScheduler":
        cfg["set_alpha_to_one"] = False
    opts = dict(opts)
    on_lit_grid = opts.pop("on_lit_grid", False)
    sched = cls(**cfg, **opts)
    if on_lit_grid:  # the stock solver on the grid SDEScheduler runs by default, as integer timesteps
        sched.set_timesteps = _on_lit_grid(sched.set_timesteps, sde)
    return sched


def _on_lit_grid(set_timesteps, sde):
    """``set_timesteps(k)`` of a diffusers scheduler that takes ``timesteps=``, on the ODE form's default
    grid of ``k`` steps with a final denoising evaluation (the timesteps ``round(1000 t)``)."""
    from lit_diffusion.sampling.grid_fit import start_grid

    def on_grid(k, device=None):
        grid = start_grid(sde, k, ode=True, final_denoise=True)
        ks = sorted({min(max(round(t * N_TRAIN), 1), N_TRAIN - 1) for t in grid.tolist()}, reverse=True)
        return set_timesteps(timesteps=ks, device=device)

    return on_grid


def steps_for_budget(sched, nfe: int) -> tuple[int, int]:
    """The largest ``num_inference_steps`` whose evaluation count (``len(timesteps)``) fits ``nfe``."""
    best = None
    for k in range(1, nfe + 1):
        sched.set_timesteps(k)
        n = len(sched.timesteps)
        if n <= nfe:
            best = (k, n)
        elif best is not None:
            break
    if best is None:
        raise ValueError(f"no step count fits {nfe} evaluations")
    return best


@torch.no_grad()
def run_loop(sched, model_fn, n: int, shape, seed: int, nfe: int, batch: int, device) -> tuple[np.ndarray, int]:
    import inspect

    steps, _ = steps_for_budget(sched, nfe)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    out, evals = [], 0
    for b0 in range(0, n, batch):
        m = min(batch, n - b0)
        g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + b0)
        if isinstance(sched, SDEScheduler):
            sched.set_timesteps(steps, generator=g)
        else:
            sched.set_timesteps(steps)
        x = torch.randn((m,) + tuple(shape), generator=g).to(device) * float(sched.init_noise_sigma)
        count = 0
        for t in sched.timesteps:
            xin = sched.scale_model_input(x, t)
            eps = model_fn(xin, t)
            count += 1
            kw = {"generator": g} if takes_generator else {}
            x = sched.step(eps, t, x, **kw).prev_sample
        evals = count
        out.append(x.float().cpu().numpy())
    return np.concatenate(out), evals


def load(model_path: str, dry_run: bool, conditional: bool = False):
    from lit_diffusion.training.module import ScoreModule

    if dry_run:  # a tiny untrained network, class-conditional for guided runs
        from lit_diffusion.training.networks import UNet

        net = UNet(preset="tiny", sample_size=28, in_channels=1, num_classes=10 if conditional else None)
        m = ScoreModule(net=net, ema_decay=0, data_shape=[1, 28, 28])
        return m.eval()
    return ScoreModule.from_pretrained(model_path)


class Guided(torch.nn.Module):
    """Classifier-free guidance of a class-conditional network: sample ``i`` of a batch asks for digit
    ``i mod 10``; ``eps_u + w (eps_c - eps_u)`` from one doubled batch (label -1: the "no label" token)."""

    def __init__(self, net, w: float):
        super().__init__()
        self.net, self.w = net, w

    def forward(self, x, t):
        y = torch.arange(x.shape[0], device=x.device) % 10
        out = self.net(torch.cat([x, x]), torch.cat([t, t]), class_labels=torch.cat([y, torch.full_like(y, -1)]))
        cond, uncond = out.chunk(2)
        return uncond + self.w * (cond - uncond)


def fid_mnist(x: np.ndarray, reference=None) -> float:
    """FID-MNIST of samples in [-1, 1] against the held-out digits, or against ``reference``: samples in
    [-1, 1] or the name of an embedded set (``"mnist"``, ``"mnist-test"``)."""
    from lit_diffusion.evaluation.image_metrics import fid

    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    ref = "mnist-test" if reference is None else reference if isinstance(reference, str) else np.clip(reference, -1, 1)
    return float(fid(x, ref, backend="mnist", value_range="-1,1")["value"])


def class_accuracy(x: np.ndarray) -> float:
    """The fraction of guided samples that the FID-MNIST network's classifier reads as the digit asked
    for (sample ``i`` asks for ``i mod 10``, :class:`Guided`)."""
    from lit_diffusion.evaluation.feature_net import load_feature_net, to_unit_images

    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    with torch.no_grad():
        pred = load_feature_net().classify(to_unit_images(x, "-1,1")).argmax(1).numpy()
    return float((pred == np.arange(len(x)) % 10).mean())


def _redraw(a) -> dict:
    """--from-json: redraw the plot, the pictures and the table from earlier results."""
    rows = [json.loads(line) for f in a.from_json.split(",") for line in open(f)]
    if a.plot:
        plot(rows, a.plot)
    if a.pictures:  # redraw from the .npz files saved next to earlier pictures (comma-separated)
        pics = {}
        for f in a.from_pictures.split(","):
            for k, v in np.load(f).items():
                form, label, n = k.split("|")
                pics[(form, label, int(n))] = v
        draw_pictures(pics, sorted({k[2] for k in pics}), a.pictures)
    print(table(rows))
    return {"results": rows}


def _over_seeds(a, sched, model, shape, nfe, device):
    """FID-MNIST of one sampler at one budget for every seed: (fids, evaluations, seconds, 16 samples
    of the first seed, with guidance the fraction of samples read as the requested digit, and with
    ``--reference`` the FID-MNIST to the reference samples)."""
    fids, evals, secs, first, accs, refs = [], None, 0.0, None, [], []
    for seed in a.seeds:
        t0 = time.perf_counter()
        x, evals = run_loop(sched, model, a.n, shape, seed, nfe, a.batch, device)
        secs += time.perf_counter() - t0
        if first is None:
            first = x[:16]
        fids.append(fid_mnist(x) if not a.dry_run else float(np.abs(x).mean()))
        if a.reference_samples is not None:
            refs.append(fid_mnist(x, a.reference_samples))
        if a.guidance is not None:
            accs.append(class_accuracy(x))
    return fids, evals, secs, first, accs, refs


def reference_samples(a, sde, time_scale, lit_model, diffusers_model, shape, device) -> np.ndarray:
    """``--reference LABEL@NFE``: ``--reference-n`` samples of that sampler at that budget, seed 10000."""
    label, _, nfe = a.reference.rpartition("@")
    rows = {r[0]: r for r in SDE_SAMPLERS + ODE_SAMPLERS}
    if label not in rows or not nfe.isdigit():
        raise ValueError(f"--reference {a.reference!r} must be LABEL@NFE with LABEL one of {sorted(rows)}")
    key = json.dumps(dict(model=os.path.abspath(a.model), guidance=a.guidance, reference=a.reference, n=a.reference_n,
                          dry_run=bool(a.dry_run)), sort_keys=True)
    if a.reference_cache and os.path.exists(a.reference_cache):
        with np.load(a.reference_cache) as z:
            if str(z["key"]) != key:
                raise ValueError(f"--reference-cache {a.reference_cache!r} holds other reference samples ({z['key']}); "
                                 f"this run asks for {key}: remove it or name another file")
            return z["samples"]
    _, kind, opts = rows[label]
    sched = make_scheduler(kind, opts, sde, time_scale, int(nfe))
    model = lit_model if kind.startswith("lit") else diffusers_model
    x, _ = run_loop(sched, model, a.reference_n, shape, 10_000, int(nfe), a.batch, device)
    if a.reference_cache:  # written whole or not at all (a second run reads it instead of sampling again)
        tmp = a.reference_cache + ".tmp.npz"
        np.savez(tmp, samples=x, key=np.array(key))
        os.replace(tmp, a.reference_cache)
    return x


def _record(a, form, label, nfe, fids, evals, secs, accs, refs) -> dict:
    """One table row: printed, and appended to ``--out`` as a line of JSON."""
    row = dict(form=form, sampler=label, nfe_budget=nfe, guidance=a.guidance, nfe=evals, fid=float(np.mean(fids)),
               fid_min=float(np.min(fids)), fid_max=float(np.max(fids)), fids=fids, n=a.n, seconds=secs)
    if accs:
        row["accuracy"] = float(np.mean(accs))
    if refs:
        row.update(fid_reference=float(np.mean(refs)), fids_reference=refs, reference=a.reference)
    print(f"{form} {label:36s} NFE {evals:3d}/{nfe:3d}  FID {row['fid']:8.2f}  [{row['fid_min']:.2f}, {row['fid_max']:.2f}]  {secs:.0f}s"
          + (f"  digit read as asked {100 * row['accuracy']:.1f}%" if accs else "")
          + (f"  FID to reference {row['fid_reference']:.2f}" if refs else ""), flush=True)
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def wanted_rows(only):
    """The labels ``--only`` names (None: all): one whole label, or labels separated by commas (by
    semicolons when any has a comma). Unknown ones are refused, naming the valid labels, before any work."""
    if only is None:
        return None
    labels = {r[0] for r in SDE_SAMPLERS + ODE_SAMPLERS}
    if only.strip() in labels:
        return {only.strip()}
    wanted = {w.strip() for w in only.split(";" if ";" in only else ",")} - {""}
    unknown = sorted(wanted - labels)
    if unknown:
        raise ValueError(f"--only: unknown labels {unknown}; valid labels: {sorted(labels)}")
    return wanted


def prepare_model(model: str, guidance, dry_run: bool, device, fitted_dir=None):
    """Load ``model`` (guided when ``guidance`` is given), point the module's fitted grids, moments and
    guidance at it, and return ``(module, time_scale, lit_model, diffusers_model)``: the two evaluation
    functions the pipeline loop calls, ours with continuous timesteps in UNet units, diffusers' with the
    integer index of the DDPM table."""
    global FITTED_DIR, MOMENTS, GUIDANCE, MODEL
    FITTED_DIR, GUIDANCE, MODEL = fitted_dir or os.path.join(model, "grids"), guidance, model
    MOMENTS = os.path.join(model, "data_moments.safetensors")
    module = load(model, dry_run, conditional=guidance is not None)
    net = module.net.to(device).eval()
    if guidance is not None:
        net = Guided(net, float(guidance))
    time_scale = float(getattr(net, "time_scale", N_TRAIN)) / float(getattr(net, "T", module.sde.T))
    _, t_table = vp_table(module.sde)

    def diffusers_model(x, t):  # integer timestep k -> SDE time t_k
        k = int(round(float(t)))
        return net(x, torch.full((x.shape[0],), float(t_table[k]), device=x.device)).float()

    def lit_model(x, t):  # continuous timestep in UNet units -> SDE time
        return net(x, torch.full((x.shape[0],), float(t) / time_scale, device=x.device)).float()

    return module, time_scale, lit_model, diffusers_model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=os.path.join(os.path.dirname(__file__), "..", "checkpoints", "mnist"))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50, 100])
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--only", default=None, help="labels to run: one label as is, or several separated by commas (by semicolons when a label has a comma); unknown ones are refused")
    p.add_argument("--out", default=None, help="JSON lines file to append results to")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--fitted-dir", default=None, help="folder of fitted grids multistep-<steps>[-gaussian][-<form>].json (default: the model's grids/)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (class-conditional models); "
                   "sample i asks for digit i mod 10")
    p.add_argument("--reference", default=None, help="LABEL@NFE: also score every row by FID-MNIST to --reference-n "
                   "samples of that sampler at that budget (seed 10000): the distance to the process's own converged "
                   "law, which under guidance differs from the data's")
    p.add_argument("--reference-n", type=int, default=5000)
    p.add_argument("--reference-cache", default=None, help="with --reference: .npz file of the reference samples, read "
                   "when it exists (and holds the same model, guidance, reference and number), written otherwise")
    p.add_argument("--dry-run", action="store_true", help="tiny untrained network, 8 samples, NFE 4: checks the loop")
    p.add_argument("--plot", default=None, help="PNG: FID against NFE, SDE and ODE samplers in two panels")
    p.add_argument("--pictures", default=None, help="PNG: 16 samples of seed 0 per sampler (rows) and NFE (columns)")
    p.add_argument("--from-json", default=None, help="only redraw --plot / the table from JSON lines files (comma-separated)")
    p.add_argument("--from-pictures", default=None, help="with --from-json: .npz files saved by earlier --pictures runs")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.from_json:
        return _redraw(a)
    if a.dry_run:
        a.n, a.seeds, a.nfe, a.batch = 8, [0], [4], 8
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wanted = wanted_rows(a.only)  # (bad labels refused before the model and the reference samples)
    module, time_scale, lit_model, diffusers_model = prepare_model(a.model, a.guidance, a.dry_run, device, a.fitted_dir)
    sde, shape = module.sde, tuple(module.data_shape)
    a.reference_samples = None
    if a.reference:
        a.reference_samples = reference_samples(a, sde, time_scale, lit_model, diffusers_model, shape, device)
    results, pictures = [], {}
    for form, samplers in (("SDE", SDE_SAMPLERS), ("ODE", ODE_SAMPLERS)):
        for label, kind, opts in samplers:
            if wanted is not None and label not in wanted:
                continue
            for nfe in a.nfe:
                try:
                    sched = make_scheduler(kind, opts, sde, time_scale, nfe)
                    steps_for_budget(sched, nfe)
                except ValueError:
                    continue
                model = lit_model if kind.startswith("lit") else diffusers_model
                fids, evals, secs, first, accs, refs = _over_seeds(a, sched, model, shape, nfe, device)
                pictures[(form, label, nfe)] = first
                results.append(_record(a, form, label, nfe, fids, evals, secs, accs, refs))
    print(table(results))
    if a.plot:
        plot(results, a.plot)
    if a.pictures:
        draw_pictures(pictures, a.nfe, a.pictures)
        np.savez(a.pictures + ".npz", **{"|".join(map(str, k)): v for k, v in pictures.items()})
    return {"results": results}


def table(rows, digits: int = 1) -> str:
    """Markdown: one row per sampler, one column per NFE budget, 'mean [min, max]' over seeds (``digits`` decimals)."""
    nfes = sorted({r["nfe_budget"] for r in rows})
    out = ["| form | sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    seen = list(dict.fromkeys((r["form"], r["sampler"]) for r in rows))
    for form, name in seen:
        cells = []
        for n in nfes:
            r = [x for x in rows if x["form"] == form and x["sampler"] == name and x["nfe_budget"] == n]
            d = digits
            cells.append(f"{r[0]['fid']:.{d}f} [{r[0]['fid_min']:.{d}f}, {r[0]['fid_max']:.{d}f}]" + (f" ({r[0]['nfe']})" if r[0]["nfe"] != n else "")
                         if r else "")
        out.append(f"| {form} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, form in zip(axes, ("SDE", "ODE")):
        names = list(dict.fromkeys(r["sampler"] for r in rows if r["form"] == form))
        for name in names:
            rs = sorted((r for r in rows if r["form"] == form and r["sampler"] == name), key=lambda r: r["nfe"])
            x = [r["nfe"] for r in rs]
            style = "-o" if name.startswith("lit") else "--s"
            ax.errorbar(x, [r["fid"] for r in rs], yerr=[[r["fid"] - r["fid_min"] for r in rs], [r["fid_max"] - r["fid"] for r in rs]],
                        fmt=style, ms=4, capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network evaluations")
        ax.set_title(f"{form} samplers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("FID-MNIST (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_pictures(pictures: dict, nfes, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    keys = list(dict.fromkeys((f, lab) for f, lab, _ in pictures))
    fig, axes = plt.subplots(len(keys), len(nfes), figsize=(2.2 * len(nfes), 2.3 * len(keys)), squeeze=False)
    for i, (form, label) in enumerate(keys):
        for j, n in enumerate(nfes):
            ax = axes[i][j]
            ax.axis("off")
            x = pictures.get((form, label, n))
            if x is None:
                continue
            g = make_grid(torch.from_numpy(np.clip((x + 1) / 2, 0, 1)), nrow=4, padding=1, pad_value=1.0)[0].numpy()
            ax.imshow(g, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if i == 0:
                ax.set_title(f"NFE {n}", fontsize=9)
            if j == 0:
                ax.text(-0.05, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
