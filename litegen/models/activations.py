"""Analytic activation memory: the bytes autograd keeps for backward, per block and outside them.

Convention (the activation counterpart of flops.py; tests/unit/test_activation_model.py holds
every family to what litegen.parallel.saved_bytes counts, fp32 and bf16 autocast):

* Counted is every distinct storage autograd saves in forward (views of one storage once),
  excluding parameters. Inside a checkpointed block that is its stream inputs, plus, for
  selective checkpointing, the op outputs its policy keeps (`matmuls`: linear-layer outputs;
  `attention`: attention kernel outputs with their fp32 log-sum-exp).
* Sizes are linear in a few unit counts of one micro-batch on one rank: `token` (video tokens,
  batch x this rank's chunk), `position` (rows of RoPE tables shared by the batch), `text` (text
  tokens, batch x caption length), `sample` (clips), `latent` (Snap Video's FIT latents) and
  `block` (per block call, e.g. autocast's weight copies). Shared block arguments (time
  embedding, text, RoPE) are saved inside blocks but counted once, with the embeddings and head.
* Precision: fp32 everywhere, or bf16 autocast, where matmul outputs are bf16 but the models' own
  fp32 islands (LayerNorm32 / RMSNorm32 / adaLN modulation / gated residuals) save fp32 copies.
  Without bf16 parameters (no FSDP mixed precision) autocast also keeps a bf16 copy of each weight
  whose input needs a gradient. Whether a block's stream is fp32 under autocast matters too:
  a fp32 input is cast once per linear layer that reads it.

Derived by listing what each op saves (torch 2.13, CPU SDPA kernels); the CUDA flash and
memory-efficient kernels save the same q, k, v, out and log-sum-exp.
"""

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

F32 = 4  # bytes


@dataclass(frozen=True)
class Precision:
    compute_bytes: int = 4  # 4: fp32 run; 2: bf16 autocast
    weight_copies: bool = False  # autocast copies weights per forward (parameters not in bf16)

    @property
    def autocast(self) -> bool:
        return self.compute_bytes < F32


@dataclass(frozen=True)
class Rates:
    """Bytes per unit (see the module docstring for the units)."""

    token: float = 0
    position: float = 0
    text: float = 0
    sample: float = 0
    latent: float = 0
    block: float = 0

    def __add__(self, other: "Rates") -> "Rates":
        return Rates(*(a + b for a, b in zip(self._values(), other._values())))

    def __mul__(self, k: float) -> "Rates":
        return Rates(*(a * k for a in self._values()))

    def _values(self) -> tuple:
        return (self.token, self.position, self.text, self.sample, self.latent, self.block)

    def bytes(self, counts: "Counts") -> int:
        return round(sum(r * n for r, n in zip(self._values(), counts._values())))


@dataclass(frozen=True)
class Counts(Rates):
    """Unit counts of one micro-batch on one rank (block = 1: one call)."""

    block: float = 1


@dataclass(frozen=True)
class BlockActivations:
    saved: Rates  # a plain block: everything it keeps
    inputs: Rates  # a checkpointed block: its stream inputs
    matmuls: Rates = field(default_factory=Rates)  # linear outputs (kept by save_matmuls)
    attention: Rates = field(default_factory=Rates)  # attention outputs (save_matmuls, save_attention)

    def kept(self, policy: Optional[str]) -> Rates:
        """What a block keeps: policy None (not checkpointed) or a checkpoint policy."""
        if policy is None:
            return self.saved
        kept = self.inputs
        if policy in ("save_matmuls", "save_attention"):
            kept = kept + self.attention
        if policy == "save_matmuls":
            kept = kept + self.matmuls
        return kept


@dataclass(frozen=True)
class ActivationModel:
    block: BlockActivations  # every block of a family is alike
    outside: Rates  # embeddings, head, and the shared block arguments


def _weights(p: Precision, elements: float) -> float:
    return p.compute_bytes * elements if p.weight_copies else 0


def wan_layer(d: int, f: int, h: int, p: Precision, fp32_stream: bool = False) -> BlockActivations:
    """A Wan block (also Snap Video's latent layers): adaLN self-attn with RoPE, cross-attn, FFN.

    Per token: 13 d-wide fp32 tensors (the input or its fp32 copy, LayerNorm outputs, q/k RMSNorm
    input and normalised, fp32 gated-residual branches, residual stream), 9 d-wide compute-dtype
    ones (linear inputs, q/k/v, attention outputs) and the FFN's two f-wide ones; 9 fp32 norm
    statistics and 2 log-sum-exps per head. A fp32 stream under autocast is cast separately for q,
    k and v (2 extra copies).
    """
    a = p.compute_bytes
    recast = 2 * d if (p.autocast and fp32_stream) else 0
    return BlockActivations(
        saved=Rates(token=F32 * (13 * d + 9 + 2 * h) + a * (9 * d + 2 * f + recast),
                    text=F32 * (2 * d + 1) + a * (2 * d + 1),  # cross k (fp32 norm) and v; mask
                    sample=F32 * 8 * d,  # (1 + scale) twice and the 6-way modulation
                    block=_weights(p, 8 * d * d + 2 * d * f)),
        inputs=Rates(token=(F32 if fp32_stream else a) * d),
        matmuls=Rates(token=a * (7 * d + f), text=a * 2 * d),
        attention=Rates(token=2 * (a * d + F32 * h)))


def _head(p: Precision, d: int, hd_rope: int = 0) -> Rates:
    """adaLN head: fp32 input copy, LayerNorm output and statistics, compute-dtype projection input."""
    return Rates(token=F32 * (2 * d + 2) + p.compute_bytes * d, position=F32 * hd_rope, sample=F32 * d)


def wan_activations(cfg, p: Precision) -> ActivationModel:
    a, d, cpv = p.compute_bytes, cfg.dim, cfg.in_channels * math.prod(cfg.patch_size)
    outside = _head(p, d, hd_rope=cfg.head_dim) + Rates(
        token=a * cpv,  # patch embedding input
        text=a * (cfg.text_dim + 3 * d),  # text MLP (input, GELU in/out) + its output, read by blocks
        sample=a * (cfg.freq_dim + 4 * d),  # time MLP and projection
        block=_weights(p, d * cpv + 8 * d * d + d * cfg.out_channels * math.prod(cfg.patch_size)))
    return ActivationModel(wan_layer(d, cfg.ffn_dim, cfg.num_heads, p), outside)


def cogvideox_activations(cfg, p: Precision) -> ActivationModel:
    """Video and text tokens both run through every block (per text token = per video token)."""
    a, d, f, h, te = p.compute_bytes, cfg.dim, cfg.ffn_dim, cfg.num_heads, cfg.time_embed_dim
    per_token = F32 * (8 * d + 4 + 5 * h) + a * (7 * d + 2 * f + 1)  # q/k LayerNorm per head
    block = BlockActivations(
        saved=Rates(token=per_token, text=per_token, sample=F32 * 16 * d + a * 2 * te,
                    block=_weights(p, 12 * d * te + 4 * d * d + 2 * d * f)),
        inputs=Rates(token=a * d, text=a * d),
        matmuls=Rates(token=a * (5 * d + f), text=a * (5 * d + f), sample=a * 12 * d),
        attention=Rates(token=a * d + F32 * h, text=a * d + F32 * h))
    cpv = cfg.in_channels * math.prod(cfg.patch_size)
    rope_hd = cfg.head_dim if cfg.pos_embedding == "rope" else 0
    outside = Rates(token=a * cpv + F32 * (3 * d + 4) + a * d, position=F32 * rope_hd,
                    text=a * cfg.text_dim, sample=a * (d + 4 * te) + F32 * d,
                    block=_weights(p, d * cpv + te * te + 2 * te * d + d * cfg.out_channels * math.prod(cfg.patch_size)))
    return ActivationModel(block, outside)


def vchitect_activations(cfg, p: Precision) -> ActivationModel:
    """Spatial, temporal (own q/k/v, RoPE over frames) and cross attention on one input."""
    a, d, f, h = p.compute_bytes, cfg.dim, cfg.ffn_dim, cfg.num_heads
    block = BlockActivations(
        saved=Rates(token=F32 * (6 * d + 4 + 3 * h) + a * (14 * d + 2 * f), text=a * (2 * d + 1),
                    sample=a * d + F32 * 8 * d, block=_weights(p, 18 * d * d + 2 * d * f)),
        inputs=Rates(token=a * d),
        matmuls=Rates(token=a * (11 * d + f), text=a * 2 * d, sample=a * 6 * d),
        attention=Rates(token=3 * (a * d + F32 * h)))
    cpv, opv = cfg.in_channels * math.prod(cfg.patch_size), cfg.out_channels * math.prod(cfg.patch_size)
    outside = _head(p, d, hd_rope=cfg.head_dim) + Rates(
        token=a * cpv, text=a * (cfg.text_dim + d),
        sample=a * (cfg.freq_dim + cfg.text_dim + 6 * d),  # time and pooled-text MLPs, condition
        block=_weights(p, d * cpv + 4 * d * d + d * opv))
    return ActivationModel(block, outside)


def snapvideo_activations(cfg, p: Precision) -> ActivationModel:
    """A FIT block: read (latents <- patches), `latent_layers` Wan layers, write, patch FFN.

    Latents are a fp32 stream under autocast (the learned init follows the fp32 input); patches
    follow the compute dtype, so their three LayerNorms keep three fp32 copies (one in fp32 runs).
    """
    a, dp, dl, pf = p.compute_bytes, cfg.patch_dim, cfg.dim, cfg.patch_ffn_dim
    h, hp, n = cfg.num_heads, cfg.patch_heads, cfg.latent_layers
    layer = wan_layer(dl, cfg.ffn_dim, h, p, fp32_stream=True)
    patch_copies = 3 if p.autocast else 2
    own = BlockActivations(
        saved=Rates(token=F32 * (patch_copies * dp + 6 + hp) + a * (5 * dp + 2 * dl + 2 * pf),
                    latent=F32 * (2 * dl + 4 + h) + a * (4 * dl + 2 * dp + (dl if p.autocast else 0)),
                    block=_weights(p, 2 * dl * dl + 4 * dp * dl + 2 * dp * dp + 2 * dp * pf)),
        inputs=Rates(token=a * dp, latent=F32 * dl),
        matmuls=Rates(token=a * (2 * dl + 3 * dp + pf), latent=a * (2 * dl + 2 * dp)),
        attention=Rates(token=a * dp + F32 * hp, latent=a * dl + F32 * h))

    def as_latents(r: Rates) -> Rates:  # the latent layers' tokens are the FIT latents
        return Rates(latent=r.token, text=r.text, sample=r.sample, block=r.block) * n

    block = BlockActivations(own.saved + as_latents(layer.saved), own.inputs,
                             own.matmuls + as_latents(layer.matmuls), own.attention + as_latents(layer.attention))
    cpv, opv = cfg.in_channels * math.prod(cfg.patch_size), cfg.out_channels * math.prod(cfg.patch_size)
    outside = _head(p, dp, hd_rope=cfg.head_dim) + Rates(
        token=a * cpv, text=a * (cfg.text_dim + 3 * dl), sample=a * (cfg.freq_dim + 4 * dl),
        block=_weights(p, dp * cpv + 8 * dl * dl + 2 * dl * dp + dp * opv))
    return ActivationModel(block, outside)


def worlddreamer_activations(cfg, p: Precision) -> ActivationModel:
    """Pre-norm STPT blocks on a fp32 stream (token embeddings are not autocast)."""
    a, d, f, h = p.compute_bytes, cfg.dim, cfg.ffn_dim, cfg.num_heads
    recast = 2 * d if p.autocast else 0
    block = BlockActivations(
        saved=Rates(token=F32 * (9 * d + 9 + 2 * h) + a * (10 * d + 2 * f + recast),
                    text=F32 * (2 * d + 1) + a * (2 * d + 1), block=_weights(p, 8 * d * d + 2 * d * f)),
        inputs=Rates(token=F32 * d),
        matmuls=Rates(token=a * (7 * d + f), text=a * 2 * d),
        attention=Rates(token=2 * (a * d + F32 * h)))
    outside = Rates(token=8 + F32 * (d + 2) + a * d,  # int64 token ids, final norm, head input
                    text=a * (cfg.text_dim + 3 * d), block=_weights(p, d * d + d * cfg.vocab_size))
    return ActivationModel(block, outside)


# family -> (cfg, precision) -> ActivationModel
ACTIVATIONS: dict[str, Callable[..., ActivationModel]] = {
    "wan": wan_activations, "cogvideox": cogvideox_activations, "vchitect": vchitect_activations,
    "snapvideo": snapvideo_activations, "worlddreamer": worlddreamer_activations,
}


def activation_model(cfg, p: Precision) -> ActivationModel:
    if cfg.family not in ACTIVATIONS:
        raise ValueError(f"no activation model for model.family={cfg.family!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[cfg.family](cfg, p)


def token_grid(cfg, latent: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """(frames, rows, cols) of tokens for a latent (C, T, H, W)."""
    return tuple(n // s for n, s in zip(latent[1:], cfg.patch_size))


def unit_counts(cfg, latent: tuple[int, int, int, int], text_len: int, batch: int, sp: int = 1) -> Counts:
    """Counts for `batch` clips of `latent` (C, T, H, W) on one of `sp` sequence-parallel ranks."""
    grid = token_grid(cfg, latent)
    chunk = math.ceil(math.prod(grid) / sp)  # SP pads the sequence to equal chunks
    positions, latents = chunk, 0
    if cfg.family == "snapvideo":  # RoPE is over the FIT latents: groups x latents per group
        groups = grid[0] // min(cfg.group_frames, grid[0])
        latents = positions = groups * cfg.latents_per_group
        latents *= batch
    return Counts(token=batch * chunk, position=positions, text=batch * text_len, sample=batch,
                  latent=latents)
