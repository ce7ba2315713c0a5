"""Native tier (docs/architecture.md, Test tiers): plugins/ builds with CMake and nvcc for one architecture, the
plugin library compiles against real TensorRT headers (PyPI wheel kernel-lens, fetched at configure
time), exports only its two entry points, and its CPU tests (ctest) pass. The ctypes binding of the
kernel library works without a GPU for everything that needs none."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from attn_export import native
from attn_export.errors import AttnExportError

from native_tools import plugin_folders

pytestmark = pytest.mark.native
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def native_build() -> Path:
    """A build of plugins/: $ATTN_EXPORT_BUILD_DIR when it holds one (.ci/run builds it first),
    else an incremental build under build/pytest-native."""
    given = os.environ.get(native.BUILD_DIR_ENV)
    if given and (Path(given) / native.KERNELS_LIB_NAME).is_file():
        return Path(given)
    missing = [tool for tool in ("cmake", "nvcc") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"native tier: {', '.join(missing)} not on PATH (install CMake and the CUDA toolkit)")
    result = native.build("90", build_dir=REPO / "build" / "pytest-native", fetch_trt_headers=True, log=lambda _: None)
    return result.build_dir


def exported(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_kernel_library_exports_only_the_c_abi(native_build):
    names = exported(native_build / native.KERNELS_LIB_NAME)
    assert {"attnx_na_forward", "attnx_na_workspace_size", "attnx_na_validate", "attnx_last_error"} <= names
    assert all(n.startswith("attnx_") for n in names), sorted(names)


def test_kernel_library_has_sm90_code_and_static_cudart(native_build):
    lib = native_build / native.KERNELS_LIB_NAME
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libcudart" not in needed  # static CUDA runtime: no runtime dependency but the driver
    if shutil.which("cuobjdump"):
        listing = subprocess.run(["cuobjdump", "--list-elf", str(lib)], capture_output=True, text=True).stdout
        assert "sm_90" in listing


def test_build_stamps_the_kernel_library_for_a_prebuilt_run(native_build):
    """The stamp scripts/gpu-check.sh reads to take a library built without a GPU: the architectures, the nvcc
    release (the driver the static runtime needs) and every kernel source's SHA-256, which sha256sum confirms."""
    lines = (native_build / native.KERNELS_STAMP_NAME).read_text().splitlines()
    assert lines[0] == "arch 90" and re.fullmatch(r"cuda \d+\.\d+", lines[1]), lines[:2]
    hashed = [line.split(" ", 2) for line in lines[2:]]
    assert {path for _, _, path in hashed} == {str(p.relative_to(REPO)) for p in native.kernel_sources()}
    listing = "".join(f"{digest}  {path}\n" for _, digest, path in hashed)
    check = subprocess.run(["sha256sum", "--check", "--quiet"], input=listing, cwd=REPO, capture_output=True, text=True)
    assert check.returncode == 0, f"{native_build} was built from other sources: {check.stdout}{check.stderr}"


def test_plugin_library_compiled_against_tensorrt_headers(native_build):
    lib = native_build / native.PLUGIN_LIB_NAME
    assert lib.is_file(), "the plugin library was not built: no TensorRT headers found"
    assert exported(lib) == {"getCreators", "setLoggerFinder"}
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    assert "libnvinfer" not in needed and "libcudart" not in needed


def test_ctest_cpu_tests_pass(native_build):
    """ctest ran the library's and the common code's tests, the core's layout check (core_layout_check.cu:
    fragments, ldmatrix replayed per warp, the swizzled tiles), and for every plugin folder its config test
    (TensorRT-free logic) and glue test (its creator in the built library)."""
    result = subprocess.run(["ctest", "--output-on-failure"], cwd=native_build, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    ran = set(re.findall(r"Test\s+#\d+: (\S+) \.+\s+Passed", result.stdout))
    expected = {"plugin_glue", "common_fields", "common_glue", "core_layout"}
    expected |= {f"{folder.name}_{kind}" for folder in plugin_folders() for kind in ("config", "glue")}
    assert expected <= ran, f"not run or not passed: {sorted(expected - ran)}"


def test_ctypes_binding_validates_without_a_gpu(native_build):
    import torch

    kernels = native.NativeKernels(native_build / native.KERNELS_LIB_NAME)
    q = torch.empty(2, 12, 10, 4, 32, dtype=torch.float16)
    p = kernels.params(q, kernel_size=(5, 3), dilation=(2, 3))
    assert kernels.lib.attnx_na_validate(p) == 0
    assert kernels.lib.attnx_na_workspace_size(p) == 0
    p.spatial[1] = 8  # 3 * 3 > 8
    assert kernels.lib.attnx_na_validate(p) == 1
    assert "exceeds the axis length 8" in kernels.lib.attnx_last_error().decode()
    p.spatial[1], p.head_dim = 10, 300
    assert kernels.lib.attnx_na_validate(p) == 2  # valid but unsupported
    with pytest.raises(AttnExportError, match="rpb|CUDA tensor"):
        kernels.neighborhood_attention(q, q, q, kernel_size=3)  # CPU tensors are refused before any launch
    if not torch.cuda.is_available():
        assert kernels.select_path(q, kernel_size=3) == "none"


def test_missing_kernel_library_is_exit_3(monkeypatch, tmp_path):
    monkeypatch.setenv(native.BUILD_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(native.KERNELS_LIB_ENV, raising=False)
    with pytest.raises(AttnExportError, match="plugins build") as info:
        native.NativeKernels()
    assert info.value.exit_code == 3


def test_ctypes_binding_of_block_sparse_and_paro_without_a_gpu(native_build):
    """attnx_bsa_* / attnx_paro_* through the binding's structs: validation messages, PARO's workspace, and
    CPU tensors refused before any launch."""
    import torch

    kernels = native.NativeKernels(native_build / native.KERNELS_LIB_NAME)
    q = torch.empty(2, 4, 200, 64, dtype=torch.float16)
    count = torch.ones(1, 4, 4, dtype=torch.int32)
    index = torch.zeros(2, 1, 4, 3, dtype=torch.int32)
    p = kernels.bsa_params(q, q, count, index, 64, 32)
    assert kernels.lib.attnx_bsa_validate(p) == 0 and kernels.lib.attnx_bsa_workspace_size(p) == 0
    p.layout.rows = 5
    assert kernels.lib.attnx_bsa_validate(p) == 1
    assert "the sequence needs 4" in kernels.lib.attnx_last_error().decode()
    with pytest.raises(AttnExportError, match="CUDA tensor"):
        kernels.block_sparse_attention(q, q, q, count, index, 64, 32)

    count, index = torch.ones(1, 4, 4, dtype=torch.int32), torch.zeros(1, 4, 4, 2, dtype=torch.int32)
    p = kernels.paro_params(q, count, index, block=64, qk_bits=8, pv_bits=4)
    assert kernels.lib.attnx_paro_validate(p) == 0
    operand = 2 * 4 * 200 * 64 * 2
    assert 3 * operand < kernels.lib.attnx_paro_workspace_size(p) < 3 * operand + 16384
    p.qk_bits = p.pv_bits = 16
    assert kernels.lib.attnx_paro_workspace_size(p) == 0
    p.qk_bits = 6
    assert kernels.lib.attnx_paro_validate(p) == 1 and "qk_bits=6" in kernels.lib.attnx_last_error().decode()
    if not torch.cuda.is_available():
        assert kernels.bsa_select_path(q, q, count, index, 64, 32) == "none"
