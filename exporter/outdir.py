"""Atomic output folders: artifacts are staged beside OUTDIR and moved in only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from attn_export.errors import AttnExportError


@contextlib.contextmanager
def staged_output(outdir: str | os.PathLike, owned: tuple[str, ...] = ()):
    """Yield a staging folder; on success move its files into ``outdir``, on error leave nothing.

    Each file lands with an atomic rename, so a reader never sees a partial model.onnx or report.
    Files named in ``owned`` that this run did not produce are removed from ``outdir``, so that a
    report.json of an earlier run never sits beside a new model.onnx.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise AttnExportError(f"output path {outdir} is a file; pass a folder with -o")
    created = [p for p in (outdir.parent, *outdir.parent.parents) if not p.exists()]
    try:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.partial-", dir=outdir.parent))
    except OSError as exc:
        raise AttnExportError(f"cannot write to {outdir.parent} ({exc.strerror}); choose another -o") from exc
    try:
        yield stage
        outdir.mkdir(exist_ok=True)
        produced = {item.name for item in stage.iterdir()}
        for name in set(owned) - produced:
            (outdir / name).unlink(missing_ok=True)
        for name in sorted(produced):
            os.replace(stage / name, outdir / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only folders this call created, and only while still empty (after a failure)
