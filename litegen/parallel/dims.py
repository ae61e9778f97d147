"""ParallelDims: the one owner of how the world splits into data- and sequence-parallel groups."""

from dataclasses import dataclass

from litegen.config import ConfigError, ParallelConfig


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    sp_ring: int
    sp_ulysses: int
    world_size: int

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int) -> "ParallelDims":
        fixed = cfg.dp_replicate * cfg.sp_ring * cfg.sp_ulysses
        dp_shard = cfg.dp_shard if cfg.dp_shard != -1 else world_size // max(fixed, 1)
        dims = cls(cfg.dp_replicate, dp_shard, cfg.sp_ring, cfg.sp_ulysses, world_size)
        dims.validate()
        return dims

    @property
    def dp(self) -> int:
        return self.dp_replicate * self.dp_shard

    @property
    def sp(self) -> int:
        return self.sp_ring * self.sp_ulysses

    def validate(self) -> None:
        product = self.dp_replicate * self.dp_shard * self.sp_ring * self.sp_ulysses
        if product != self.world_size:
            raise ConfigError([("parallel", (
                f"dp_replicate({self.dp_replicate}) x dp_shard({self.dp_shard}) x sp_ring("
                f"{self.sp_ring}) x sp_ulysses({self.sp_ulysses}) = {product}, but the world size "
                f"is {self.world_size}; set parallel.dp_shard=-1 to use the rest of the world"))])
        if self.sp > 1:
            raise ConfigError([("parallel.sp_ulysses", (
                "sequence parallelism is not available in this version of LiteGen; "
                "use parallel.sp_ring=1 parallel.sp_ulysses=1"))])

    def dp_rank(self, rank: int) -> int:
        """Data-parallel rank: ranks of one sequence-parallel group read the same samples."""
        return rank // self.sp
