"""Count what a forward pass leaves behind for backward, per block: the measurement the planner's
activation model (litegen/models/activations.py) is checked against.

A `saved_tensors_hooks` pair sees every tensor autograd saves; inside a checkpointed block that
is only the block's inputs. Selective checkpointing keeps its chosen op outputs in a cache of its
own instead, which is counted through litegen.parallel.checkpointing's observer. Storages are
counted once however many views of them are saved; parameters are not activations and are left
out. A storage is charged to the block whose forward saved it first, except the arguments every
block shares (time embedding, text, RoPE: the plan's non-`block_stream` arguments), which are
charged to "outside" with the embeddings and head.
"""

from collections import defaultdict
from typing import Optional, Union

import torch
from torch import Tensor, nn

from litegen.models.plan import ModelPlan
from litegen.parallel import checkpointing

Owner = Union[int, str]  # a block index, or "outside"


def _key(t: Tensor) -> int:
    return t.untyped_storage().data_ptr()


class SavedBytes:
    """with SavedBytes(model, plan) as counted: loss = ...  ->  counted.blocks, counted.outside."""

    def __init__(self, model: nn.Module, plan: ModelPlan):
        self.model, self.plan = model, plan
        self.by_owner: dict[Owner, int] = defaultdict(int)
        self._owner_of: dict[int, Owner] = {}
        self._current: Optional[int] = None
        self._caches: list[tuple[Owner, object]] = []
        self._handles: list = []

    @property
    def blocks(self) -> list[int]:
        return [self.by_owner.get(i, 0) for i in range(len(self.plan.block_list(self.model)))]

    @property
    def outside(self) -> int:
        return self.by_owner.get("outside", 0)

    @property
    def total(self) -> int:
        return sum(self.by_owner.values())

    def _charge(self, t: Tensor, owner: Owner) -> None:
        key = _key(t)
        if key in self._params or key in self._owner_of:
            return
        self._owner_of[key] = "outside" if key in self._shared else owner
        self.by_owner[self._owner_of[key]] += t.untyped_storage().nbytes()

    def _pack(self, t: Tensor) -> Tensor:
        self._charge(t, self._current if self._current is not None else "outside")
        return t

    def _enter_block(self, index: int, args: tuple) -> None:
        self._current = index
        self._shared |= {_key(a) for i, a in enumerate(args)
                         if isinstance(a, Tensor) and i not in self.plan.block_stream}

    def _observe_cache(self, caching_mode) -> None:
        self._caches.append((self._current if self._current is not None else "outside", caching_mode))

    def __enter__(self) -> "SavedBytes":
        self._params = {_key(p) for p in self.model.parameters()}
        self._shared: set[int] = set()
        for i, block in enumerate(self.plan.block_list(self.model)):
            self._handles.append(block.register_forward_pre_hook(
                lambda m, args, i=i: self._enter_block(i, args)))
            self._handles.append(block.register_forward_hook(lambda m, a, out: setattr(self, "_current", None)))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        checkpointing.CACHE_OBSERVERS.append(self._observe_cache)
        return self

    def __exit__(self, *exc) -> None:
        checkpointing.CACHE_OBSERVERS.remove(self._observe_cache)
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._count_caches()

    def _count_caches(self) -> None:
        """Selective checkpointing's kept op outputs. Its cache is an implementation detail of
        torch.utils.checkpoint (`storage`: op -> per-call outputs wrapped with `.val`, or markers
        for recomputed calls); walk whatever nesting it has."""
        for owner, mode in self._caches:
            for leaf in torch.utils._pytree.tree_leaves(dict(mode.storage)):
                value = getattr(leaf, "val", None)
                if isinstance(value, Tensor):
                    self._charge(value, owner)
