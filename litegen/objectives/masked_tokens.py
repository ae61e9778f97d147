"""Masked visual-token prediction (MaskGIT, as WorldDreamer trains and samples).

Training: latents -> token ids (the objective's VQ tokenizer); a ratio r = schedule(u), u ~ U(0,1),
of each clip's tokens is replaced by [MASK] (at least one), and the network's cross-entropy is
averaged over the masked positions. Sampling: start fully masked; at step s of S predict every
masked token, sample it, and keep the most confident ones so that schedule(s/S) of all tokens
stay masked, re-masking the rest (MaskGIT's annealed choice noise); guidance mixes conditional
and unconditional logits. The network is called as model(ids, context, context_mask, actions).
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.objectives import MaskedTokensConfig
from litegen.encoders.vq import build_tokenizer
from litegen.objectives.base import Cond, LossOutput


def mask_ratio(u: Tensor, schedule: str) -> Tensor:
    """Fraction of tokens masked at progress u in [0, 1] (1 - u: fraction decoded)."""
    return torch.cos(u * math.pi / 2) if schedule == "cosine" else 1.0 - u


def random_mask(n_tokens: int, ratios: Tensor, generator: torch.Generator) -> Tensor:
    """[B, n_tokens] bool: ceil(ratio * n) random positions per row, at least one."""
    counts = (ratios * n_tokens).ceil().clamp(1, n_tokens).long()
    scores = torch.rand(ratios.shape[0], n_tokens, generator=generator, device=ratios.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


def gumbel(shape, generator: Optional[torch.Generator], device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp(1e-20, 1.0)
    return -torch.log(-torch.log(u).clamp_min(1e-20))


class MaskedTokens:
    def __init__(self, cfg: MaskedTokensConfig):
        self.cfg = cfg
        self.tokenizer = build_tokenizer(cfg.tokenizer, cfg.latent_channels, cfg.palette_levels,
                                         cfg.palette_patch)
        self.mask_id = self.tokenizer.vocab_size

    def logits(self, model: nn.Module, ids: Tensor, cond: Cond) -> Tensor:
        return model(ids, cond.context, cond.context_mask, cond.actions)

    def loss(self, model: nn.Module, latents: Tensor, cond: Cond, generator: torch.Generator,
             stratum: tuple[int, int] = (0, 1)) -> LossOutput:
        """Mask ratios and positions are i.i.d. per sample from `generator` (stratum unused)."""
        ids = self.tokenizer.encode(latents)
        flat = ids.flatten(1)
        ratios = mask_ratio(torch.rand(flat.shape[0], generator=generator, device=flat.device),
                            self.cfg.mask_schedule)
        masked = random_mask(flat.shape[1], ratios, generator)
        inputs = torch.where(masked, torch.full_like(flat, self.mask_id), flat).view_as(ids)
        logits = self.logits(model, inputs, cond).flatten(1, -2)  # [B, N, V]
        loss = F.cross_entropy(logits[masked].float(), flat[masked])
        accuracy = (logits[masked].argmax(-1) == flat[masked]).float().mean()
        return LossOutput(loss, {"mask_ratio": float(masked.float().mean()), "token_acc": float(accuracy)})

    def guided_logits(self, model: nn.Module, ids: Tensor, cond: Cond, null_cond: Cond, scale: float) -> Tensor:
        if scale == 1.0:
            return self.logits(model, ids, cond)
        both = self.logits(model, torch.cat([ids, ids]), cond.cat(null_cond))
        with_text, without = both.float().chunk(2)
        return without + scale * (with_text - without)

    def still_masked(self, step: int, steps: int, n_tokens: int) -> int:
        """Tokens left masked after decoding step `step` (0-based) of `steps`."""
        ratio = float(mask_ratio(torch.tensor((step + 1) / steps, dtype=torch.float64), self.cfg.mask_schedule))
        return max(0, int(math.floor(ratio * n_tokens)))  # cos(pi/2) is -4e-17, not 0

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: Tensor, cond: Cond, null_cond: Cond, steps: int,
               guidance_scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
        """Iterative decoding of a clip shaped like `noise` (only its shape is used) -> latents."""
        grid = self.tokenizer.token_grid(tuple(noise.shape[1:]))
        ids = torch.full((noise.shape[0], *grid), self.mask_id, dtype=torch.long, device=noise.device)
        n_tokens = math.prod(grid)
        for step in range(steps):
            logits = self.guided_logits(model, ids, cond, null_cond, guidance_scale).flatten(1, -2)
            probs = (logits / self.cfg.sample_temperature).softmax(-1)
            drawn = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
            flat = ids.flatten(1)
            unknown = flat == self.mask_id
            chosen = torch.where(unknown, drawn, flat)
            confidence = probs.gather(-1, drawn[..., None]).squeeze(-1).clamp_min(1e-20).log()
            anneal = self.cfg.choice_temperature * (1 - (step + 1) / steps)
            confidence = confidence + anneal * gumbel(confidence.shape, generator, noise.device)
            confidence = confidence.masked_fill(~unknown, math.inf)  # decoded tokens stay decoded
            remask = confidence.argsort(dim=1).argsort(dim=1) < self.still_masked(step, steps, n_tokens)
            ids = torch.where(remask, self.mask_id, chosen).view_as(ids)
        return self.tokenizer.decode(ids).to(noise.dtype)
