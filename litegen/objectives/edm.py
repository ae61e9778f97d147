"""EDM (Karras et al. 2022) for video, with Snap Video's input scaling.

The network F is wrapped in EDM's preconditioning, D(x; sigma) = c_skip x + c_out F(c_in x, c_noise),
trained with ln(sigma) ~ N(p_mean, p_std^2) and the weighting lambda = 1 / c_out^2 that makes every
sigma's loss unit-scale; written as the equivalent MSE of F against its effective target
(x0 - c_skip x) / c_out. Sampling: Heun's 2nd-order (or Euler) steps on the rho-spaced sigma grid,
with classifier-free guidance on F.

Video: `input_scale` (Snap Video's sigma_in) divides the data before noise is added, so the
preconditioning sees sigma_data / input_scale; a redundant clip keeps as much signal at a given
sigma as a single image would with input_scale = 1, and samples are multiplied back.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litegen.config.objectives import EDMConfig
from litegen.objectives.base import Cond, LossOutput
from litegen.objectives.guidance import guided_prediction


def _bcast(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class EDM:
    def __init__(self, cfg: EDMConfig):
        self.cfg = cfg

    @property
    def sigma_data(self) -> float:
        """Standard deviation of the (scaled) data the network denoises."""
        return self.cfg.sigma_data / self.cfg.input_scale

    def preconditioning(self, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) for sigma [B]."""
        sd2, s2 = self.sigma_data ** 2, sigma.double() ** 2
        c_skip = sd2 / (s2 + sd2)
        c_out = sigma.double() * self.sigma_data / (s2 + sd2).sqrt()
        c_in = 1.0 / (s2 + sd2).sqrt()
        c_noise = sigma.double().log() / 4
        return c_skip.float(), c_out.float(), c_in.float(), c_noise.float()

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2

    def sample_sigmas(self, n: int, generator: torch.Generator, device) -> Tensor:
        return (torch.randn(n, generator=generator, device=device) * self.cfg.p_std + self.cfg.p_mean).exp()

    def loss(self, model: nn.Module, latents: Tensor, cond: Cond, generator: torch.Generator,
             stratum: tuple[int, int] = (0, 1)) -> LossOutput:
        """Sigmas are i.i.d. per sample from `generator` (the stratum does not matter)."""
        x0 = latents / self.cfg.input_scale
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        sigma = self.sample_sigmas(x0.shape[0], generator, x0.device)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        x = x0 + _bcast(sigma, x0) * noise
        out = model(_bcast(c_in, x0) * x, c_noise, cond.context, cond.context_mask)
        # lambda * ||D - x0||^2 = ||F - (x0 - c_skip x) / c_out||^2 since lambda = 1 / c_out^2.
        target = (x0 - _bcast(c_skip, x0) * x) / _bcast(c_out, x0)
        loss = F.mse_loss(out.float(), target.float())
        return LossOutput(loss, {"sigma_median": float(sigma.median())})

    def denoise(self, model: nn.Module, x: Tensor, sigma: float, cond: Cond, null_cond: Cond,
                guidance_scale: float) -> Tensor:
        """D(x; sigma) for one sigma shared by the batch."""
        sigmas = torch.full((x.shape[0],), sigma, device=x.device)
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigmas)
        out = guided_prediction(model, _bcast(c_in, x) * x, c_noise, cond, null_cond, guidance_scale)
        return _bcast(c_skip, x) * x + _bcast(c_out, x) * out.to(x.dtype)

    def sigma_grid(self, steps: int) -> list[float]:
        """rho-spaced sigmas from sigma_max to sigma_min, then 0 (Karras et al. eq. 5)."""
        rho = self.cfg.rho
        lo, hi = self.cfg.sigma_min ** (1 / rho), self.cfg.sigma_max ** (1 / rho)
        fractions = [i / (steps - 1) for i in range(steps)] if steps > 1 else [0.0]
        return [(hi + f * (lo - hi)) ** rho for f in fractions] + [0.0]

    @torch.no_grad()
    def sample(self, model: nn.Module, noise: Tensor, cond: Cond, null_cond: Cond, steps: int,
               guidance_scale: float, generator: Optional[torch.Generator] = None) -> Tensor:
        """Deterministic Heun/Euler (S_churn = 0) from sigma_max; returns unscaled latents."""
        grid = self.sigma_grid(steps)
        x = noise * grid[0]
        for sigma, sigma_next in zip(grid[:-1], grid[1:]):
            slope = (x - self.denoise(model, x, sigma, cond, null_cond, guidance_scale)) / sigma
            x_next = x + (sigma_next - sigma) * slope
            if self.cfg.sampler == "heun" and sigma_next > 0:
                slope_next = (x_next - self.denoise(model, x_next, sigma_next, cond, null_cond,
                                                    guidance_scale)) / sigma_next
                x_next = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
            x = x_next
        return x * self.cfg.input_scale

