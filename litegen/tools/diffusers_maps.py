"""How LiteGen's Wan 2.1 and CogVideoX parameters correspond to diffusers' transformer classes.

Per family: a function from our parameter name to the diffusers name, tensor transforms for the
few parameters whose layout differs, and the translation between diffusers' config.json and our
typed model config. Data only; litegen/tools/convert.py does the reading and writing.
"""

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import Tensor

from litegen.config.families import CogVideoXConfig
from litegen.config.model import ModelConfig, WanConfig

# Our (original Wan repo) names -> diffusers' WanTransformer3DModel names, applied in order.
WAN_KEYS = [
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"\.self_attn\.", ".attn1."), (r"\.cross_attn\.", ".attn2."),
    (r"(attn\d)\.([qkv])\.", r"\1.to_\2."), (r"(attn\d)\.o\.", r"\1.to_out.0."),
    (r"\.norm3\.", ".norm2."), (r"\.ffn\.0\.", ".ffn.net.0.proj."), (r"\.ffn\.2\.", ".ffn.net.2."),
    (r"\.modulation$", ".scale_shift_table"), (r"^head\.head\.", "proj_out."),
    (r"^head\.scale_shift_table$", "scale_shift_table"),
]

COGVIDEOX_KEYS = [
    (r"^patch_embed\.", "patch_embed.proj."), (r"^text_proj\.", "patch_embed.text_proj."),
    (r"^time_embedding\.0\.", "time_embedding.linear_1."), (r"^time_embedding\.2\.", "time_embedding.linear_2."),
    (r"\.attn1\.to_out\.", ".attn1.to_out.0."),
    (r"\.ff\.0\.", ".ff.net.0.proj."), (r"\.ff\.2\.", ".ff.net.2."),
]


def rename(name: str, rules: list[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        name = re.sub(pattern, replacement, name)
    return name


# ---- tensor layouts that differ ---------------------------------------------------------------

def _head_rows(weight: Tensor, channels: int, patch_area: int, to_diffusers: bool) -> Tensor:
    """CogVideoX's proj_out rows are (channel, ph, pw); ours (ph, pw, channel), like unpatchify."""
    if to_diffusers:
        return weight.reshape(patch_area, channels, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)
    return weight.reshape(channels, patch_area, *weight.shape[1:]).transpose(0, 1).reshape(weight.shape)


def cogvideox_tensor(cfg: CogVideoXConfig, name: str, value: Tensor, to_diffusers: bool) -> Tensor:
    """Our tensor -> diffusers' (to_diffusers) or back, for parameter `name` (ours)."""
    if name == "patch_embed.weight":  # our Conv3d with a 1-frame kernel is diffusers' Conv2d
        return value.squeeze(2) if to_diffusers else value.unsqueeze(2)
    if name.startswith("proj_out."):
        area = cfg.patch_size[1] * cfg.patch_size[2]
        return _head_rows(value, cfg.out_channels, area, to_diffusers)
    return value


# ---- configs ----------------------------------------------------------------------------------

def _require(config: dict, key: str, allowed: Any, what: str) -> None:
    if config.get(key, allowed) != allowed:
        raise ValueError(f"{what}: config.json has {key}={config[key]!r}; only {allowed!r} is supported")


def wan_config(config: dict) -> WanConfig:
    _require(config, "image_dim", None, "Wan image-to-video (image_dim) is not supported")
    _require(config, "added_kv_proj_dim", None, "Wan image-to-video (added_kv_proj_dim) is not supported")
    qk_norm = config.get("qk_norm", "rms_norm_across_heads")
    if qk_norm not in (None, "rms_norm_across_heads"):
        raise ValueError(f"Wan qk_norm={qk_norm!r} is not supported (only rms_norm_across_heads)")
    heads = config["num_attention_heads"]
    return WanConfig(
        name="converted", dim=heads * config["attention_head_dim"], num_heads=heads,
        ffn_dim=config["ffn_dim"], num_layers=config["num_layers"], freq_dim=config["freq_dim"],
        eps=config["eps"], qk_norm=qk_norm is not None, cross_attn_norm=config["cross_attn_norm"],
        in_channels=config["in_channels"], out_channels=config["out_channels"] or config["in_channels"],
        text_dim=config["text_dim"], patch_size=list(config["patch_size"]))


def wan_diffusers_config(cfg: WanConfig) -> dict:
    return {"_class_name": "WanTransformer3DModel", "patch_size": list(cfg.patch_size),
            "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.head_dim,
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "text_dim": cfg.text_dim,
            "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_dim, "num_layers": cfg.num_layers,
            "cross_attn_norm": cfg.cross_attn_norm,
            "qk_norm": "rms_norm_across_heads" if cfg.qk_norm else None, "eps": cfg.eps}


def cogvideox_config(config: dict) -> CogVideoXConfig:
    what = "CogVideoX 1.5 / I2V variants are not supported"
    for key, allowed in (("patch_size_t", None), ("ofs_embed_dim", None), ("attention_bias", True),
                         ("flip_sin_to_cos", True), ("freq_shift", 0), ("activation_fn", "gelu-approximate"),
                         ("timestep_activation_fn", "silu"), ("norm_elementwise_affine", True)):
        _require(config, key, allowed, what)
    if config.get("use_learned_positional_embeddings"):
        raise ValueError(f"{what}: learned positions together with RoPE (CogVideoX-5B-I2V)")
    heads, p = config["num_attention_heads"], config["patch_size"]
    dim = heads * config["attention_head_dim"]
    return CogVideoXConfig(
        name="converted", dim=dim, num_heads=heads, num_layers=config["num_layers"], ffn_dim=4 * dim,
        time_embed_dim=config["time_embed_dim"], eps=config["norm_eps"],
        pos_embedding="rope" if config.get("use_rotary_positional_embeddings") else "sincos",
        sample_frames=(config["sample_frames"] - 1) // config["temporal_compression_ratio"] + 1,
        sample_height=config["sample_height"], sample_width=config["sample_width"],
        spatial_interpolation_scale=config["spatial_interpolation_scale"],
        temporal_interpolation_scale=config["temporal_interpolation_scale"],
        in_channels=config["in_channels"], out_channels=config["out_channels"] or config["in_channels"],
        text_dim=config["text_embed_dim"], patch_size=[1, p, p],
        # The released models were trained attending to T5's padding: keep that behaviour.
        attend_text_padding=True)


def cogvideox_diffusers_config(cfg: CogVideoXConfig) -> dict:
    if cfg.pos_embedding == "learned" or cfg.ffn_dim != 4 * cfg.dim:
        raise ValueError("diffusers' CogVideoXTransformer3DModel has no learned-only positions and "
                         f"fixes ffn_dim = 4 * dim; got pos_embedding={cfg.pos_embedding}, ffn_dim={cfg.ffn_dim}")
    return {"_class_name": "CogVideoXTransformer3DModel", "num_attention_heads": cfg.num_heads,
            "attention_head_dim": cfg.head_dim, "in_channels": cfg.in_channels,
            "out_channels": cfg.out_channels, "time_embed_dim": cfg.time_embed_dim,
            "text_embed_dim": cfg.text_dim, "num_layers": cfg.num_layers, "norm_eps": cfg.eps,
            "sample_frames": (cfg.sample_frames - 1) * 4 + 1, "temporal_compression_ratio": 4,
            "sample_height": cfg.sample_height, "sample_width": cfg.sample_width,
            "patch_size": cfg.patch_size[1], "spatial_interpolation_scale": cfg.spatial_interpolation_scale,
            "temporal_interpolation_scale": cfg.temporal_interpolation_scale,
            "use_rotary_positional_embeddings": cfg.pos_embedding == "rope"}


@dataclass(frozen=True)
class DiffusersMap:
    class_name: str  # diffusers' model class (config.json "_class_name")
    rules: list  # our name -> diffusers name
    config_from_diffusers: Callable[[dict], ModelConfig]
    config_to_diffusers: Callable[[Any], dict]
    tensor: Callable[[Any, str, Tensor, bool], Tensor] = lambda cfg, name, value, to_diffusers: value


MAPS = {
    "wan": DiffusersMap("WanTransformer3DModel", WAN_KEYS, wan_config, wan_diffusers_config),
    "cogvideox": DiffusersMap("CogVideoXTransformer3DModel", COGVIDEOX_KEYS, cogvideox_config,
                              cogvideox_diffusers_config, cogvideox_tensor),
}
FAMILY_OF_CLASS = {m.class_name: family for family, m in MAPS.items()}
