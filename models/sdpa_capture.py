"""Find, record and replace the ``F.scaled_dot_product_attention`` calls of an unmodified model.

A torch function mode sees every call of ``torch.nn.functional.scaled_dot_product_attention`` (however the
model imported it) and numbers the calls in execution order. ``SdpaRecorder`` lists them (shapes, whether
PARO can take them over) and keeps q, k (and v) for the PARO planner; ``SdpaReplacer`` runs planned calls as
``paro_attention`` instead, so that torch.export traces one PARO node per call, its plan as constants.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SDPA_SIGNATURE = inspect.signature(
    lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False: None)


@dataclass(frozen=True)
class SdpaCall:
    """One call site, as executed: its position in the forward pass and what PARO needs to know."""

    index: int
    heads: int
    n: int  # tokens (query and key)
    head_dim: int
    scale: float | None
    refusal: str  # "" when PARO can replace the call, else why not (one phrase)

    @property
    def eligible(self) -> bool:
        return not self.refusal


def _bind(args, kwargs) -> dict:
    bound = _SDPA_SIGNATURE.bind(*args, **(kwargs or {}))
    bound.apply_defaults()
    return dict(bound.arguments)


def describe(index: int, call: dict, tokens: int | None) -> SdpaCall:
    """An SdpaCall for the bound arguments of one call; ``tokens`` is the N the PARO grid covers (None: any)."""
    q, k, v = call["query"], call["key"], call["value"]
    refusal = ""
    if call["attn_mask"] is not None:
        refusal = "it has an attn_mask"
    elif float(call["dropout_p"]) != 0.0:
        refusal = f"it has dropout_p={call['dropout_p']}"
    elif call["is_causal"]:
        refusal = "it is causal"
    elif call["enable_gqa"] or q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        refusal = "q, k, v differ in shape (cross or grouped-query attention)"
    elif tokens is not None and q.shape[2] != tokens:
        refusal = f"it attends {q.shape[2]} tokens, not the {tokens} of the PARO grid"
    dims = tuple(q.shape) if q.dim() == 4 else (0, 0, 0, 0)
    return SdpaCall(index, int(dims[1]), int(dims[2]), int(dims[3]), call["scale"], refusal)


class _SdpaMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        index = self.count
        self.count += 1
        result = self.on_call(index, _bind(args, kwargs))
        return result if result is not None else func(*args, **(kwargs or {}))

    def on_call(self, index: int, call: dict):  # pragma: no cover - overridden
        raise NotImplementedError


class SdpaRecorder(_SdpaMode):
    """Lists the calls of every forward pass run under it; with ``keep`` it also keeps q, k, v (CPU float32)
    of the eligible calls, per call index, one entry per forward pass."""

    def __init__(self, tokens: int | None = None, keep: bool = False):
        super().__init__()
        self.tokens, self.keep = tokens, keep
        self.calls: dict[int, SdpaCall] = {}
        self.tensors: dict[int, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}

    def run(self, model: torch.nn.Module, *inputs):
        """One forward pass (inference mode) under the recorder; call numbering restarts per pass."""
        self.count = 0
        with torch.inference_mode(), self:
            return model(*inputs)

    def on_call(self, index: int, call: dict):
        info = describe(index, call, self.tokens)
        self.calls.setdefault(index, info)
        if self.keep and info.eligible:
            self.tensors.setdefault(index, []).append(
                tuple(call[name].detach().float().cpu() for name in ("query", "key", "value")))
        return None


class SdpaReplacer(_SdpaMode):
    """Runs call ``i`` as ``attend(i, q, k, v, scale)`` where ``attend`` returns a tensor, dense otherwise."""

    def __init__(self, attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, float | None], object]):
        super().__init__()
        self.attend = attend

    def on_call(self, index: int, call: dict):
        return self.attend(index, call["query"], call["key"], call["value"], call["scale"])


class ReplacedModel(torch.nn.Module):
    """``model`` with its planned SDPA calls replaced (a fresh replacer per forward pass): what is exported,
    and the PyTorch side of the check that the export is exact."""

    def __init__(self, model: torch.nn.Module, make_replacer: Callable[[], SdpaReplacer]):
        super().__init__()
        self.model, self.make_replacer = model, make_replacer

    def forward(self, *inputs):
        with self.make_replacer():
            return self.model(*inputs)
