"""Memory is O(N * prod(k)): neither the CPU op nor the ONNX local function builds N x N scores.

N = 20,000 tokens: one N x N fp32 matrix alone would be 1.6 GB, so a dense implementation fails the
500 MB bound, while the gather form needs a few tens of MB. Each case runs in a fresh subprocess and
reports the growth of its peak RSS.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

N, KERNEL, HEADS, DIM = 20_000, 9, 1, 16
LIMIT_MB = 500

SETUP = f"""
import resource, numpy as np, torch
from attn_export.models import neighborhood_attention
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
small = torch.randn(1, 32, {HEADS}, {DIM})
q, k, v = torch.randn(3, 1, {N}, {HEADS}, {DIM}).unbind(0)
"""

TORCH_OP = SETUP + f"""
neighborhood_attention(small, small, small, {KERNEL})
base = peak_mb()
with torch.inference_mode():
    out = neighborhood_attention(q, k, v, {KERNEL}, is_causal=True)
print(peak_mb() - base)
"""

ONNX_FUNCTION = SETUP + f"""
import onnxruntime as ort
from onnx import TensorProto, helper
from attn_export.onnx_export import attach_local_functions
sym = ["b", "n", "h", "d"]
node = helper.make_node("NeighborhoodAttention", ["q", "k", "v"], ["out"], domain="attn_export",
                        kernel_size=[{KERNEL}], stride=[1], dilation=[1], is_causal=[1], scale=0.25)
graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, sym) for n in "qkv"],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, sym)])
model = attach_local_functions(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
session.run(None, {{"q": small.numpy(), "k": small.numpy(), "v": small.numpy()}})
base = peak_mb()
session.run(None, {{"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}})
print(peak_mb() - base)
"""


@pytest.mark.parametrize("script", [TORCH_OP, ONNX_FUNCTION], ids=["torch-op", "onnx-function"])
def test_peak_memory_is_far_below_one_dense_score_matrix(script):
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown_mb = float(proc.stdout.strip().splitlines()[-1])
    dense_mb = N * N * 4 / 2**20
    assert grown_mb < LIMIT_MB < dense_mb, f"peak RSS grew {grown_mb:.0f} MB (one dense N x N is {dense_mb:.0f} MB)"
