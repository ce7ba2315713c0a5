"""A Triton Inference Server model repository entry for an export: ``DIR/NAME/config.pbtxt`` and ``DIR/NAME/1/``
with the TensorRT engine (platform tensorrt_plan, the plugin library next to it) or, without an engine, the ONNX
file on the ONNX Runtime backend (which runs the attention nodes through their model-local functions).

The TensorRT backend must load the plugin library itself (``--backend-config=tensorrt,plugins=...``): the library
registers its plugins with the TensorRT already in the process when it is loaded, so an LD_PRELOAD (loaded before
TensorRT) registers nothing. ``DIR/NAME/serve.sh`` holds the one line that starts Triton so.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attn_export import defaults
from attn_export.errors import AttnExportError
from attn_export.onnx_utils import graph_inputs, graph_outputs

CONFIG_NAME = "config.pbtxt"
SERVE_NAME = "serve.sh"
PLUGIN_DIR = "plugins"  # not numeric: Triton does not take it for a model version
PLATFORMS = {"engine": ("tensorrt_plan", "model.plan"), "onnx": ("onnxruntime_onnx", "model.onnx")}
# numpy dtype name -> Triton's DataType (model_config.proto)
DATA_TYPES = {"bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
              "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
              "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
              "bfloat16": "TYPE_BF16"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def model_name(source: str, given: str | None = None) -> str:
    """The repository entry's name: --triton-name, else the model's (zoo:nat-tiny -> nat-tiny, ckpt.pt -> ckpt)."""
    if given is not None:
        if not _NAME.fullmatch(given):
            raise AttnExportError(f"--triton-name '{given}' must be letters, digits, '_', '.' or '-' (a folder name)")
        return given
    stem = source[4:] if source.startswith("zoo:") else Path(source.strip("<>")).stem
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")
    return name or "model"


def check_repository_path(repo: str | None, name: str | None = None) -> None:
    """--triton-repo must be a folder (or not exist yet); its entry NAME, if it exists, a folder too."""
    if repo is None:
        return
    path = Path(repo)
    if path.exists() and not path.is_dir():
        raise AttnExportError(f"--triton-repo {repo} is a file; pass a folder for the model repository")
    if name is not None and (path / name).exists() and not (path / name).is_dir():
        raise AttnExportError(f"--triton-repo {repo}: {path / name} is a file; remove it or pass --triton-name")


@dataclass
class Tensor:
    name: str
    data_type: str
    dims: list[int]


@dataclass
class Entry:
    name: str
    kind: str  # "engine" | "onnx"
    max_batch_size: int  # 0: no batch dimension Triton may batch on (dims are then the full shapes)
    inputs: list[Tensor]
    outputs: list[Tensor]
    preferred_batch_sizes: list[int] = field(default_factory=list)

    @property
    def platform(self) -> str:
        return PLATFORMS[self.kind][0]

    @property
    def model_file(self) -> str:
        return PLATFORMS[self.kind][1]


def _data_type(dtype, what: str) -> str:
    name = str(dtype)
    if name not in DATA_TYPES:
        raise AttnExportError(f"{what} has type {name}, which Triton's model configuration has no type for")
    return DATA_TYPES[name]


def entry_for(onnx_path: str | Path, name: str, kind: str, profiles: Sequence[dict] = (),
              max_batch: int = defaults.MAX_BATCH) -> Entry:
    """The entry for an exported file: inputs and outputs with the ONNX types and dims (a dim the ONNX file leaves
    dynamic is -1, unless every profile fixes it); Triton batches along the first dim when every input and output
    has a dynamic first dim, up to the profiles' largest batch (engine) or ``max_batch`` (ONNX Runtime), preferring
    the profiles' opt batches."""
    inputs, outputs = graph_inputs(onnx_path), graph_outputs(onnx_path)
    batched = bool(inputs) and all(i.shape and not isinstance(i.shape[0], int) for i in [*inputs, *outputs])
    preferred: list[int] = []
    if not batched:
        max_batch_size = 0
    elif profiles:
        max_batch_size = max(p[i.name].max[0] for p in profiles for i in inputs)
        preferred = sorted({p[i.name].opt[0] for p in profiles for i in inputs} - {1})
    else:
        max_batch_size = max_batch

    def dims(info) -> list[int]:
        shape = [d if isinstance(d, int) else -1 for d in info.shape]
        ranges = [p[info.name] for p in profiles if info.name in p]  # inputs only: profiles name no output
        for axis, dim in enumerate(shape):
            if dim == -1 and ranges and {(r.min[axis], r.max[axis]) for r in ranges} == {(ranges[0].min[axis],) * 2}:
                shape[axis] = ranges[0].min[axis]  # every profile pins it: say so
        return shape[1:] if batched else shape

    return Entry(name, kind, max_batch_size,
                 [Tensor(i.name, _data_type(i.dtype, f"input '{i.name}'"), dims(i)) for i in inputs],
                 [Tensor(o.name, _data_type(o.dtype, f"output '{o.name}'"), dims(o)) for o in outputs],
                 [b for b in preferred if b <= max_batch_size])


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_pbtxt(entry: Entry) -> str:
    """The model configuration in protobuf text format (model_config.proto's ModelConfig)."""

    def tensors(kind: str, items: list[Tensor]) -> list[str]:
        body = ",\n".join(f"  {{\n    name: {_quote(t.name)}\n    data_type: {t.data_type}\n"
                          f"    dims: [ {', '.join(map(str, t.dims))} ]\n  }}" for t in items)
        return [f"{kind} [", body, "]"]

    lines = [f"name: {_quote(entry.name)}", f"platform: {_quote(entry.platform)}",
             f"max_batch_size: {entry.max_batch_size}", f"default_model_filename: {_quote(entry.model_file)}",
             *tensors("input", entry.inputs), *tensors("output", entry.outputs)]
    if entry.max_batch_size > 0:
        lines += ["dynamic_batching {"]
        if entry.preferred_batch_sizes:
            lines += [f"  preferred_batch_size: [ {', '.join(map(str, entry.preferred_batch_sizes))} ]"]
        lines += [f"  max_queue_delay_microseconds: {defaults.TRITON_MAX_QUEUE_DELAY_US}", "}"]
    if entry.kind == "engine":
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_GPU", "  }", "]"]
    return "\n".join(lines) + "\n"


def serve_line(entry: Entry, plugin_file: str | None) -> str:
    """The command that serves the repository (paths relative to the entry folder, resolved by serve.sh)."""
    line = 'exec tritonserver --model-repository="$(dirname "$here")"'
    if entry.kind == "engine" and plugin_file:
        line += f' --backend-config=tensorrt,plugins="$here/{PLUGIN_DIR}/{plugin_file}"'
    return line + ' "$@"'


def write_entry(folder: Path, entry: Entry, model_file: Path, plugin_library: Path | None = None,
                needs_plugins: bool = True) -> str:
    """Fill ``folder`` (the staged DIR/NAME): config.pbtxt, 1/<model file>, the plugin library (engines that run
    our plugins; not those of an attention-lowered file, ``needs_plugins=False``) and serve.sh; returns the one
    line that starts Triton."""
    if entry.kind == "engine" and needs_plugins and plugin_library is None:
        raise AttnExportError("a Triton entry for a TensorRT engine needs the plugin library; build it with "
                              "`attn-export plugins build`")
    version = folder / str(defaults.TRITON_REPO_VERSION)
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_file, version / entry.model_file)
    (folder / CONFIG_NAME).write_text(config_pbtxt(entry))
    plugin_file = None
    if entry.kind == "engine" and needs_plugins:
        (folder / PLUGIN_DIR).mkdir(exist_ok=True)
        plugin_file = Path(plugin_library).name
        shutil.copyfile(plugin_library, folder / PLUGIN_DIR / plugin_file)
    line = serve_line(entry, plugin_file)
    why = ("# The TensorRT backend loads the plugin library (LD_PRELOAD would load it before TensorRT, and it\n"
           "# registers its plugins with the TensorRT already in the process).\n" if plugin_file else
           "# The engine runs ONNX's Attention on TensorRT's own layers (--lowering attention): no plugin library.\n"
           if entry.kind == "engine" else
           "# The ONNX Runtime backend runs the attention nodes through the file's model-local functions (it needs\n"
           "# ONNX Runtime 1.27 or newer inside Triton).\n")
    script = folder / SERVE_NAME
    script.write_text(f'#!/bin/sh\n# Serve this model (and the rest of its repository) with Triton.\n{why}'
                      f'here=$(cd "$(dirname "$0")" && pwd)\n{line}\n')
    script.chmod(0o755)
    return line
