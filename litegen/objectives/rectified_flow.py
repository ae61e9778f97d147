"""Rectified flow / flow matching: straight paths from data (t=0) to noise (t=1), velocity target.

x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0, sampling integrates dx/dt = v from
t=1 to t=0 with Euler steps on a shifted time grid (SD3 / Wan convention). Packed clips
(litegen.models.packed.PackedClips) get one timestep each; their loss is the mean of per-clip MSEs.
"""

import torch
import torch.nn.functional as F
from torch import nn

from litegen.config import RectifiedFlowConfig
from litegen.models.packed import PackedClips, per_clip_mean
from litegen.objectives.base import Cond, LossOutput
from litegen.objectives.guidance import guided_prediction


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Warp t in [0, 1] towards 1 (more noise) for shift > 1; identity for shift == 1."""
    return shift * t / (1.0 + (shift - 1.0) * t)


class RectifiedFlow:
    def __init__(self, cfg: RectifiedFlowConfig):
        self.cfg = cfg

    def sample_timesteps(self, n: int, generator: torch.Generator, device) -> torch.Tensor:
        if self.cfg.timestep_sampling == "logit_normal":
            u = torch.randn(n, generator=generator, device=device)
            t = torch.sigmoid(u * self.cfg.logit_std + self.cfg.logit_mean)
        else:
            t = torch.rand(n, generator=generator, device=device)
        return shift_time(t, self.cfg.train_shift)

    def loss(self, model: nn.Module, latents, cond: Cond, generator: torch.Generator,
             stratum: tuple[int, int] = (0, 1)) -> LossOutput:
        """latents: [B, C, T, H, W], or PackedClips (one caption row of cond per clip).

        Timesteps are i.i.d. per sample from `generator` (the stratum does not matter)."""
        if isinstance(latents, PackedClips):
            noise = torch.randn(latents.tokens.shape, generator=generator, device=latents.tokens.device,
                                dtype=latents.tokens.dtype)
            t = self.sample_timesteps(len(latents), generator, latents.tokens.device)
            per_clip = self.packed_losses(model, latents, noise, t, cond)
            return LossOutput(per_clip.mean(), {"t_mean": float(t.mean())})
        x0 = latents
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = self.sample_timesteps(x0.shape[0], generator, x0.device)
        t_b = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
        x_t = (1.0 - t_b) * x0 + t_b * noise
        pred = self.velocity(model(x_t, t, cond.context, cond.context_mask), x_t, t)
        # fp32 loss: under bf16 autocast the prediction is bf16, the MSE reduction should not be.
        loss = F.mse_loss(pred.float(), (noise - x0).float())
        return LossOutput(loss, {"t_mean": float(t.mean())})

    def packed_losses(self, model: nn.Module, packed: PackedClips, noise: torch.Tensor, t: torch.Tensor,
                      cond: Cond) -> torch.Tensor:
        """Velocity MSE of each packed clip [n]: clip i is noised to its own t[i] and scored alone."""
        x0, layout = packed.tokens, packed.layout
        t_tok = t[layout.segment_ids]  # [S]: each token's clip's timestep
        t_b = t_tok.view(1, -1, 1).to(x0.dtype)
        x_t = (1.0 - t_b) * x0 + t_b * noise
        out = model(x_t, t, cond.context, cond.context_mask, layout=layout)
        # Rows are tokens here, so the per-row t of `velocity` is the per-token timestep.
        pred = self.velocity(out[0], x_t[0], t_tok)
        err = (pred.float() - (noise - x0)[0].float()).square().mean(-1)  # [S]: mean over a token's values
        return per_clip_mean(err, layout)

    def velocity(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output as a velocity: as is, or from predicted data v = (x_t - x0) / t."""
        if self.cfg.prediction == "velocity":
            return output
        t_b = t.clamp(min=self.cfg.min_t_data).view(-1, *([1] * (x_t.dim() - 1)))
        return (x_t.float() - output.float()) / t_b

    def time_grid(self, steps: int, device) -> torch.Tensor:
        return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), self.cfg.sample_shift)

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: torch.Tensor, cond: Cond, null_cond: Cond,
               steps: int, guidance_scale: float, generator=None) -> torch.Tensor:
        """Euler integration from pure noise (t=1) to data (t=0) with classifier-free guidance.

        Deterministic given the noise: `generator` is accepted for the shared signature only.
        """
        x = noise
        grid = self.time_grid(steps, noise.device)
        for t_now, t_next in zip(grid[:-1], grid[1:]):
            t = t_now.expand(x.shape[0])
            out = guided_prediction(model, x, t, cond, null_cond, guidance_scale)
            x = x + (t_next - t_now) * self.velocity(out, x, t).to(x.dtype)
        return x

