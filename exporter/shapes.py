"""Engine shape profiles: ``--shapes NAME=MIN:OPT:MAX`` and ``--profile`` groups (Polygraphy / trtexec convention),
checked against the model and against what the ONNX file declares dynamic, and the profiles an engine is built with.

TensorRT-free: parsing, validation and profile construction are plain data, tested on the CPU.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from attn_export.errors import AttnExportError

_DIMS = r"\d+(?:x\d+)*"
_ENTRY = re.compile(rf"([^=\s,:]+)=({_DIMS}):({_DIMS}):({_DIMS})")


@dataclass(frozen=True)
class ShapeRange:
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max))

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def label(self) -> str:
        return ":".join("x".join(map(str, dims)) for dims in (self.min, self.opt, self.max))


Profile = dict[str, ShapeRange]


def _dims(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split("x"))


def parse_entry(text: str, flag: str = "--shapes") -> tuple[str, ShapeRange]:
    """``images=1x3x64x64:8x3x224x224:32x3x384x384`` -> ("images", ShapeRange); each dim MIN <= OPT <= MAX."""
    match = _ENTRY.fullmatch(text.strip())
    if not match:
        raise AttnExportError(f"{flag} '{text}' is not NAME=MIN:OPT:MAX with positive dims joined by 'x', e.g. "
                              "images=1x3x64x64:8x3x224x224:32x3x384x384")
    name, *parts = match.groups()
    low, opt, high = (_dims(p) for p in parts)
    if any(d <= 0 for dims in (low, opt, high) for d in dims):
        raise AttnExportError(f"{flag} '{text}': dims must be positive")
    if not len(low) == len(opt) == len(high):
        raise AttnExportError(f"{flag} '{text}': MIN, OPT and MAX have {len(low)}, {len(opt)} and {len(high)} dims; "
                              "give each the input's rank")
    for axis, (lo, o, hi) in enumerate(zip(low, opt, high)):
        if not lo <= o <= hi:
            what = "MIN > OPT" if lo > o else "OPT > MAX"
            raise AttnExportError(f"{flag} '{text}': {what} on axis {axis} ({lo}, {o}, {hi}); each dim needs "
                                  "MIN <= OPT <= MAX")
    return name, ShapeRange(low, opt, high)


def parse_profiles(shapes: Sequence[str] = (), profiles: Sequence[str] = ()) -> list[Profile]:
    """The user's profiles: the ``--shapes`` entries form the first, each ``--profile`` (comma-separated
    entries) one more. An input named twice in one profile is an error."""
    groups = ([("--shapes", list(shapes))] if shapes else []) + [
        ("--profile", [e for e in group.split(",") if e.strip()]) for group in profiles]
    result = []
    for flag, entries in groups:
        if not entries:
            raise AttnExportError(f"{flag} is empty; give NAME=MIN:OPT:MAX entries")
        profile: Profile = {}
        for entry in entries:
            name, shape_range = parse_entry(entry, flag)
            if name in profile:
                raise AttnExportError(f"{flag}: input '{name}' is given twice in one profile")
            profile[name] = shape_range
        result.append(profile)
    return result


def check_against_model(profiles: Sequence[Profile], inputs: Mapping[str, Sequence], source: str,
                        steps: Mapping[str, Mapping[int, object]] | None = None) -> None:
    """Each profile names only ``inputs`` (name -> dims: an int where static, a name where dynamic; an empty
    list where unknown), with their rank; static dims keep their size; ``steps`` (input -> axis -> a zoo
    DynamicDim) checks declared size multiples and ranges."""
    for i, profile in enumerate(profiles):
        where = f"profile {i}" if len(profiles) > 1 else "--shapes"
        for name, shape_range in profile.items():
            if name not in inputs:
                raise AttnExportError(f"{where} names input '{name}', but {source} takes: {', '.join(inputs)}")
            dims = list(inputs[name])
            if dims and len(dims) != len(shape_range.min):
                raise AttnExportError(f"{where}: input '{name}' has {len(dims)} dims in {source} but the range "
                                      f"{shape_range.label()} has {len(shape_range.min)}")
            for axis, dim in enumerate(dims):
                lo, hi = shape_range.min[axis], shape_range.max[axis]
                if isinstance(dim, int) and not lo == shape_range.opt[axis] == hi == dim:
                    raise AttnExportError(f"{where}: axis {axis} of '{name}' is static ({dim}) in {source} but the "
                                          f"range gives {lo}..{hi}; keep it at {dim} or export it dynamic")
            for axis, step in (steps or {}).get(name, {}).items():
                for size in {shape_range.min[axis], shape_range.opt[axis], shape_range.max[axis]}:
                    if size % step.multiple or not step.min_steps <= size // step.multiple <= step.max_steps:
                        low, high = step.multiple * step.min_steps, step.multiple * step.max_steps
                        raise AttnExportError(f"{where}: axis {axis} of '{name}' = {size}, but {source} takes "
                                              f"multiples of {step.multiple} from {low} to {high}")


def default_profile(onnx_inputs: Mapping[str, Sequence], shapes: Sequence[Mapping[str, Sequence[int]]],
                    max_batch: int) -> Profile:
    """One profile covering ``shapes`` (the export shapes first, then the check's other input sets): opt is
    the export shape, each dim the ONNX file leaves symbolic ranges over the sizes seen, and a symbolic batch
    (--dynamic-batch) over [1, max_batch]."""
    if max_batch < 1:
        raise AttnExportError(f"--max-batch {max_batch} must be at least 1")
    profile = {}
    for name, dims in onnx_inputs.items():
        seen = [tuple(int(x) for x in s[name]) for s in shapes if name in s]
        if not seen:
            raise AttnExportError(f"no shape for ONNX input '{name}'; pass --input-shape {name}=DIMS")
        opt, low, high = seen[0], list(seen[0]), list(seen[0])
        for axis, dim in enumerate(dims):
            if isinstance(dim, int):
                continue
            low[axis] = min(s[axis] for s in seen)
            high[axis] = max(s[axis] for s in seen)
            if axis == 0:
                low[0], high[0] = 1, max(max_batch, high[0])
        profile[name] = ShapeRange(tuple(low), opt, tuple(high))
    return profile


def engine_profiles(onnx_inputs: Mapping[str, Sequence], user: Sequence[Profile],
                    shapes: Sequence[Mapping[str, Sequence[int]]], max_batch: int) -> list[Profile]:
    """The engine's optimization profiles: the user's (inputs they leave out take the default range), or the
    default profile alone. Every profile names every ONNX input, in the file's order."""
    default = default_profile(onnx_inputs, shapes, max_batch)
    if not user:
        return [default]
    return [{name: profile.get(name, default[name]) for name in onnx_inputs} for profile in user]


def check_covers(profile: Profile, feeds: Sequence[Mapping[str, Sequence[int]]], what: str = "the check") -> None:
    """Every input set of the parity check fits ``profile`` (the engine runs it with its first profile)."""
    for i, feed in enumerate(feeds):
        for name, shape in feed.items():
            shape_range = profile.get(name)
            if shape_range is not None and not shape_range.covers(tuple(shape)):
                raise AttnExportError(
                    f"{what} runs input set {i} with {name}={'x'.join(map(str, shape))}, outside the engine's first "
                    f"profile {name}={shape_range.label()}: widen --shapes to cover it, or pass --inputs")


def batch_range(profiles: Sequence[Profile], onnx_inputs: Mapping[str, Sequence]) -> tuple[int, list[int]] | None:
    """(largest batch, the profiles' opt batches) when every input's first dim is dynamic and shared; else None."""
    first = {dims[0] if dims else None for dims in onnx_inputs.values()}
    if not onnx_inputs or len(first) != 1 or isinstance(next(iter(first)), int) or None in first:
        return None
    highs = [r.max[0] for p in profiles for r in p.values()]
    opts = sorted({r.opt[0] for p in profiles for r in p.values()})
    return max(highs), opts


def profiles_to_json(profiles: Sequence[Profile]) -> list[dict]:
    return [{name: r.to_dict() for name, r in profile.items()} for profile in profiles]


def parse_input_shapes(specs: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x64x64`` items."""
    shapes = {}
    for spec in specs:
        match = re.fullmatch(r"([^=\s]+)=(\d+(?:x\d+)*)", spec.strip())
        if not match or any(int(d) <= 0 for d in match.group(2).split("x")):
            raise AttnExportError(
                f"--input-shape '{spec}' is not NAME=DIMS with positive dims joined by 'x', e.g. images=1x3x64x64")
        shapes[match.group(1)] = tuple(int(d) for d in match.group(2).split("x"))
    return shapes
