"""Load the resolved config a run wrote (`<run_dir>/config.yaml`) back into typed dataclasses."""

from pathlib import Path
from typing import Union

from omegaconf import OmegaConf

from litegen.config import SCHEMAS
from litegen.config.errors import ConfigError
from litegen.config.schema import LiteGenConfig
from litegen.config.validate import to_typed


def _schema(group: str, key: str, value: str) -> type:
    """The schema registered for `group` whose default `key` equals value (e.g. family=wan)."""
    by_value = {getattr(node(), key): node for (g, _), node in SCHEMAS.items() if g == group}
    if value not in by_value:
        raise ConfigError([(f"{group}.{key}", f"unknown {key} {value!r}; known: {sorted(by_value)}")])
    return by_value[value]


def load_run_config(path: Union[str, Path]) -> LiteGenConfig:
    """A run's config.yaml -> LiteGenConfig, validated like a fresh run's config.

    The file holds no Hydra defaults list, so the model and objective schemas are picked by
    `model.family` and `objective.name`.
    """
    node = OmegaConf.load(path)
    base = OmegaConf.structured(LiteGenConfig)
    base.model = OmegaConf.structured(_schema("model", "family", node.model.family))
    base.objective = OmegaConf.structured(_schema("objective", "name", node.objective.name))
    return to_typed(OmegaConf.merge(base, node))
