"""PARO in the export: plan (or load a plan for) every scaled_dot_product_attention call of a model, export
them as ParoAttention nodes, and measure what the approximation costs.

The model is never edited: a torch function mode replaces its SDPA calls while torch.export traces it
(attn_export.models.sdpa_capture). Each call's order, gather index and layout become constants of the
graph; with timestep buckets, the exported graph takes an int64 ``paro_bucket`` input that selects the
bucket's layout.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from attn_export.artifacts import BIT_NAMES, BUCKET_INPUT, BUCKETS_METADATA
from attn_export.calib.paro import ParoPlan, check_plan_arguments, plan_head, plan_model, quality
from attn_export.check_inputs import held_rows
from attn_export.errors import AttnExportError
from attn_export.inputs import InputSpec, name_forward_inputs
from attn_export.loader import LoadedModel
from attn_export.models import zoo
from attn_export.models.block_layout import from_block_mask
from attn_export.models.paro import grid_permutation, paro_attention
from attn_export.models.sdpa_capture import SdpaRecorder, SdpaReplacer
from attn_export.onnx_utils import save_atomically
from attn_export.options.paro import BITS, parse_bits, parse_grid  # noqa: F401 - also paro_export's (flags own them)
from attn_export.tables import render_table

PLAN_NAME = "paro_plan.json"  # and paro_plan.npz beside it
TIMESTEP_INPUT = "timestep"
HELD_OUT_SAMPLES = 2  # inputs the held-out quality metrics use (seeded, never calibration data)


@dataclass(frozen=True)
class ParoSettings:
    grid: tuple[int, int, int]
    prefix: int
    block: int
    density: float
    qk_bits: int
    pv_bits: int
    buckets: int = 1
    plan_file: str | None = None  # reuse this plan instead of planning
    q_group: int = 32
    k_group: int = 64
    smooth_k: bool = True

    @property
    def tokens(self) -> int:
        return self.prefix + math.prod(self.grid)

    @property
    def mode(self) -> str:
        """The quality criterion's name: the coarser of the two precisions ("paro-int8", "paro-int4", ...)."""
        return f"paro-{BIT_NAMES[min(self.qk_bits, self.pv_bits)]}"

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "prefix": self.prefix, "tokens": self.tokens, "block": self.block,
                "density": self.density, "qk": BIT_NAMES[self.qk_bits], "pv": BIT_NAMES[self.pv_bits],
                "q_group": self.q_group, "k_group": self.k_group, "smooth_k": self.smooth_k,
                "buckets": self.buckets, "plan_file": self.plan_file}


def zoo_paro(source: str):
    """The zoo entry's PARO defaults (ZooParo) for a "zoo:NAME" source, else None."""
    if not source.startswith("zoo:"):
        return None
    return zoo.entry(source[4:]).paro


# ---------------------------------------------------------------------------------------------
# Planning


@dataclass
class ParoJob:
    """What the export needs: the plan, and the model to export (its SDPA calls replaced; with buckets, one
    more input) as a LoadedModel."""

    plan: object  # attn_export.calib.paro.ParoPlan
    loaded: LoadedModel
    settings: ParoSettings
    planned: bool  # False: loaded from a plan file


def prepare(loaded: LoadedModel, settings: ParoSettings, calib_feeds, calib_description: str,
            progress=None) -> ParoJob:
    """Plan the model's SDPA calls on calibration feeds (dicts of arrays), or load ``settings.plan_file``,
    and build the model to export."""
    if loaded.program is not None:
        raise AttnExportError("--paro needs the model's Python code (its SDPA calls are replaced while tracing); "
                              "a torch.export archive is already traced: load the model with --factory instead")
    check_plan_arguments(settings.tokens, settings.grid, settings.prefix, settings.density, settings.block)
    names = loaded.input_names
    if settings.buckets > 1 and TIMESTEP_INPUT not in names:
        raise AttnExportError(f"--paro-buckets needs a model input named '{TIMESTEP_INPUT}' (the normalized "
                              f"diffusion time s/S in [0, 1]); the model's inputs are {names}")
    recorder = SdpaRecorder(settings.tokens)
    recorder.run(loaded.module, *loaded.random_inputs(0))
    if settings.plan_file:
        plan = ParoPlan.load(settings.plan_file)
        _check_plan_settings(plan, settings)
        plan.check_fits(recorder.calls, f"--paro-plan {settings.plan_file}")
        planned = False
    else:
        inputs = _tensors(calib_feeds, names)
        bucket_of = (lambda x: buckets_of(x[names.index(TIMESTEP_INPUT)], settings.buckets)) \
            if settings.buckets > 1 else None
        plan = plan_model(loaded.module, inputs, settings.grid, settings.prefix, settings.density, settings.block,
                          buckets=settings.buckets, bucket_of=bucket_of, source=calib_description,
                          progress=progress)
        planned = True
    return ParoJob(plan, _export_model(loaded, plan, settings), settings, planned)


def _check_plan_settings(plan, settings: ParoSettings) -> None:
    mine = (tuple(settings.grid), settings.prefix, settings.block, settings.buckets)
    theirs = (tuple(plan.grid), plan.prefix, plan.block, plan.buckets)
    if mine != theirs:
        raise AttnExportError(f"--paro-plan {settings.plan_file} was made for grid {'x'.join(map(str, plan.grid))}, "
                              f"prefix {plan.prefix}, block {plan.block}, {plan.buckets} bucket(s); this export asks "
                              f"for {'x'.join(map(str, settings.grid))}, prefix {settings.prefix}, block "
                              f"{settings.block}, {settings.buckets}: give matching --paro-* flags or plan anew")


def _tensors(feeds, names: Sequence[str]):
    for feed in feeds:
        yield tuple(torch.from_numpy(np.ascontiguousarray(feed[name])) for name in names)


def buckets_of(timestep: torch.Tensor, buckets: int) -> list[int]:
    """The bucket of each sample: floor(t * T) of its normalized time t = s / S, clamped to T - 1."""
    t = timestep.double().reshape(timestep.shape[0], -1)[:, 0] if timestep.dim() else timestep.double().reshape(1)
    return [min(buckets - 1, max(0, int(math.floor(float(x) * buckets)))) for x in t]


class _Planned(torch.nn.Module):
    """The model with its planned SDPA calls run as paro_attention; the plan's arrays are buffers (exported as
    initializers). With buckets the last input, ``paro_bucket`` (int64 [1]), selects the layouts."""

    def __init__(self, model: torch.nn.Module, plan, settings: ParoSettings, bucketed: bool):
        super().__init__()
        self.model, self.settings, self.bucketed = model, settings, bucketed
        self.calls = {}
        for call in plan.calls:
            self.register_buffer(f"perm_{call.index}", torch.from_numpy(call.perm_idx), persistent=False)
            self.register_buffer(f"count_{call.index}", torch.from_numpy(call.kv_count), persistent=False)
            self.register_buffer(f"index_{call.index}", torch.from_numpy(call.kv_index), persistent=False)
            self.calls[call.index] = call.scale

    def forward(self, *inputs):
        bucket = inputs[-1].reshape(1) if self.bucketed else None
        inputs = inputs[:-1] if self.bucketed else inputs
        s = self.settings

        def attend(index, q, k, v, scale):
            if index not in self.calls:
                return None
            count, layout = getattr(self, f"count_{index}"), getattr(self, f"index_{index}")
            if bucket is None:
                count, layout = count[0], layout[0]
            else:
                count, layout = count.index_select(0, bucket)[0], layout.index_select(0, bucket)[0]
            return paro_attention(q, k, v, getattr(self, f"perm_{index}"), count, layout, s.block, s.qk_bits,
                                  s.pv_bits, s.q_group, s.k_group, s.smooth_k, scale)

        with SdpaReplacer(attend):
            return self.model(*inputs)


def _export_model(loaded: LoadedModel, plan, settings: ParoSettings) -> LoadedModel:
    bucketed = settings.buckets > 1
    module = _Planned(loaded.module, plan, settings, bucketed).train(loaded.module.training)
    name_forward_inputs(module, loaded.input_names + ([BUCKET_INPUT] if bucketed else []))
    inputs = list(loaded.inputs)
    if bucketed:
        inputs.append(InputSpec(BUCKET_INPUT, (1,), torch.int64, 0, settings.buckets))
    base = loaded.dynamic_shapes

    def dynamic_shapes(batch: bool, spatial: bool):  # the token count is the plan's: no dynamic spatial dims
        shapes = base(batch, False) if base else None
        return {**(shapes or {}), BUCKET_INPUT: None} if bucketed and shapes else shapes

    return dataclasses.replace(loaded, module=module, inputs=inputs, dynamic_shapes=dynamic_shapes, spatial={},
                               original=None)


def add_buckets(feeds: list[dict], buckets: int) -> list[dict]:
    """Check feeds with the ``paro_bucket`` input a bucketed export takes, derived from each feed's timestep
    as the runtime derives it (floor(t * T))."""
    out = []
    for feed in feeds:
        bucket = buckets_of(torch.from_numpy(np.asarray(feed[TIMESTEP_INPUT])), buckets)[0]
        out.append({**feed, BUCKET_INPUT: np.array([bucket], np.int64)})
    return out


def mark_buckets(proto, path, buckets: int) -> None:
    """Record the bucket count in the exported file (metadata), so that `attn-export check` derives the
    paro_bucket input as the export did."""
    mark_metadata(proto, path, {BUCKETS_METADATA: str(buckets)})


def mark_metadata(proto, path, entries: dict[str, str]) -> None:
    """Add ``entries`` to the file's model metadata (kept: what is there already) and save it."""
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **entries})
    save_atomically(proto, path)


class DropBucket(torch.nn.Module):
    """The dense model as the reference of a bucketed export: it ignores the trailing paro_bucket input."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *inputs):
        return self.model(*inputs[:-1])


# ---------------------------------------------------------------------------------------------
# Quality on held-out inputs


def held_out_quality(loaded: LoadedModel, plan, settings: ParoSettings, seed: int, held_feeds=None) -> None:
    """Per call and head, on held-out inputs (never calibration data: real samples held out of it where given, else
    seeded random ones): relative L2 and cosine of PARO attention against dense fp32 attention, for the chosen
    order and for FHW (identity) with the mask planned for it on the calibration data at the same density, at fp16,
    int8 and int4. Stored in each head's info of ``plan``; ``plan.quality_inputs`` says what they ran on."""
    recorder = SdpaRecorder(settings.tokens, keep=True)
    for inputs in _quality_inputs(loaded, seed, held_feeds):
        recorder.run(loaded.module, *inputs)
    plan.quality_inputs = (f"{held_rows(held_feeds)} held-out real sample(s)" if held_feeds
                           else f"{HELD_OUT_SAMPLES} seeded random input sets")
    identity = grid_permutation(0, settings.grid, settings.prefix).to(torch.int32)
    for call in plan.calls:
        q, k, v = (torch.cat([t[j] for t in recorder.tensors[call.index]]) for j in range(3))
        for h, info in enumerate(call.head_info):
            if call.fhw_kv_count is not None:  # planned on the calibration data, like the chosen order
                fhw = (torch.from_numpy(call.fhw_kv_count[h]), torch.from_numpy(call.fhw_kv_index[h]))
            else:  # an older plan file: the FHW mask is fitted here, on these inputs (said in the plan's info)
                fhw = from_block_mask(_identity_mask(q[:, h], k[:, h], settings, call.scale)[None, None])
                info["fhw_mask"] = "fitted on the held-out inputs (the plan file keeps no FHW layout)"
            layouts = {"chosen": (torch.from_numpy(call.perm_idx[h]),
                                  torch.from_numpy(call.kv_count[0, :, h]), torch.from_numpy(call.kv_index[0, :, h])),
                       "FHW": (identity, *fhw)}
            info["held_out"] = _layout_quality(q[:, h:h + 1], k[:, h:h + 1], v[:, h:h + 1], layouts, settings,
                                               call.scale, quality, paro_attention)


def _quality_inputs(loaded: LoadedModel, seed: int, held_feeds):
    if held_feeds:
        return [tuple(torch.from_numpy(np.ascontiguousarray(f[n])) for n in loaded.input_names) for f in held_feeds]
    return [loaded.random_inputs(seed + 5000 + i) for i in range(HELD_OUT_SAMPLES)]


def _layout_quality(qb, kb, vb, layouts, settings: ParoSettings, scale, quality, paro_attention) -> dict:
    metrics = {}
    want = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, scale=scale)
    for label, (perm, count, index) in layouts.items():
        count, index = count.reshape(1, 1, -1), index.reshape(1, 1, count.numel(), -1)
        for bits in (16, 8, 4):
            got = paro_attention(qb, kb, vb, perm[None].to(torch.int32), count, index, settings.block, bits, bits,
                                 settings.q_group, settings.k_group, settings.smooth_k, scale)
            metrics[f"{label}_{BIT_NAMES[bits]}"] = {k_: round(v_, 5) for k_, v_ in quality(got, want).items()}
    return metrics


def _identity_mask(q, k, settings: ParoSettings, scale):
    """The mask the planner would keep for the identity order (FHW) of one head, for comparison."""
    return plan_head(q, k, settings.grid, settings.prefix, settings.density, settings.block, scale=scale,
                     order=0).masks[0, 0]


def plan_table(plan) -> str:
    """Per call and head: order, density, recall and (when measured) held-out relative L2 chosen vs FHW."""
    head = ("call", "head", "order", "density", "recall", "rel L2 chosen / FHW (fp16)", "(int8)", "(int4)")
    rows = []
    for call in plan.calls:
        for info in call.head_info:
            held = info.get("held_out", {})

            def pair(bits, held=held):
                a, b = held.get(f"chosen_{bits}"), held.get(f"FHW_{bits}")
                return f"{a['rel_l2']:.4f} / {b['rel_l2']:.4f}" if a and b else "-"

            rows.append((str(call.index), str(info["head"]), info["order"], f"{info['density']:.3f}",
                         f"{info['recall']:.4f}", pair("fp16"), pair("int8"), pair("int4")))
    skipped = [f"call {i} left dense: {why}" for i, why in sorted(plan.skipped.items())]
    measured = [f"held-out quality on {plan.quality_inputs}; FHW: the identity order's mask planned on the same "
                f"calibration data ({plan.source})"] if plan.quality_inputs else []
    return "\n".join([render_table(head, rows), *measured, *skipped])
