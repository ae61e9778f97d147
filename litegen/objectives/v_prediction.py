"""v-prediction on a discrete DDPM schedule with zero terminal SNR (CogVideoX's objective).

x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps with a_t the cumulative alpha at timestep index t, the
network predicts v = sqrt(a_t) eps - sqrt(1 - a_t) x0 (MSE), and sampling is DDIM (eta = 0) on
"trailing" timesteps. The schedule is scaled-linear betas, the SNR divided by `snr_shift_scale`,
then rescaled so the last timestep has SNR exactly 0 (Lin et al. 2024): sampling starts from pure
noise, which the network saw in training. The network gets t = index / num_train_timesteps.

Explicit uniform sampling: the optimizer step's N micro-batches (over all data-parallel ranks
and accumulation steps) split the schedule into N strata; micro-batch i draws its timesteps
stratified inside [i/N, (i+1)/N), so every step sees every noise level instead of whatever
i.i.d. draws happen to give (CogVideoX section 3). The trainer passes i = dp_rank * accum + micro
and N = dp * accum: sequence-parallel peers (one dp rank) draw the same timesteps, and one process
accumulating k micro-batches draws what k data-parallel ranks draw. The draw inside the stratum
comes from the micro-batch's generator, derived from (seed, step, i): nothing to save, exact on
resume.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.objectives import VPredictionConfig
from litegen.objectives.base import Cond, LossOutput
from litegen.objectives.guidance import guided_prediction


def beta_schedule(cfg: VPredictionConfig) -> Tensor:
    n = cfg.num_train_timesteps
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(math.sqrt(cfg.beta_start), math.sqrt(cfg.beta_end), n, dtype=torch.float64) ** 2
    return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float64)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Shift and scale sqrt(a) so the last step is 0 and the first unchanged (Lin et al. 2024)."""
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    return ((root - last) * first / (first - last)) ** 2


def alphas_cumprod(cfg: VPredictionConfig) -> Tensor:
    """Cumulative alphas [num_train_timesteps] in float64, index 0 = least noise."""
    alphas = torch.cumprod(1.0 - beta_schedule(cfg), dim=0)
    shift = cfg.snr_shift_scale
    alphas = alphas / (shift + (1.0 - shift) * alphas)  # SNR / shift
    return rescale_zero_terminal_snr(alphas) if cfg.zero_terminal_snr else alphas


def explicit_uniform(n: int, index: int, count: int, generator: torch.Generator, device) -> Tensor:
    """n values in [0, 1): stratified inside stratum `index` of `count` equal strata."""
    u = (torch.arange(n, device=device) + torch.rand(n, generator=generator, device=device)) / n
    return (index + u) / count


def _bcast(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class VPrediction:
    def __init__(self, cfg: VPredictionConfig):
        self.cfg = cfg
        self.alphas_cumprod = alphas_cumprod(cfg)

    def sample_indices(self, n: int, generator: torch.Generator, device,
                       stratum: tuple[int, int] = (0, 1)) -> Tensor:
        """Timestep indices [n] in [0, num_train_timesteps); stratum (index, count), see above."""
        if self.cfg.timestep_sampling == "explicit_uniform":
            u = explicit_uniform(n, *stratum, generator, device)
        else:
            u = torch.rand(n, generator=generator, device=device)
        total = self.cfg.num_train_timesteps
        return (u * total).long().clamp(max=total - 1)

    def alpha(self, indices: Tensor) -> Tensor:
        return self.alphas_cumprod.to(indices.device)[indices].float()

    def network_time(self, indices: Tensor) -> Tensor:
        return indices.float() / self.cfg.num_train_timesteps

    def loss(self, model: nn.Module, latents: Tensor, cond: Cond, generator: torch.Generator,
             stratum: tuple[int, int] = (0, 1)) -> LossOutput:
        x0 = latents
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        indices = self.sample_indices(x0.shape[0], generator, x0.device, stratum)
        a = _bcast(self.alpha(indices), x0)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = model(x_t, self.network_time(indices), cond.context, cond.context_mask)
        target = a.sqrt() * noise - (1 - a).sqrt() * x0
        loss = F.mse_loss(pred.float(), target.float())
        return LossOutput(loss, {"t_mean": float(self.network_time(indices).mean())})

    def sample_indices_grid(self, steps: int) -> list[int]:
        """DDIM "trailing" timesteps, noisiest first; the first is always the pure-noise index."""
        total = self.cfg.num_train_timesteps
        return [int(round(total - i * total / steps)) - 1 for i in range(steps)]

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: Tensor, cond: Cond, null_cond: Cond, steps: int,
               guidance_scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
        """DDIM (eta = 0) from pure noise with classifier-free guidance; deterministic."""
        x = noise
        grid = self.sample_indices_grid(steps)
        for i, index in enumerate(grid):
            t = self.network_time(torch.full((x.shape[0],), index, device=x.device))
            v = guided_prediction(model, x, t, cond, null_cond, guidance_scale).to(x.dtype)
            a = float(self.alphas_cumprod[index])
            x0 = math.sqrt(a) * x - math.sqrt(1 - a) * v
            eps = math.sqrt(1 - a) * x + math.sqrt(a) * v
            a_prev = float(self.alphas_cumprod[grid[i + 1]]) if i + 1 < steps else 1.0  # last: clean
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
        return x
