"""The one exception type of attn-export (DESIGN.md section 8)."""

from __future__ import annotations

# CLI exit codes.
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # parity or accuracy check failed
EXIT_BAD_INPUT = 2  # bad input or usage
EXIT_MISSING_DEPENDENCY = 3  # a requested step needs something absent (TensorRT, plugin library, GPU)


class AttnExportError(Exception):
    """An expected failure: a one-line message naming what is wrong and what to do.

    ``exit_code`` is what the CLI exits with; the default means bad input.
    """

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT):
        # Keep the message on one line, whatever a wrapped library said.
        super().__init__(" ".join(str(message).split()))
        self.exit_code = exit_code


def missing_dependency(what: str, how: str) -> AttnExportError:
    """The error for a step that needs an optional dependency that is not installed."""
    return AttnExportError(f"{what} is not available: {how}", exit_code=EXIT_MISSING_DEPENDENCY)
