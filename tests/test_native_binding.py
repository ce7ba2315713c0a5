"""The ctypes binding of the kernel library (attn_export.native.NativeKernels) without a GPU: a fake C
library records what the binding passes and on which device it calls, so the checks before a launch
and the device handling run on the CPU."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from attn_export import native
from attn_export.errors import AttnExportError


class FakeLib:
    """Stands in for libattnx_kernels.so: records the calls and the device current at each launch."""

    def __init__(self, state):
        self.state = state
        self.launches = []

    def attnx_na_validate(self, params):
        return 0

    def attnx_na_workspace_size(self, params):
        return 0

    def attnx_last_error(self):
        return b""

    def attnx_na_forward(self, params, q, k, v, rpb, out, workspace, size, stream):
        self.launches.append({"device": self.state["current"], "q": q, "out": out, "rpb": rpb, "stream": stream})
        return 0


class FakeCudaTensor:
    """Duck-typed CUDA tensor: shape, dtype, device and a fake address; enough for the binding."""

    def __init__(self, shape, address, device="cuda:1", dtype=torch.float16):
        self.shape, self.dtype, self.device = torch.Size(shape), dtype, torch.device(device)
        self.is_cuda, self._address = True, address

    def is_contiguous(self):
        return True

    def data_ptr(self):
        return self._address

    def numel(self):
        return math.prod(self.shape)

    def element_size(self):
        return torch.tensor([], dtype=self.dtype).element_size()


@pytest.fixture
def fake(monkeypatch):
    """A NativeKernels over FakeLib, with torch.cuda's device context and streams faked."""
    state = {"current": 0}

    @contextlib.contextmanager
    def device(where):
        previous, state["current"] = state["current"], torch.device(where).index
        try:
            yield
        finally:
            state["current"] = previous

    class Stream:
        def __init__(self, where):
            self.device, self.cuda_stream = torch.device(where), 1000 + torch.device(where).index

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda where=None: Stream(where))
    kernels = native.NativeKernels.__new__(native.NativeKernels)
    kernels.lib = FakeLib(state)
    return kernels, state


def tensors(shape=(2, 12, 10, 4, 32), device="cuda:1", base=1 << 20):
    size = math.prod(shape) * 2
    return [FakeCudaTensor(shape, base + i * size, device) for i in range(4)]  # q, k, v, out: disjoint


def test_launch_runs_on_the_device_of_q(fake):
    kernels, state = fake
    q, k, v, out = tensors(device="cuda:1")
    state["current"] = 0  # the thread's current device is another one
    kernels.neighborhood_attention(q, k, v, kernel_size=3, out=out)
    (launch,) = kernels.lib.launches
    assert launch["device"] == 1, "the kernel must be launched with q's device current"
    assert launch["stream"] == 1001  # q's device's current stream
    assert state["current"] == 0  # restored afterwards


def test_devices_and_streams_must_match_q(fake):
    kernels, _ = fake
    q, k, v, out = tensors(device="cuda:1")
    k.device = torch.device("cuda:0")
    with pytest.raises(AttnExportError, match="k is on cuda:0 but q is on cuda:1"):
        kernels.neighborhood_attention(q, k, v, kernel_size=3, out=out)
    k.device = q.device
    stream = type("S", (), {"device": torch.device("cuda:0"), "cuda_stream": 5})()
    with pytest.raises(AttnExportError, match="stream belongs to cuda:0"):
        kernels.neighborhood_attention(q, k, v, kernel_size=3, out=out, stream=stream)
    assert not kernels.lib.launches


@pytest.mark.parametrize("victim", ["q", "k", "v", "rpb"])
def test_out_must_not_alias_an_input(fake, victim):
    kernels, _ = fake
    q, k, v, _ = tensors()
    rpb = FakeCudaTensor((4, 5, 5), 1 << 30)
    named = {"q": q, "k": k, "v": v, "rpb": rpb}
    # out starts inside the victim's bytes (a partial overlap counts as aliasing too)
    out = FakeCudaTensor(q.shape, named[victim].data_ptr() + (0 if victim == "q" else 64))
    with pytest.raises(AttnExportError, match=f"out overlaps {victim}"):
        kernels.neighborhood_attention(q, k, v, kernel_size=3, rpb=rpb, out=out)
    assert not kernels.lib.launches


def test_adjacent_buffers_are_not_aliases(fake):
    kernels, _ = fake
    q, k, v, out = tensors()  # back to back: q ends where k begins, v ends where out begins
    kernels.neighborhood_attention(q, k, v, kernel_size=3, out=out)
    assert len(kernels.lib.launches) == 1


def test_rpb_and_out_shapes_are_checked(fake):
    kernels, _ = fake
    q, k, v, out = tensors()  # [2, 12, 10, heads 4, 32]
    with pytest.raises(AttnExportError, match=r"rpb has shape \(4, 5, 3\); expected .* \(4, 5, 5\)"):
        kernels.neighborhood_attention(q, k, v, kernel_size=3, rpb=FakeCudaTensor((4, 5, 3), 1 << 30), out=out)
    with pytest.raises(AttnExportError, match=r"\(3, 5, 9\)"):  # heads and one 2k-1 per axis
        kernels.neighborhood_attention(q, k, v, kernel_size=(3, 5), rpb=FakeCudaTensor((3, 5, 9), 1 << 30), out=out)
    small = FakeCudaTensor((2, 12, 10, 4, 16), out.data_ptr())
    with pytest.raises(AttnExportError, match="out has shape"):
        kernels.neighborhood_attention(q, k, v, kernel_size=3, out=small)
    kernels.neighborhood_attention(q, k, v, kernel_size=(3, 5), rpb=FakeCudaTensor((4, 5, 9), 1 << 30), out=out)
    assert len(kernels.lib.launches) == 1 and kernels.lib.launches[0]["rpb"] == 1 << 30


def test_real_cpu_tensors_alias_check_before_the_device_check():
    """The same checks on real (CPU) tensors: aliasing is refused before the CUDA requirement."""
    kernels = native.NativeKernels.__new__(native.NativeKernels)
    kernels.lib = FakeLib({"current": None})
    q = torch.zeros(1, 8, 2, 32)
    with pytest.raises(AttnExportError, match="out overlaps q"):
        kernels.neighborhood_attention(q, q.clone(), q.clone(), kernel_size=3, out=q[:])
    with pytest.raises(AttnExportError, match="CUDA tensor"):
        kernels.neighborhood_attention(q, q, q, kernel_size=3, out=torch.empty_like(q))
