"""Compile the TensorRT-free, CUDA-free C++ of plugins/ with the host compiler for CPU unit tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
INCLUDE_DIRS = [PLUGINS / "kernels", PLUGINS / "trt" / "neighborhoodAttention"]


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        pytest.skip("native tier: no C++ compiler (install g++) to build the plugin logic tests")
    return cxx


def compile_program(sources: list[Path], output: Path, defines: tuple[str, ...] = ()) -> Path:
    """Builds one executable; a compile error fails the test with the compiler's message."""
    cmd = [host_compiler(), "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror"]
    cmd += [f"-I{d}" for d in INCLUDE_DIRS] + [f"-D{d}" for d in defines]
    cmd += [str(s) for s in sources] + ["-o", str(output)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"compiling {[s.name for s in sources]} failed:\n{result.stderr[-4000:]}")
    return output
