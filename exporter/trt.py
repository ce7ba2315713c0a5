"""TensorRT engines: build one from the exported ONNX with our plugin library, and run it in parity.

TensorRT is imported only when a step needs it (attn_export.lazy; Polygraphy's TensorRT backend defers it too). The
network is strongly typed (TensorRT 10+ takes precisions from the ONNX; TensorRT 11 has no other
mode), so no precision builder flags and no implicit INT8 calibrators are used.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx

# Polygraphy's TensorRT backend is read at call time (poly.X), where the tests put their fakes.
from polygraphy.backend import trt as poly
from polygraphy.backend.common import BytesFromPath

from attn_export import defaults, lazy
from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError, wrap_failure
from attn_export.lazy import TRT_INSTALL_HINT  # noqa: F401 - re-exported: trt.TRT_INSTALL_HINT
from attn_export.native import BUILD_HINT, PLUGIN_LIB_ENV, PLUGIN_LIB_NAME, PLUGIN_OPS, plugin_library
from attn_export.precision import onnx_precision
from attn_export.registry import DOMAIN
from attn_export.shapes import ShapeRange, default_profile, profiles_to_json  # ShapeRange: also trt.ShapeRange

DEFAULT_MAX_BATCH = defaults.MAX_BATCH
LOG_HINT = "rerun with --debug; the TensorRT log names the node"


def tensorrt_module():
    """The tensorrt module, or None when it is absent (or a PyPI download stub that cannot import, or has no
    Builder)."""
    tensorrt = lazy.find(lazy.tensorrt)
    return tensorrt if hasattr(tensorrt, "Builder") else None


def require_tensorrt():
    trt = tensorrt_module()
    if trt is None:
        raise AttnExportError(lazy.TENSORRT_MISSING, EXIT_MISSING_DEPENDENCY)
    return trt


def require_plugin_library() -> Path:
    path = plugin_library()
    if path is None:
        raise AttnExportError(f"building a TensorRT engine needs the plugin library {PLUGIN_LIB_NAME}: {BUILD_HINT} "
                              f"on a machine with TensorRT headers, or set {PLUGIN_LIB_ENV}", EXIT_MISSING_DEPENDENCY)
    return path


def require_engine_tools():
    """TensorRT and the plugin library, or exit 3 naming the missing one: (tensorrt module, library path)."""
    return require_tensorrt(), require_plugin_library()


ATTENTION_MIN_TENSORRT = (10, 14)  # IAttention, and the ONNX parser's Attention (opset 23)


def require_attention_tensorrt():
    """TensorRT new enough for ONNX's Attention operator (--lowering attention needs no plugin library), or
    exit 3 saying so."""
    trt = require_tensorrt()
    if _version(trt.__version__) < ATTENTION_MIN_TENSORRT:
        raise AttnExportError(
            f"--lowering attention needs TensorRT {'.'.join(map(str, ATTENTION_MIN_TENSORRT))} or newer (its ONNX "
            f"parser's Attention operator), found {trt.__version__}: upgrade TensorRT, or use --lowering plugin",
            EXIT_MISSING_DEPENDENCY)
    return trt


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(text))[:2])


def engine_available(plugins: bool = True) -> bool:
    """True when TensorRT and (for files with our plugin nodes, ``plugins``) the plugin library are present:
    the export builds an engine then. Without ``plugins``: TensorRT new enough for the attention lowering."""
    try:
        if not plugins:
            return require_attention_tensorrt() is not None
        return tensorrt_module() is not None and plugin_library() is not None
    except AttnExportError:
        return False


def profile_from(onnx_inputs: Mapping[str, Sequence], shapes: Sequence[Mapping[str, Sequence[int]]],
                 max_batch: int = DEFAULT_MAX_BATCH) -> dict[str, ShapeRange]:
    """The default optimization profile (attn_export.shapes.default_profile)."""
    return default_profile(onnx_inputs, shapes, max_batch)


def build_engine(onnx_path: str | Path, engine_path: str | Path,
                 profiles: Mapping[str, ShapeRange] | Sequence[Mapping[str, ShapeRange]],
                 timing_cache: str | Path | None = None, meta_path: str | Path | None = None,
                 precision: str | None = None) -> dict:
    """Build and write a serialized engine with one optimization profile per entry of ``profiles`` (one
    mapping: one profile); returns its metadata (also written to ``meta_path``). ``precision`` is recorded
    only: the network is strongly typed, so the ONNX file's types decide. A file without our plugin nodes (the
    attention lowering) builds on stock TensorRT: no plugin library, and engine.json lists no plugin layers."""
    nodes = plugin_nodes(onnx_path)  # one read of the file serves both checks
    check_plugin_inputs(nodes, Path(onnx_path).name)
    trt, plugins = require_engine_tools() if nodes else (require_attention_tensorrt(), None)

    profiles = [profiles] if isinstance(profiles, Mapping) else list(profiles)
    trt_profiles = []
    for profile in profiles:
        trt_profile = poly.Profile()
        for name, shapes in profile.items():
            trt_profile.add(name, shapes.min, shapes.opt, shapes.max)
        trt_profiles.append(trt_profile)
    config = poly.CreateConfig(profiles=trt_profiles, load_timing_cache=str(timing_cache) if timing_cache else None)
    start = time.perf_counter()
    try:
        parse = poly.NetworkFromOnnxPath(str(onnx_path), strongly_typed=True)
        network = (poly.LoadPlugins(plugins=[str(plugins)], obj=parse) if plugins else parse)()
    except Exception as exc:  # parser failures arrive as many types
        raise wrap_failure(exc, "parsing the ONNX file for TensorRT", LOG_HINT) from exc
    # Without our plugin registered, the ONNX parser silently runs the nodes' model-local functions: the
    # engine would build and pass parity without ever running our kernels. Refuse that engine.
    plugin_layers = check_plugin_layers([{"node": n.name, "op": n.op_type} for n in nodes],
                                        network_layers(trt, network[1]), Path(onnx_path).name) if nodes else []
    try:
        engine = poly.EngineBytesFromNetwork(network, config=config,
                                        save_timing_cache=str(timing_cache) if timing_cache else None)()
    except Exception as exc:  # parser / builder failures arrive as many types
        raise wrap_failure(exc, "building the TensorRT engine", LOG_HINT) from exc
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(engine))
    meta = {
        "engine": engine_path.name,
        "bytes": engine_path.stat().st_size,
        "tensorrt": trt.__version__,
        "strongly_typed": True,
        "plugin_library": str(plugins) if plugins else None,
        "plugin_library_sha256": _sha256(plugins) if plugins else None,
        "plugin_layers": plugin_layers,
        "onnx_sha256": _sha256(Path(onnx_path)),
        "precision": precision or onnx_precision(onnx_path),
        "profile": profiles_to_json(profiles)[0],  # the first, as earlier engine.json files had it
        "profiles": profiles_to_json(profiles),
        "timing_cache": str(timing_cache) if timing_cache else None,
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    if meta_path:
        Path(meta_path).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


PLUGIN_LAYER_TYPES = ("PLUGIN_V3", "PLUGIN_V2", "PLUGIN")


def plugin_nodes(onnx_path: str | Path) -> list:
    """The main graph's nodes (onnx.NodeProto) of ops the plugin library provides."""
    ops = {spec.onnx_op_type for spec in PLUGIN_OPS}
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [n for n in graph.node if n.domain == DOMAIN and n.op_type in ops]


def check_plugin_inputs(nodes: Sequence, onnx_name: str = "the ONNX file") -> None:
    """Exit 3 when a node (from plugin_nodes) has an input that its TensorRT plugin does not take yet
    (registry Input.plugin)."""
    specs = {spec.onnx_op_type: spec for spec in PLUGIN_OPS}
    for node in nodes:
        spec = specs[node.op_type]
        unsupported = [i.name for i, name in zip(spec.inputs, node.input) if name and not i.plugin]
        if unsupported:
            raise AttnExportError(
                f"{node.op_type} node '{node.name}' of {onnx_name} has input {', '.join(unsupported)}, "
                f"which the {spec.plugin_name} TensorRT plugin does not take yet: run this file with ONNX Runtime "
                "(export without --engine), or make the attention's mask block-aligned and drop its score_mod",
                EXIT_MISSING_DEPENDENCY)


def network_layers(trt, network) -> list[dict]:
    """The parsed network's layers: name, type and, for plugin layers, the plugin's identity when the
    bindings expose it (plugin, version, namespace; None otherwise)."""
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = str(layer.type).rsplit(".", 1)[-1]
        entry = {"layer": layer.name, "type": kind}
        if kind in PLUGIN_LAYER_TYPES:
            entry.update(zip(("plugin", "version", "namespace"), _plugin_identity(trt, layer, kind), strict=True))
        layers.append(entry)
    return layers


def _plugin_identity(trt, layer, kind: str) -> tuple:
    """(name, version, namespace) of a V3 plugin layer's plugin; None for other plugin layers (ours are V3).
    The bindings hand out plain ILayer objects: only a PLUGIN_V3 layer may be viewed as IPluginV3Layer
    (viewing a V2 layer as V3 would call the wrong virtual methods, which no except clause catches)."""
    if kind != "PLUGIN_V3":
        return None, None, None
    try:
        layer.__class__ = trt.IPluginV3Layer
        core = layer.plugin.get_capability_interface(trt.PluginCapabilityType.CORE)
        return core.plugin_name, core.plugin_version, core.plugin_namespace
    except Exception:  # noqa: BLE001 - bindings without these attributes: the layer name still identifies it
        return None, None, None


def check_plugin_layers(nodes: Sequence[dict], layers: Sequence[dict], onnx_name: str = "the ONNX file") -> list[dict]:
    """The plugin layers serving ``nodes`` (from plugin_nodes); exit 3 naming the nodes that did not
    become one. A plugin layer counts for a node when its plugin is (node's op, attn_export), or, where
    the bindings cannot tell the plugin, when it carries the node's name (the parser names it so)."""
    served, missing = [], []
    for op in dict.fromkeys(n["op"] for n in nodes):
        names = [n["node"] for n in nodes if n["op"] == op]
        ours = [layer for layer in layers if layer["type"] in PLUGIN_LAYER_TYPES and (
            (layer.get("plugin"), layer.get("namespace")) == (op, DOMAIN)
            or (layer.get("plugin") is None and layer["layer"] in names))]
        served += ours
        if len(ours) < len(names):
            seen = {layer["layer"] for layer in ours}
            unserved = [n for n in names if n not in seen] or names
            missing.append(f"{len(names) - len(ours)} of {len(names)} {op} nodes (" +
                           ", ".join(f"'{n}'" for n in unserved[:3]) + (", ..." if len(unserved) > 3 else "") + ")")
    if missing:
        raise AttnExportError(
            f"the TensorRT ONNX parser did not turn {'; '.join(missing)} of {onnx_name} into {DOMAIN} plugin "
            f"layers: it inlined their model-local ONNX functions, so the engine would never run our kernels; the "
            f"plugin library was not registered while parsing: check that {PLUGIN_LIB_NAME} loads and registers "
            f"them in this process ({BUILD_HINT} for this TensorRT version)", EXIT_MISSING_DEPENDENCY)
    return served


def engine_needs_plugins(engine_path: str | Path) -> bool:
    """Whether an engine runs our plugins: False only where its engine.json (beside it) lists no plugin layers
    and no plugin library (an attention-lowered file); True when unknown."""
    meta = Path(engine_path).with_name("engine.json")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        return True
    return bool(data.get("plugin_layers")) or data.get("plugin_library") is not None


def trt_runner(engine_path: str | Path, name: str = "tensorrt"):
    """A Polygraphy TrtRunner over a built engine, with our plugin library loaded first where it needs one."""
    plugins = require_engine_tools()[1] if engine_needs_plugins(engine_path) else None
    if plugins is None:
        require_tensorrt()
    engine = poly.EngineFromBytes(BytesFromPath(str(engine_path)))
    return poly.TrtRunner(poly.LoadPlugins(plugins=[str(plugins)], obj=engine) if plugins else engine, name=name)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
