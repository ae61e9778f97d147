"""Activation checkpointing of one block call: full recompute, or selective by op policy.

Non-reentrant `torch.utils.checkpoint` throughout: it composes with FSDP2 (recompute runs inside
the block's FSDP unit, whose parameters are gathered for backward anyway), with sequence
parallelism (the recompute repeats the attention collectives, in the same order on every rank)
and with saved-tensor hooks around it (it saves the block's inputs through them, which is what
activation offload moves to the host). Which blocks are checkpointed is decided per call by
litegen/parallel/memory.py.
"""

import functools
from typing import Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

aten = torch.ops.aten

# Fused attention kernels. Their outputs are O(S) but recomputing them is O(S^2): the first thing
# worth keeping. (The math fallback's bmm / softmax are deliberately absent: keeping those would
# keep S x S score matrices.)
ATTENTION_OPS = frozenset({
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
    aten._scaled_dot_product_flash_attention_for_cpu.default,
})
# Linear layers (addmm with bias, mm without; 3D inputs are flattened to 2D before either).
MATMUL_OPS = frozenset({aten.mm.default, aten.addmm.default})


def _is_flash_attn_forward(op) -> bool:
    """flash-attn's own kernels (a CUDA-only package) register as torch.ops.flash_attn.*."""
    return getattr(op, "namespace", "") == "flash_attn" and "forward" in str(op)


def _policy(keep: frozenset, keep_flash_attn: bool) -> Callable:
    def policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
        if op in keep or (keep_flash_attn and _is_flash_attn_forward(op)):
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


POLICIES = {
    "save_matmuls": _policy(MATMUL_OPS | ATTENTION_OPS, keep_flash_attn=True),
    "save_attention": _policy(ATTENTION_OPS, keep_flash_attn=True),
}


# Callbacks given each selective checkpoint's caching context as it is created (how
# litegen.parallel.saved_bytes counts the kept outputs).
CACHE_OBSERVERS: list[Callable] = []


def selective_context(policy: str):
    """context_fn for torch.utils.checkpoint: keep the outputs `policy` names, recompute the rest."""
    caching, recomputing = create_selective_checkpoint_contexts(POLICIES[policy])
    for observe in CACHE_OBSERVERS:
        observe(caching)
    return caching, recomputing


def checkpointed(fn: Callable, policy: str) -> Callable:
    """fn, recomputed in backward. policy: recompute_all | save_matmuls | save_attention."""
    if policy == "recompute_all":
        return functools.partial(checkpoint, fn, use_reentrant=False)
    if policy not in POLICIES:
        raise ValueError(f"unknown checkpoint policy {policy!r}; known: recompute_all, {', '.join(POLICIES)}")
    return functools.partial(checkpoint, fn, use_reentrant=False,
                             context_fn=functools.partial(selective_context, policy))
