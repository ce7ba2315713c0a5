"""PARO in the export, as policy: which settings an export of a model uses (flags, else the zoo model's), the
planning step (plan, or load a plan, on held-out-free calibration data), and the references and tolerances its
checks use. The planning itself: attn_export.paro_export and attn_export.calib.paro."""

from __future__ import annotations

import itertools
from pathlib import Path

from attn_export import defaults, paro_export
from attn_export.artifacts import PARO_PLAN_NAME
from attn_export.check_inputs import skip_held_out
from attn_export.errors import AttnExportError
from attn_export.loader import LoadedModel
from attn_export.options import ExportOptions
from attn_export.options.paro import parse_bits, parse_grid
from attn_export.parity import Reference
from attn_export.paro_export import DropBucket
from attn_export.steps.data import calibration_source
from attn_export.tolerances import Tolerances

PARO_RANDOM_PLAN = ("PARO was planned on seeded RANDOM inputs: the orders and masks fit random activations, not "
                    "the model's real ones; pass --calib-data with real samples (or --paro-plan with a plan made "
                    "on them)")


def uses_paro(opts: ExportOptions, source: str) -> bool:
    """Whether an export of ``source`` uses PARO: --paro / --no-paro, else the zoo model's own default."""
    if opts.paro is not None:
        return opts.paro
    return paro_export.zoo_paro(source) is not None or opts.paro_given()


def settings(opts: ExportOptions, source: str):
    """The resolved PARO settings of an export of ``source`` (None without PARO): flags first, then the zoo model's
    defaults; bits default to --int8/--int4's precision, else int8 (--lowering attention: float)."""
    if not uses_paro(opts, source):
        return None
    if opts.dynamic_spatial:
        raise AttnExportError("--dynamic-spatial: a PARO plan is made for one token count (its grid); export "
                              "with static spatial dims, or with --no-paro")
    zoo = paro_export.zoo_paro(source)
    if opts.paro_grid is None and zoo is None:
        raise AttnExportError("--paro needs --paro-grid FxHxW: the frames, height and width of the token grid "
                              "(plus --paro-prefix for text or register tokens before it)")
    default_bits = 4 if opts.quantize == "int4" else 8
    if opts.lowering == "attention":
        default_bits = 16  # float PARO: the Attention operator has no form of the QK/PV quantization emulation
    plan = opts.paro_plan
    if plan is None and zoo is not None and opts.paro_grid is None and opts.paro_density is None \
            and opts.paro_block is None and opts.paro_buckets is None:
        plan = str(zoo.plan_path())  # the plan the zoo model ships
    return paro_export.ParoSettings(
        grid=parse_grid(opts.paro_grid) if opts.paro_grid else tuple(zoo.grid),
        prefix=opts.paro_prefix if opts.paro_prefix is not None else (zoo.prefix if zoo else 0),
        block=opts.paro_block or (zoo.block if zoo else defaults.PARO_BLOCK),
        density=opts.paro_density or (zoo.density if zoo else defaults.PARO_DENSITY),
        qk_bits=parse_bits(opts.paro_qk, "--paro-qk", default_bits),
        pv_bits=parse_bits(opts.paro_pv, "--paro-pv", default_bits),
        buckets=opts.paro_buckets or defaults.PARO_BUCKETS, plan_file=plan)


def step_title(paro) -> str:
    return f"load the PARO plan {Path(paro.plan_file).name}" if paro.plan_file else "plan PARO attention"


def plan(loaded: LoadedModel, opts: ExportOptions, paro, stage: Path, held=None):
    """Plan (or load the plan of) the model's SDPA calls, measure the held-out quality per head, save the plan."""
    if paro.plan_file:
        feeds, description = (), f"plan file {paro.plan_file}"
    else:
        source = calibration_source(loaded, opts)
        feeds = itertools.islice(skip_held_out(source.feeds, held.rows if held else 0), opts.calib_samples)
        description = source.description
    job = paro_export.prepare(loaded, paro, feeds, description)
    if opts.check:
        paro_export.held_out_quality(loaded, job.plan, paro, opts.seed, held.feeds if held else None)
    job.plan.save(stage / PARO_PLAN_NAME)
    return job


def float_note(opts: ExportOptions) -> str | None:
    if opts.lowering != "attention":
        return None
    return ("--lowering attention writes float PARO (qk and pv unquantized): ONNX's Attention operator has no form of "
            "PARO's QK/PV quantization emulation; export with --lowering plugin for it")


def exported_reference(exported: LoadedModel):
    return Reference(exported.module, "pytorch-paro", "the model with its SDPA calls run as paro_attention (the "
                     "exported computation), on the CPU")


def dense_reference(original: LoadedModel, paro):
    model = DropBucket(original.module).eval() if paro.buckets > 1 else original.module
    return Reference(model, "pytorch-dense", "the model as written (dense attention), on the CPU")


# Fake quantization rounds at half steps: runtimes whose sums differ in the last bit round a rare element one
# step apart (one P step moves an output by up to |v| / qmax). The elementwise check of a quantized PARO
# export therefore tolerates that much (atol or rtol), never less than asked for.
PARO_TOLERANCE_FLOOR = {16: 0.0, 8: 2e-3, 4: 2e-2}


def paro_tolerances(paro, tolerances: Tolerances) -> Tolerances:
    floor = PARO_TOLERANCE_FLOOR[min(paro.qk_bits, paro.pv_bits)]
    return Tolerances(max(tolerances.atol, floor), max(tolerances.rtol, floor),
                      {n: max(t, floor) for n, t in tolerances.per_output_atol.items()},
                      {n: max(t, floor) for n, t in tolerances.per_output_rtol.items()})
