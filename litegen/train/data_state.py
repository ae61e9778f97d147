"""The data loader's checkpoint entry: every data-parallel rank's position under one key.

Saving gathers all ranks' loader states (they are small: references, not tensors), so a resume
can continue the global sample stream on any number of ranks and workers, not only the layout
that saved it (litegen/data/loader.py).
"""

import json
from typing import Any

import torch.distributed as dist
from torch.distributed.checkpoint.stateful import Stateful

from litegen.data.loader import ShardLoader, global_state
from litegen.parallel.distributed import is_distributed


class LoaderCheckpoint(Stateful):
    def __init__(self, loader: ShardLoader):
        self.loader = loader

    def state_dict(self) -> dict[str, Any]:
        # Collective: dcp.save/load call this on every rank at the same point.
        mine = self.loader.state_dict()
        states = [mine]
        if is_distributed():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)
        # One JSON string: the same bytes on every rank (DCP writes it once), and a layout-free
        # leaf that loads whatever world size wrote it.
        return {"json": json.dumps(global_state(states), sort_keys=True)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(json.loads(state["json"]))
