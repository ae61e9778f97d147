"""Typed schema of the activation-memory knobs under `parallel.*` (README "Fitting long clips").

ParallelConfig holds the flat keys users type most (`parallel.activation_checkpointing`,
`parallel.ac_ratio`, `parallel.ac_policy`, `parallel.memory`); offload and the planner's
hardware description are the nested sections defined here.
"""

from dataclasses import dataclass, field
from typing import Any, Iterator

Problems = Iterator[tuple[str, str]]

AC_MODES = ("none", "full", "selective")
# What a selectively checkpointed block keeps for backward (everything else is recomputed):
#   save_matmuls   - outputs of linear layers and attention kernels (recompute norms, activations,
#                    RoPE, modulation: cheap elementwise work)
#   save_attention - outputs of attention kernels only (their recompute grows with S^2; linears
#                    grow with S and are recomputed)
#   recompute_all  - nothing (the block is recomputed whole, as with `full`)
AC_POLICIES = ("save_matmuls", "save_attention", "recompute_all")
MEMORY_MODES = ("manual", "auto")


@dataclass
class OffloadConfig:
    """Saved activations of some blocks go to pinned host memory and come back during backward."""

    enabled: bool = False
    # Fraction of the blocks offloaded: the first round(ratio * n). The last blocks are the first
    # ones backward needs, so offloading them would only stall it.
    ratio: float = 1.0
    # Blocks fetched ahead during backward; also the copies left in flight during forward. At most
    # prefetch_blocks + 1 offloaded blocks' activations are on the device at once.
    prefetch_blocks: int = 1

    def problems(self) -> Problems:
        if not 0.0 <= self.ratio <= 1.0:
            yield "ratio", f"must be in [0, 1], got {self.ratio}"
        if self.prefetch_blocks < 0:
            yield "prefetch_blocks", f"must be >= 0, got {self.prefetch_blocks}"


@dataclass
class MemoryPlanConfig:
    """What `parallel.memory=auto` plans for (litegen.tools.plan takes the same as CLI keys)."""

    gpu_mem_gib: float = 0.0  # 0: what the device reports (CUDA); CPU runs need a value
    host_link_gb_s: float = 25.0  # device <-> pinned host copy bandwidth per GPU (PCIe 4 x16 ~ 25)
    gpu_tflops: float = 400.0  # what one GPU sustains on the model (for "does a copy hide?")
    margin: float = 0.1  # fraction of GPU memory kept free (allocator fragmentation, workspaces)
    # Latent clip shapes [frames, height, width] to plan for; empty: the data config's shapes.
    clips: list[list[int]] = field(default_factory=list)

    def problems(self) -> Problems:
        if self.gpu_mem_gib < 0:
            yield "gpu_mem_gib", f"must be >= 0 (0: ask the device), got {self.gpu_mem_gib}"
        for name in ("host_link_gb_s", "gpu_tflops"):
            if getattr(self, name) <= 0:
                yield name, f"must be > 0, got {getattr(self, name)}"
        if not 0.0 <= self.margin < 1.0:
            yield "margin", f"must be in [0, 1), got {self.margin}"
        if any(len(c) != 3 or min(c) < 1 for c in self.clips):
            yield "clips", f"must be a list of latent [frames, height, width], got {self.clips}"


def memory_problems(parallel: Any) -> Problems:
    """Checks of ParallelConfig's flat memory keys (the nested sections check themselves)."""
    if parallel.memory not in MEMORY_MODES:
        yield "memory", f"must be one of {list(MEMORY_MODES)}, got {parallel.memory!r}"
    if parallel.activation_checkpointing not in AC_MODES:
        yield "activation_checkpointing", (f"must be one of {list(AC_MODES)}, "
                                           f"got {parallel.activation_checkpointing!r}")
    if parallel.ac_policy not in AC_POLICIES:
        yield "ac_policy", f"must be one of {list(AC_POLICIES)}, got {parallel.ac_policy!r}"
    if not 0.0 <= parallel.ac_ratio <= 1.0:
        yield "ac_ratio", f"must be in [0, 1], got {parallel.ac_ratio}"
    elif parallel.activation_checkpointing == "full" and parallel.ac_ratio != 1.0:
        yield "ac_ratio", (f"full checkpointing covers every block, got ac_ratio={parallel.ac_ratio}; "
                           "use parallel.activation_checkpointing=selective for a fraction")
