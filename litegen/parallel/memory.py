"""What each block does with its activations: checkpoint (and how), offload, both or neither.

`apply_memory` replaces each block's `forward` per instance (parameter names, state dicts and the
model class stay as they are) with a call that, for every micro-batch, looks up the settings for
its token count in a `MemorySchedule` and runs the block plainly, checkpointed, offloaded or both.
A manual config gives a one-entry schedule; `parallel.memory=auto` gives the planner's choice per
clip shape (litegen/parallel/planner.py), so small clips are not recomputed for the sake of big ones.
"""

import bisect
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from litegen.models.plan import ModelPlan
from litegen.parallel.checkpointing import checkpointed
from litegen.parallel.offload import ActivationOffloader, SyncCopies


def spread(n: int, k: int) -> list[int]:
    """k of n block indices, evenly spaced (every other block for k = n/2)."""
    return [i * n // k for i in range(k)]


def count(n: int, ratio: float) -> int:
    return min(n, max(0, round(ratio * n)))


@dataclass(frozen=True)
class BlockMemory:
    """One block's treatment: checkpoint policy (None: keep everything) and whether to offload."""

    checkpoint: Optional[str] = None  # recompute_all | save_matmuls | save_attention
    offload: bool = False


@dataclass(frozen=True)
class MemorySettings:
    """The knobs of README "Fitting long clips", for one clip shape."""

    activation_checkpointing: str = "none"  # none | full | selective
    ac_ratio: float = 1.0
    ac_policy: str = "save_matmuls"
    offload_ratio: float = 0.0  # 0: nothing offloaded
    prefetch_blocks: int = 1

    @classmethod
    def from_config(cls, parallel) -> "MemorySettings":
        off = parallel.offload
        return cls(parallel.activation_checkpointing, parallel.ac_ratio, parallel.ac_policy,
                   off.ratio if off.enabled else 0.0, off.prefetch_blocks)

    def checkpointed(self, n: int) -> list[int]:
        if self.activation_checkpointing == "none":
            return []
        if self.activation_checkpointing == "full":
            return list(range(n))
        return spread(n, count(n, self.ac_ratio))

    def offloaded(self, n: int) -> list[int]:
        # The first blocks: backward needs the last ones first, with nothing to hide their fetch.
        return list(range(count(n, self.offload_ratio)))

    def blocks(self, n: int) -> list[BlockMemory]:
        policy = "recompute_all" if self.activation_checkpointing == "full" else self.ac_policy
        ckpt, off = set(self.checkpointed(n)), set(self.offloaded(n))
        return [BlockMemory(policy if i in ckpt else None, i in off) for i in range(n)]

    def describe(self, n: int) -> str:
        ac = self.activation_checkpointing
        if ac == "selective":
            ac = f"selective {len(self.checkpointed(n))}/{n} {self.ac_policy}"
        return f"checkpoint {ac}, offload {len(self.offloaded(n))}/{n}"


@dataclass
class MemorySchedule:
    """Settings by local token count (tokens per rank in one micro-batch): the first entry whose
    `max_tokens` covers the micro-batch applies; beyond the last, the last."""

    entries: list[tuple[int, MemorySettings]] = field(default_factory=list)

    @classmethod
    def single(cls, settings: MemorySettings) -> "MemorySchedule":
        return cls([(2**62, settings)])

    def settings_for(self, tokens: int) -> MemorySettings:
        bounds = [bound for bound, _ in self.entries]
        return self.entries[min(bisect.bisect_left(bounds, tokens), len(self.entries) - 1)][1]

    def any_offload(self) -> bool:
        return any(s.offload_ratio > 0 for _, s in self.entries)

    def any_checkpoint(self) -> bool:
        return any(s.activation_checkpointing != "none" for _, s in self.entries)


def local_tokens(args: tuple, stream: tuple[int, ...]) -> int:
    """Tokens this rank holds in one micro-batch: batch x sequence of the block's first stream."""
    first = args[stream[0]]
    return first.shape[0] * first.shape[1]


def _shared_storages(block: nn.Module, args: tuple, kwargs: dict, stream: tuple[int, ...]) -> set[int]:
    """Storages offload leaves alone: parameters (as gathered now) and the non-stream arguments."""
    shared = [a for i, a in enumerate(args) if i not in stream] + list(kwargs.values())
    tensors = [a for a in shared if isinstance(a, Tensor)] + list(block.parameters())
    return {getattr(t, "_local_tensor", t).untyped_storage().data_ptr() for t in tensors}


def _memory_forward(block: nn.Module, index: int, n: int, schedule: MemorySchedule,
                    offloader: Optional[ActivationOffloader], stream: tuple[int, ...]) -> Callable:
    inner = block.forward  # the class's forward, bound (read before the instance override below)

    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():  # sampling, evaluation: nothing is saved
            return inner(*args, **kwargs)
        mode = schedule.settings_for(local_tokens(args, stream)).blocks(n)[index]
        call = checkpointed(inner, mode.checkpoint) if mode.checkpoint else inner
        if not (mode.offload and offloader is not None):
            return call(*args, **kwargs)
        with offloader.saving(index, _shared_storages(block, args, kwargs, stream)):
            return call(*args, **kwargs)

    return forward


def memory_schedule(cfg, sp: int, device: torch.device, world_size: int) -> MemorySchedule:
    """The run's schedule: the config's settings, or per clip shape from the planner (auto)."""
    if cfg.parallel.memory == "auto":
        from litegen.parallel.planner import auto_schedule

        return auto_schedule(cfg, sp, device, world_size)
    return MemorySchedule.single(MemorySettings.from_config(cfg.parallel))


def refuse_compiled(blocks: nn.ModuleList) -> None:
    """Offload does not support torch.compile'd blocks: say so before the first step.

    Offload's pack/unpack hooks keep Python bookkeeping per saved storage (views, owners, the
    block's place in the prefetch chain) and issue copies on a side stream. In a compiled block
    AOTAutograd chooses and lays out the saved tensors itself, so the hooks would see its graph's
    values rather than the block's, and their copies would be ordered outside the compiled graph's
    streams; none of that is validated here. Checkpointing alone composes with compiled blocks.
    """
    for i, block in enumerate(blocks):
        compiled = getattr(block, "_compiled_call_impl", None) is not None or hasattr(block, "_orig_mod")
        if compiled:
            raise ValueError(f"block {i} is compiled (torch.compile), which activation offload does not "
                             "support: set parallel.offload.enabled=false, or do not compile the blocks "
                             "(see litegen/parallel/memory.py refuse_compiled for why)")


def apply_memory(model: nn.Module, plan: ModelPlan, schedule: MemorySchedule, device: torch.device,
                 copies: Optional[SyncCopies] = None) -> Optional[ActivationOffloader]:
    """Give every block of `model` the schedule's treatment; returns the offloader (if any)."""
    if not (schedule.any_offload() or schedule.any_checkpoint()):
        return None
    if schedule.any_offload():
        refuse_compiled(plan.block_list(model))
    prefetch = max(s.prefetch_blocks for _, s in schedule.entries)
    offloader = ActivationOffloader(device, prefetch, copies) if schedule.any_offload() else None
    blocks = plan.block_list(model)
    for i, block in enumerate(blocks):
        # An instance attribute shadows the class's forward; nn.Module.__call__ (and the FSDP
        # hooks around it) still runs, so the block stays one FSDP unit.
        block.forward = _memory_forward(block, i, len(blocks), schedule, offloader, plan.block_stream)
    model.activation_memory = (schedule, offloader)  # a plain attribute: no parameters, no state
    return offloader
