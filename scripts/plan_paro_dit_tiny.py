"""Make the PARO plan that zoo:paro-dit-tiny ships (models/weights/paro_dit_tiny_plan.json + .npz).

The same planner and calibration data as `attn-export zoo:paro-dit-tiny --paro-density 0.3 --paro-block 16`
(seeded random inputs of the zoo model, --calib-samples of them), written into the package.

    python scripts/plan_paro_dit_tiny.py [--samples 128]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from attn_export import paro_export
from attn_export.loader import load_model
from attn_export.models import zoo
from attn_export.pipeline import ExportOptions, calibration_source

WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=ExportOptions().calib_samples)
    args = parser.parse_args()
    defaults = zoo.entry("paro-dit-tiny").paro
    loaded = load_model("zoo:paro-dit-tiny")
    settings = paro_export.ParoSettings(defaults.grid, defaults.prefix, defaults.block, defaults.density, 8, 8)
    source = calibration_source(loaded, ExportOptions())
    job = paro_export.prepare(loaded, settings, itertools.islice(source.feeds, args.samples), source.description)
    target = WEIGHTS / f"{defaults.plan}.json"
    job.plan.save(target)
    print(f"wrote {target} and {target.with_suffix('.npz')}")
    print(paro_export.plan_table(job.plan))


if __name__ == "__main__":
    main()
