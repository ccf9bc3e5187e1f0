"""Small shared helpers: per-sample random numbers, and the one validator of counts that come from
outside (steps, timesteps, sample counts), with the package's documented bounds."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

GeneratorLike = Optional[Union[torch.Generator, Sequence[torch.Generator]]]

__all__ = ["randn", "rand", "make_generators", "check_count", "MAX_STEPS", "MAX_TRAIN_TIMESTEPS"]

#: the most sampler steps one run may take (``sample(steps=)``, ``set_timesteps``, ``sample.py --steps``):
#: far beyond any useful grid (a reference solution needs a few thousand), and a few seconds of grid
#: arithmetic at most, so that a typo such as 10**6 is refused instead of running for minutes
MAX_STEPS = 100_000
#: the most timesteps of a discrete (DDPM) table: diffusers' models use 1,000
MAX_TRAIN_TIMESTEPS = 100_000


def check_count(name: str, value, low: int = 1, high: Optional[int] = None) -> int:
    """``value`` as an int if it is an integer in ``[low, high]`` (floats with an integer value
    accepted), else ``ValueError`` naming ``name``, the value and the bounds."""
    ok = not isinstance(value, bool) and (isinstance(value, int) or hasattr(value, "__index__")
                                          or (isinstance(value, float) and value.is_integer()))
    bounds = ("a positive integer" if low == 1 else f"an integer >= {low}") if high is None else f"an integer in [{low}, {high}]"
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid; it must be {bounds}")
    n = int(value)
    if n < low or (high is not None and n > high):
        raise ValueError(f"{name}={value!r} is invalid; it must be {bounds}")
    return n


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
