"""The native libraries (plugins/): build them with CMake, find them, and call the kernels from Python.

Two libraries come out of plugins/: ``libattnx_kernels.so`` (the CUDA kernels behind a C ABI) and, where
TensorRT headers are found, ``libattnx_trt_plugins.so`` (the TensorRT plugins with the kernels linked
in). ``attn-export plugins build`` puts them in a build cache; ATTN_EXPORT_PLUGIN_LIB and
ATTN_EXPORT_KERNELS_LIB point at prebuilt ones instead. Nothing here imports torch, CUDA or TensorRT
at import time: scripts/gpu-check.sh imports this module with a Python that may lack torch (it builds and keeps
the library first), so the kernel calls import torch (and attn_export.models, which needs it) where they run.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from attn_export.errors import EXIT_MISSING_DEPENDENCY, AttnExportError
from attn_export.registry import OPS

PLUGIN_LIB_ENV = "ATTN_EXPORT_PLUGIN_LIB"
KERNELS_LIB_ENV = "ATTN_EXPORT_KERNELS_LIB"
BUILD_DIR_ENV = "ATTN_EXPORT_BUILD_DIR"
PLUGIN_LIB_NAME = "libattnx_trt_plugins.so"
KERNELS_LIB_NAME = "libattnx_kernels.so"
# Written next to a built kernel library: what it was built for and from (see write_kernels_stamp), so that
# scripts/gpu-check.sh can take a library prebuilt on a machine without a GPU only when it fits the GPU and the tree.
KERNELS_STAMP_NAME = KERNELS_LIB_NAME + ".stamp"
SOURCE_DIR = Path(__file__).resolve().parents[1] / "plugins"
BUILD_HINT = "build it with `attn-export plugins build`"
# The ops libattnx_trt_plugins.so provides a TensorRT plugin for (plugins/trt/*): an engine build checks
# that every node of these ops became a plugin layer. Other custom ops run their model-local function.
PLUGIN_OPS = tuple(spec for spec in OPS.values() if spec.plugin)


def default_build_dir() -> Path:
    if os.environ.get(BUILD_DIR_ENV):
        return Path(os.environ[BUILD_DIR_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "attn-export" / "plugins"


def _find(env: str, name: str) -> Path | None:
    explicit = os.environ.get(env)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise AttnExportError(f"{env}={explicit} does not exist; point it at a built {name} or unset it",
                                  EXIT_MISSING_DEPENDENCY)
        return path
    built = default_build_dir() / name
    return built if built.is_file() else None


def plugin_library() -> Path | None:
    """The TensorRT plugin library: $ATTN_EXPORT_PLUGIN_LIB, else the build cache; None if absent."""
    return _find(PLUGIN_LIB_ENV, PLUGIN_LIB_NAME)


def kernels_library() -> Path | None:
    """The CUDA kernel library: $ATTN_EXPORT_KERNELS_LIB, else the build cache; None if absent."""
    return _find(KERNELS_LIB_ENV, KERNELS_LIB_NAME)


# ---------------------------------------------------------------------------------------------
# Build


@dataclass
class BuildResult:
    build_dir: Path
    kernels: Path
    plugins: Path | None  # None when no TensorRT headers were found


def build(arch: str = "90", tensorrt_root: str | None = None, build_dir: str | os.PathLike | None = None,
          fetch_trt_headers: bool = False, jobs: int | None = None, log=print) -> BuildResult:
    """Configure and build plugins/ with CMake; returns the library paths.

    ``arch`` is a CMake CUDA_ARCHITECTURES list ("90", "80;90", "native"); ``fetch_trt_headers``
    downloads TensorRT headers (PyPI wheel kernel-lens) into the build folder when none are found,
    which is enough to compile the plugin but not to run it. The kernels need the CUTLASS/CuTe headers:
    $CUTLASS_DIR (a checkout, or a folder prepared with ``cmake -DDEST=DIR -P plugins/cmake/fetch_cutlass.cmake``)
    when set, else they are downloaded once into the build folder (PyPI wheel nvidia-cutlass).
    """
    for tool, hint in (("cmake", "pip install cmake, or your OS package"),
                       ("nvcc", "install the CUDA toolkit and put its bin/ on PATH")):
        if not shutil.which(tool) and not (tool == "nvcc" and os.environ.get("CUDACXX")):
            raise AttnExportError(f"`plugins build` needs {tool}, which is not on PATH: {hint}",
                                  EXIT_MISSING_DEPENDENCY)
    _check_arch(arch)
    if not (SOURCE_DIR / "CMakeLists.txt").is_file():
        raise AttnExportError(f"`plugins build` needs the plugins/ sources, which a wheel install does not carry "
                              f"(looked in {SOURCE_DIR}): run it from a source checkout (pip install -e .)",
                              EXIT_MISSING_DEPENDENCY)
    out = Path(build_dir) if build_dir else default_build_dir()
    configure = ["cmake", "-S", str(SOURCE_DIR), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_CUDA_ARCHITECTURES={arch.replace(',', ';')}",
                 f"-DATTNX_FETCH_TRT_HEADERS={'ON' if fetch_trt_headers else 'OFF'}", "-DATTNX_FETCH_CUTLASS=ON"]
    if tensorrt_root:
        if not Path(tensorrt_root).is_dir():
            raise AttnExportError(f"--tensorrt-root {tensorrt_root} is not a folder")
        configure.append(f"-DTENSORRT_ROOT={tensorrt_root}")
    _run_logged(configure, out, "configure", log)
    _run_logged(["cmake", "--build", str(out), "-j", str(jobs or os.cpu_count() or 2)], out, "build", log)
    kernels = out / KERNELS_LIB_NAME
    plugins = out / PLUGIN_LIB_NAME
    write_kernels_stamp(out, arch)
    return BuildResult(out, kernels, plugins if plugins.is_file() else None)


def kernel_sources() -> list[Path]:
    """What libattnx_kernels.so is compiled from (in this tree): plugins/kernels/* and plugins/CMakeLists.txt."""
    return sorted(p for p in (SOURCE_DIR / "kernels").iterdir() if p.is_file()) + [SOURCE_DIR / "CMakeLists.txt"]


def write_kernels_stamp(out: Path, arch: str) -> Path:
    """``libattnx_kernels.so.stamp``: ``arch LIST`` (CMake's CUDA architectures), ``cuda X.Y`` (nvcc's release: the
    statically linked runtime decides the driver a GPU needs) and ``sha256 HASH PATH`` per kernel source, PATH
    relative to the repository, as ``sha256sum --check`` reads them after
    ``awk '$1 == "sha256" {print $2 "  " $3}'``."""
    root = SOURCE_DIR.parent
    lines = [f"arch {arch.replace(',', ';')}", f"cuda {_nvcc_release()}"]
    lines += [f"sha256 {hashlib.sha256(p.read_bytes()).hexdigest()} {p.relative_to(root)}" for p in kernel_sources()]
    stamp = Path(out) / KERNELS_STAMP_NAME
    stamp.write_text("\n".join(lines) + "\n")
    return stamp


def _nvcc_release() -> str:
    try:
        result = subprocess.run([os.environ.get("CUDACXX") or "nvcc", "--version"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    match = re.search(r"release (\d+\.\d+)", result.stdout)
    return match.group(1) if match else "unknown"


def _run_logged(cmd: list[str], out: Path, what: str, log) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / f"attn-export-{what}.log"
    with open(log_path, "w") as handle:
        result = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        raise AttnExportError(f"native {what} failed: {_first_error(log_path.read_text())}; full log: {log_path}", 1)
    log(f"    {what}: ok (log {log_path})")


def _first_error(log: str) -> str:
    """The first error of a CMake/compiler log with the line that explains it (CMake puts it next)."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "error" in line.lower():
            detail = lines[i + 1] if line.endswith(":") and i + 1 < len(lines) else ""
            return f"{line} {detail}".strip()[:300]
    return lines[-1][:300] if lines else "no output"


def _check_arch(arch: str) -> None:
    for part in arch.replace(",", ";").split(";"):
        number = part.split("-")[0]
        if part == "native":
            continue
        if not number.isdigit():
            raise AttnExportError(f"--arch '{arch}' is not a CUDA architecture list such as 90, 80;90 or native")
        if int(number) < 80:
            raise AttnExportError(f"--arch {part}: the kernels need sm_80 or newer (bf16 tensor cores); "
                                  "use 80 or above")


# ---------------------------------------------------------------------------------------------
# Kernels from Python (ctypes): the GPU tests and benchmarks call the C ABI directly.

# Hand copies of plugins/kernels/attnx_types.h (structs, enums, ATTNX_ABI_VERSION): tests/test_native_abi.py
# compares every one with the compiled header (sizes, field offsets and types, enum values).
_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
# attnx_na_path (attnx_types.h): the kernels a call can run. 1, the first generation's WMMA path, is gone.
PATHS = {0: "none", 2: "generic", 3: "core"}


class NAParamsStruct(ctypes.Structure):
    """Mirror of attnx_na_params (plugins/kernels/attnx_types.h)."""

    _c_name_ = "attnx_na_params"
    _fields_ = [
        ("rank", ctypes.c_int32), ("batch", ctypes.c_int32), ("heads", ctypes.c_int32), ("head_dim", ctypes.c_int32),
        ("spatial", ctypes.c_int32 * 3), ("kernel_size", ctypes.c_int32 * 3), ("stride", ctypes.c_int32 * 3),
        ("dilation", ctypes.c_int32 * 3), ("is_causal", ctypes.c_int32 * 3),
        ("scale", ctypes.c_float), ("dtype", ctypes.c_int32), ("has_rpb", ctypes.c_int32),
    ]


class LayoutStruct(ctypes.Structure):
    """Mirror of attnx_block_layout: the dims of kv_count [count_batch, count_heads, rows] and kv_index
    [index_batch, index_heads, rows, max_blocks]."""

    _c_name_ = "attnx_block_layout"
    _fields_ = [("rows", ctypes.c_int32), ("max_blocks", ctypes.c_int32), ("count_batch", ctypes.c_int32),
                ("count_heads", ctypes.c_int32), ("index_batch", ctypes.c_int32), ("index_heads", ctypes.c_int32)]


class BSAParamsStruct(ctypes.Structure):
    """Mirror of attnx_bsa_params."""

    _c_name_ = "attnx_bsa_params"
    _fields_ = [("batch", ctypes.c_int32), ("heads", ctypes.c_int32), ("seq_q", ctypes.c_int32),
                ("seq_kv", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("block_q", ctypes.c_int32),
                ("block_kv", ctypes.c_int32), ("layout", LayoutStruct), ("scale", ctypes.c_float),
                ("dtype", ctypes.c_int32)]


class ParoParamsStruct(ctypes.Structure):
    """Mirror of attnx_paro_params."""

    _c_name_ = "attnx_paro_params"
    _fields_ = [("batch", ctypes.c_int32), ("heads", ctypes.c_int32), ("seq", ctypes.c_int32),
                ("head_dim", ctypes.c_int32), ("block", ctypes.c_int32), ("layout", LayoutStruct),
                ("qk_bits", ctypes.c_int32), ("pv_bits", ctypes.c_int32), ("q_group", ctypes.c_int32),
                ("k_group", ctypes.c_int32), ("smooth_k", ctypes.c_int32), ("scale", ctypes.c_float),
                ("dtype", ctypes.c_int32)]


def _layout(kv_count, kv_index) -> LayoutStruct:
    if kv_count.dim() != 3 or kv_index.dim() != 4:
        raise AttnExportError(f"kv_count must be [B|1, H|1, rows] and kv_index [B|1, H|1, rows, max_blocks]; got "
                              f"{tuple(kv_count.shape)} and {tuple(kv_index.shape)}")
    return LayoutStruct(rows=kv_count.shape[2], max_blocks=kv_index.shape[3], count_batch=kv_count.shape[0],
                        count_heads=kv_count.shape[1], index_batch=kv_index.shape[0], index_heads=kv_index.shape[1])


def _dtype_code(q) -> int:
    dtype = str(q.dtype).replace("torch.", "")
    if dtype not in _DTYPES:
        raise AttnExportError(f"the kernels take float32, float16 or bfloat16, not {dtype}")
    return _DTYPES[dtype]


class NativeKernels:
    """The C ABI of libattnx_kernels.so, for torch CUDA tensors: neighborhood attention in NATTEN layout,
    block-sparse and PARO attention in SDPA layout."""

    ABI_VERSION = 2

    def __init__(self, path: str | os.PathLike | None = None):
        path = path or kernels_library()
        if path is None:
            raise AttnExportError(f"the CUDA kernel library {KERNELS_LIB_NAME} was not found; {BUILD_HINT} "
                                  f"or set {KERNELS_LIB_ENV}", EXIT_MISSING_DEPENDENCY)
        try:
            self.lib = ctypes.CDLL(str(path))
        except OSError as exc:
            raise AttnExportError(f"cannot load {path}: {exc}", EXIT_MISSING_DEPENDENCY) from None
        self.path = Path(path)
        lib = self.lib
        lib.attnx_abi_version.restype = ctypes.c_int32
        lib.attnx_last_error.restype = ctypes.c_char_p
        lib.attnx_na_validate.argtypes = [ctypes.POINTER(NAParamsStruct)]
        lib.attnx_na_select_path.argtypes = [ctypes.POINTER(NAParamsStruct)]
        lib.attnx_na_workspace_size.argtypes = [ctypes.POINTER(NAParamsStruct)]
        lib.attnx_na_workspace_size.restype = ctypes.c_size_t
        lib.attnx_na_forward.argtypes = [ctypes.POINTER(NAParamsStruct)] + [ctypes.c_void_p] * 6 + [ctypes.c_size_t,
                                                                                                    ctypes.c_void_p]
        for op, struct, pointers in (("bsa", BSAParamsStruct, 6), ("paro", ParoParamsStruct, 7)):
            for fn in ("validate", "select_path", "workspace_size", "forward"):
                getattr(lib, f"attnx_{op}_{fn}").argtypes = [ctypes.POINTER(struct)]
            getattr(lib, f"attnx_{op}_workspace_size").restype = ctypes.c_size_t
            getattr(lib, f"attnx_{op}_forward").argtypes = ([ctypes.POINTER(struct)] + [ctypes.c_void_p] * pointers +
                                                             [ctypes.c_size_t, ctypes.c_void_p])
        if lib.attnx_abi_version() != self.ABI_VERSION:
            raise AttnExportError(f"{path} has ABI version {lib.attnx_abi_version()}, this package expects "
                                  f"{self.ABI_VERSION}; rebuild with `attn-export plugins build`")

    def params(self, q, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
               has_rpb=False) -> NAParamsStruct:
        from attn_export.models.neighborhood import NAParams  # needs torch: see the module docstring

        batch, *spatial, heads, dim = q.shape
        na = NAParams.from_args(len(spatial), kernel_size, stride, dilation, is_causal)
        dtype = str(q.dtype).replace("torch.", "")
        if dtype not in _DTYPES:
            raise AttnExportError(f"the kernels take float32, float16 or bfloat16, not {dtype}")
        p = NAParamsStruct(rank=len(spatial), batch=batch, heads=heads, head_dim=dim,
                           scale=0.0 if scale is None else float(scale), dtype=_DTYPES[dtype], has_rpb=int(has_rpb))
        for a in range(len(spatial)):
            p.spatial[a], p.kernel_size[a], p.stride[a] = spatial[a], na.kernel_size[a], na.stride[a]
            p.dilation[a], p.is_causal[a] = na.dilation[a], int(na.is_causal[a])
        return p

    def _check(self, status: int, op: str = "neighborhood attention") -> None:
        if status != 0:
            message = self.lib.attnx_last_error().decode()
            raise AttnExportError(f"{op} kernel: {message}", 2 if status == 1 else EXIT_MISSING_DEPENDENCY)

    def select_path(self, q, kernel_size, **kw) -> str:
        """The kernel path a call would take on q's device (tile plans depend on the device)."""
        import torch  # not at import time: see the module docstring

        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            return PATHS[self.lib.attnx_na_select_path(ctypes.byref(self.params(q, kernel_size, **kw)))]

    def neighborhood_attention(self, q, k, v, kernel_size, stride=1, dilation=1, is_causal=False, scale=None,
                               rpb=None, out=None, stream=None):
        """out = NA(q, k, v) on q's CUDA device (made current for the call) and that device's current torch
        stream (or ``stream``). ``out`` must not overlap q, k, v or rpb."""
        import torch  # not at import time: see the module docstring

        if k.shape != q.shape or v.shape != q.shape:
            raise AttnExportError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        if out is not None and out.shape != q.shape:
            raise AttnExportError(f"out has shape {tuple(out.shape)}; it must have q's shape {tuple(q.shape)}")
        p = self.params(q, kernel_size, stride, dilation, is_causal, scale, has_rpb=rpb is not None)
        if rpb is not None:
            bias_shape = (p.heads, *(2 * p.kernel_size[a] - 1 for a in range(p.rank)))
            if tuple(rpb.shape) != bias_shape:
                raise AttnExportError(f"rpb has shape {tuple(rpb.shape)}; expected [heads, 2k-1 per axis] = "
                                      f"{bias_shape}")
        inputs = (("q", q), ("k", k), ("v", v), ("rpb", rpb))
        if out is not None:
            for name, t in inputs:
                if t is not None and _overlaps(out, t):
                    raise AttnExportError(f"out overlaps {name} in memory; pass a separate output tensor (or none)")
        for name, t in (*inputs, ("out", out)):
            if t is not None and not (t.is_cuda and t.is_contiguous() and t.dtype == q.dtype):
                raise AttnExportError(f"{name} must be a contiguous CUDA tensor of q's dtype ({q.dtype})")
            if t is not None and t.device != q.device:
                raise AttnExportError(f"{name} is on {t.device} but q is on {q.device}; put all tensors on one device")
        if stream is not None and stream.device != q.device:
            raise AttnExportError(f"stream belongs to {stream.device} but q is on {q.device}")
        self._check(self.lib.attnx_na_validate(ctypes.byref(p)))
        # The launcher runs on the thread's current device: make it q's for this call.
        with torch.cuda.device(q.device):
            out = torch.empty_like(q) if out is None else out
            size = self.lib.attnx_na_workspace_size(ctypes.byref(p))
            workspace = torch.empty(size, dtype=torch.uint8, device=q.device) if size else None
            stream = stream if stream is not None else torch.cuda.current_stream(q.device)
            self._check(self.lib.attnx_na_forward(
                ctypes.byref(p), q.data_ptr(), k.data_ptr(), v.data_ptr(), rpb.data_ptr() if rpb is not None else None,
                out.data_ptr(), workspace.data_ptr() if workspace is not None else None, size, stream.cuda_stream))
        return out


    # ---- block-sparse and PARO attention ([B, H, S, D] tensors)

    def bsa_params(self, q, k, kv_count, kv_index, block_q: int, block_kv: int, scale=None) -> BSAParamsStruct:
        if q.dim() != 4 or k.dim() != 4:
            raise AttnExportError(f"q and k must be [B, H, S, D]; got {tuple(q.shape)} and {tuple(k.shape)}")
        batch, heads, seq_q, dim = q.shape
        return BSAParamsStruct(batch=batch, heads=heads, seq_q=seq_q, seq_kv=k.shape[2], head_dim=dim,
                               block_q=int(block_q), block_kv=int(block_kv), layout=_layout(kv_count, kv_index),
                               scale=0.0 if scale is None else float(scale), dtype=_dtype_code(q))

    def paro_params(self, q, kv_count, kv_index, block=64, qk_bits=8, pv_bits=8, q_group=32, k_group=64,
                    smooth_k=True, scale=None) -> ParoParamsStruct:
        if q.dim() != 4:
            raise AttnExportError(f"q must be [B, heads, N, D]; got {tuple(q.shape)}")
        batch, heads, seq, dim = q.shape
        return ParoParamsStruct(batch=batch, heads=heads, seq=seq, head_dim=dim, block=int(block),
                                layout=_layout(kv_count, kv_index), qk_bits=int(qk_bits), pv_bits=int(pv_bits),
                                q_group=int(q_group), k_group=int(k_group), smooth_k=int(bool(smooth_k)),
                                scale=0.0 if scale is None else float(scale), dtype=_dtype_code(q))

    def bsa_select_path(self, q, k, kv_count, kv_index, block_q, block_kv) -> str:
        import torch  # not at import time: see the module docstring

        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            p = self.bsa_params(q, k, kv_count, kv_index, block_q, block_kv)
            return PATHS[self.lib.attnx_bsa_select_path(ctypes.byref(p))]

    def paro_select_path(self, q, kv_count, kv_index, **kw) -> str:
        import torch  # not at import time: see the module docstring

        with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
            return PATHS[self.lib.attnx_paro_select_path(ctypes.byref(self.paro_params(q, kv_count, kv_index, **kw)))]

    def _cuda_inputs(self, q, tensors, out) -> None:
        for name, t in tensors:
            floating = name in ("k", "v", "out")
            if not (t.is_cuda and t.is_contiguous()) or (floating and t.dtype != q.dtype):
                raise AttnExportError(f"{name} must be a contiguous CUDA tensor" + (f" of q's dtype ({q.dtype})"
                                                                                    if floating else ""))
            if not floating and name != "q" and str(t.dtype) != "torch.int32":
                raise AttnExportError(f"{name} must be int32, not {t.dtype}")
            if t.device != q.device:
                raise AttnExportError(f"{name} is on {t.device} but q is on {q.device}; put all tensors on one device")
        if out is not None:
            for name, t in tensors:
                if name != "out" and _overlaps(out, t):
                    raise AttnExportError(f"out overlaps {name} in memory; pass a separate output tensor (or none)")

    def block_sparse_attention(self, q, k, v, kv_count, kv_index, block_q: int, block_kv: int, scale=None, out=None,
                               stream=None):
        """Block-sparse attention (docs/ops/block_sparse_attention.md) on q's CUDA device and current stream."""
        import torch  # not at import time: see the module docstring

        if k.shape != v.shape:
            raise AttnExportError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have one shape")
        p = self.bsa_params(q, k, kv_count, kv_index, block_q, block_kv, scale)
        tensors = [("q", q), ("k", k), ("v", v), ("kv_count", kv_count), ("kv_index", kv_index)]
        self._cuda_inputs(q, tensors + ([("out", out)] if out is not None else []), out)
        self._check(self.lib.attnx_bsa_validate(ctypes.byref(p)), "block-sparse attention")
        with torch.cuda.device(q.device):
            out = torch.empty_like(q) if out is None else out
            stream = stream if stream is not None else torch.cuda.current_stream(q.device)
            self._check(self.lib.attnx_bsa_forward(
                ctypes.byref(p), q.data_ptr(), k.data_ptr(), v.data_ptr(), kv_count.data_ptr(), kv_index.data_ptr(),
                out.data_ptr(), None, 0, stream.cuda_stream), "block-sparse attention")
        return out

    def paro_attention(self, q, k, v, perm_idx, kv_count, kv_index, block=64, qk_bits=8, pv_bits=8, q_group=32,
                       k_group=64, smooth_k=True, scale=None, out=None, stream=None):
        """PARO attention (docs/ops/paro_attention.md) on q's CUDA device and current stream; the workspace of the
        quantization pre-pass is allocated here."""
        import torch  # not at import time: see the module docstring

        if k.shape != q.shape or v.shape != q.shape:
            raise AttnExportError(f"q, k, v shapes differ: {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
        p = self.paro_params(q, kv_count, kv_index, block, qk_bits, pv_bits, q_group, k_group, smooth_k, scale)
        tensors = [("q", q), ("k", k), ("v", v), ("perm_idx", perm_idx), ("kv_count", kv_count),
                   ("kv_index", kv_index)]
        self._cuda_inputs(q, tensors + ([("out", out)] if out is not None else []), out)
        if tuple(perm_idx.shape) != (q.shape[1], q.shape[2]):
            raise AttnExportError(f"perm_idx must be [heads, N] = {(q.shape[1], q.shape[2])}; "
                                  f"got {tuple(perm_idx.shape)}")
        self._check(self.lib.attnx_paro_validate(ctypes.byref(p)), "PARO attention")
        with torch.cuda.device(q.device):
            out = torch.empty_like(q) if out is None else out
            size = self.lib.attnx_paro_workspace_size(ctypes.byref(p))
            workspace = torch.empty(size, dtype=torch.uint8, device=q.device) if size else None
            stream = stream if stream is not None else torch.cuda.current_stream(q.device)
            self._check(self.lib.attnx_paro_forward(
                ctypes.byref(p), q.data_ptr(), k.data_ptr(), v.data_ptr(), perm_idx.data_ptr(), kv_count.data_ptr(),
                kv_index.data_ptr(), out.data_ptr(), workspace.data_ptr() if workspace is not None else None, size,
                stream.cuda_stream), "PARO attention")
        return out


def _overlaps(a, b) -> bool:
    """Whether two contiguous tensors share bytes."""
    start_a, start_b = a.data_ptr(), b.data_ptr()
    end_a, end_b = start_a + a.numel() * a.element_size(), start_b + b.numel() * b.element_size()
    return a.numel() > 0 and b.numel() > 0 and start_a < end_b and start_b < end_a
