"""Every module imports, and `attn-export --help` runs, with the optional dependencies absent."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

OPTIONAL = ["tensorrt", "tensorrt_libs", "pycuda", "cuda", "cupy", "onnxruntime_gpu", "tritonclient", "grpc", "yaml"]

BLOCKER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {OPTIONAL!r}:
            raise ImportError('blocked optional dependency: ' + name)
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def _all_modules() -> list[str]:
    # The subpackages live in their own top-level folders (docs/architecture.md, Layout): walk each one.
    import attn_export.calib
    import attn_export.models

    packages = (attn_export, attn_export.models, attn_export.calib)
    return sorted({p.__name__ for p in packages} | {
        m.name for p in packages for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")})


def test_every_module_imports_without_optional_dependencies():
    modules = _all_modules()
    assert {"attn_export.cli", "attn_export.models.zoo", "attn_export.calib", "attn_export.trt",
            "attn_export.native", "attn_export.models.na_kernel_sim", "attn_export.ci", "attn_export.triton",
            "attn_export.bench", "attn_export.shapes", "attn_export.precision"} <= set(modules)
    proc = _run("import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
                + "import tensorrt\n")
    # The last line proves the blocker works: tensorrt must fail to import even where it is installed.
    assert "blocked optional dependency: tensorrt" in proc.stderr
    assert proc.stderr.count("Traceback") == 1


def test_import_is_light_and_help_works_without_optional_dependencies():
    proc = _run("import attn_export, sys\nassert 'torch' not in sys.modules, 'import attn_export pulled torch'\n"
                "from attn_export.cli import main\nmain(['--help'], prog_name='attn-export')")
    assert proc.returncode == 0, proc.stderr
    assert "Usage: attn-export" in proc.stdout
    proc = _run("from attn_export.cli import main\nmain(['export', '--help'], prog_name='attn-export')")
    assert proc.returncode == 0 and "--trust-pickle" in proc.stdout
    for command, flag in (("bench", "--runtime"), ("ci-template", "--gpu")):
        proc = _run(f"from attn_export.cli import main\nmain([{command!r}, '--help'], prog_name='attn-export')")
        assert proc.returncode == 0 and flag in proc.stdout, proc.stderr


def test_source_folders_are_not_importable_as_top_level_packages(tmp_path):
    # docs/architecture.md, Layout: exporter/, models/ and calib/ exist only as attn_export.*.
    code = ("import importlib.util\n"
            "print([n for n in ('models', 'calib', 'exporter') if importlib.util.find_spec(n)])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
