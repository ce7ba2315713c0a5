"""Swap third-party attention modules for attn_export layers, so that torch.export can trace them.

NATTEN's ``NeighborhoodAttention{1,2,3}D`` (0.20+, and the legacy modules with a relative position
bias ``rpb``) use the same qkv / proj weight layout as our layers, so conversion copies the weights
unchanged. Converters are data: one entry per third-party class family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from attn_export.errors import AttnExportError
from attn_export.models.layers import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D


@dataclass(frozen=True)
class Converter:
    name: str
    matches: Callable[[nn.Module], bool]
    convert: Callable[[nn.Module], nn.Module]


def _is_natten_na(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__module__.split(".")[0] == "natten" and cls.__name__ in (
        "NeighborhoodAttention1D", "NeighborhoodAttention2D", "NeighborhoodAttention3D")


def _from_natten(module: nn.Module) -> nn.Module:
    rank = int(type(module).__name__[-2])
    layer_cls = {1: NeighborhoodAttention1D, 2: NeighborhoodAttention2D, 3: NeighborhoodAttention3D}[rank]
    rpb = getattr(module, "rpb", None)
    dim = module.qkv.in_features
    layer = layer_cls(
        dim, module.num_heads, module.kernel_size,
        stride=getattr(module, "stride", 1), dilation=getattr(module, "dilation", 1) or 1,
        is_causal=getattr(module, "is_causal", False) or False,
        rel_pos_bias=rpb is not None, qkv_bias=module.qkv.bias is not None, qk_scale=module.scale,
    )
    state = {k: v for k, v in module.state_dict().items() if k.split(".")[0] in ("qkv", "proj", "rpb")}
    layer.load_state_dict(state, strict=True)
    return layer.to(module.qkv.weight.device, module.qkv.weight.dtype).train(module.training)


CONVERTERS: tuple[Converter, ...] = (Converter("natten", _is_natten_na, _from_natten),)


def needs_conversion(model: nn.Module) -> bool:
    """Whether ``model`` holds a module that a converter recognises."""
    return any(c.matches(m) for m in model.modules() for c in CONVERTERS)


def convert_modules(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """Replace every recognised third-party attention module in ``model`` (in place where nested).

    Returns the model (a new object only when the model itself was converted) and one line per
    replacement: "<qualified name>: <source class> -> <our class>".
    """
    replaced: list[str] = []
    root = _convert_one(model, "<model>", replaced)
    if root is not None:
        return root, replaced
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            new = _convert_one(child, f"{parent_name}.{child_name}" if parent_name else child_name, replaced)
            if new is not None:
                setattr(parent, child_name, new)
    return model, replaced


def _convert_one(module: nn.Module, where: str, replaced: list[str]) -> nn.Module | None:
    converter = next((c for c in CONVERTERS if c.matches(module)), None)
    if converter is None:
        return None
    source = f"{type(module).__module__}.{type(module).__name__}"
    try:
        new = converter.convert(module)
    except Exception as exc:  # an unexpected third-party version
        raise AttnExportError(f"cannot convert {source} at '{where}' ({exc}); please report its version") from exc
    replaced.append(f"{where}: {source} -> attn_export.models.{type(new).__name__}")
    return new
