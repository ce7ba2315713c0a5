"""The one exception type of attn-export (docs/architecture.md, Errors and exit codes)."""

from __future__ import annotations

import contextlib
import traceback

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


DEBUG_HINT = "rerun with --debug for the traceback"

# The libraries whose exceptions we name (top-level module of the exception type -> name in messages).
_LIBRARIES = {"onnxruntime": "ONNX Runtime", "onnx": "onnx", "onnx_ir": "onnx_ir", "onnxscript": "onnxscript",
              "polygraphy": "Polygraphy", "tensorrt": "TensorRT", "torch": "PyTorch", "natten": "NATTEN"}


def innermost(exc: BaseException) -> BaseException:
    """The first AttnExportError in the cause chain of ``exc``, else its innermost cause."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, AttnExportError):
            return cause
        seen.add(id(cause))
        if (cause.__cause__ or cause.__context__) is None:
            break
        cause = cause.__cause__ or cause.__context__
    return cause


def library_of(exc: BaseException) -> str | None:
    """The library an exception type comes from ("ONNX Runtime", "onnx", ...), or None for builtins and ours."""
    return _LIBRARIES.get(type(exc).__module__.split(".", 1)[0])


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def wrap_failure(exc: BaseException, what: str, hint: str = DEBUG_HINT) -> AttnExportError:
    """The AttnExportError for a library failure: ours if one is in the chain, else one line naming
    ``what`` failed, the library that raised (where known) and the innermost cause's own message."""
    cause = innermost(exc)
    if isinstance(cause, AttnExportError):
        return cause
    library = library_of(cause)
    source = f" ({library} {type(cause).__name__})" if library else ""
    return AttnExportError(f"{what} failed{source}: {first_line(cause)}; {hint}")


@contextlib.contextmanager
def library_step(what: str, hint: str = DEBUG_HINT):
    """Any exception inside the block (a library's own failure) becomes one AttnExportError naming the step
    (exit 2); our own errors pass unchanged."""
    try:
        yield
    except AttnExportError:
        raise
    except Exception as exc:
        raise wrap_failure(exc, what, hint) from exc


def unexpected_failure(exc: BaseException) -> AttnExportError:
    """The one line for an exception no step expected (the CLI's last resort): where it came from and its
    message; exit 2 like any library failure."""
    cause = innermost(exc)
    if isinstance(cause, AttnExportError):
        return cause
    frames = traceback.extract_tb(cause.__traceback__) if cause.__traceback__ else []
    origin = library_of(cause) or next((name for frame in reversed(frames)
                                        for key, name in _LIBRARIES.items() if f"/{key}/" in frame.filename),
                                       "attn-export")
    return AttnExportError(f"unexpected failure in {origin} ({type(cause).__name__}): {first_line(cause)}; "
                           f"{DEBUG_HINT}")
