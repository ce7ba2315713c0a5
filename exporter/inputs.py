"""Model input descriptions and the seeded random inputs made from them (zoo, loaders, parity)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]  # () while unknown (a loader then needs --input-shape)
    dtype: torch.dtype = torch.float32
    low: float = -1.0  # value range of random inputs (ints: [low, high))
    high: float = 1.0


def random_tensor(shape, dtype: torch.dtype, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.empty(shape).uniform_(low, high, generator=generator).to(dtype)
    return torch.randint(int(low), int(high), shape, generator=generator, dtype=dtype)


def random_inputs(specs: Sequence[InputSpec], seed: int,
                  shapes: Mapping[str, tuple[int, ...]] | None = None) -> tuple[torch.Tensor, ...]:
    """Seeded random inputs for ``specs``, at ``shapes[name]`` where given."""
    gen = torch.Generator().manual_seed(seed)
    shapes = shapes or {}
    return tuple(random_tensor(shapes.get(s.name, s.shape), s.dtype, s.low, s.high, gen) for s in specs)


def batch_dim() -> torch.export.Dim:
    """The dynamic batch dimension every export shares (one name, so all inputs share one batch)."""
    return torch.export.Dim("batch", min=1, max=4096)


def name_forward_inputs(module: torch.nn.Module, names: Sequence[str]) -> torch.nn.Module:
    """Give a wrapper's ``forward(*inputs)`` named parameters, which torch.export binds dynamic shapes to.

    The module's class becomes a subclass whose forward carries the signature, so a copy of the module
    (``copy.deepcopy``, as ``--dtype`` casts a copy) runs its own forward, not the original's."""
    base = type(module)

    def forward(self, *args):
        return base.forward(self, *args)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature([inspect.Parameter("self", kind)] +
                                              [inspect.Parameter(n, kind) for n in names])
    module.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__,
                                                     "__qualname__": base.__qualname__})
    return module
