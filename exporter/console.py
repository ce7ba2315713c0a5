"""What the CLI prints: numbered step progress, the check tables and verdicts, the files written, warnings last;
and the exit code a result calls for (0 pass, 1 a check failed or was inconclusive)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import click
from tqdm import tqdm

from attn_export.errors import EXIT_CHECK_FAILED


class StepProgress:
    """Numbered steps on stderr with their durations; a live tqdm line while a step runs on a terminal."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        self._write = tqdm.write
        self._bar = tqdm(total=total, file=sys.stderr, leave=False, disable=not sys.stderr.isatty(),
                         bar_format="{desc} [{elapsed}]")

    @contextlib.contextmanager
    def __call__(self, title: str):
        label = f"[{self.done + 1}/{self.total}] {title}"
        self._bar.set_description_str(f"{label} ...")
        start = time.perf_counter()
        stop = threading.Event()
        if not self._bar.disable:  # tqdm redraws only on updates: tick the elapsed time meanwhile
            threading.Thread(target=self._tick, args=(stop,), daemon=True).start()
        outcome = "failed after "
        try:
            yield
            outcome = ""
        finally:
            stop.set()
            self.done += 1
            self._bar.update(1)
            self._write(f"{label}: {outcome}{time.perf_counter() - start:.1f} s", file=sys.stderr)
            if outcome or self.done == self.total:
                self._bar.close()

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            self._bar.refresh()


def report_outcome(report, report_path) -> int:
    """Print the parity table; exit code 1 when it failed."""
    if report is None:
        return 0
    click.echo(report.table())
    if report_path:
        click.echo(f"wrote {report_path}")
    if not report.passed:
        outcome = verdict(report) if hasattr(report, "status") else "FAILED"
        click.echo(f"parity {outcome}: see the table above" + (f" and {report_path}" if report_path else ""),
                   err=True)
        return EXIT_CHECK_FAILED
    return 0


def verdict(report) -> str:
    return "INCONCLUSIVE" if report.status == "inconclusive" else "FAILED"


def show_export(result) -> int:
    """Files written, the plan and the check tables, warnings last (where they are seen); the exit code."""
    for line in result.converted_calls:
        click.echo(f"    converted call {line}", err=True)
    for path in (result.onnx_path, result.quantized_path, result.engine_path, result.paro_plan_path):
        if path:
            click.echo(f"wrote {path}")
    if result.paro_plan is not None:
        from attn_export.paro_export import plan_table  # torch: loaded already by a PARO export

        click.echo(plan_table(result.paro_plan))
    code = report_outcome(result.report, None if result.quant_report or result.paro_report else result.report_path)
    for label, report in (("PARO quality", result.paro_report), (None, result.quant_report)):
        if report is None:
            continue
        if label is None and result.quant_notes:
            click.echo(result.quant_notes)
        click.echo(report.table())
        if label is None or result.quant_report is None:
            click.echo(f"wrote {result.report_path}")
        if not report.passed:
            click.echo(f"{label or report.mode + ' parity'} {verdict(report)}: see the table above and "
                       f"{result.report_path}", err=True)
            code = EXIT_CHECK_FAILED
    if result.quant_report is None and result.quant_notes:
        click.echo(result.quant_notes)
    echo_files(result.junit_path, result.summary_path)
    if result.triton_path:
        click.echo(f"wrote {result.triton_path} (Triton model repository entry); serve it with "
                   f"{result.triton_path / 'serve.sh'}")
    for warning in result.warnings:
        click.echo(f"WARNING: {warning}", err=True)
    return code


def echo_files(*paths) -> None:
    for path in paths:
        if path:
            click.echo(f"wrote {path}")


