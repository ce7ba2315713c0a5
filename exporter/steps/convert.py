"""The model into an ONNX file: third-party attention calls converted to our ops, then torch.export and the ONNX
emission, with the checks that must pass before either (precision, dynamic spatial dims)."""

from __future__ import annotations

import dataclasses

import torch

from attn_export.call_convert import CallConverter, ConversionRefused, Converted
from attn_export.errors import AttnExportError, wrap_failure
from attn_export.inputs import name_forward_inputs
from attn_export.loader import LoadedModel
from attn_export.options import ExportOptions
from attn_export.steps.data import model_input_infos


def convert_calls(loaded: LoadedModel, seed: int):
    """The model with its NATTEN functional and FlexAttention calls converted to our ops (analysed in one
    eager pass); the model as written stays the parity reference. Unchanged when it makes no such call."""
    if loaded.program is not None:
        return loaded, []
    converter = CallConverter()
    try:
        records = converter.analyse(loaded.module, loaded.random_inputs(seed))
        if records:
            converter.confirm(loaded.module, loaded.random_inputs(seed + 1))
    except ConversionRefused:
        raise
    except Exception:  # noqa: BLE001 - the model rejects these inputs: the export step names the failure
        return loaded, []
    if not records:
        return loaded, []
    module = name_forward_inputs(Converted(loaded.module, converter).train(loaded.module.training),
                                 loaded.input_names)
    return dataclasses.replace(loaded, module=module, original=loaded.original or loaded.module), records


def check_precision(loaded: LoadedModel, dtype: str, paro) -> None:
    """--dtype fp16 / bf16 casts an nn.Module; a .pt2 program is exported as saved, and PARO quantizes itself."""
    if dtype == "fp32":
        return
    if loaded.program is not None:
        raise AttnExportError(f"--dtype {dtype}: {loaded.source} is a torch.export archive, exported as saved; "
                              f"export the module in {dtype} and save that, or drop --dtype")
    if paro:
        raise AttnExportError(f"--dtype {dtype} does not apply to PARO exports ({loaded.source} exports with PARO): "
                              "pass --no-paro, or drop --dtype")


def check_dynamic_spatial(loaded: LoadedModel, dynamic_spatial: bool | None) -> None:
    """An explicit --dynamic-spatial / --static-spatial must be one this model source can honour."""
    if loaded.program is not None and dynamic_spatial is not None:
        raise AttnExportError(f"--{'dynamic' if dynamic_spatial else 'static'}-spatial: {loaded.source} is a "
                              "torch.export archive, exported with the dynamic shapes it was saved with; drop the flag")
    if dynamic_spatial and not loaded.spatial:
        raise AttnExportError(f"--dynamic-spatial: {loaded.source} declares no dynamic spatial dims (zoo models do); "
                              "drop the flag, or save a .pt2 with torch.export and your own dynamic_shapes")


def expected_inputs(loaded: LoadedModel, opts: ExportOptions) -> dict[str, list]:
    """Each input's dims as the ONNX file will declare them (a name where dynamic), predicted before the export;
    a .pt2 keeps dynamic shapes we cannot read ahead, so there only names and ranks are known."""
    if loaded.program is not None:
        return {i.name: ["?"] * len(i.shape) for i in loaded.inputs}
    return {info.name: list(info.shape) for info in model_input_infos(loaded, opts)}


def output_names(loaded: LoadedModel, examples) -> list[str]:
    """Names for the ONNX outputs, from one eager run (which also shows that the inputs fit; an
    attention layer that rejects them is named in the error)."""
    # The modules being run, outermost first: when an attention op rejects its inputs, the innermost
    # one still running is the layer that called it (whatever class the user's layer is).
    running: list[str] = []

    def leave(*_) -> None:  # a forward hook that returned a value would replace the module's output
        running.pop()

    hooks = []
    for name, module in loaded.module.named_modules():
        if name:
            hooks.append(module.register_forward_pre_hook(lambda *_, name=name: running.append(name)))
            hooks.append(module.register_forward_hook(leave))
    try:
        with torch.inference_mode():
            count = len(torch.utils._pytree.tree_leaves(loaded.module(*examples)))
    except AttnExportError as exc:
        raise AttnExportError(f"layer '{running[-1]}': {exc}" if running else str(exc)) from exc
    except Exception as exc:  # the model rejects inputs of these shapes
        shapes = ", ".join(f"{i.name}={'x'.join(map(str, i.shape))}" for i in loaded.inputs)
        raise wrap_failure(exc, f"running the model on inputs {shapes}",
                           "pass --input-shape with shapes it accepts") from exc
    finally:
        for hook in hooks:
            hook.remove()
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
