"""``LitDiffusionPipeline``: the diffusers pipeline of exports that stock pipelines cannot run.

diffusers' ``DDPMPipeline`` starts from ``N(0, I)``, passes no class labels and has no autoencoder.
This pipeline takes the same components plus an optional ``vae`` and runs:

* the right prior: ``N(m, s^2 I)`` with the scheduler's ``init_noise_sigma`` ``s`` and, for a
  :class:`~lit_diffusion.integrations.scheduler.SDEScheduler`, its SDE's prior mean ``m`` (a VE process starts
  from ``N(0, sigma_max^2 I)``, an OU process from its stationary law);
* class-conditional U-Nets (``UNet2DModel`` with ``num_class_embeds = K + 1``, the last entry the
  "no label" token) with ``class_labels`` and classifier-free guidance ``guidance_scale``
  (``u + w (c - u)`` on the network output, one batched call; Ho & Salimans, "Classifier-Free
  Diffusion Guidance");
* latent models: the final state is decoded by the ``vae`` (``AutoencoderKL``) after division by
  its ``scaling_factor``.

Any scheduler with the diffusers ``set_timesteps``/``step`` API works (an exported VP model ships a
stock ``DDPMScheduler`` table, and ``DPMSolverMultistepScheduler.from_config`` swaps work on it).

Loading an exported folder: ``LitDiffusionPipeline.from_pretrained(folder)`` after ``import
lit_diffusion``, or, in a fresh interpreter, ``DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)``: the folder's ``pipeline.py`` only imports this class (diffusers runs code
named by a folder only with that flag).  ``LitDiffusionPipeline.from_pretrained("user/repo")`` loads such
a folder uploaded to the Hub, fetching only its configs and safetensors files.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

# an SDEScheduler component is named by its module ("lit_diffusion.integrations.scheduler") in
# model_index.json: diffusers resolves it from sys.modules only, so importing this pipeline makes such folders loadable
from . import scheduler as _scheduler  # noqa: F401

__all__ = ["LitDiffusionPipeline"]

#: what ``from_pretrained`` fetches of a Hub repository: the configs and safetensors weights it reads
HUB_FILES = ("model_index.json", "unet/*.json", "unet/*.safetensors", "vae/*.json", "vae/*.safetensors", "scheduler/*.json",
             "scheduler/*.safetensors")
#: the options of ``from_pretrained`` for a Hub repository
HUB_OPTIONS = ("revision", "token", "cache_dir", "local_files_only")


def _hub_snapshot(folder, hub: dict) -> str:
    """``folder`` when it exists here (or is not a repository id); else the local snapshot of the Hub
    repository ``folder`` (:data:`HUB_FILES` only)."""
    name = os.fspath(folder)
    if os.path.exists(name) or os.path.isabs(name) or name.startswith(".") or name.count("/") > 1 or "\\" in name:
        if hub:
            raise TypeError(f"LitDiffusionPipeline.from_pretrained({name!r}): {sorted(hub)} only apply to a Hub repository id")
        return name
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=list(HUB_FILES), **hub)
    except (OSError, ValueError) as e:  # not found, offline and not cached, a bad repository id
        raise ValueError(f"{name!r} is neither an exported pipeline folder here nor a Hub repository that could be fetched "
                         f"({type(e).__name__}: {e})") from None


class LitDiffusionPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]

    def __init__(self, unet, scheduler, vae=None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, folder, torch_dtype: Optional[torch.dtype] = None, **kwargs) -> "LitDiffusionPipeline":
        """Load an exported folder without running any code from it: the components are built from
        an explicit list of classes (``UNet2DModel``, ``AutoencoderKL``, diffusers' schedulers and
        :class:`~lit_diffusion.integrations.scheduler.SDEScheduler`), safetensors weights only.  ``folder``
        may be a Hub repository id (``"user/repo"``) that is not a local folder: only its JSON configs and
        safetensors files are fetched (:data:`HUB_FILES`, never its ``pipeline.py``), with ``revision``,
        ``token``, ``cache_dir`` and ``local_files_only`` as in ``huggingface_hub.snapshot_download``."""
        import json
        from pathlib import Path

        import diffusers
        from diffusers import AutoencoderKL, UNet2DModel

        from .scheduler import SDEScheduler

        hub = {k: kwargs.pop(k) for k in HUB_OPTIONS if k in kwargs}
        if kwargs:
            raise TypeError(f"LitDiffusionPipeline.from_pretrained: unsupported arguments {sorted(kwargs)} (only torch_dtype "
                            f"and, for a Hub repository, {', '.join(HUB_OPTIONS)})")
        from ..runtime.checkpoint_io import inside_folder

        folder = Path(_hub_snapshot(folder, hub))
        try:
            index = json.loads(Path(inside_folder(folder, "model_index.json")).read_text())
            sched_cfg = json.loads(Path(inside_folder(folder, "scheduler", "scheduler_config.json")).read_text())
            if not isinstance(index, dict) or not isinstance(sched_cfg, dict):
                raise ValueError("model_index.json and scheduler/scheduler_config.json must each hold a JSON object")
            sched_name = sched_cfg["_class_name"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"{str(folder)!r} is not an exported pipeline folder ({type(e).__name__}: {e})") from None
        for part in ("unet", "scheduler") + (("vae",) if index.get("vae") else ()):
            inside_folder(folder, part)  # no symbolic link out of the folder
        if sched_name == "SDEScheduler":
            sched_cls = SDEScheduler
        else:
            sched_cls = getattr(diffusers, str(sched_name), None)
            if not (isinstance(sched_cls, type) and issubclass(sched_cls, diffusers.SchedulerMixin)):
                raise ValueError(f"{str(folder)!r}: scheduler class {sched_name!r} is not a diffusers scheduler")
        load = dict(local_files_only=True, use_safetensors=True)
        if torch_dtype is not None:
            load["torch_dtype"] = torch_dtype
        unet = UNet2DModel.from_pretrained(str(folder / "unet"), **load)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), **load) if index.get("vae") else None
        return cls(unet=unet, scheduler=sched_cls.from_pretrained(str(folder / "scheduler")), vae=vae)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of a class-conditional U-Net (``None``: unconditional)."""
        n = getattr(self.unet.config, "num_class_embeds", None)
        return None if n is None else int(n) - 1

    def _prior(self, shape, generator, device, dtype) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        x = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        x = x * float(getattr(self.scheduler, "init_noise_sigma", 1.0))
        sde = getattr(self.scheduler, "sde", None)
        if sde is not None and float(sde.prior_mean) != 0.0:
            x = x + float(sde.prior_mean)
        return x

    def _model_output(self, x, t, labels, guidance_scale: float):
        """The U-Net's output at ``(x, t)``: plain for an unconditional U-Net, else guided by
        :func:`lit_diffusion.core.fields.guided_call` (labels ``-1`` mean "no label")."""
        from ..core.fields import guided_call
        from ..training.networks import label_vector

        if self.num_classes is None:
            return self.unet(x, t, return_dict=False)[0]

        def call(x, t, y):
            y = label_vector(y, x, self.num_classes, "LitDiffusionPipeline")
            return self.unet(x, t, class_labels=y, return_dict=False)[0]

        return guided_call(call, x, t, labels, guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: Optional[Union[torch.Generator, list]] = None,
        num_inference_steps: int = 50,
        class_labels=None,
        guidance_scale: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        latents: Optional[torch.Tensor] = None,
    ):
        """Generate ``batch_size`` images.

        Args:
            class_labels: one label per image (or one for all; ``-1``: no label) for a
                class-conditional U-Net; ``None``: unconditional.
            guidance_scale: classifier-free guidance weight (1: conditional, 0: unconditional).
            output_type: ``"pil"``, ``"np"`` or ``"pt"`` (images in ``[0, 1]``), or ``"latent"``
                (the raw final state, before the autoencoder).
            latents: the starting state (drawn from the prior when ``None``).
        """
        from ..core.fields import check_guidance
        from ..training.networks import label_vector

        w = check_guidance(class_labels, guidance_scale)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type={output_type!r} is invalid; valid choices: ['pil', 'np', 'pt', 'latent']")
        cfg = self.unet.config
        size = cfg.sample_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        shape = (int(batch_size), int(cfg.in_channels), *hw)
        device, dtype = self.unet.device, self.unet.dtype
        x = self._prior(shape, generator, device, torch.float32) if latents is None else latents.to(device, torch.float32)
        labels = None  # per-sample labels, -1 for "no label"; checked against the U-Net before any step
        if class_labels is not None or self.num_classes is not None:
            checked = label_vector(class_labels, x, self.num_classes, "LitDiffusionPipeline")
            labels = torch.where(checked == self.num_classes, torch.full_like(checked, -1), checked)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = self.scheduler.scale_model_input(x, t)
            out = self._model_output(model_in.to(dtype), t, labels, w).float()
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        if output_type == "latent":
            images = x
        else:
            if self.vae is not None:
                sf = float(getattr(self.vae.config, "scaling_factor", 1.0) or 1.0)
                x = self.vae.decode((x / sf).to(self.vae.dtype)).sample.float()
            images = (x / 2 + 0.5).clamp(0, 1)
            if output_type != "pt":
                images = images.cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

