"""Compile the TensorRT-free, CUDA-free C++ of plugins/ with the host compiler for CPU unit tests, talk to the
dump programs of plugins/tests (one request a line on stdin, one answer a line on stdout), find the plugin
folders (plugins/trt/<folder>/ with a *Plugin.cpp) that every per-plugin test loops over, and open the kernel
library for the GPU tier."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from attn_export import native

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
COMMON = PLUGINS / "trt" / "common"
INCLUDE_DIRS = [PLUGINS / "kernels", COMMON]
# The TensorRT-free part of plugins/trt/common (the rest, pluginGlue/pluginLogger/pluginRegistration, is glue).
COMMON_LOGIC = [COMMON / "pluginFields.cpp", COMMON / "tensorInfo.cpp"]
COMMON_LOGIC_HEADERS = [COMMON / "pluginFields.h", COMMON / "tensorInfo.h"]


def plugin_folders() -> list[Path]:
    """Every plugin folder: plugins/trt/*/ with IPluginV3 glue (*Plugin.cpp); common/ has none."""
    return sorted(d for d in (PLUGINS / "trt").iterdir() if d.is_dir() and any(d.glob("*Plugin.cpp")))


def logic_files(folder: Path) -> list[Path]:
    """A plugin's TensorRT-free files: everything but its *Plugin.* glue and README."""
    return sorted(p for p in folder.iterdir() if p.suffix in {".h", ".cpp"} and not p.stem.endswith("Plugin"))


def config_header(folder: Path) -> Path:
    """The plugin's TensorRT-free header (*Config.h), which holds its declaration (PluginDecl kDecl in
    namespace attnx::plugin::<folder>)."""
    headers = sorted(folder.glob("*Config.h"))
    assert len(headers) == 1, f"{folder.name}: expected one *Config.h with the plugin's declaration, found {headers}"
    return headers[0]


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("native tier: no C++ compiler (install g++) to build the plugin logic tests")
    return cxx


def compile_program(sources: list[Path], output: Path, defines: tuple[str, ...] = (),
                    include_dirs: tuple[Path, ...] = ()) -> Path:
    """Builds one executable (no TensorRT include path: a TensorRT include fails the build); a compile
    error fails the test with the compiler's message."""
    cmd = [host_compiler(), "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"]
    cmd += [f"-I{d}" for d in [*INCLUDE_DIRS, *include_dirs]] + [f"-D{d}" for d in defines]
    cmd += [str(s) for s in sources] + ["-o", str(output)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"compiling {[s.name for s in sources]} failed:\n{result.stderr[-4000:]}")
    return output


def build_dump(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """plugins/tests/<name>.cpp built on its own into a fresh temporary folder (for a module-scoped fixture)."""
    return compile_program([PLUGINS / "tests" / f"{name}.cpp"], tmp_path_factory.mktemp("native") / name)


def answer_lines(exe: Path, requests: list[str]) -> list[str]:
    """A dump program's answers, one line a request, to the requests written to its stdin one a line."""
    result = subprocess.run([str(exe)], input="\n".join(requests) + "\n", capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def ask(exe: Path, requests: list[str]) -> list[list[int]]:
    """answer_lines, each answer read as whitespace-separated integers."""
    return [[int(x) for x in row.split()] for row in answer_lines(exe, requests)]


def gpu_kernels() -> native.NativeKernels:
    """The kernel library for the GPU tier's module fixtures, or the tier's skip saying what is missing."""
    if not torch.cuda.is_available():
        pytest.skip("gpu tier: no CUDA device (run scripts/gpu-check.sh on a GPU machine)")
    if native.kernels_library() is None:
        pytest.skip(f"gpu tier: {native.KERNELS_LIB_NAME} not built (attn-export plugins build, or "
                    f"set {native.KERNELS_LIB_ENV})")
    return native.NativeKernels()
