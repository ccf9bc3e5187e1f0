"""Pictures of image samples: one grid writer for the training callbacks, ``sample.py`` and the
benchmarks (``torchvision.utils.make_grid``, upscaled so that small images stay readable)."""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["image_grid", "grid_columns", "MIN_GRID_SIDE"]

#: the shorter side, in pixels, a grid is upscaled to at least (whole-pixel nearest-neighbour
#: scaling: 64 MNIST digits become 8 x 29 px x 3 = 696 px instead of 233 px)
MIN_GRID_SIDE = 512


def grid_columns(n: int, n_grid: Optional[int] = None) -> int:
    """Columns of the grid of ``min(n, n_grid)`` images (a square-ish grid)."""
    m = int(n) if n_grid is None else min(int(n), int(n_grid))
    return max(1, int(math.ceil(math.sqrt(max(1, m)))))


def image_grid(x: Union[Tensor, np.ndarray], ncol: Optional[int] = None, min_side: int = MIN_GRID_SIDE) -> np.ndarray:
    """Images ``(N, C, H, W)`` in ``[-1, 1]`` (C = 1 or 3) as one ``uint8`` picture ``(H', W')`` or
    ``(H', W', 3)``: white 2-pixel gutters, ``ncol`` columns (square-ish by default), and an integer
    upscale so that the shorter side is at least ``min_side`` pixels."""
    from torchvision.utils import make_grid

    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid takes images (N, C, H, W) with C in (1, 3); got shape {tuple(x.shape)}")
    g = make_grid((x.clamp(-1, 1) + 1) / 2, nrow=ncol or grid_columns(len(x)), padding=2, pad_value=1.0)
    scale = max(1, int(math.ceil(min_side / max(1, min(g.shape[1], g.shape[2])))))
    if scale > 1:
        g = g.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    arr = (g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return arr[..., 0] if x.shape[1] == 1 else arr
