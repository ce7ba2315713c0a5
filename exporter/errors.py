"""The one exception type of attn-export (docs/architecture.md, Errors and exit codes)."""

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


def wrap_failure(exc: BaseException, what: str, hint: str = "rerun with --debug for details") -> AttnExportError:
    """The AttnExportError for a library failure: ours if one is in the chain, else one line naming
    ``what`` failed and the innermost cause."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, AttnExportError):
            return cause
        seen.add(id(cause))
        if (cause.__cause__ or cause.__context__) is None:
            break
        cause = cause.__cause__ or cause.__context__
    lines = str(cause).strip().splitlines()
    detail = lines[0] if lines else type(cause).__name__
    return AttnExportError(f"{what} failed: {detail}; {hint}")
