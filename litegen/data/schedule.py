"""Progressive training schedule: stages that switch buckets, token budget, batch and LR at steps.

One run moves through `data.stages` (e.g. short low-res clips -> longer -> longest). The loader
asks which stage the step of each batch it builds belongs to, so a switch lands exactly on its
step, also after a resume; the LR schedule is multiplied by the stage's `lr_scale`. Without
stages the run is one stage made of the top-level data settings.
"""

from dataclasses import dataclass

from litegen.config.schema import DataConfig
from litegen.data.buckets import Shape


@dataclass(frozen=True)
class Stage:
    name: str
    start_step: int
    buckets: tuple[tuple[str, Shape], ...]  # (name, shape); () accepts every shape as its own bucket
    token_budget: int  # > 0: packed micro-batches of this many tokens at most; 0: bucket batches
    batch_size: int  # clips per bucket batch (token_budget == 0)
    lr_scale: float = 1.0

    @property
    def packed(self) -> bool:
        return self.token_budget > 0

    @property
    def shapes(self) -> tuple[Shape, ...]:
        return tuple(shape for _, shape in self.buckets)


@dataclass(frozen=True)
class Schedule:
    stages: tuple[Stage, ...]

    def index_at(self, step: int) -> int:
        index = 0
        for i, stage in enumerate(self.stages):
            if stage.start_step <= step:
                index = i
        return index

    def stage_at(self, step: int) -> Stage:
        return self.stages[self.index_at(step)]

    def lr_scale(self, step: int) -> float:
        return self.stage_at(step).lr_scale


def _named_buckets(cfg: DataConfig, names: list[str]) -> tuple[tuple[str, Shape], ...]:
    chosen = names or list(cfg.buckets)
    return tuple((name, tuple(int(n) for n in cfg.buckets[name])) for name in chosen)


def build_schedule(cfg: DataConfig) -> Schedule:
    """Stages from data.stages, inheriting data.token_budget / batch_size / buckets when unset."""
    if not cfg.stages:
        return Schedule((Stage("default", 0, _named_buckets(cfg, []), cfg.token_budget, cfg.batch_size),))
    stages = []
    for s in cfg.stages:
        budget = cfg.token_budget if s.token_budget is None else s.token_budget
        batch = cfg.batch_size if s.batch_size is None else s.batch_size
        stages.append(Stage(s.name, s.start_step, _named_buckets(cfg, list(s.buckets)), budget, batch, s.lr_scale))
    return Schedule(tuple(stages))
