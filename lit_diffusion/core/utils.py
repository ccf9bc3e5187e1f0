"""Small shared helpers: per-sample random numbers."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

GeneratorLike = Optional[Union[torch.Generator, Sequence[torch.Generator]]]

__all__ = ["randn", "rand", "make_generators"]


def make_generators(seeds: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One ``torch.Generator`` per seed: sample ``i`` then depends only on ``seeds[i]``."""
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s))
        gens.append(g)
    return gens


def _draw(fn, shape, generator: GeneratorLike, device, dtype) -> Tensor:
    """Draw on the generator's own device (a CPU generator can drive CUDA data), then move the
    result to ``device`` (the generator's device when None)."""
    shape = tuple(int(s) for s in shape)
    if generator is None:
        return fn(shape, generator=None, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        x = fn(shape, generator=generator, device=generator.device, dtype=dtype)
        return x.to(device) if device is not None else x
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}; pass one generator per sample")
    x = torch.stack([fn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in gens])
    return x.to(device) if device is not None else x


def randn(shape, generator: GeneratorLike = None, device=None, dtype=torch.float32) -> Tensor:
    """Standard normal noise; with a list of generators, row ``i`` is drawn from ``generator[i]``."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(shape, generator: GeneratorLike = None, device=None, dtype=torch.float32) -> Tensor:
    """Uniform(0, 1) noise, with the same per-sample generator convention as :func:`randn`."""
    return _draw(torch.rand, shape, generator, device, dtype)
