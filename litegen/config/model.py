"""Typed schemas for model families. One dataclass per family; `family` selects the builder."""

from dataclasses import dataclass, field
from typing import Iterator, Optional

Problems = Iterator[tuple[str, str]]


@dataclass
class ModelConfig:
    """Fields every video DiT family shares."""

    family: str = "wan"
    name: str = "custom"
    in_channels: int = 16  # latent channels from the video encoder
    out_channels: int = 16
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])  # (t, h, w)
    text_dim: int = 4096  # width of the text encoder's embeddings
    init_from: Optional[str] = None  # converted checkpoint to start from (tools.convert)

    def problems(self) -> Problems:
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            yield "patch_size", f"must be three positive ints (t, h, w), got {self.patch_size}"
        for name in ("in_channels", "out_channels", "text_dim"):
            if getattr(self, name) < 1:
                yield name, f"must be >= 1, got {getattr(self, name)}"


@dataclass
class WanConfig(ModelConfig):
    """Wan 2.1 DiT: full 3D self-attention, text cross-attention, adaLN-zero modulation."""

    family: str = "wan"
    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    freq_dim: int = 256  # sinusoidal timestep embedding width
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    # The network sees t in [0, 1]; Wan was trained on t*1000, kept so converted weights work.
    timestep_scale: float = 1000.0
    # Add fixed (parameter-free) 3D sinusoids of each token's (frame, row, col) after the patch
    # embedding. Not in Wan: RoPE-only attention is translation-equivariant except at the
    # borders, so placing content at absolute positions is learned only slowly from border
    # effects. Large runs learn it; the few-minute CPU experiment cannot, and turns this on.
    absolute_pos_embed: bool = False

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def problems(self) -> Problems:
        yield from super().problems()
        if self.num_heads < 1 or self.dim % self.num_heads:
            yield "num_heads", f"must divide dim={self.dim}, got {self.num_heads}"
        elif self.head_dim % 2 or self.head_dim < 6:
            yield "num_heads", (f"head_dim = dim/num_heads = {self.head_dim} must be even and >= 6 "
                                "for 3D RoPE; use fewer heads")
        for name in ("ffn_dim", "num_layers", "freq_dim"):
            if getattr(self, name) < 1:
                yield name, f"must be >= 1, got {getattr(self, name)}"
