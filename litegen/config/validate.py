"""Turn a composed DictConfig into typed dataclasses and check every field and cross-field rule."""

import dataclasses
import math
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from litegen.config.errors import ConfigError
from litegen.config.schema import LiteGenConfig


def field_problems(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every (dotted.path, message) reported by `problems()` of node and its nested dataclasses."""
    if hasattr(node, "problems"):
        for name, msg in node.problems():
            yield prefix + name, msg
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from field_problems(value, f"{prefix}{f.name}.")


def _shape_problems(path: str, frames: int, height: int, width: int, cfg: LiteGenConfig):
    """A pixel clip shape must map to whole latent patches."""
    video, patch = cfg.encoders.video, cfg.model.patch_size
    if video.kind != "pixel":
        return  # real VAEs have their own (checked at build) shape rules
    t_unit, s_unit = video.temporal_factor * patch[0], video.spatial_factor
    if frames % t_unit or height % (s_unit * patch[1]) or width % (s_unit * patch[2]):
        yield path, (f"clip {frames}x{height}x{width} (frames x height x width) must divide into "
                     f"encoder x patch units of {t_unit}x{s_unit * patch[1]}x{s_unit * patch[2]}")


def _objective_problems(cfg: LiteGenConfig) -> Iterator[tuple[str, str]]:
    """Token models and the masked-token objective only work together, with matching codebooks."""
    tokens_model, tokens_objective = cfg.model.family == "worlddreamer", cfg.objective.name == "masked_tokens"
    if tokens_model != tokens_objective:
        yield "objective.name", (f"model.family={cfg.model.family!r} with objective={cfg.objective.name!r}: "
                                 "the worlddreamer family predicts discrete tokens and trains only with "
                                 "objective=masked_tokens (and that objective only trains worlddreamer)")
    elif tokens_model:
        if cfg.model.vocab_size != cfg.objective.vocab_size:
            yield "model.vocab_size", (f"must equal the tokenizer's codebook ({cfg.objective.vocab_size} = "
                                       f"objective.palette_levels^3), got {cfg.model.vocab_size}")
        if cfg.model.patch_size != [1, cfg.objective.palette_patch, cfg.objective.palette_patch]:
            yield "model.patch_size", (f"must be the tokenizer's downsampling [1, p, p] with p = "
                                       f"objective.palette_patch={cfg.objective.palette_patch}, "
                                       f"got {cfg.model.patch_size}")
        if cfg.objective.latent_channels != cfg.model.in_channels:
            yield "objective.latent_channels", (f"must equal model.in_channels={cfg.model.in_channels}, "
                                                f"got {cfg.objective.latent_channels}")


def cross_problems(cfg: LiteGenConfig) -> Iterator[tuple[str, str]]:
    """Rules that span sections: encoder widths must match the model's inputs."""
    video, text, model = cfg.encoders.video, cfg.encoders.text, cfg.model
    if video.kind == "pixel":
        channels = 3 * video.spatial_factor**2 * video.temporal_factor
        if model.in_channels != channels or model.out_channels != channels:
            yield "model.in_channels", (
                f"the pixel encoder (spatial_factor={video.spatial_factor}, temporal_factor="
                f"{video.temporal_factor}) gives {channels} latent channels: set "
                f"model.in_channels={channels} model.out_channels={channels}")
    if text.kind == "hashed" and model.text_dim != text.dim:
        yield "model.text_dim", f"must equal encoders.text.dim={text.dim}, got {model.text_dim}"
    yield from _objective_problems(cfg)
    s = cfg.train.sample
    yield from _shape_problems("train.sample", s.frames, s.height, s.width, cfg)
    for i, shape in enumerate(cfg.data.synthetic.shapes):
        if len(shape) == 3:
            yield from _shape_problems(f"data.synthetic.shapes[{i}]", *shape, cfg)
    yield from _bucket_problems(cfg)
    if cfg.train.nonfinite == "skip" and cfg.parallel.backend == "deepspeed":
        yield "train.nonfinite", ("skip needs parallel.backend fsdp2 or ddp: DeepSpeed's engine reduces "
                                  "and steps in one call, so a step cannot be dropped on every rank; "
                                  "use train.nonfinite=stop")


def _bucket_problems(cfg: LiteGenConfig) -> Iterator[tuple[str, str]]:
    """Buckets must map to whole patches, and a packing stage's budget must hold its largest bucket."""
    data, video = cfg.data, cfg.encoders.video
    budgets = [data.token_budget] + [data.token_budget if s.token_budget is None else s.token_budget
                                     for s in data.stages]
    if any(budgets) and (cfg.model.family != "wan" or cfg.objective.name != "rectified_flow"):
        yield "data.token_budget", (f"packed batches need a model with a packed forward and an objective with "
                                    f"per-clip losses (the Wan family with rectified_flow); got model family "
                                    f"{cfg.model.family!r} with objective {cfg.objective.name!r}: set token budgets to 0")
    for name, shape in data.buckets.items():
        if len(shape) == 3:
            yield from _shape_problems(f"data.buckets.{name}", *shape, cfg)
    if video.kind != "pixel":
        return  # a real VAE's latent sizes are known once it is built
    units = (video.temporal_factor * cfg.model.patch_size[0], video.spatial_factor * cfg.model.patch_size[1],
             video.spatial_factor * cfg.model.patch_size[2])
    stages = [(f"data.stages[{i}]", st.buckets, data.token_budget if st.token_budget is None else st.token_budget)
              for i, st in enumerate(data.stages)] or [("data", [], data.token_budget)]
    for path, names, budget in stages:
        shapes = [data.buckets[n] for n in (names or data.buckets) if n in data.buckets]
        sizes = {tuple(sh): math.prod(n // u for n, u in zip(sh, units)) for sh in shapes if len(sh) == 3}
        if budget and sizes and max(sizes.values()) > budget:
            big = max(sizes, key=sizes.get)
            yield f"{path}.token_budget", (f"{budget} tokens cannot hold bucket {list(big)} ({sizes[big]} tokens "
                                           "for this encoder and patch size); raise it or drop the bucket")


def to_typed(cfg: DictConfig) -> LiteGenConfig:
    """Resolve interpolations, build dataclasses, validate; raise ConfigError naming each field."""
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError([(getattr(e, "full_key", "?") or "?", str(e).splitlines()[0])]) from None
    problems = list(field_problems(typed)) + list(cross_problems(typed))
    if problems:
        raise ConfigError(problems)
    return typed
