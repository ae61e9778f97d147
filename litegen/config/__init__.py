"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore, and validation."""

from pathlib import Path

from hydra.core.config_store import ConfigStore

from litegen.config.errors import ConfigError
from litegen.config.families import CogVideoXConfig, SnapVideoConfig, VchitectConfig, WorldDreamerConfig
from litegen.config.model import ModelConfig, WanConfig
from litegen.config.objectives import EDMConfig, MaskedTokensConfig, VPredictionConfig
from litegen.config.schema import (DataConfig, EncodersConfig, LiteGenConfig, LoggingConfig,
                                   ObjectiveConfig, OptimConfig, ParallelConfig,
                                   RectifiedFlowConfig, SampleConfig, SourceConfig, StageConfig,
                                   SyntheticDataConfig, TextEncoderConfig, TrainConfig,
                                   VideoEncoderConfig)
from litegen.config.validate import to_typed

# configs/ lives at the repository root (required layout); the package is installed editable.
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

# Group yaml files start with `defaults: [<schema name>, _self_]` to get typed, closed nodes.
SCHEMAS = {
    ("model", "wan_schema"): WanConfig,
    ("objective", "rectified_flow_schema"): RectifiedFlowConfig,
    # model families and objectives of issue 6
    ("model", "cogvideox_schema"): CogVideoXConfig,
    ("model", "vchitect_schema"): VchitectConfig,
    ("model", "snapvideo_schema"): SnapVideoConfig,
    ("model", "worlddreamer_schema"): WorldDreamerConfig,
    ("objective", "v_prediction_schema"): VPredictionConfig,
    ("objective", "edm_schema"): EDMConfig,
    ("objective", "masked_tokens_schema"): MaskedTokensConfig,
    ("optim", "optim_schema"): OptimConfig,
    ("train", "train_schema"): TrainConfig,
    ("data", "data_schema"): DataConfig,
    ("encoders/video", "video_encoder_schema"): VideoEncoderConfig,
    ("encoders/text", "text_encoder_schema"): TextEncoderConfig,
    ("parallel", "parallel_schema"): ParallelConfig,
    ("logging", "logging_schema"): LoggingConfig,
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="litegen_schema", node=LiteGenConfig)
    for (group, name), node in SCHEMAS.items():
        cs.store(group=group, name=name, node=node)


def compose(overrides: list[str] = (), config_name: str = "litegen") -> LiteGenConfig:
    """Compose and validate a config outside a Hydra app (tools, tests, notebooks)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return to_typed(hydra_compose(config_name, overrides=list(overrides)))


__all__ = [
    "CogVideoXConfig", "EDMConfig", "MaskedTokensConfig", "SnapVideoConfig", "VPredictionConfig",
    "VchitectConfig", "WorldDreamerConfig",
    "CONFIG_DIR", "ConfigError", "DataConfig", "EncodersConfig", "LiteGenConfig", "LoggingConfig",
    "ModelConfig", "ObjectiveConfig", "OptimConfig", "ParallelConfig", "RectifiedFlowConfig",
    "SampleConfig", "SourceConfig", "StageConfig", "SyntheticDataConfig", "TextEncoderConfig", "TrainConfig",
    "VideoEncoderConfig", "WanConfig", "compose", "register_configs", "to_typed",
]
