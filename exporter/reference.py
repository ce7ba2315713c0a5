"""Reference outputs as an artifact: OUTDIR/reference.npz holds the check's inputs and the reference model's
outputs on them, so a machine without the PyTorch model (a GPU runner with TensorRT) can check an ONNX file or
an engine against them: `attn-export check --reference OUTDIR/reference.npz ONNX [--engine ENGINE]`.

Layout (numpy .npz, no pickles): ``input/I/NAME`` and ``output/I/NAME`` per input set I, and ``meta``, a JSON
string: the reference runner and what it is, the input and output names, where each input set came from and a
name per sample (check_inputs.CheckInputs), the model and the attn-export version that wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from attn_export.artifacts import REFERENCE_NAME
from attn_export.check_inputs import CheckInputs
from attn_export.defaults import __version__
from attn_export.errors import AttnExportError
from attn_export.parity import Reference, onnx_io

FORMAT = "attn-export reference 1"


@dataclass
class SavedReference:
    feeds: list[dict]
    outputs: list[dict]
    meta: dict

    @property
    def input_names(self) -> list[str]:
        return list(self.meta["inputs"])

    @property
    def output_names(self) -> list[str]:
        return list(self.meta["outputs"])


def reference_outputs(model, feeds: Sequence[Mapping[str, np.ndarray]], input_names: Sequence[str],
                      output_names: Sequence[str]) -> list[dict]:
    """The reference model's outputs on each feed (as the parity runner computes them)."""
    outputs = []
    for feed in feeds:
        args = [torch.from_numpy(np.ascontiguousarray(_full_precision(feed[n]))) for n in input_names]
        with torch.inference_mode():
            leaves = torch.utils._pytree.tree_leaves(model(*args))
        outputs.append({n: np.ascontiguousarray(t.detach().cpu().numpy()) for n, t in zip(output_names, leaves)})
    return outputs


def _full_precision(array: np.ndarray) -> np.ndarray:
    """fp16 / bf16 feeds (a low-precision file's) reach the fp32 reference cast up, as the parity runner does."""
    return array.astype(np.float32) if str(array.dtype) in ("float16", "bfloat16") else array


def save(path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[Mapping[str, np.ndarray]],
         reference: Mapping, inputs_meta: Mapping, model: str, export_shapes: Mapping | None = None) -> None:
    """Write the reference artifact (the caller stages ``path`` for an atomic commit). ``export_shapes``: the
    model's own input shapes, which an engine's profile takes as its optimum (as the export's does)."""
    arrays = {}
    for i, (feed, out) in enumerate(zip(feeds, outputs)):
        arrays.update({f"input/{i}/{n}": np.asarray(a) for n, a in feed.items()})
        arrays.update({f"output/{i}/{n}": np.asarray(a) for n, a in out.items()})
    meta = {"format": FORMAT, "model": model, "attn_export": __version__, "reference": dict(reference),
            "inputs": list(feeds[0]) if feeds else [], "outputs": list(outputs[0]) if outputs else [],
            "sets": len(feeds), "check_inputs": dict(inputs_meta),
            "export_shapes": {n: list(s) for n, s in (export_shapes or {}).items()}}
    with open(path, "wb") as handle:
        np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)


def load(path: str | Path) -> SavedReference:
    """Read a reference artifact; one-line errors for a missing or foreign file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT:
                raise ValueError("format")
            feeds = [{n: data[f"input/{i}/{n}"] for n in meta["inputs"]} for i in range(meta["sets"])]
            outputs = [{n: data[f"output/{i}/{n}"] for n in meta["outputs"]} for i in range(meta["sets"])]
    except FileNotFoundError:
        raise AttnExportError(f"--reference {path} does not exist; an export writes OUTDIR/{REFERENCE_NAME}") from None
    except (KeyError, ValueError, OSError) as exc:
        raise AttnExportError(f"--reference {path} is not an attn-export reference ({type(exc).__name__}); use the "
                              f"{REFERENCE_NAME} an export wrote") from None
    return SavedReference(feeds, outputs, meta)


class ReplayModel:
    """Stands in for the PyTorch model: returns the saved outputs of the saved input set it is called with."""

    def __init__(self, saved: SavedReference, input_names: Sequence[str]):
        self.saved, self.input_names = saved, list(input_names)  # the order the runner passes them in

    def __call__(self, *args):
        arrays = [a.numpy() for a in args]
        for feed, outputs in zip(self.saved.feeds, self.saved.outputs):
            if all(np.array_equal(feed[n], a) for n, a in zip(self.input_names, arrays)):
                return tuple(torch.from_numpy(outputs[n]) for n in self.saved.output_names)
        raise AttnExportError("an input set is not in the reference file; check with the inputs it holds")


def replay(saved: SavedReference, reference_path: str | Path, onnx_path: str | Path):
    """The saved reference as a Reference that replays its outputs on the saved inputs, and those inputs as the
    check's CheckInputs (with their origins); refuses a file whose inputs or outputs are not ``onnx_path``'s."""
    meta = saved.meta.get("check_inputs", {})
    sets = meta.get("feeds", [])
    inputs = CheckInputs([dict(f) for f in saved.feeds], [s.get("origin", "random") for s in sets] or
                         ["random"] * len(saved.feeds), [s.get("samples", []) for s in sets] or
                         [[f"set {i}"] for i in range(len(saved.feeds))], meta.get("kind", "random"),
                         f"saved in {reference_path}: {meta.get('description', '')}")
    described = saved.meta.get("reference", {})
    onnx_inputs, onnx_outputs = onnx_io(onnx_path)
    if set(onnx_inputs) != set(saved.input_names) or list(onnx_outputs) != saved.output_names:
        raise AttnExportError(f"--reference {reference_path} holds inputs {saved.input_names} and outputs "
                              f"{saved.output_names}; {onnx_path} has {list(onnx_inputs)} and {list(onnx_outputs)}: "
                              "it belongs to another export")
    reference = Reference(ReplayModel(saved, list(onnx_inputs)), described.get("runner", "reference"),
                          f"{described.get('model', 'the reference model')}, as saved in {reference_path}")
    return reference, inputs
