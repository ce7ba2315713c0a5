"""Model loading: zoo:NAME, torch.export archives (.pt2), checkpoint + factory, trusted pickles."""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import logging
import pickle
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attn_export.convert import convert_modules, needs_conversion
from attn_export.errors import AttnExportError, wrap_failure
from attn_export.inputs import InputSpec, batch_dim, random_inputs
from attn_export.models import zoo
from attn_export.registry import register_torch_ops
from attn_export.shapes import parse_input_shapes  # noqa: F401 - also the loader's, as before


@dataclass
class LoadedModel:
    """What the export and parity steps need, whatever the source."""

    source: str
    module: torch.nn.Module  # what is exported: the model with third-party attention converted to ours
    inputs: list[InputSpec]
    program: torch.export.ExportedProgram | None = None  # a .pt2 is exported as saved
    dynamic_shapes: Callable[[bool, bool], dict | None] | None = None
    spatial: dict = field(default_factory=dict)  # input name -> axis -> zoo.DynamicDim (zoo models)
    conversions: list[str] = field(default_factory=list)  # third-party modules swapped for ours
    original: torch.nn.Module | None = None  # the model as the user wrote it, when modules were converted

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def random_inputs(self, seed: int, shapes: Mapping[str, tuple[int, ...]] | None = None
                      ) -> tuple[torch.Tensor, ...]:
        """Seeded random inputs at the loaded shapes, or at ``shapes`` where given."""
        return random_inputs(self.inputs, seed, shapes)

    def grown_spatial_shapes(self, dynamic_axes: Mapping[str, set[int]]) -> dict[str, tuple[int, ...]]:
        """The input shapes with each declared dynamic spatial axis that is dynamic in ``dynamic_axes``
        grown by one step of its multiple (where its range allows)."""
        shapes = {}
        for info in self.inputs:
            shape = list(info.shape)
            for axis, dim in self.spatial.get(info.name, {}).items():
                if axis in dynamic_axes.get(info.name, ()) and shape[axis] // dim.multiple < dim.max_steps:
                    shape[axis] += dim.multiple
            shapes[info.name] = tuple(shape)
        return shapes


def load_model(
    spec: str | torch.nn.Module,
    factory: str | None = None,
    trust_pickle: bool = False,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    example_inputs=None,
) -> LoadedModel:
    """Load ``spec``: "zoo:NAME", a model file (see the README's table), or an nn.Module already built in
    Python (its inputs from ``example_inputs`` or ``input_shapes``)."""
    register_torch_ops()  # the custom ops a .pt2 refers to

    if isinstance(spec, torch.nn.Module):
        loaded = _module_model(f"<{type(spec).__name__}>", spec.eval(), example_inputs)
    elif spec.startswith("zoo:"):
        if factory:
            raise AttnExportError("--factory applies to checkpoints, not to zoo models; drop it")
        loaded = _load_zoo(spec[4:])
    else:
        path = Path(spec)
        if not path.exists():
            raise AttnExportError(f"model file {spec} does not exist; give a path, or zoo:NAME (see `attn-export zoo`)")
        if path.is_dir():
            raise AttnExportError(f"model path {spec} is a folder; give a .pt2 archive or a checkpoint file")
        kind = archive_kind(path)
        if kind == "torchscript":
            raise AttnExportError(
                f"{path} is a TorchScript archive (torch.jit.save), which torch.export cannot trace: save the eager "
                "model with torch.export.save (.pt2), or its state_dict and pass --factory module:function")
        if kind == "export":
            loaded = _load_exported_program(path)
        elif path.suffix == ".pt2":
            raise AttnExportError(f"cannot read {path} as a torch.export archive ("
                                  f"{'a zip without an export program' if kind == 'zip' else 'not a zip archive'}); "
                                  "write it with torch.export.save")
        elif factory:
            loaded = _load_checkpoint(path, factory)
        else:
            loaded = _load_pickled_module(path, trust_pickle)
    return _apply_input_shapes(loaded, input_shapes or {})


def archive_kind(path: Path) -> str:
    """What a model file holds, judged by its content, not its name: "torchscript" (torch.jit.save),
    "export" (torch.export.save), "zip" (torch.save's zip format) or "other" (not a zip: legacy
    torch.save, a raw pickle, or a broken file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return "other"
    tails = {name.split("/", 1)[1] for name in names if "/" in name}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return "export"
    if "constants.pkl" in tails and any(t.startswith("code/") for t in tails):
        return "torchscript"
    return "zip"


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs a traceback (and a note on file names) before raising; our one-line error says it all."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _load_zoo(name: str) -> LoadedModel:
    entry = zoo.entry(name)
    model, _ = zoo.create(name)
    return LoadedModel(f"zoo:{name}", model, list(entry.inputs), dynamic_shapes=entry.dynamic_shapes,
                       spatial=entry.spatial)


def _load_exported_program(path: Path) -> LoadedModel:
    try:
        with _quiet_torch_logs():
            program = torch.export.load(str(path))
    except Exception as exc:  # corrupt archives raise many types
        raise AttnExportError(f"cannot read {path} as a torch.export archive ({_brief(exc)}); "
                              "write it with torch.export.save") from exc
    user_inputs = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    examples = _flat_example_inputs(program)
    inputs = []
    for i, name in enumerate(user_inputs):
        ex = examples[i] if examples and i < len(examples) else None
        if isinstance(ex, torch.Tensor):
            inputs.append(_input_from_example(name, ex))
        else:
            inputs.append(InputSpec(name, (), torch.float32))  # shape must come from --input-shape
    return LoadedModel(str(path), program.module(), inputs, program=program)


def _flat_example_inputs(program) -> list:
    examples = getattr(program, "example_inputs", None)
    if not examples:
        return []
    args, kwargs = examples
    return list(args) + list(kwargs.values())


def _load_checkpoint(path: Path, factory: str) -> LoadedModel:
    built = _call_factory(factory)
    model, examples = built if isinstance(built, tuple) else (built, None)
    if not isinstance(model, torch.nn.Module):
        raise AttnExportError(f"--factory {factory} returned {type(model).__name__}; it must return an nn.Module "
                              "or (nn.Module, example_inputs)")
    state = _torch_load(path, weights_only=True)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AttnExportError(f"checkpoint {path} holds no state dict of tensors; save model.state_dict()")
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise AttnExportError(
            f"checkpoint {path} does not fit the model built by --factory {factory}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    return _module_model(str(path), model.eval(), examples)


def _load_pickled_module(path: Path, trust_pickle: bool) -> LoadedModel:
    if trust_pickle:
        _import_from_cwd()  # the pickle names the user's classes, as --factory names the user's module
        obj = _torch_load(path, weights_only=False)
        if not isinstance(obj, torch.nn.Module):
            raise AttnExportError(f"{path} holds a {type(obj).__name__}, not an nn.Module; "
                                  "for a state dict pass --factory module:function")
        return _module_model(str(path), obj.eval(), None)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AttnExportError(
            f"{path} is a pickled object and loading it runs arbitrary code: pass --trust-pickle if you trust its "
            "source, or save a state dict and pass --factory module:function") from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc
    raise AttnExportError(
        f"{path} holds {'a state dict' if isinstance(obj, Mapping) else 'a ' + type(obj).__name__} but no model; "
        "pass --factory module:function that builds the model")


def _torch_load(path: Path, weights_only: bool):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        if weights_only:
            raise AttnExportError(f"checkpoint {path} contains pickled objects beyond tensors; loading them runs "
                                  "code: save model.state_dict() instead") from exc
        raise _unreadable(path, exc) from exc
    except Exception as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: BaseException) -> AttnExportError:
    if isinstance(exc, AttnExportError):
        return exc
    hint = "is it truncated?" if isinstance(exc, (EOFError, zipfile.BadZipFile, RuntimeError)) else ""
    return AttnExportError(f"cannot read {path} as a PyTorch file ({_brief(exc)}); {hint or 'is it the right file?'}")


def resolve_callable(target: str, flag: str):
    """The function named by ``module:function`` or ``path/to/file.py:function`` (for ``flag``)."""
    module_name, _, func_name = target.rpartition(":")
    if not module_name or not func_name:
        raise AttnExportError(f"{flag} '{target}' must be module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module_name).stem, module_name)
            if spec is None or not Path(module_name).exists():
                raise AttnExportError(f"{flag} file {module_name} does not exist")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            _import_from_cwd()
            module = importlib.import_module(module_name)
    except AttnExportError:
        raise
    except Exception as exc:
        raise AttnExportError(f"{flag} {target}: cannot import {module_name} ({_brief(exc)})") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise AttnExportError(f"{flag} {target}: {module_name} has no function {func_name}")
    return func


def _import_from_cwd() -> None:
    """Make modules in the current folder importable, as `python -m` would (the console script's sys.path
    starts at its own bin/ folder instead)."""
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, "")


def _call_factory(factory: str):
    func = resolve_callable(factory, "--factory")
    try:
        return func()
    except Exception as exc:  # user code
        raise wrap_failure(exc, f"--factory {factory}", "fix the factory (--debug shows the traceback)") from exc


def _module_model(source: str, model: torch.nn.Module, examples) -> LoadedModel:
    # Convert a copy: the model as written stays the parity reference, so a wrong conversion is caught.
    original = model if needs_conversion(model) else None
    model, converted = convert_modules(copy.deepcopy(model)) if original is not None else (model, [])
    names = [p.name for p in inspect.signature(model.forward).parameters.values()
             if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if examples is not None:
        examples = (examples,) if isinstance(examples, torch.Tensor) else tuple(examples)
        names = names[: len(examples)]
        inputs = [_input_from_example(n, e) for n, e in zip(names, examples)]
    else:
        required = [p.name for p in inspect.signature(model.forward).parameters.values()
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        inputs = [InputSpec(n, (), torch.float32) for n in required]

    def dynamic_shapes(batch: bool, spatial: bool) -> dict | None:
        return {i.name: {0: batch_dim()} for i in inputs} if batch else None

    return LoadedModel(source, model, inputs, dynamic_shapes=dynamic_shapes, conversions=converted, original=original)


def _input_from_example(name: str, ex: torch.Tensor) -> InputSpec:
    if ex.is_floating_point():
        return InputSpec(name, tuple(ex.shape), ex.dtype)
    low, high = (int(ex.min()), int(ex.max()) + 1) if ex.numel() else (0, 1)
    return InputSpec(name, tuple(ex.shape), ex.dtype, low, high)


def _apply_input_shapes(loaded: LoadedModel, shapes: Mapping[str, tuple[int, ...]]) -> LoadedModel:
    unknown = set(shapes) - set(loaded.input_names)
    if unknown:
        raise AttnExportError(f"--input-shape names {sorted(unknown)}, but the model's inputs are: "
                              f"{', '.join(loaded.input_names) or '(none)'}")
    new_inputs = []
    for info in loaded.inputs:
        shape = shapes.get(info.name, info.shape)
        if not shape:
            raise AttnExportError(f"the shape of input '{info.name}' is unknown; pass --input-shape {info.name}=DIMS "
                                  "(e.g. 1x3x224x224)")
        if info.shape and len(shape) != len(info.shape):
            raise AttnExportError(f"--input-shape {info.name} has {len(shape)} dims; the model's input has "
                                  f"{len(info.shape)} ({'x'.join(map(str, info.shape))})")
        new_inputs.append(InputSpec(info.name, tuple(shape), info.dtype, info.low, info.high))
    loaded.inputs = new_inputs
    return loaded


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
