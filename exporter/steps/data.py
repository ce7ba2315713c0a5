"""The data an export and a check run on: the user's --inputs, real samples held out of the calibration data, the
calibration data itself, and seeded random inputs at the shapes that prove the file's dynamic axes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from attn_export import defaults
from attn_export.artifacts import BUCKET_INPUT, dynamic_axes
from attn_export.calib import data as calib_data
from attn_export.calib.data import InputInfo, check_feed
from attn_export.check_inputs import HeldOut, combine, count_rows, hold_out_count, skip_held_out, split_held_out
from attn_export.errors import AttnExportError
from attn_export.loader import LoadedModel
from attn_export.models import zoo
from attn_export.options import ExportOptions

RANDOM_DESCRIPTION = "seeded random inputs"


def model_input_infos(loaded: LoadedModel, opts: ExportOptions):
    """The inputs the exported ONNX file will take, before it exists: dtypes, and the export shapes with the
    batch and declared spatial dims symbolic where they will be dynamic."""
    infos = []
    for spec in loaded.inputs:
        dims: list = list(spec.shape)
        if opts.dynamic_batch and loaded.program is None:
            dims[0] = "batch"
        if opts.dynamic_spatial is not False:
            for axis, dim in loaded.spatial.get(spec.name, {}).items():
                dims[axis] = dim.name
        infos.append(InputInfo(spec.name, dims, np.dtype(str(spec.dtype).replace("torch.", ""))))
    return infos


def calibration_source(loaded: LoadedModel, opts: ExportOptions, infos=None):
    """Where INT8 calibration samples come from: --calib-data, else the zoo model's own data, else seeded
    random inputs (with the loud warning for a user's model). ``infos`` describe the model's inputs."""
    if opts.calib_data:
        infos = infos if infos is not None else model_input_infos(loaded, opts)
        return calib_data.from_spec(opts.calib_data, infos, opts.calib_preprocess)
    if loaded.source.startswith("zoo:") and zoo.entry(loaded.source[4:]).calib_data is not None:
        return calib_data.CalibSource(zoo.entry(loaded.source[4:]).calib_data(), f"{loaded.source} calibration data")
    return calib_data.random_source(lambda seed: loaded.random_inputs(opts.seed + 1000 + seed),
                                    loaded.input_names, warn=not loaded.source.startswith("zoo:"))


def calibration_data(loaded: LoadedModel, opts: ExportOptions, skip: int = 0):
    """The calibration source of this run without its first ``skip`` feeds (held out for the check), its first
    sample already checked against the model's inputs: none for a calibration cache or INT4 (weight-only; a given
    --calib-data is still read, so a bad file is reported)."""
    if opts.calib_cache:
        return calib_data.CalibSource((), f"calibration cache {opts.calib_cache}")
    if opts.quant.mode != "int8" and not opts.calib_data:
        return calib_data.CalibSource((), "none (INT4 is weight-only)")
    infos = model_input_infos(loaded, opts)
    source = calibration_source(loaded, opts, infos)
    if opts.quant.mode != "int8":  # nothing is calibrated: the data only feeds the check
        return calib_data.checked_source(source, infos)
    rest = dataclasses.replace(source, feeds=skip_held_out(source.feeds, skip),
                               description=source.description + (f", after the {skip} sample(s) held out for the "
                                                                 "check" if skip else ""),
                               count=None if source.count is None else source.count - skip)
    return calib_data.checked_source(rest, infos)


def held_out_samples(loaded: LoadedModel, opts: ExportOptions, planned: bool = False):
    """Real samples for the quality checks, held out of the calibration data (its first samples, never calibrated
    or planned on; at most a quarter of it): a HeldOut with no feeds when the calibration data is random, or
    none is held out. ``planned``: PARO plans on the data (so INT4, which calibrates nothing, still leaves some)."""
    if opts.check_samples == 0:
        return HeldOut([], "", "--check-samples 0 held no real sample out")
    infos = model_input_infos(loaded, opts)
    source = calibration_source(loaded, opts, infos)
    if not source.real:
        return HeldOut([], "")
    total = source.count
    if opts.quant and opts.quant.mode == "int4" and not planned:
        total = None  # weight-only: nothing is calibrated, the check may have all of it
    elif total is None:  # a stream of unknown length: count it, up to what decides the split
        total = count_rows(calibration_source(loaded, opts, infos).feeds, 4 * opts.check_samples)
    count = hold_out_count(total, opts.check_samples)
    if count == 0:
        return HeldOut([], source.description, f"{source.description} has {total} sample(s), too few to hold a "
                                                 "quarter out")
    held, _ = split_held_out(source.feeds, count)
    by_name = {i.name: i for i in infos}
    held = [check_feed(feed, by_name, index) for index, feed in enumerate(held)]  # as calibration checks its own
    return HeldOut(held, source.description)


def check_feeds(loaded: LoadedModel, onnx_path: Path, seed: int, user_feed: dict | None = None,
                user_source: str | None = None) -> tuple[list[dict], str]:
    """The user's inputs; or seeded random inputs at the export shapes, plus one more batch size where
    the ONNX batch is dynamic and one more spatial size where the model declares dynamic spatial dims
    that the ONNX file kept dynamic, so the check exercises the dynamism the file claims."""
    if user_feed is not None:
        return [user_feed], str(user_source)
    base = {i.name: i.shape for i in loaded.inputs}
    dynamic = dynamic_axes(onnx_path)
    batched = {name: axes for name, axes in dynamic.items() if name != BUCKET_INPUT}  # the bucket has no batch
    variants = [base]
    if batched and all(0 in axes for axes in batched.values()):
        variants.append({name: (shape[0] + 1, *shape[1:]) if name in batched else shape
                         for name, shape in base.items()})
    grown = loaded.grown_spatial_shapes(dynamic)
    if grown != base:
        variants.append(grown)
    feeds = [dict(zip(loaded.input_names, (t.numpy() for t in loaded.random_inputs(seed + i, shapes))))
             for i, shapes in enumerate(variants)]
    return feeds, f"random, seeds {seed} to {seed + len(feeds) - 1}"


def check_inputs(loaded: LoadedModel, onnx_path: Path, opts: ExportOptions, user_feed: dict | None = None,
                 held=None, buckets: int = 1):
    """The check's inputs (check_inputs.CheckInputs): the user's; else held-out real samples at the export shape
    (in batches the file and the engine profile accept; one sample per batch with PARO timestep buckets, whose
    layout is chosen per batch) plus random inputs at the extra shapes that prove its dynamic axes; else random."""
    feeds, source = check_feeds(loaded, onnx_path, opts.seed, user_feed, opts.inputs_npz)
    dynamic = {n: axes for n, axes in dynamic_axes(onnx_path).items() if n != BUCKET_INPUT}
    batch_dynamic = bool(dynamic) and all(0 in axes for axes in dynamic.values())
    static_batch = None if batch_dynamic else int(feeds[0][loaded.input_names[0]].shape[0])
    cap = 1 if buckets > 1 else min(defaults.CHECK_BATCH, opts.max_batch, *_profile_batches(opts, loaded))
    why = held.why_none if held and not held.feeds else ""
    return combine(feeds, source, user=user_feed is not None, held=held.feeds if held else None,
                   held_description=held.description if held else "", static_batch=static_batch, cap=cap,
                   why_random=why)


def _profile_batches(opts: ExportOptions, loaded: LoadedModel) -> list[int]:
    """The largest batch the engine's first profile (--shapes) takes, if it names an input."""
    profile = opts.shape_profiles[0] if opts.shape_profiles else {}
    return [profile[n].max[0] for n in loaded.input_names if n in profile and profile[n].max]


def read_inputs(path: str, loaded: LoadedModel) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            feed = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise AttnExportError(f"--inputs file {path} does not exist") from None
    except Exception as exc:  # corrupt or non-npz files raise many types
        raise AttnExportError(f"cannot read --inputs {path} as a .npz of arrays ({type(exc).__name__}); "
                              "write it with numpy.savez(path, NAME=array, ...)") from exc
    if set(feed) != set(loaded.input_names):
        raise AttnExportError(f"--inputs {path} holds {sorted(feed)}; the model's inputs are {loaded.input_names}")
    for info in loaded.inputs:
        array = feed[info.name]
        want = str(info.dtype).replace("torch.", "")
        if array.dtype.name != want:
            raise AttnExportError(f"--inputs {path}: '{info.name}' is {array.dtype.name}; the model takes {want}")
        if info.shape and array.ndim != len(info.shape):
            raise AttnExportError(f"--inputs {path}: '{info.name}' has {array.ndim} dims; the model takes "
                                  f"{len(info.shape)}")
    return feed
