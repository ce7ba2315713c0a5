"""Atomic output folders: artifacts are staged beside OUTDIR and moved in only when complete; files and folders
written elsewhere in the same run (JUnit, summary, a Triton model folder) are staged beside their destinations and
moved in after OUTDIR's own."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from attn_export.errors import AttnExportError


class Extras:
    """Destinations outside a staging folder's own names, each written to a hidden sibling first.

    ``path(dest)`` gives where to write ``dest`` (a file, or with ``folder=True`` an empty folder);
    ``commit()`` renames each into place (a folder replaces the old one whole, so a reader never sees a mix
    of two runs); ``discard()`` removes what was staged and the folders it had to create."""

    def __init__(self):
        self._staged: dict[Path, Path] = {}
        self._created: list[Path] = []

    def path(self, dest: str | os.PathLike, folder: bool = False) -> Path:
        dest = Path(dest)
        if dest in self._staged:
            return self._staged[dest]
        missing = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._created += [p for p in missing if p not in self._created]
            staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
            # mkdtemp's folder is private (0700); what lands at dest gets the permissions of a plain mkdir
            staged.chmod(0o777 & ~_umask())
            if not folder:
                staged = staged / dest.name  # the caller writes the file; commit() moves it
        except OSError as exc:
            raise AttnExportError(f"cannot write to {dest.parent} ({exc.strerror}); choose another path") from exc
        self._staged[dest] = staged
        return staged

    def commit(self) -> list[Path]:
        for dest, staged in self._staged.items():
            if staged.is_dir() and dest.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                os.replace(dest, old / dest.name)
                os.replace(staged, dest)
                shutil.rmtree(old, ignore_errors=True)
            elif staged.is_dir():
                os.replace(staged, dest)
            else:
                os.replace(staged, dest)
                staged.parent.rmdir()
        done, self._staged, self._created = list(self._staged), {}, []
        return done

    def discard(self) -> None:
        for staged in self._staged.values():
            shutil.rmtree(staged if staged.is_dir() else staged.parent, ignore_errors=True)
        self._staged = {}
        for folder in sorted(self._created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only while still empty
        self._created = []


@contextlib.contextmanager
def staged_extras():
    """Yield an Extras; commit it when the body succeeds, discard it when the body fails."""
    extras = Extras()
    try:
        yield extras
    except BaseException:
        extras.discard()
        raise
    extras.commit()


def write_text_atomically(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` through a hidden sibling and a rename."""
    with staged_extras() as extras:
        extras.path(path).write_text(text)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def staged_output(outdir: str | os.PathLike, owned: tuple[str, ...] = (), extras: Extras | None = None):
    """Yield a staging folder; on success move its files into ``outdir``, on error leave nothing.

    Each file lands with an atomic rename, so a reader never sees a partial model.onnx or report.
    Files named in ``owned`` that this run did not produce are removed from ``outdir``, so that a
    report.json of an earlier run never sits beside a new model.onnx. ``extras`` (staged elsewhere by the
    body) are committed after ``outdir``'s files, or discarded with them.
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
        if extras is not None:
            extras.commit()
    except BaseException:
        if extras is not None:
            extras.discard()  # first: the folders created for them may be the ones removed below
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in sorted(created, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only folders this call created, and only while still empty (after a failure)
