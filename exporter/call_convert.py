"""Call-level conversion: the attention calls users write (NATTEN's functional API, FlexAttention) run as
attn_export's ops while the model is traced, without editing the model.

The functions are intercepted where the model finds them: every loaded module's global that holds
``natten.na1d`` / ``na2d`` / ``na3d`` / ``neighborhood_attention_generic`` or
``torch.nn.attention.flex_attention.flex_attention`` is swapped for a converter while the model runs
(``from natten import na2d`` and ``natten.na2d(...)`` are both caught; a function reached only through a
closure or an object attribute is not).

- NATTEN calls become ``neighborhood_attention`` with NATTEN's layout and scale (the same semantics).
- A FlexAttention call is analysed eagerly, on concrete tensors: its mask_mod and score_mod are evaluated on
  the index grid at the call's heads. A 1-D neighborhood pattern (causal sliding windows among them) becomes
  ``neighborhood_attention``; any other mask becomes ``block_sparse_attention`` over the blocks it touches,
  its partial blocks exact through the op's ``block_bias`` (-inf on masked elements), which also carries an
  additive score_mod. Refused, naming the call: score_mods that are not additive, masks or score_mods that
  depend on the batch index or on the model's inputs (the pipeline analyses two different inputs and compares
  the plans), and grids too large to evaluate.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.attention.flex_attention as flex

from attn_export import lazy
from attn_export.flex_plan import ConversionRefused, neighborhood_window, plan_flex, run_plan, score_bias
from attn_export.models import neighborhood_attention

_NATTEN_FUNCTIONS = ("na1d", "na2d", "na3d", "neighborhood_attention_generic")


@dataclass
class CallRecord:
    """One converted call: what it was, where, and what it became (printed, and listed in report.json)."""

    index: int
    source: str  # e.g. "natten.na2d" or "flex_attention"
    where: str  # file:line of the call
    target: str  # what it runs as
    plan: dict = field(default_factory=dict)  # FlexAttention: the op and its arguments (tensors included)
    mask_site: str = ""  # FlexAttention: where its BlockMask was built, when forward builds it
    block_mask: object = field(default=None, repr=False, compare=False)  # held: the pass's mask, by identity

    def describe(self) -> str:
        built = f" (BlockMask built at {self.mask_site})" if self.mask_site else ""
        return f"{self.source} at {self.where}{built} -> {self.target}"



def _caller(depth: int = 2) -> str:
    frame = sys._getframe(depth)
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}"


def _targets() -> dict[Callable, str]:
    """The third-party functions to intercept, by their source name. NATTEN is imported here when installed
    (a model may import it only inside forward), never otherwise."""
    found = {flex.flex_attention: "flex_attention", flex.create_block_mask: "create_block_mask"}
    if lazy.installed(lazy.natten_functional):
        natten = lazy.load(lazy.natten_functional)
        found.update({getattr(natten, name): f"natten.{name}" for name in _NATTEN_FUNCTIONS if hasattr(natten, name)})
    return found


def _namespaces(model: torch.nn.Module | None) -> list[dict]:
    """The global namespaces a model's code reads: every loaded module's, and those of its layers' forward
    functions (a model loaded from a file path need not be in sys.modules)."""
    found = {id(m.__dict__): m.__dict__ for m in list(sys.modules.values())
             if isinstance(getattr(m, "__dict__", None), dict)}
    for layer in model.modules() if model is not None else ():
        namespace = getattr(type(layer).forward, "__globals__", None)
        if isinstance(namespace, dict):
            found[id(namespace)] = namespace
    return list(found.values())


@contextlib.contextmanager
def _swapped(replacements: dict[Callable, Callable], model: torch.nn.Module | None = None):
    """Every global bound to a key of ``replacements`` (in any namespace the model reads) is rebound to its
    value, then restored."""
    swapped = []
    for namespace in _namespaces(model):
        for name, value in list(namespace.items()):
            try:
                replacement = replacements.get(value) if callable(value) else None
            except TypeError:  # unhashable callables
                replacement = None
            if replacement is not None:
                namespace[name] = replacement
                swapped.append((namespace, name, value))
    try:
        yield
    finally:
        for namespace, name, value in swapped:
            namespace[name] = value


class CallConverter:
    """Runs a model with its NATTEN / FlexAttention calls converted. ``analyse`` mode (eager, concrete
    tensors) records each call and plans each FlexAttention call; ``replace`` mode (while tracing) runs the
    recorded plans. Calls are numbered in execution order per forward pass."""

    def __init__(self):
        self.records: list[CallRecord] = []
        self.analysing = True
        self._count = 0
        self._inside = 0  # > 0 while an intercepted original runs: its own inner calls (NATTEN -> flex) pass
        self._plans: dict[tuple, tuple] = {}  # per analysis pass, by the identity of the call's mask and score_mod
        # BlockMasks built inside forward (create_block_mask per call), in call order, with where each was built:
        # analysed like any mask; while tracing, each call gets the analysed mask back instead of tracing the build
        # (sorts and cumsums no ONNX exporter translates, for a mask the plan already holds as constants)
        self._masks: list = []
        self._mask_sites: dict[int, str] = {}
        self._mask_count = 0

    def _original(self, function: Callable, *args, **kwargs):
        self._inside += 1
        try:
            return function(*args, **kwargs)
        finally:
            self._inside -= 1

    @contextlib.contextmanager
    def active(self, model: torch.nn.Module | None = None):
        self._count = self._mask_count = 0
        targets = _targets()
        replacements = {}
        for function, source in targets.items():
            if source == "flex_attention":
                replacements[function] = self._flex(function)
            elif source == "create_block_mask":
                replacements[function] = self._block_mask(function)
            else:
                replacements[function] = self._natten(function, source)
        with _swapped(replacements, model):
            yield self

    def analyse(self, model: torch.nn.Module, inputs) -> list[CallRecord]:
        """One eager forward pass that records and plans the calls (the model's own outputs are computed by
        the original functions, so this pass also runs as written)."""
        self.analysing, self.records, self._plans = True, [], {}
        self._masks, self._mask_sites = [], {}
        with torch.inference_mode(), self.active(model), quiet_third_party():
            model(*inputs)
        self.analysing = False
        return self.records

    def confirm(self, model: torch.nn.Module, inputs) -> None:
        """Analyse again on other inputs and refuse a call whose plan changes: its mask or score_mod reads the
        model's inputs, which a layout exported as a constant cannot follow. The first analysis stays."""
        first, masks = self.records, (self._masks, self._mask_sites)
        try:
            second = self.analyse(model, inputs)
        finally:
            self.records, (self._masks, self._mask_sites) = first, masks
        for before, after in zip(first, second):
            _refuse_untraceable_mask(before, after)
            if not _same_plan(before.plan, after.plan):
                built = (f" (its BlockMask is built in forward by create_block_mask at {before.mask_site})"
                         if before.mask_site else "")
                raise ConversionRefused(f"{before.source} at {before.where}{built}: its mask or score_mod depends on "
                                        "the model's inputs (two inputs give two different plans), which a layout "
                                        "exported as a constant cannot follow: compute it from positions, shapes, "
                                        "constants and buffers only")
        if len(first) != len(second):
            raise ConversionRefused(f"the model makes {len(first)} attention calls on one input and {len(second)} on "
                                  "another: its attention calls depend on its inputs")

    def _next(self, source: str, where: str) -> tuple[int, CallRecord | None]:
        index = self._count
        self._count += 1
        recorded = next((r for r in self.records if r.index == index), None)
        if recorded is None and not self.analysing:
            raise ConversionRefused(f"{source} at {where} is call {index} of this forward pass, but the analysis "
                                  "pass saw fewer calls: the model's attention calls depend on its inputs")
        return index, recorded

    def _block_mask(self, original: Callable) -> Callable:
        """create_block_mask inside forward: built (and remembered) while analysing, handed back while tracing."""

        def create(*args, **kwargs):
            if self._inside:
                return original(*args, **kwargs)
            where, index = _caller(), self._mask_count
            self._mask_count += 1
            if self.analysing:
                mask = self._original(original, *args, **kwargs)
                self._masks.append(mask)  # held: its id stays its own for this pass
                self._mask_sites[id(mask)] = where
                return mask
            if index >= len(self._masks):
                raise ConversionRefused(f"create_block_mask at {where} is call {index} of this forward pass, but the "
                                        "analysis pass saw fewer: the model's masks depend on its inputs")
            return self._masks[index]

        return create

    def _natten(self, original: Callable, source: str) -> Callable:
        def convert(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
                    additional_keys=None, additional_values=None, return_lse=False, **backend_options):
            if self._inside:
                return original(query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                                additional_values, return_lse=return_lse, **backend_options)
            where = _caller()
            index, _ = self._next(source, where)
            if additional_keys is not None or additional_values is not None:
                raise ConversionRefused(f"{source}(...) at {where} passes additional_keys/additional_values, which "
                                      "neighborhood_attention does not take: attend them in a separate call")
            if return_lse:
                raise ConversionRefused(f"{source}(...) at {where} asks for return_lse, which the exported op does "
                                      "not return: drop return_lse")
            if self.analysing:
                self.records.append(CallRecord(index, source, where, "attn_export::neighborhood_attention"))
                return self._original(original, query, key, value, kernel_size, stride, dilation, is_causal, scale)
            return neighborhood_attention(query, key, value, kernel_size, stride, dilation,
                                          False if is_causal is None else is_causal, scale)

        return convert

    def _flex(self, original: Callable) -> Callable:
        def convert(query, key, value, score_mod=None, block_mask=None, scale=None, enable_gqa=False,
                    return_lse=False, kernel_options=None, *, return_aux=None):
            if self._inside:
                return original(query, key, value, score_mod, block_mask, scale, enable_gqa, return_lse,
                                kernel_options, return_aux=return_aux)
            where = _caller()
            index, recorded = self._next("flex_attention", where)
            if enable_gqa or return_lse or return_aux is not None:
                raise ConversionRefused(f"flex_attention at {where} uses enable_gqa / return_lse / return_aux, which "
                                      "the exported ops do not provide: drop them for export")
            if self.analysing:
                # Layers that share one BlockMask and score_mod share one plan: planned once, one set of constants
                same = (id(block_mask), id(score_mod), tuple(query.shape[:2]), query.shape[-2], key.shape[-2])
                if same not in self._plans:  # the entry holds the mask and score_mod: their ids stay theirs
                    self._plans[same] = (plan_flex(query, key, value, score_mod, block_mask, scale, where),
                                         block_mask, score_mod)
                plan = self._plans[same][0]
                self.records.append(CallRecord(index, "flex_attention", where, plan["target"], plan,
                                               self._mask_sites.get(id(block_mask), ""), block_mask))
                return self._original(original, query, key, value, score_mod=score_mod, block_mask=block_mask,
                                      scale=scale)
            return run_plan(recorded.plan, query, key, value, scale)

        return convert


# Warnings third-party attention raises while we run it as the reference, none of them the user's business:
# eager flex_attention on purpose (its advice to compile), NATTEN 0.21 still passing flex_attention's
# deprecated return_lse.
_THIRD_PARTY_NOISE = ((UserWarning, "flex_attention called without torch.compile"),
                      (FutureWarning, "return_lse is deprecated"))


@contextlib.contextmanager
def quiet_third_party():
    """Run third-party attention (NATTEN, eager flex_attention) without its deprecation and compile advice."""
    with warnings.catch_warnings():
        for category, message in _THIRD_PARTY_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def _refuse_untraceable_mask(before: CallRecord, after: CallRecord) -> None:
    """A BlockMask that is a new object on every forward pass, though not built by a create_block_mask call we
    intercept, is built by code we cannot replace while tracing, and tracing its build fails in the ONNX
    exporter (sorts): refused, naming the call, before any export."""
    if before.source != "flex_attention" or before.mask_site or before.block_mask is None:
        return
    if before.block_mask is not after.block_mask:
        raise ConversionRefused(f"flex_attention at {before.where}: its BlockMask is built anew on every forward pass "
                                "by code the converter cannot replace (create_block_mask reached through an attribute, "
                                "a closure or a wrapper), and tracing that build needs sorts no ONNX exporter "
                                "translates: call create_block_mask by name inside forward (from "
                                "torch.nn.attention.flex_attention import create_block_mask), or build the mask once "
                                "in __init__")


def _same_plan(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None or a.keys() != b.keys():
        return a is None and b is None
    return all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


class Converted(torch.nn.Module):
    """``model`` with its analysed NATTEN / FlexAttention calls converted on every forward pass: what is
    exported. The original model stays the parity reference."""

    def __init__(self, model: torch.nn.Module, converter: CallConverter):
        super().__init__()
        self.model, self.converter = model, converter

    def forward(self, *inputs):
        with self.converter.active(self.model):
            return self.model(*inputs)


__all__ = ["CallConverter", "CallRecord", "ConversionRefused", "Converted", "neighborhood_window", "plan_flex",
           "quiet_third_party", "run_plan", "score_bias"]
