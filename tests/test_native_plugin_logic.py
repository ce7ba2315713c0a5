"""The plugin's TensorRT-free logic (parsing, validation, shapes, formats, serialization) built with the
host compiler and run on the CPU, and the layering rules of DESIGN.md section 6, grep-enforced."""

from __future__ import annotations

import re
import subprocess

from native_tools import PLUGINS, compile_program

PLUGIN_DIR = PLUGINS / "trt" / "neighborhoodAttention"
FORBIDDEN_IN_KERNELS = re.compile(r'#\s*include\s*[<"](NvInfer|torch/|ATen/|c10/)')


def test_plugin_logic_unit_tests_pass(tmp_path):
    exe = compile_program([PLUGINS / "tests" / "test_na_config.cpp", PLUGIN_DIR / "naConfig.cpp"], tmp_path / "t")
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    checks = int(result.stdout.split()[0])
    assert checks > 5000  # the round-trip test alone makes thousands of checks


def test_kernels_include_no_tensorrt_or_torch():
    sources = [p for p in (PLUGINS / "kernels").rglob("*") if p.suffix in {".h", ".cuh", ".cu", ".cpp"}]
    assert sources, "plugins/kernels is empty"
    offenders = [str(p) for p in sources if FORBIDDEN_IN_KERNELS.search(p.read_text())]
    assert not offenders, f"TensorRT/torch includes in kernels: {offenders}"


def test_plugin_logic_is_tensorrt_free():
    for name in ("naConfig.h", "naConfig.cpp"):
        assert "NvInfer" not in (PLUGIN_DIR / name).read_text(), name


def test_every_plugin_override_catches():
    """Every noexcept override in the IPluginV3 glue wraps its body in try/catch (no exception may
    cross into TensorRT)."""
    text = (PLUGIN_DIR / "naPlugin.cpp").read_text()
    bodies = re.findall(r"\)\s*(?:const\s*)?noexcept\s*\{(.*?)\n\}", text, flags=re.S)
    assert len(bodies) >= 20, "expected the IPluginV3 overrides in naPlugin.cpp"
    trivial = re.compile(r"^\s*return [^;]*;\s*$", re.S)  # a constant or member: cannot throw
    unguarded = [b.strip().splitlines()[0] for b in bodies if "try" not in b and not trivial.match(b)]
    assert not unguarded, f"overrides without try/catch: {unguarded}"
