"""The plugins' TensorRT-free logic (parsing, validation, shapes, formats, serialization) built with the
host compiler and run on the CPU, for every plugin folder under plugins/trt/, and the layering rules of
docs/architecture.md (Native layering), grep-enforced."""

from __future__ import annotations

import re
import subprocess

import pytest

from native_tools import (
    COMMON,
    COMMON_LOGIC,
    COMMON_LOGIC_HEADERS,
    PLUGINS,
    compile_program,
    logic_files,
    plugin_folders,
)

FOLDERS = plugin_folders()
FORBIDDEN_IN_KERNELS = re.compile(r'#\s*include\s*[<"](NvInfer|torch/|ATen/|c10/)')
# A test that runs few checks proves little: the neighborhood round trip alone makes thousands.
MIN_CHECKS = {"neighborhoodAttention": 5000}


def run_checks(exe) -> int:
    result = subprocess.run([str(exe)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[0])


def test_there_is_a_plugin_folder():
    assert [f.name for f in FOLDERS], "no plugins/trt/*/ with a *Plugin.cpp: the per-plugin tests would test nothing"


def test_common_logic_unit_tests_pass(tmp_path):
    exe = compile_program([PLUGINS / "tests" / "test_common_fields.cpp", *COMMON_LOGIC], tmp_path / "t")
    assert run_checks(exe) > 20


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_plugin_logic_unit_tests_pass(folder, tmp_path):
    """plugins/tests/test_<folder>_config.cpp with the folder's TensorRT-free sources, no TensorRT include."""
    test = PLUGINS / "tests" / f"test_{folder.name}_config.cpp"
    assert test.is_file(), f"every plugin has CPU tests of its logic: {test.relative_to(PLUGINS)} is missing"
    sources = [test, *(p for p in logic_files(folder) if p.suffix == ".cpp"), *COMMON_LOGIC]
    exe = compile_program(sources, tmp_path / "t", include_dirs=(folder,))
    assert run_checks(exe) > MIN_CHECKS.get(folder.name, 50)


# The block-layout rules (shape checks, rows = ceil(S / block), the kernels' attnx_block_layout) live once, in
# common/tensorInfo.* (layoutProblem, layoutParams); a plugin folder that spells them out again is a copy.
LAYOUT_COPY = re.compile(r"layout\.(rows|max_blocks|count_batch|count_heads|index_batch|index_heads)\s*=|ceilDiv\(")


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_block_layout_rules_have_one_home(folder):
    copies = [f"{p.name}: {line.strip()}" for p in logic_files(folder) for line in p.read_text().splitlines()
              if LAYOUT_COPY.search(line)]
    assert not copies, f"{folder.name} repeats the block-layout rules of common/tensorInfo.*: {copies}"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_plugin_has_a_glue_test(folder):
    """Built and run by ctest (tests/test_native_build.py checks that it ran)."""
    assert (PLUGINS / "tests" / f"test_{folder.name}_glue.cpp").is_file()


def test_kernels_include_no_tensorrt_or_torch():
    sources = [p for p in (PLUGINS / "kernels").rglob("*") if p.suffix in {".h", ".cuh", ".cu", ".cpp"}]
    assert sources, "plugins/kernels is empty"
    offenders = [str(p) for p in sources if FORBIDDEN_IN_KERNELS.search(p.read_text())]
    assert not offenders, f"TensorRT/torch includes in kernels: {offenders}"


@pytest.mark.parametrize("folder", [*FOLDERS, COMMON], ids=lambda f: f.name)
def test_plugin_logic_is_tensorrt_free(folder):
    files = [*COMMON_LOGIC, *COMMON_LOGIC_HEADERS] if folder == COMMON else logic_files(folder)
    assert files
    offenders = [p.name for p in files if "NvInfer" in p.read_text()]
    assert not offenders, f"TensorRT in the TensorRT-free logic of {folder.name}: {offenders}"


def noexcept_bodies(text: str) -> list[str]:
    """The bodies of every function defined `noexcept` (with `override`, `const` or not), braces matched."""
    bodies = []
    for match in re.finditer(r"\)\s*(?:const\s*)?noexcept\s*(?:override\s*)?(?:final\s*)?\{", text):
        depth, at = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[at], 0)
            at += 1
        bodies.append(text[match.end():at - 1])
    return bodies


TRIVIAL = re.compile(r"^\s*return [^;()]*;\s*$", re.S)  # a constant or member: cannot throw
GUARDED = re.compile(r"^\s*return guarded\(.*\);\s*$", re.S)  # the whole body inside the helper


def unguarded(bodies: list[str]) -> list[str]:
    return [b.strip().splitlines()[0] for b in bodies
            if not (TRIVIAL.match(b) or GUARDED.match(b) or ("try" in b and "catch (...)" in b))]


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_every_plugin_override_catches(folder):
    """Every noexcept override in a plugin's IPluginV3 glue (its own, or the shared common/attentionPlugin.h
    it instantiates) runs inside `guarded` (or try/catch(...)): no exception, std or not, may cross into TensorRT."""
    glue = sorted(folder.glob("*Plugin.*"))
    if any('#include "attentionPlugin.h"' in p.read_text() for p in glue):  # the shared glue's overrides
        glue.append(COMMON / "attentionPlugin.h")
    bodies = [b for p in glue for b in noexcept_bodies(p.read_text())]
    assert len(bodies) >= 15, f"expected the IPluginV3 overrides in {folder.name}/*Plugin.* or the shared glue"
    assert not unguarded(bodies), f"overrides without guarded or catch (...): {unguarded(bodies)}"


def test_guarded_catches_everything():
    """The helper itself catches `...` as well as std::exception (its behaviour: ctest common_glue)."""
    bodies = noexcept_bodies((COMMON / "pluginGlue.h").read_text())
    helper = next(b for b in bodies if "return body();" in b)
    assert "catch (std::exception const& e)" in helper and "catch (...)" in helper


def test_the_guard_check_catches_an_unguarded_override():
    """The checker above must be able to fail: a body with only a std::exception handler is flagged."""
    text = ("int32_t P::enqueue() noexcept {\n    try {\n        return run();\n"
            "    } catch (std::exception const& e) {\n        return -1;\n    }\n}\n"
            "char const* P::name() const noexcept override { return kName; }\n"
            "int32_t P::other() noexcept {\n    return guarded(kName, \"other\", -1, [&] { return run(); });\n}\n")
    assert unguarded(noexcept_bodies(text)) == ["try {"]
