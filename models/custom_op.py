"""One way to register an attention op with torch: the custom op itself, a fake kernel for tracing, and
autograd by recomputation. Every op of the registry goes through :func:`register_attention_op`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from attn_export.registry import OpSpec


def register_attention_op(spec: OpSpec, forward: Callable[..., torch.Tensor]):
    """Register ``forward`` (typed arguments; the first is q) as the torch custom op ``spec.torch_qualname``.

    The fake kernel returns a tensor shaped like q (every attention op's output), so torch.export keeps
    each call as one node. The backward recomputes ``forward`` with gradients on and lets autograd
    differentiate it: no scores are stored, and every floating-point tensor argument gets its gradient.
    """
    op = torch.library.custom_op(spec.torch_qualname, mutates_args=())(forward)
    op.register_fake(_like_q)
    arity = len(inspect.signature(forward).parameters)

    def setup_context(ctx, inputs, output):
        tensors = [i for i, x in enumerate(inputs) if isinstance(x, torch.Tensor)]
        ctx.constants = [None if i in tensors else x for i, x in enumerate(inputs)]
        ctx.tensor_positions = tensors
        ctx.save_for_backward(*(inputs[i] for i in tensors))

    def backward(ctx, grad_out):
        args = list(ctx.constants)
        leaves = {}
        for position, tensor in zip(ctx.tensor_positions, ctx.saved_tensors):
            if tensor.is_floating_point():
                tensor = leaves[position] = tensor.detach().requires_grad_(True)
            args[position] = tensor
        with torch.enable_grad():
            out = forward(*args)
            grads = torch.autograd.grad(out, list(leaves.values()), grad_out, allow_unused=True)
        by_position = dict(zip(leaves, grads))
        return tuple(by_position.get(i) for i in range(arity))

    op.register_autograd(backward, setup_context=setup_context)
    return op


def _like_q(q, *args, **kwargs):
    return q.new_empty(q.shape)
