"""Typed schemas of the model families beyond Wan: CogVideoX, Vchitect-2.0, Snap Video, WorldDreamer."""

from dataclasses import dataclass, field
from typing import Any

from litegen.config.model import ModelConfig, Problems


def _positive(obj: Any, *names: str) -> Problems:
    for name in names:
        if getattr(obj, name) < 1:
            yield name, f"must be >= 1, got {getattr(obj, name)}"


def _heads(obj: Any, width_field: str, heads_field: str, head_multiple: int = 2) -> Problems:
    """Heads must divide the width into head_dim a multiple of `head_multiple` (RoPE pairs, ...)."""
    width, heads = getattr(obj, width_field), getattr(obj, heads_field)
    if heads < 1 or width % heads:
        yield heads_field, f"must divide {width_field}={width}, got {heads}"
    elif (width // heads) % head_multiple:
        yield heads_field, (f"head_dim = {width_field}/{heads_field} = {width // heads} must be a "
                            f"multiple of {head_multiple}; use fewer heads")


@dataclass
class TransformerConfig(ModelConfig):
    """Width, heads, depth and FFN every transformer family has; head_dim = dim / num_heads."""

    dim: int = 1024
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int = 4096
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def head_multiple(self) -> int:
        """What head_dim must be a multiple of (RoPE rotates channel pairs)."""
        return 2

    def problems(self) -> Problems:
        yield from super().problems()
        yield from _heads(self, "dim", "num_heads", self.head_multiple())
        yield from _positive(self, "num_layers", "ffn_dim")


@dataclass
class CogVideoXConfig(TransformerConfig):
    """CogVideoX 1.0 MM-DiT: text + video in one 3D attention, expert adaptive LayerNorm.

    Field names mirror diffusers' CogVideoXTransformer3DModel where they mean the same thing;
    `sample_*` are the latent sizes the released models were trained at (positions of other sizes
    are interpolated into that grid, as the released pipeline does).
    """

    family: str = "cogvideox"
    dim: int = 1920  # num_attention_heads * attention_head_dim
    num_heads: int = 30
    num_layers: int = 30
    ffn_dim: int = 7680
    time_embed_dim: int = 512
    eps: float = 1e-5
    qk_norm_eps: float = 1e-6
    pos_embedding: str = "sincos"  # sincos (2B) | rope (5B) | learned (a trained table on the sample grid)
    sample_frames: int = 13  # latent frames of the training grid
    sample_height: int = 60
    sample_width: int = 90
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0  # the network sees t in [0, 1); CogVideoX was trained on t*1000
    # The released models attend to T5's padding tokens too; False masks them out.
    attend_text_padding: bool = False
    in_channels: int = 16
    out_channels: int = 16
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])

    def head_multiple(self) -> int:
        # 3D RoPE splits head_dim into t: 1/4, h and w: 3/8 each, all in pairs -> multiple of 16.
        return 16 if self.pos_embedding == "rope" else 2

    def problems(self) -> Problems:
        yield from super().problems()
        yield from _positive(self, "time_embed_dim", "sample_frames", "sample_height", "sample_width")
        if self.pos_embedding not in ("sincos", "rope", "learned"):
            yield "pos_embedding", f"must be one of ['sincos', 'rope', 'learned'], got {self.pos_embedding!r}"
        if self.pos_embedding != "rope" and self.dim % 16:
            yield "dim", f"3D sin-cos positions need dim divisible by 16, got {self.dim}"
        if self.patch_size[:1] != [1]:
            yield "patch_size", (f"CogVideoX 1.0 patches frames one by one: patch_size[0] must be 1, "
                                 f"got {self.patch_size}")


@dataclass
class VchitectConfig(TransformerConfig):
    """Vchitect-2.0-style parallel blocks: spatial, temporal and cross attention fused and summed."""

    family: str = "vchitect"
    dim: int = 1536
    num_heads: int = 24
    num_layers: int = 32
    ffn_dim: int = 6144
    freq_dim: int = 256
    # Vchitect-2.0's processor scales the spatial branch by 1.1 before fusing it with cross-attention.
    spatial_gain: float = 1.1
    temporal_rope_theta: float = 10000.0
    timestep_scale: float = 1000.0

    def problems(self) -> Problems:
        yield from super().problems()
        yield from _positive(self, "freq_dim")
        if self.dim % 4:
            yield "dim", f"2D sin-cos positions need dim divisible by 4, got {self.dim}"


@dataclass
class SnapVideoConfig(ModelConfig):
    """Snap Video's FIT: patch tokens are read into latent tokens, computed on, then written back."""

    family: str = "snapvideo"
    patch_dim: int = 1024  # width of the patch (video) tokens
    patch_heads: int = 8  # heads of the write attention (patches <- latents)
    dim: int = 3072  # width of the latent tokens, where most computation happens
    num_heads: int = 24
    num_blocks: int = 6  # FIT blocks: read, latent_layers, write
    latent_layers: int = 4  # transformer layers on the latents per FIT block
    latents_per_group: int = 192
    group_frames: int = 4  # consecutive token frames that share one group of latents
    ffn_dim: int = 12288  # latent layers' FFN
    patch_ffn_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0
    in_channels: int = 12
    out_channels: int = 12
    text_dim: int = 1024  # T5-11B's width

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def problems(self) -> Problems:
        yield from super().problems()
        yield from _heads(self, "dim", "num_heads")
        yield from _heads(self, "patch_dim", "patch_heads")
        if self.dim // max(self.num_heads, 1) < 6:
            yield "num_heads", "latent head_dim must be >= 6 for the (group, index) RoPE"
        yield from _positive(self, "num_blocks", "latent_layers", "latents_per_group", "group_frames",
                             "ffn_dim", "patch_ffn_dim", "freq_dim")


@dataclass
class WorldDreamerConfig(TransformerConfig):
    """WorldDreamer's spatial-temporal patchwise transformer over discrete visual tokens.

    `patch_size` is how many latent positions one token covers: the tokenizer's downsampling
    ([1, p, p], e.g. the palette tokenizer's palette_patch). `vocab_size` must equal the
    tokenizer's codebook size; id `vocab_size` is the [MASK] token.
    """

    family: str = "worlddreamer"
    vocab_size: int = 8192
    dim: int = 2048
    num_heads: int = 16
    num_layers: int = 24
    ffn_dim: int = 8192
    window: list[int] = field(default_factory=lambda: [4, 4])  # (rows, cols) of tokens, all frames
    action_dim: int = 0  # > 0 adds a per-frame action embedding (e.g. driving controls)
    patch_size: list[int] = field(default_factory=lambda: [1, 1, 1])

    def problems(self) -> Problems:
        yield from super().problems()
        yield from _positive(self, "vocab_size")
        if self.dim % 16:
            yield "dim", f"3D sin-cos positions need dim divisible by 16, got {self.dim}"
        if len(self.window) != 2 or min(self.window) < 1:
            yield "window", f"must be two positive ints (rows, cols), got {self.window}"
        if len(self.patch_size) != 3 or self.patch_size[0] != 1 or self.patch_size[1] != self.patch_size[2]:
            yield "patch_size", f"the tokenizer downsamples space only: must be [1, p, p], got {self.patch_size}"
        if self.action_dim < 0:
            yield "action_dim", f"must be >= 0, got {self.action_dim}"
