"""ParallelDims: the one owner of how the world splits into data- and sequence-parallel groups.

The world is a 4D mesh dp_replicate x dp_shard x sp_ring x sp_ulysses (row-major, so Ulysses
peers are neighbouring ranks, ideally one NVLink island). Everything else asks this object for
its group: the loader for the data-parallel rank, FSDP for the shard/replicate mesh, the
sequence-parallel attention for its ring and Ulysses groups, the meter for the loss group.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

from litegen.config import ConfigError, ParallelConfig

MESH_DIMS = ("dp_replicate", "dp_shard", "sp_ring", "sp_ulysses")


@dataclass
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    sp_ring: int
    sp_ulysses: int
    world_size: int
    mesh: Optional[object] = field(default=None, repr=False, compare=False)  # a DeviceMesh once built
    _views: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int,
                    num_heads: Optional[int] = None) -> "ParallelDims":
        """Resolve dp_shard=-1 and validate; fails before any work with every factor named."""
        fixed = cfg.dp_replicate * cfg.sp_ring * cfg.sp_ulysses
        dp_shard = cfg.dp_shard if cfg.dp_shard != -1 else max(world_size // max(fixed, 1), 1)
        dims = cls(cfg.dp_replicate, dp_shard, cfg.sp_ring, cfg.sp_ulysses, world_size)
        dims.validate(num_heads)
        return dims

    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different samples one step sees side by side."""
        return self.dp_replicate * self.dp_shard

    @property
    def sp(self) -> int:
        """Sequence-parallel degree: how many ranks share one sample's tokens."""
        return self.sp_ring * self.sp_ulysses

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.dp_replicate, self.dp_shard, self.sp_ring, self.sp_ulysses

    def validate(self, num_heads: Optional[int] = None) -> None:
        problems = []
        product = math.prod(self.shape)
        if product != self.world_size:
            problems.append(("parallel", self._product_message(product)))
        if num_heads is not None and num_heads % self.sp_ulysses:
            problems.append(("parallel.sp_ulysses", self._heads_message(num_heads)))
        if problems:
            raise ConfigError(problems)

    def _factors(self) -> str:
        return " x ".join(f"{name}({size})" for name, size in zip(MESH_DIMS, self.shape))

    def _product_message(self, product: int) -> str:
        msg = f"{self._factors()} = {product}, but the world size is {self.world_size}"
        fixed = self.dp_replicate * self.sp
        if self.world_size % fixed == 0:
            return msg + f"; use parallel.dp_shard={self.world_size // fixed} (or -1: the rest of the world)"
        return msg + (f"; dp_replicate x sp_ring x sp_ulysses = {fixed} must divide the world size "
                      f"{self.world_size}")

    def _heads_message(self, num_heads: int) -> str:
        # Ulysses splits heads, the ring splits nothing: keep the SP degree, move what does not
        # divide the heads from Ulysses to the ring (12 heads, SP 8 -> Ulysses 4 x ring 2).
        ulysses = math.gcd(num_heads, self.sp)
        return (f"{num_heads} heads cannot split {self.sp_ulysses} ways ({self._factors()}): use "
                f"sp_ulysses={ulysses}, sp_ring={self.sp // ulysses}")

    # ---- ranks, from the row-major mesh order (no process group needed) ----------------------

    def dp_rank(self, rank: int) -> int:
        """Data-parallel rank: ranks of one sequence-parallel group read the same samples."""
        return rank // self.sp

    def sp_rank(self, rank: int) -> int:
        """Position in the sequence-parallel group = which chunk of the tokens this rank holds."""
        return rank % self.sp

    # ---- the mesh ------------------------------------------------------------------------------

    def build_mesh(self, device_type: str):
        """Create the DeviceMesh and its flattened views (collective: every rank calls it)."""
        from torch.distributed.device_mesh import init_device_mesh

        world = init_device_mesh(device_type, (self.world_size,), mesh_dim_names=("world",))
        mesh = world._unflatten(0, self.shape, MESH_DIMS)
        # Flattened views are kept here: torch wants them bookkept, not sliced off the root.
        self._views = {
            "dp": mesh["dp_replicate", "dp_shard"]._flatten("dp"),
            "sp": mesh["sp_ring", "sp_ulysses"]._flatten("sp"),
            # FSDP shards over SP ranks too: they hold the same parameters, so sharding across
            # them divides memory by the whole dp_shard x sp group instead of dp_shard alone.
            "dp_shard_sp": mesh["dp_shard", "sp_ring", "sp_ulysses"]._flatten("dp_shard_sp"),
        }
        if self.dp_replicate > 1:  # HSDP: replicate across groups, shard within
            self._views["hsdp"] = world._unflatten(0, (self.dp_replicate, self.dp_shard * self.sp),
                                                   ("dp_replicate", "dp_shard_sp"))
        self.mesh = mesh
        return mesh

    def submesh(self, name: str):
        """A named 1D (or, for "hsdp", 2D) mesh: a mesh dimension or one of the flattened views."""
        if self.mesh is None:
            raise RuntimeError("ParallelDims.build_mesh() has not run (single process?)")
        return self._views[name] if name in self._views else self.mesh[name]

    def group(self, name: str):
        """The process group of this rank along a 1D sub-mesh (None without a mesh)."""
        return None if self.mesh is None else self.submesh(name).get_group()

    def fsdp_mesh(self):
        """Where FSDP shards: dp_shard x sp flattened; 2D (replicate, shard) for HSDP."""
        return self.submesh("hsdp" if self.dp_replicate > 1 else "dp_shard_sp")

    def describe(self) -> str:
        return f"world {self.world_size} = {self._factors()}"
