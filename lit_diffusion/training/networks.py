"""Score networks called as ``net(x, t)`` with continuous time ``t in [0, T]``.

* :class:`TimeMLP` -- a time-conditioned residual MLP for low-dimensional data (swiss roll, mixtures;
  the MLP of Claustre, "Score-Based Diffusion Models via SDEs"'s 2-D experiments).
* :class:`UNet` -- a thin wrapper around diffusers' :class:`~diffusers.UNet2DModel` with presets for
  8x8 (scikit-learn digits), 28x28 (MNIST) and 32x32 (CIFAR-10) images, plus a ``tiny`` preset for
  tests. The continuous time is mapped to the UNet's timestep input as ``t * time_scale / T``
  (``time_scale=1000`` by default, the DDPM convention).

Class-conditional networks (``num_classes=K``) take ``net(x, t, class_labels=y)`` with ``y`` in
``[0, K)``; a label ``-1`` (or ``class_labels=None``) selects a learned "no label" token (index ``K``
of the embedding), so one network is both the conditional and the unconditional model of
classifier-free guidance (Ho & Salimans, "Classifier-Free Diffusion Guidance").

Every network has a ``prediction_type`` attribute (docs/maths.md §2: ``epsilon``, ``score``,
``denoiser`` or ``v``), returns a tensor shaped like ``x`` and accepts ``t`` as a scalar or a
per-sample tensor ``(B,)``. Each keeps its constructor arguments in ``config`` (plain Python
values) so that checkpoints only hold plain types (``weights_only=True`` loading).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from ..core.linear_sde import per_sample_times
from ..core.parametrizations import canonical_prediction

__all__ = ["SinusoidalEmbedding", "TimeMLP", "UNet", "UNET_PRESETS", "label_vector", "num_classes_of"]


def num_classes_of(net) -> Optional[int]:
    """The number of classes a network is conditioned on (``None``: unconditional)."""
    n = getattr(net, "num_classes", None)
    return None if n is None else int(n)


def label_vector(class_labels, x: Tensor, num_classes: Optional[int], who: str = "network") -> Optional[Tensor]:
    """Class labels as a long tensor ``(B,)`` on ``x``'s device with the "no label" token
    ``num_classes`` in place of ``None`` / negative labels; ``None`` for an unconditional network
    (which refuses labels)."""
    if num_classes is None:
        if class_labels is not None:
            raise ValueError(f"{who} is unconditional (num_classes=None); it takes no class_labels")
        return None
    if class_labels is None:
        return torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device)
    y = torch.as_tensor(class_labels, device=x.device)
    if y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError(f"{who}: class_labels must be integers; got dtype {y.dtype}")
    y = y.to(torch.long).reshape(-1)
    if y.numel() == 1:
        y = y.expand(x.shape[0])
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{who}: {y.shape[0]} class labels for a batch of {x.shape[0]}")
    if y.numel() and int(y.max()) >= num_classes:
        raise ValueError(
            f"{who}: class label {int(y.max())} is out of range; valid labels are 0..{num_classes - 1} "
            "(-1 for no label)"
        )
    return torch.where(y < 0, torch.full_like(y, num_classes), y)


def _time_vector(t, x: Tensor) -> Tensor:
    """``t`` as a float32 tensor of shape ``(B,)`` on ``x``'s device."""
    return per_sample_times(t, x, torch.float32)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of ``t / T`` (``dim/2`` log-spaced frequencies from 1 to
    ``max_freq``), or random Fourier features with ``fourier_scale > 0`` (Gaussian frequencies of
    that scale, fixed at init)."""

    def __init__(self, dim: int = 64, T: float = 1.0, max_freq: float = 1000.0, fourier_scale: float = 0.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"time embedding dim={dim!r} is invalid; it must be an even integer >= 2")
        self.T = float(T)
        half = dim // 2
        if fourier_scale > 0:
            freqs = torch.randn(half, generator=torch.Generator().manual_seed(0)) * fourier_scale * 2 * math.pi
        else:
            freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), half))
        self.register_buffer("freqs", freqs, persistent=True)

    def forward(self, t: Tensor) -> Tensor:
        arg = (t.to(torch.float32) / self.T)[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class _ResBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.lin1 = nn.Linear(width, width)
        self.emb = nn.Linear(emb_dim, width)
        self.lin2 = nn.Linear(width, width)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.lin1(self.act(self.norm(h))) + self.emb(emb)
        z = self.lin2(self.drop(self.act(z)))
        return h + z


class TimeMLP(nn.Module):
    """Residual MLP ``net(x, t)`` for vectors ``x`` of shape ``(B, dim)`` (any trailing shape is
    flattened and restored).

    Args:
        dim: data dimension (``prod`` of the trailing shape).
        hidden: width of the residual stream.
        n_blocks: number of residual blocks (LayerNorm -> Linear -> +time -> SiLU -> Linear).
        time_dim: size of the sinusoidal time embedding.
        T: time horizon of the SDE (t is embedded as t / T).
        prediction_type: what the network predicts (docs/maths.md §2).
        dropout: dropout inside the blocks.
        zero_init: start the output layer at zero (the initial prediction is 0).
        num_classes: class-conditional with this many classes (a label embedding added to the time
            embedding, plus the "no label" token); ``None``: unconditional.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        n_blocks: int = 3,
        time_dim: int = 64,
        T: float = 1.0,
        prediction_type: str = "epsilon",
        dropout: float = 0.0,
        zero_init: bool = True,
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"TimeMLP: num_classes={num_classes!r} is invalid; it must be a positive integer or None")
        for name, v in (("dim", dim), ("hidden", hidden), ("n_blocks", n_blocks)):
            if int(v) != v or v < (0 if name == "n_blocks" else 1):
                raise ValueError(f"TimeMLP: {name}={v!r} is invalid; it must be a positive integer")
        self.prediction_type = canonical_prediction(prediction_type)
        self.dim = int(dim)
        self.T = float(T)
        self.config = dict(
            dim=int(dim), hidden=int(hidden), n_blocks=int(n_blocks), time_dim=int(time_dim), T=float(T),
            prediction_type=self.prediction_type, dropout=float(dropout), zero_init=bool(zero_init),
        )
        self.num_classes = None if num_classes is None else int(num_classes)
        if self.num_classes is not None:
            self.config["num_classes"] = self.num_classes
        self.time_embed = nn.Sequential(
            SinusoidalEmbedding(time_dim, T=T), nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.label_embed = nn.Embedding(self.num_classes + 1, hidden) if self.num_classes is not None else None
        self.inp = nn.Linear(self.dim, hidden)
        self.blocks = nn.ModuleList([_ResBlock(hidden, hidden, dropout) for _ in range(int(n_blocks))])
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, self.dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t, class_labels=None) -> Tensor:
        shape = x.shape
        h = x.reshape(shape[0], -1)
        if h.shape[1] != self.dim:
            raise ValueError(f"TimeMLP(dim={self.dim}) got x of shape {tuple(shape)} ({h.shape[1]} features)")
        t = _time_vector(t, x)
        emb = self.time_embed(t)
        y = label_vector(class_labels, x, self.num_classes, "TimeMLP")
        if y is not None:
            emb = emb + self.label_embed(y)
        h = self.inp(h.to(self.inp.weight.dtype))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(nn.functional.silu(self.out_norm(h))).reshape(shape)


# --------------------------------------------------------------------------------------------
# U-Net (diffusers UNet2DModel)
# --------------------------------------------------------------------------------------------
UNET_PRESETS: dict[str, dict] = {
    # tests / smoke runs: two levels, no attention
    "tiny": dict(
        block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
        down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
    ),
    # 8x8 (scikit-learn digits): 8 -> 4, attention at 4x4
    "8x8": dict(
        sample_size=8, block_out_channels=[32, 64], layers_per_block=2, norm_num_groups=8,
        down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
    ),
    # 28x28 (MNIST): 28 -> 14 -> 7, attention at 7x7 (no padding needed: the last level does not downsample)
    "28x28": dict(
        sample_size=28, block_out_channels=[32, 64, 128], layers_per_block=2, norm_num_groups=16,
        down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    ),
    # 32x32 (CIFAR-10): 32 -> 16 -> 8 -> 4, attention at 16x16 and 8x8 (DDPM-like, smaller)
    "32x32": dict(
        sample_size=32, block_out_channels=[64, 128, 128, 256], layers_per_block=2, norm_num_groups=32,
        down_block_types=["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    ),
}


def _unet_layout(preset: str, sample_size, block_out_channels, layers_per_block) -> dict:
    """The ``UNet2DModel`` arguments of a preset with the given overrides, checked: as many channel
    counts as the preset has levels, each divisible by the group norm's groups, and a sample size
    that every level halves evenly."""
    kw = dict(UNET_PRESETS[preset])
    if sample_size is not None:
        kw["sample_size"] = int(sample_size)
    kw.setdefault("sample_size", 8)
    if block_out_channels is not None:
        if len(block_out_channels) != len(kw["block_out_channels"]):
            raise ValueError(
                f"UNet: block_out_channels={list(block_out_channels)} must have "
                f"{len(kw['block_out_channels'])} entries for preset {preset!r}"
            )
        kw["block_out_channels"] = [int(c) for c in block_out_channels]
    if layers_per_block is not None:
        kw["layers_per_block"] = int(layers_per_block)
    groups = kw["norm_num_groups"]
    bad = [c for c in kw["block_out_channels"] if c % groups]
    if bad:
        raise ValueError(f"UNet: block_out_channels {bad} are not divisible by norm_num_groups={groups}")
    levels = len(kw["block_out_channels"])
    if kw["sample_size"] % (2 ** (levels - 1)):
        raise ValueError(
            f"UNet: sample_size={kw['sample_size']} is not divisible by 2**{levels - 1} "
            f"(preset {preset!r} has {levels} levels)"
        )
    return kw


class UNet(nn.Module):
    """diffusers ``UNet2DModel`` called as ``net(x, t)`` with continuous ``t in [0, T]``.

    Args:
        preset: one of ``UNET_PRESETS`` (``tiny``, ``8x8``, ``28x28``, ``32x32``).
        in_channels: image channels (1 for digits/MNIST, 3 for CIFAR-10).
        sample_size: image side (defaults to the preset's; ``tiny`` needs it given or uses 8).
        block_out_channels, layers_per_block: override the preset.
        dropout: dropout in the ResNet blocks.
        T: time horizon of the SDE.
        time_scale: the UNet sees the timestep ``t * time_scale / T`` (1000: DDPM's convention).
        prediction_type: what the network predicts (docs/maths.md §2).
        num_classes: class-conditional with this many classes (``UNet2DModel``'s class embedding with
            ``num_classes + 1`` entries, the last one the "no label" token); ``None``: unconditional.
    """

    def __init__(
        self,
        preset: str = "28x28",
        in_channels: int = 1,
        sample_size: Optional[int] = None,
        block_out_channels: Optional[list[int]] = None,
        layers_per_block: Optional[int] = None,
        dropout: float = 0.0,
        T: float = 1.0,
        time_scale: float = 1000.0,
        prediction_type: str = "epsilon",
        num_classes: Optional[int] = None,
    ):
        super().__init__()
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1):
            raise ValueError(f"UNet: num_classes={num_classes!r} is invalid; it must be a positive integer or None")
        if preset not in UNET_PRESETS:
            raise ValueError(f"UNet: unknown preset {preset!r}; valid choices: {sorted(UNET_PRESETS)}")
        from diffusers import UNet2DModel

        kw = _unet_layout(preset, sample_size, block_out_channels, layers_per_block)
        self.prediction_type = canonical_prediction(prediction_type)
        self.T = float(T)
        self.time_scale = float(time_scale)
        self.sample_size = kw["sample_size"]
        self.in_channels = int(in_channels)
        self.config = dict(
            preset=preset, in_channels=int(in_channels), sample_size=kw["sample_size"],
            block_out_channels=list(kw["block_out_channels"]), layers_per_block=kw["layers_per_block"],
            dropout=float(dropout), T=float(T), time_scale=float(time_scale), prediction_type=self.prediction_type,
        )
        kw["block_out_channels"] = tuple(kw["block_out_channels"])
        kw["down_block_types"] = tuple(kw["down_block_types"])
        kw["up_block_types"] = tuple(kw["up_block_types"])
        self.num_classes = None if num_classes is None else int(num_classes)
        if self.num_classes is not None:
            self.config["num_classes"] = self.num_classes
            kw["num_class_embeds"] = self.num_classes + 1
        self.unet = UNet2DModel(in_channels=int(in_channels), out_channels=int(in_channels), dropout=float(dropout), **kw)

    @classmethod
    def around(cls, unet: nn.Module, prediction_type: str, T: float = 1.0, time_scale: float = 1.0) -> "UNet":
        """An existing ``UNet2DModel`` (a diffusers pipeline's) as ``net(x, t)``; by default ``t`` is
        passed as the UNet's timestep unchanged (for a :class:`~lit_diffusion.core.discrete_vp.DiscreteVP`
        the SDE time *is* the training timestep). Its class embedding's last entry is "no label"."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.unet = unet
        self.prediction_type = canonical_prediction(prediction_type)
        self.T, self.time_scale = float(T), float(time_scale)
        self.sample_size, self.in_channels = unet.config.sample_size, int(unet.config.in_channels)
        n = getattr(unet.config, "num_class_embeds", None)
        self.num_classes = None if n is None else int(n) - 1
        self.config = None  # not buildable from a description: it was loaded, not made
        return self

    def timestep(self, t: Tensor) -> Tensor:
        """The UNet's timestep input for continuous times ``t``."""
        return t * (self.time_scale / self.T)

    def forward(self, x: Tensor, t, class_labels=None) -> Tensor:
        t = _time_vector(t, x)
        y = label_vector(class_labels, x, self.num_classes, "UNet")
        return self.unet(x, self.timestep(t), class_labels=y, return_dict=False)[0]
